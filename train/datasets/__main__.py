"""Demo data and dataset checks from the command line.

Usage:
    # Fashion-MNIST as class-per-folder JPEGs (from Debian's dataset-fashion-mnist, or online)
    python -m train.datasets fashion_mnist --out=data/fashion --per_class=500
    # What the training loader sees in a class-per-folder tree (counts, skipped files)
    python -m train.datasets inspect --data_dir=car_data
"""

from __future__ import annotations

import sys

from absl import app, flags

_OUT = flags.DEFINE_string("out", None, "Output directory (materialising).")
_PER_CLASS = flags.DEFINE_integer("per_class", None, "Images per class and split (default all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for choosing images and splits.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Dataset root (inspect).")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Val split when DATA/val is absent.")

_USAGE = "usage: python -m train.datasets {fashion_mnist --out=DIR | inspect --data_dir=DIR}"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise app.UsageError(_USAGE)
    command = argv[1]
    if command == "inspect":
        return _inspect()
    from train import datasets

    if command not in datasets.REGISTRY:
        raise app.UsageError(f"unknown command {command!r}\n{_USAGE}")
    if not _OUT.value:
        raise app.UsageError("--out is required")
    try:
        counts = datasets.materialise(command, _OUT.value, per_class=_PER_CLASS.value,
                                      seed=_SEED.value)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = ", ".join(f"{split} {n}" for split, n in counts.items())
    print(f"{command}: {total} images in {_OUT.value}/{{train,val,test}}/<class>/")
    return 0


def _inspect() -> int:
    from train import data

    if not _DATA_DIR.value:
        raise app.UsageError("--data_dir is required")
    try:
        listing = data.list_class_folders(
            _DATA_DIR.value, data.DataConfig(val_fraction=_VAL_FRACTION.value))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{_DATA_DIR.value}: {listing.summary()}")
    for split_name, split in listing.splits.items():
        per_class = ", ".join(f"{listing.class_names[c]} {split.labels.count(c)}"
                              for c in range(len(listing.class_names)))
        print(f"  {split_name}: {per_class}")
    for path, reason in listing.skipped:
        print(f"  skipped {path}: {reason}")
    return 0


def run() -> None:
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
