"""Fashion-MNIST (10 classes, 28x28 grey) as class-per-folder JPEGs: train/val/test.

Source, in order: the Debian package `dataset-fashion-mnist` (offline), else the standard
download when online. val is carved from the 60k training images (seeded, disjoint from
train); test comes from the 10k t10k set. File names keep the idx index
(train/Coat/train00019.jpg is image 19 of the training idx file).

The output is written to a temporary sibling directory and renamed into place with a
manifest written last, so an interrupted run never looks complete, and a complete output
made with the same arguments is reused instead of rewritten.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import shutil
import tempfile
import zlib

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
IMAGE_SHAPE = (28, 28)
VAL_PER_CLASS = 500  # Of the 6000 training images per class, when per_class is not set.
JPEG_QUALITY = 95
MANIFEST = "MANIFEST.json"


class DataUnavailableError(RuntimeError):
    """The source files are neither installed nor downloadable."""


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads a gzipped idx file of unsigned bytes (images [N, 28, 28] or labels [N]).

    Raises:
      ValueError: not gzip, corrupt or truncated data, bad magic number or element type, or
        a size that does not match the header (the message names the file).
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e})") from e
    if len(data) < 4 or data[:2] != b"\0\0":
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    if data[2] != 0x08:
        raise ValueError(f"{path}: idx element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{path}: truncated or empty idx header")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header declares shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def load_split(images_path: str | os.PathLike,
               labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads and cross-checks one images/labels idx pair.

    Raises:
      ValueError: a file is corrupt, images are not 28x28, labels are out of range, or the
        two files disagree on the number of examples.
    """
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{images_path}: expected images [N, 28, 28], got {images.shape}")
    if labels.ndim != 1 or (labels.size and labels.max() >= len(CLASS_NAMES)):
        raise ValueError(f"{labels_path}: expected labels [N] in 0..9")
    if len(images) != len(labels):
        raise ValueError(f"{images_path} has {len(images)} images but {labels_path} has "
                         f"{len(labels)} labels")
    return images, labels


def source_files(debian_dir: str | os.PathLike = DEBIAN_DIR) -> dict[str, pathlib.Path]:
    """Paths of the four idx files: the Debian copy, else a (cached) download.

    Raises:
      DataUnavailableError: not installed and the download failed (e.g. offline).
    """
    debian_dir = pathlib.Path(debian_dir)
    if all((debian_dir / name).is_file() for name in FILES.values()):
        return {key: debian_dir / name for key, name in FILES.items()}
    logging.info("%s not found; trying the online download", debian_dir)
    try:
        import keras

        return {
            key: pathlib.Path(keras.utils.get_file(name, DOWNLOAD_URL + name,
                                                   cache_subdir="datasets/fashion-mnist"))
            for key, name in FILES.items()
        }
    except Exception as e:  # Every download failure means the same thing to the user.
        raise DataUnavailableError(
            f"Fashion-MNIST is not available: install Debian's package (`apt-get install "
            f"dataset-fashion-mnist`, files in {debian_dir}) or run once with network access "
            f"to download it from {DOWNLOAD_URL} ({type(e).__name__}: {e})") from e


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


def write_split(root: pathlib.Path, images: np.ndarray, labels: np.ndarray,
                indices: np.ndarray, prefix: str) -> None:
    """Writes images[indices] as JPEGs into root/CLASS_NAME/PREFIXNNNNN.jpg (one split)."""
    from PIL import Image

    for name in CLASS_NAMES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in indices:
        path = root / CLASS_NAMES[labels[i]] / f"{prefix}{i:05d}.jpg"
        Image.fromarray(images[i], mode="L").save(path, format="JPEG", quality=JPEG_QUALITY)


def _read_manifest(out: pathlib.Path) -> dict | None:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "request" in manifest else None


def materialise(out_dir: str | os.PathLike, *, per_class: int | None = None, seed: int = 0,
                debian_dir: str | os.PathLike = DEBIAN_DIR) -> dict[str, int]:
    """Writes Fashion-MNIST under out_dir/{train,val,test}/<class>/*.jpg.

    Args:
      out_dir: destination. Reused as is if it holds a complete copy made with the same
        arguments; replaced if it holds another copy made by this function; must otherwise
        be absent or empty (nothing else is ever deleted).
      per_class: images per class in each split (None = all: 5500 / 500 / 1000).
      seed: chooses the images and the val split.
      debian_dir: where the Debian package's idx files are looked for.

    Returns:
      {"train": n, "val": n, "test": n}.

    Raises:
      ValueError: per_class < 1, out_dir holds other files, or a source file is corrupt.
      DataUnavailableError: no source files (see source_files).
    """
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be positive, got {per_class}")
    out = pathlib.Path(out_dir)
    request = {"dataset": "fashion_mnist", "per_class": per_class, "seed": seed}
    manifest = _read_manifest(out) if out.is_dir() else None
    if manifest is not None and manifest["request"] == request:
        logging.info("Reusing the complete Fashion-MNIST copy in %s", out)
        return manifest["counts"]
    if out.exists() and manifest is None and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a Fashion-MNIST copy made by this tool; "
                         "choose a new or empty --out directory")

    files = source_files(debian_dir)
    train_images, train_labels = load_split(files["train_images"], files["train_labels"])
    test_images, test_labels = load_split(files["test_images"], files["test_labels"])

    rng = np.random.default_rng(seed)
    val_idx = _pick(train_labels, per_class or VAL_PER_CLASS, rng)
    train_idx = _pick(train_labels, per_class, rng, exclude=val_idx)
    test_idx = _pick(test_labels, per_class, rng)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
    try:
        write_split(tmp / "train", train_images, train_labels, train_idx, "train")
        write_split(tmp / "val", train_images, train_labels, val_idx, "train")
        write_split(tmp / "test", test_images, test_labels, test_idx, "test")
        counts = {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)}
        # Written last: its presence is what marks a copy complete.
        (tmp / MANIFEST).write_text(json.dumps(
            {"request": request, "counts": counts, "class_names": CLASS_NAMES}, indent=1))
        if out.exists():
            # Move the old copy aside first, so some complete copy exists at every moment.
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "copy")
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts
