"""Class-per-folder image datasets on tf.data: listing, validation, splits and pipelines.

Layout (the Stanford Cars "by classes" tree works as is):

    DATA/train/<class>/*.jpg     required (or DATA/<class>/* with no train/ dir)
    DATA/val/<class>/*           optional: else a seeded, stratified split of train
    DATA/test/<class>/*          optional: else split off only if test_fraction > 0

Class names are the sorted folder names of train. A file that is empty, not an image or
visibly truncated is skipped with one warning and counted; decoding errors that slip past
that check are dropped in the pipeline, so a bad file never stops an epoch.

Usage:
    data = load_class_folders("car_data", image_size=224, batch_size=32)
    print(data.summary())
    model.fit(data.train, validation_data=data.val)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import struct

import numpy as np
import tensorflow as tf
from absl import logging

from train import preprocessing

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})
SPLITS = ("train", "val", "test")
_MEMORY_CACHE_LIMIT = 2 * 2**30  # "auto" caches decoded images in RAM below this size.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random training-time augmentation; a magnitude of 0 disables that transform.

    Attributes:
      flip: random horizontal flips.
      rotation: max rotation as a fraction of a full turn (0.05 = +-18 degrees).
      zoom: max zoom in or out as a fraction of the size.
      contrast: max contrast change as a fraction.
    """

    flip: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    contrast: float = 0.1

    def validate(self) -> None:
        for name in ("rotation", "zoom", "contrast"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"augment.{name} must be in [0, 1), got {value}")

    @property
    def enabled(self) -> bool:
        return self.flip or self.rotation > 0 or self.zoom > 0 or self.contrast > 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How files are split and fed.

    Attributes:
      val_fraction: share of each class moved from train to val when DATA/val is absent.
      test_fraction: share split off for test when DATA/test is absent (0 = no test split).
      seed: seeds splits, shuffling and augmentation.
      augment: training augmentation, or None for none.
      cache: "auto" (decoded images in memory when they fit in 2 GiB), "memory", "none",
        or a file path prefix for tf.data's on-disk cache.
      shuffle: shuffle training examples every epoch.
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 42
    augment: AugmentConfig | None = AugmentConfig()
    cache: str = "auto"
    shuffle: bool = True

    def validate(self) -> None:
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave training examples")
        if self.augment is not None:
            self.augment.validate()


@dataclasses.dataclass(frozen=True)
class Split:
    """The files of one split and their class indices, in a fixed order."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What is on disk: class names, the files of each split, and the files skipped."""

    class_names: tuple[str, ...]
    splits: dict[str, Split]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)

    def summary(self) -> str:
        counts = ", ".join(f"{name} {len(split)}" for name, split in self.splits.items())
        return (f"{len(self.class_names)} classes; {counts} images; "
                f"{len(self.skipped)} files skipped")


