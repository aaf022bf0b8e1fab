"""Demo datasets written as class-per-folder JPEG trees, so demos use the real loader.

A registry maps each dataset name to its writer; adding a dataset means adding a module
with a `materialise(out_dir, *, per_class, seed) -> {split: count}` function and one
REGISTRY entry.

Usage:
    from train import datasets
    counts = datasets.materialise("fashion_mnist", "data/fashion", per_class=100)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from train.datasets import fashion_mnist


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """A dataset that can be materialised.

    Attributes:
      description: one line for help texts.
      materialise: function(out_dir, *, per_class, seed) -> {split: count}.
    """

    description: str
    materialise: Callable[..., dict[str, int]]


REGISTRY: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "Fashion-MNIST, 10 classes of 28x28 grey clothing images (Debian package or online)",
        fashion_mnist.materialise),
}


def materialise(name: str, out_dir: str | os.PathLike, *, per_class: int | None = None,
                seed: int = 0) -> dict[str, int]:
    """Writes dataset `name` under out_dir/{train,val,test}/<class>/.

    Args:
      name: a REGISTRY key.
      out_dir: destination directory.
      per_class: images per class and split (None = all).
      seed: chooses the images and splits.

    Returns:
      Images per split, e.g. {"train": 50, "val": 50, "test": 50}.

    Raises:
      ValueError: unknown name, bad arguments or corrupt source files.
      RuntimeError: the source data cannot be found or downloaded.
    """
    try:
        info = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(REGISTRY)}") from None
    return info.materialise(out_dir, per_class=per_class, seed=seed)
