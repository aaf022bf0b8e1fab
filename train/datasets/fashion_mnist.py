"""Fashion-MNIST (10 classes, 28x28 grey) as class-per-folder JPEGs: train/val/test.

Source, in order: the Debian package `dataset-fashion-mnist` (offline), else the standard
download when online. val is carved from the 60k training images (seeded, disjoint from
train); test is the 10k test set. The output is written to a temporary directory and
renamed into place with a manifest, so an interrupted run never looks complete, and a
complete output with the same arguments is reused instead of rewritten.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from absl import logging

DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle_boot")
VAL_PER_CLASS = 500  # Of the 6000 training images per class, when per_class is not set.
MANIFEST = "MANIFEST.json"


class DataUnavailableError(RuntimeError):
    """The source files are neither installed nor downloadable."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads a gzipped idx file (uint8 images [N, 28, 28] or labels [N]).

    Raises:
      ValueError: bad magic number, dtype or a size that does not match the header.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path}: not an idx file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header declares {shape} ({expected} bytes) but holds {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _source_files() -> dict[str, pathlib.Path]:
    if all((DEBIAN_DIR / name).is_file() for name in FILES.values()):
        return {key: DEBIAN_DIR / name for key, name in FILES.items()}
    logging.info("%s not found; trying the online download", DEBIAN_DIR)
    try:
        import keras

        return {
            key: pathlib.Path(keras.utils.get_file(name, DOWNLOAD_URL + name,
                                                   cache_subdir="datasets/fashion-mnist"))
            for key, name in FILES.items()
        }
    except Exception as e:  # Any download failure means the same thing to the user.
        raise DataUnavailableError(
            "Fashion-MNIST is not available: install Debian's package "
            "(`apt-get install dataset-fashion-mnist`, files in /usr/share/datasets/fashion-mnist) "
            f"or run once with network access to download it ({e})"
        ) from e


def _pick(labels: np.ndarray, per_class: int | None, rng: np.random.Generator,
          exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of up to per_class random examples of each class, sorted."""
    chosen = []
    for label in range(len(CLASS_NAMES)):
        candidates = np.flatnonzero(labels == label)
        if exclude is not None:
            candidates = np.setdiff1d(candidates, exclude)
        candidates = rng.permutation(candidates)
        chosen.append(candidates if per_class is None else candidates[:per_class])
    return np.sort(np.concatenate(chosen))


def _write_split(root: pathlib.Path, images: np.ndarray, labels: np.ndarray,
                 indices: np.ndarray, prefix: str) -> None:
    from PIL import Image

    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in indices:
        path = root / CLASS_NAMES[labels[i]] / f"{prefix}{i:05d}.jpg"
        Image.fromarray(images[i], mode="L").save(path, format="JPEG", quality=95)


def materialise(out_dir: str | os.PathLike, *, per_class: int | None = None,
                seed: int = 0) -> dict[str, int]:
    """Writes Fashion-MNIST under out_dir/{train,val,test}/<class>/*.jpg.

    Args:
      out_dir: destination; reused as is if it holds a complete copy made with the same
        arguments, replaced otherwise.
      per_class: images per class in each split (None = all: 5500/500/1000).
      seed: chooses the images and the val split.

    Returns:
      {"train": n, "val": n, "test": n}.
    """
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    out = pathlib.Path(out_dir)
    request = {"dataset": "fashion_mnist", "per_class": per_class, "seed": seed}
    manifest = out / MANIFEST
    if manifest.is_file():
        saved = json.loads(manifest.read_text())
        if saved.get("request") == request:
            logging.info("Reusing complete Fashion-MNIST copy in %s", out)
            return saved["counts"]

    files = _source_files()
    train_images, train_labels = read_idx(files["train_images"]), read_idx(files["train_labels"])
    test_images, test_labels = read_idx(files["test_images"]), read_idx(files["test_labels"])
    if len(train_images) != len(train_labels) or len(test_images) != len(test_labels):
        raise ValueError("Fashion-MNIST image and label files disagree on the number of examples")

    rng = np.random.default_rng(seed)
    val_idx = _pick(train_labels, per_class or VAL_PER_CLASS, rng)
    train_idx = _pick(train_labels, per_class, rng, exclude=val_idx)
    test_idx = _pick(test_labels, per_class, rng)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_split(tmp / "train", train_images, train_labels, train_idx, "train")
        _write_split(tmp / "val", train_images, train_labels, val_idx, "train")
        _write_split(tmp / "test", test_images, test_labels, test_idx, "test")
        counts = {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}
        (tmp / MANIFEST).write_text(json.dumps({"request": request, "counts": counts}, indent=1))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