def check_image_file(path: str) -> str | None:
    """Why a file cannot be used as an image (cheap header/trailer checks), or None if fine."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 64))
            tail = f.read()
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if head.startswith(b"\xff\xd8\xff"):
        # A complete JPEG ends with the end-of-image marker (possibly followed by padding).
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None
    if head.startswith(b"BM") and len(head) >= 6:
        declared = struct.unpack("<I", head[2:6])[0]
        return None if size >= declared else "truncated BMP"
    return "not a JPEG, PNG, GIF or BMP image"


def _class_dirs(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: pathlib.Path) -> list[str]:
    return sorted(
        str(p) for p in directory.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _collect(root: pathlib.Path, class_names: list[str], what: str) -> list[tuple[str, int]]:
    found = _class_dirs(root)
    if found != class_names:
        missing, extra = sorted(set(class_names) - set(found)), sorted(set(found) - set(class_names))
        raise ValueError(
            f"{what} classes differ from train: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    return [(path, label) for label, name in enumerate(class_names)
            for path in _image_files(root / name)]


def _stratified_split(items: list[tuple[str, int]], fraction: float, seed: int):
    """Moves round(fraction * n) of each class (at least 1 if the class has 2+) out of items."""
    rng = np.random.default_rng(seed)
    keep, taken = [], []
    by_class: dict[int, list[tuple[str, int]]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    for label in sorted(by_class):
        members = by_class[label]
        order = rng.permutation(len(members))
        n = int(round(fraction * len(members)))
        if fraction > 0 and len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        taken += [members[i] for i in sorted(order[:n])]
        keep += [members[i] for i in sorted(order[n:])]
    return keep, taken


def list_class_folders(data_dir: str | os.PathLike, config: DataConfig = DataConfig()) -> Listing:
    """Finds classes and files, validates them, and makes the splits (no TensorFlow work).

    Raises:
      ValueError: the directory is missing, has no class folders or no usable images, or
        val/test class folders differ from train's.
    """
    config.validate()
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir {root} does not exist or is not a directory")
    has_train = (root / "train").is_dir()
    if not has_train and any((root / s).is_dir() for s in ("val", "test")):
        raise ValueError(f"{root} has val/ or test/ but no train/ folder")
    train_root = root / "train" if has_train else root
    class_names = _class_dirs(train_root)
    if len(class_names) < 2:
        raise ValueError(
            f"{train_root} must hold one folder per class (at least 2), found {class_names}"
        )
    items = {"train": _collect(train_root, class_names, "train")}
    for split in ("val", "test"):
        if has_train and (root / split).is_dir():
            items[split] = _collect(root / split, class_names, split)

    # Validate before splitting so that skipped files do not unbalance the split.
    all_paths = [p for split_items in items.values() for p, _ in split_items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        reasons = dict(zip(all_paths, pool.map(check_image_file, all_paths)))
    skipped = tuple((p, r) for p, r in reasons.items() if r is not None)
    for path, reason in skipped:
        logging.warning("Skipping %s: %s", path, reason)
    items = {k: [(p, y) for p, y in v if reasons[p] is None] for k, v in items.items()}

    if "test" not in items and config.test_fraction > 0:
        items["train"], items["test"] = _stratified_split(
            items["train"], config.test_fraction, config.seed + 1)
    if "val" not in items and config.val_fraction > 0:
        fraction = config.val_fraction / (1 - (config.test_fraction if "test" in items else 0))
        items["train"], items["val"] = _stratified_split(items["train"], fraction, config.seed)
    if not items["train"]:
        raise ValueError(f"no usable training images under {train_root}")
    splits = {
        name: Split(tuple(p for p, _ in items[name]), tuple(y for _, y in items[name]))
        for name in SPLITS if name in items
    }
    return Listing(tuple(class_names), splits, skipped)


def _augmenter(config: AugmentConfig, seed: int):
    import keras  # Only the training path needs the augmentation layers.

    layers = []
    if config.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if config.rotation > 0:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed))
    if config.zoom > 0:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed))
    if config.contrast > 0:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    pipeline = keras.Sequential(layers, name="augment")

    def augment(images, labels):
        return tf.clip_by_value(pipeline(images, training=True), 0.0, 255.0), labels

    return augment


def make_dataset(split: Split, *, image_size: int, batch_size: int, training: bool = False,
                 config: DataConfig = DataConfig()) -> tf.data.Dataset:
    """A batched (pixels, label) pipeline over one split's files.

    training=True shuffles each epoch (if config.shuffle) and applies config.augment after
    the cache, so cached pixels are decoded once and augmented afresh every epoch.
    """
    if not len(split):
        raise ValueError("cannot make a dataset from an empty split")
    files = tf.data.Dataset.from_tensor_slices(
        (list(split.paths), np.asarray(split.labels, dtype=np.int32)))
    if training and config.shuffle:
        files = files.shuffle(len(split), seed=config.seed, reshuffle_each_iteration=True)

    def load(path, label):
        return preprocessing.decode_and_resize(tf.io.read_file(path), image_size), label

    ds = files.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    # Last line of defence: a file that passed the cheap checks but fails to decode.
    ds = ds.ignore_errors(log_warning=True)
    cache = config.cache
    if cache == "auto":
        cache = "memory" if len(split) * image_size**2 * 12 < _MEMORY_CACHE_LIMIT else "none"
    if cache == "memory":
        ds = ds.cache()
    elif cache != "none":
        ds = ds.cache(cache)
    ds = ds.batch(batch_size)
    if training and config.augment is not None and config.augment.enabled:
        ds = ds.map(_augmenter(config.augment, config.seed), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class ClassFolderData:
    """A listed dataset plus its pipelines, built on first use."""

    listing: Listing
    image_size: int
    batch_size: int
    config: DataConfig

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.listing.class_names

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        return self.listing.skipped

    def count(self, split: str) -> int:
        return len(self.listing.splits[split]) if split in self.listing.splits else 0

    def dataset(self, split: str, *, training: bool = False) -> tf.data.Dataset | None:
        if split not in self.listing.splits or not len(self.listing.splits[split]):
            return None
        config = self.config
        if config.cache not in ("auto", "memory", "none"):  # One cache file per split.
            config = dataclasses.replace(config, cache=f"{config.cache}.{split}")
        return make_dataset(self.listing.splits[split], image_size=self.image_size,
                            batch_size=self.batch_size, training=training, config=config)

    @property
    def train(self) -> tf.data.Dataset:
        return self.dataset("train", training=True)

    @property
    def val(self) -> tf.data.Dataset | None:
        return self.dataset("val")

    @property
    def test(self) -> tf.data.Dataset | None:
        return self.dataset("test")

    def summary(self) -> str:
        return self.listing.summary()


def load_class_folders(data_dir: str | os.PathLike, *, image_size: int, batch_size: int,
                       config: DataConfig = DataConfig()) -> ClassFolderData:
    """Lists, validates and splits a class-per-folder dataset; see the module docstring."""
    if image_size < 1 or batch_size < 1:
        raise ValueError("image_size and batch_size must be positive")
    return ClassFolderData(list_class_folders(data_dir, config), image_size, batch_size, config)


def write_labels(class_names, path: str | os.PathLike) -> None:
    """Writes one class name per line, in class-index order."""
    names = list(class_names)
    for name in names:
        if "\n" in name or not name:
            raise ValueError(f"class name {name!r} cannot be written to a labels file")
    pathlib.Path(path).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def read_labels(path: str | os.PathLike) -> list[str]:
    """Reads a labels file written by `write_labels`."""
    return [line for line in pathlib.Path(path).read_text(encoding="utf-8").splitlines() if line]
