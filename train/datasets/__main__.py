"""Demo data and dataset checks from the command line.

Usage:
    # Fashion-MNIST as class-per-folder JPEGs (from Debian's dataset-fashion-mnist, or
    # online); 50 images per class in each of train/val/test. Re-running is a no-op.
    python -m train.datasets fashion_mnist --out=data/fashion --per_class=50
    # What the training loader sees in a class-per-folder tree: classes, images per class
    # and split, skipped files with reasons; exits 1 on a bad layout.
    python -m train.datasets inspect --data_dir=data/fashion
    # ... and the memory its decoded images take at the sizes you may train at, and
    # whether the loader keeps them in RAM (default: the backbone's native size).
    python -m train.datasets inspect --data_dir=car_data --image_size=224,300 --full_check
"""

from __future__ import annotations

import sys
import time

from absl import app, flags

from serving import tf_noise

_OUT = flags.DEFINE_string("out", None, "Output directory (materialising a dataset).")
_PER_CLASS = flags.DEFINE_integer("per_class", None,
                                  "Images per class in each split (default: all).", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", 0, "Seed for choosing images and splits.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset root (inspect).")
_IMAGE_SIZE = flags.DEFINE_list("image_size", ["0"], "Input sizes to size the decoded-image "
                                "cache at, as `python -m train --image_size` (0 = the "
                                "backbone's native size) (inspect).")
_BACKBONE = flags.DEFINE_string("backbone", "lite0", "The backbone whose native size "
                                "--image_size=0 means (inspect).")
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
            "       python -m train.datasets inspect --data_dir=DIR [--image_size=96,224]\n"
            f"datasets:\n{names}")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise app.UsageError(_usage())
    command = argv[1]
    if command == "inspect":
        if not _DATA_DIR.value:
            raise app.UsageError("inspect needs --data_dir")
        try:
            image_sizes = [int(size) for size in _IMAGE_SIZE.value]
        except ValueError:
            raise app.UsageError(
                f"--image_size must be integers, got {_IMAGE_SIZE.value}") from None
        return inspect(_DATA_DIR.value, image_sizes=image_sizes, backbone=_BACKBONE.value,
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


def inspect(data_dir: str, *, image_sizes: list[int], backbone: str, val_fraction: float,
            test_fraction: float, full_check: bool) -> int:
    """Prints the loader's view of data_dir and its decoded-image cache at each size;
    returns the exit code (1 on a bad layout or argument)."""
    from train import backbones, batch_size, data

    started = time.monotonic()
    try:
        if any(size < 0 for size in image_sizes):
            raise ValueError(f"image sizes must be positive (0: native), got {image_sizes}")
        native = backbones.get_info(backbone).input_size if 0 in image_sizes else None
        config = data.DataConfig(val_fraction=val_fraction, test_fraction=test_fraction,
                                 full_check=full_check)
        listing = data.list_class_folders(data_dir, config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{data_dir}: {listing.report()}")
    images = sum(len(split) for split in listing.splits.values())
    print(f"checked {images + len(listing.skipped)} files in {time.monotonic() - started:.1f}s")
    available = batch_size.available_ram()
    for size in image_sizes:
        label = f"{native}px ({backbone}'s native size)" if size == 0 else f"{size}px"
        report = _cache_report(listing, size or native, config, available)
        print(f"decoded cache at {label}: {report}")
    return 0


def _cache_report(listing, image_size: int, config, available_bytes: int) -> str:
    """Each split's decoded size, which ones the loader keeps in RAM, and whether they fit."""
    from train import data

    gib = {name: data.decoded_bytes(len(split), image_size) / 2**30
           for name, split in listing.splits.items()}
    in_memory = [name for name, split in listing.splits.items()
                 if data.resolve_cache(config.cache, len(split), image_size) == "memory"]
    text = ", ".join(f"{name} {size:.2f} GiB" for name, size in gib.items())
    if in_memory:
        kept = sum(gib[name] for name in in_memory)
        available = available_bytes / 2**30
        which = "" if len(in_memory) == len(gib) else f" ({', '.join(in_memory)})"
        verdict = (f"fits in the {available:.1f} GiB of RAM available" if kept < available else
                   f"does NOT fit in the {available:.1f} GiB of RAM available: train at a "
                   "smaller --image_size or free memory")
        text += f"; kept in RAM{which}: {kept:.2f} GiB, {verdict}"
    over = [name for name in gib if name not in in_memory]
    if over:
        text += (f"; {', '.join(over)} over the loader's "
                 f"{data.MEMORY_CACHE_LIMIT / 2**30:.0f} GiB in-memory limit: decoded from the "
                 "files every epoch")
    return text


def run() -> None:
    """Console-script entry point."""
    tf_noise.install()  # Before anything imports TensorFlow.
    app.run(main)


if __name__ == "__main__":
    run()
