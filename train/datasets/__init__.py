"""Demo datasets written as class-per-folder JPEG trees, so demos use the real loader.

Usage:
    from train import datasets
    datasets.materialise("fashion_mnist", "data/fashion", per_class=100)
"""

from __future__ import annotations

import os

from train.datasets import fashion_mnist

# name -> function(out_dir, *, per_class, seed) -> {split: count}
REGISTRY = {"fashion_mnist": fashion_mnist.materialise}


def materialise(name: str, out_dir: str | os.PathLike, *, per_class: int | None = None,
                seed: int = 0) -> dict[str, int]:
    """Writes dataset `name` under out_dir/{train,val,test}/<class>/; returns split counts."""
    try:
        writer = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(REGISTRY)}") from None
    return writer(out_dir, per_class=per_class, seed=seed)
