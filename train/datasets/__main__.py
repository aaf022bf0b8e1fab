"""Demo data and dataset checks from the command line.

Usage:
    # Fashion-MNIST as class-per-folder JPEGs (from Debian's dataset-fashion-mnist, or
    # online); 50 images per class in each of train/val/test. Re-running is a no-op.
    python -m train.datasets fashion_mnist --out=data/fashion --per_class=50
    # What the training loader sees in a class-per-folder tree: classes, images per class
    # and split, skipped files with reasons; exits 1 on a bad layout.
    python -m train.datasets inspect --data_dir=data/fashion
    python -m train.datasets inspect --data_dir=car_data --image_size=224 --full_check
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Output directory (materialising a dataset).")
_PER_CLASS = flags.DEFINE_integer("per_class", None,
                                  "Images per class in each split (default: all).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed for choosing images and splits.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset root (inspect).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Model input size, for the cache "
                                   "estimate (inspect).", lower_bound=1)
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Val share split from train when "
                                   "DATA/val is absent (inspect).")
_TEST_FRACTION = flags.DEFINE_float("test_fraction", 0.0, "Test share split from train when "
                                    "DATA/test is absent (inspect).")
_FULL_CHECK = flags.DEFINE_bool("full_check", False, "Decode every file with the training "
                                "decoder instead of the fast header checks (inspect).")


def _usage() -> str:
    from train import datasets

    names = "\n".join(f"  {name:<14} {info.description}"
                      for name, info in sorted(datasets.REGISTRY.items()))
    return ("usage: python -m train.datasets DATASET --out=DIR [--per_class=N] [--seed=S]\n"
            "       python -m train.datasets inspect --data_dir=DIR [--image_size=224]\n"
            f"datasets:\n{names}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise app.UsageError(_usage())
    command = argv[1]
    if command == "inspect":
        if not _DATA_DIR.value:
            raise app.UsageError("inspect needs --data_dir")
        return inspect(_DATA_DIR.value, image_size=_IMAGE_SIZE.value,
                       val_fraction=_VAL_FRACTION.value, test_fraction=_TEST_FRACTION.value,
                       full_check=_FULL_CHECK.value)
    from train import datasets

    if command not in datasets.REGISTRY:
        raise app.UsageError(f"unknown command {command!r}\n{_usage()}")
    if not _OUT.value:
        raise app.UsageError(f"{command} needs --out")
    started = time.monotonic()
    try:
        counts = datasets.materialise(command, _OUT.value, per_class=_PER_CLASS.value,
                                      seed=_SEED.value)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"{command}: {total} images in {_OUT.value}/{{train,val,test}}/<class>/ "
          f"({time.monotonic() - started:.1f}s)")
    return 0


def inspect(data_dir: str, *, image_size: int, val_fraction: float, test_fraction: float,
            full_check: bool) -> int:
    """Prints the loader's view of data_dir; returns the exit code (1 on a bad layout)."""
    from train import data

    started = time.monotonic()
    try:
        config = data.DataConfig(val_fraction=val_fraction, test_fraction=test_fraction,
                                 full_check=full_check)
        listing = data.list_class_folders(data_dir, config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{data_dir}: {listing.report()}")
    images = sum(len(split) for split in listing.splits.values())
    gib = images * image_size * image_size * 3 * 4 / 2**30
    print(f"checked {images + len(listing.skipped)} files in {time.monotonic() - started:.1f}s;"
          f" decoded cache at {image_size}px: {gib:.2f} GiB")
    return 0


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
