"""Class-per-folder image datasets on tf.data: listing, validation, splits and pipelines.

Layout (the Stanford Cars "by classes" tree works as is; class names may hold spaces and
any unicode):

    DATA/train/<class>/*     required (or DATA/<class>/* with no train/ folder)
    DATA/val/<class>/*       optional: else a seeded, stratified split of train
    DATA/test/<class>/*      optional: else split off only if test_fraction > 0

Class names are the sorted folder names of train. Images are found by extension (.jpg,
.jpeg, .png, .gif, .bmp, any case) in each class folder and its subfolders; hidden files and
folders are ignored. A file that is empty, not an image, truncated or in a pixel format
TensorFlow cannot decode is skipped with one warning and counted; a decoding error that slips
past those checks is logged and another image of the split takes the file's place, so a bad
file never stops an epoch and every pass has as many images as the split has files.

Usage:
    data = load_class_folders("car_data", image_size=224, batch_size=32)
    print(data.summary())
    model.fit(data.train, validation_data=data.val)
    paths, labels = data.files("train").paths, data.files("train").labels
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import struct

import numpy as np
import tensorflow as tf
from absl import logging

from train import preprocessing

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})
SPLITS = ("train", "val", "test")
CACHE_MODES = ("auto", "memory", "none")
MEMORY_CACHE_LIMIT = 2 * 2**30  # "auto" caches a split's decoded images in RAM below this.
_SHUFFLE_BUFFER_BYTES = 2**29  # Decoded images held for shuffling after an on-disk cache.
_TAIL_BYTES = 1024  # End-of-file window searched for a format's end marker.
_CHECK_THREADS = 16  # The checks wait on file I/O, so more threads than cores pay off.


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random training-time augmentation; a magnitude of 0 (or flip=False) disables it.

    Every transform is drawn independently per image, and pixels stay float32 in 0..255.

    Attributes:
      flip: random horizontal flips (half of the images).
      rotation: max rotation as a fraction of a full turn (0.05 = +-18 degrees), <= 0.5.
      zoom: max zoom in or out as a fraction of the size, < 1.
      contrast: max contrast change as a fraction, <= 1.
    """

    flip: bool = True
    rotation: float = 0.05
    zoom: float = 0.1
    contrast: float = 0.1

    def validate(self) -> None:
        """Raises ValueError naming the first out-of-range magnitude."""
        limits = {"rotation": (0.5, True), "zoom": (1.0, False), "contrast": (1.0, True)}
        for name, (limit, inclusive) in limits.items():
            value = getattr(self, name)
            if not (0 <= value <= limit if inclusive else 0 <= value < limit):
                bound = f"<= {limit}" if inclusive else f"< {limit}"
                raise ValueError(f"augment.{name} must be >= 0 and {bound}, got {value!r}")

    @property
    def enabled(self) -> bool:
        """Whether any transform is on."""
        return bool(self.flip) or self.rotation > 0 or self.zoom > 0 or self.contrast > 0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How files are checked, split and fed.

    Attributes:
      val_fraction: share of each class moved from train to val when DATA/val is absent
        (0 = no val split). 0.1 keeps 90% for training and still gives a usable val set
        on Stanford Cars (~40 images per class -> 4 val images per class).
      test_fraction: share of each class split off for test when DATA/test is absent
        (0 = no test split).
      seed: seeds the splits, shuffling and augmentation.
      augment: training augmentation, or None for none.
      cache: "auto" (decoded images in memory when they fit in 2 GiB, else no cache),
        "memory", "none", or a file path prefix for tf.data's on-disk cache (one file set
        per split, named after the image size and file list so a stale cache is never read).
      shuffle: shuffle training examples every epoch.
      full_check: decode every file with the training decoder while listing (thorough,
        ~a few ms per photo) instead of the fast header/trailer checks.
    """

    val_fraction: float = 0.1
    test_fraction: float = 0.0
    seed: int = 42
    augment: AugmentConfig | None = AugmentConfig()
    cache: str = "auto"
    shuffle: bool = True
    full_check: bool = False

    def validate(self) -> None:
        """Raises ValueError on fractions out of range or an empty cache setting."""
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be < 1 to leave training images, got "
                f"{self.val_fraction} + {self.test_fraction}")
        if not self.cache:
            raise ValueError(f"cache must be one of {CACHE_MODES} or a file path prefix, got ''")
        if self.augment is not None:
            self.augment.validate()


@dataclasses.dataclass(frozen=True)
class Split:
    """The files of one split and their class indices, in a fixed (sorted) order."""

    paths: tuple[str, ...]
    labels: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of files of each class index."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64),
                           minlength=num_classes).tolist()


@dataclasses.dataclass(frozen=True)
class Listing:
    """What is on disk: class names, the files of each split, and the files skipped."""

    class_names: tuple[str, ...]
    splits: dict[str, Split]
    skipped: tuple[tuple[str, str], ...]  # (path, reason)

    def summary(self) -> str:
        """One line: classes, images per split, skipped files by reason."""
        counts = ", ".join(f"{name} {len(split)}" for name, split in self.splits.items())
        text = f"{len(self.class_names)} classes; {counts} images; {len(self.skipped)} skipped"
        if self.skipped:
            reasons = collections.Counter(_reason_kind(r) for _, r in self.skipped)
            text += " (" + ", ".join(f"{n} {kind}" for kind, n in sorted(reasons.items())) + ")"
        return text

    def report(self, max_classes: int = 20) -> str:
        """Several lines: the summary, images per class and split, and every skipped file."""
        lines = [self.summary()]
        names = list(self.splits)
        counts = {name: split.class_counts(len(self.class_names))
                  for name, split in self.splits.items()}
        width = max(len(n) for n in self.class_names)
        lines.append(f"  {'class':<{width}}  " + "  ".join(f"{n:>6}" for n in names))
        for i, class_name in enumerate(self.class_names[:max_classes]):
            row = "  ".join(f"{counts[n][i]:>6}" for n in names)
            lines.append(f"  {class_name:<{width}}  {row}")
        if len(self.class_names) > max_classes:
            lines.append(f"  ... {len(self.class_names) - max_classes} more classes")
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


def _read_head_tail(path: str) -> tuple[int, bytes, bytes]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(64)
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    return size, head, tail


def _decode_error(path: str) -> str | None:
    """Why the training decoder rejects a file, or None; the exact but slower check."""
    try:
        preprocessing.decode_and_resize(tf.io.read_file(path), 1, name="file")
    except tf.errors.InvalidArgumentError as e:
        message = e.message.splitlines()[0]
        # The decoder's own guards already say what is wrong ("file: truncated JPEG (...)").
        if message.startswith("file: "):
            return message.removeprefix("file: ")[:160]
        return f"not decodable ({message[:120]})"
    return None


def check_image_file(path: str, *, full: bool = False) -> str | None:
    """Why a file cannot be used as an image, or None if it can.

    The fast path reads only the first 64 and last 1024 bytes: the format signature, a
    JPEG/PNG/GIF end marker (a missing one means truncation, the common corruption from
    interrupted copies), and the BMP pixel format. A missing end marker can also be
    trailing junk after a complete image, so those files alone are decoded to decide.

    Args:
      path: the file.
      full: decode every file with the training decoder instead.

    Returns:
      None for a usable image, else a short reason such as "truncated JPEG (...)".
    """
    try:
        size, head, tail = _read_head_tail(path)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if size == 0:
        return "empty file"
    if head.startswith(b"\xff\xd8\xff"):
        kind, complete = "JPEG", b"\xff\xd9" in tail
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        kind, complete = "PNG", b"IEND" in tail
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        kind, complete = "GIF", tail.rstrip(b"\0").endswith(b";")  # The GIF trailer.
    elif head.startswith(b"BM") and len(head) >= 54:
        declared, bits, compression = (struct.unpack_from("<I", head, 2)[0],
                                       struct.unpack_from("<H", head, 28)[0],
                                       struct.unpack_from("<I", head, 30)[0])
        # TensorFlow decodes uncompressed 8/24/32-bit BMPs (bitfields only at 32 bits).
        if bits not in (8, 24, 32) or compression not in (0, 3) or (compression and bits != 32):
            return f"unsupported BMP format ({bits}-bit, compression {compression})"
        kind, complete = "BMP", size >= declared
    else:
        return "not an image (no JPEG, PNG, GIF or BMP signature)"
    if full or not complete:
        error = _decode_error(path)
        if error is not None and not complete and not error.startswith("truncated"):
            return f"truncated {kind} ({error})"
        return error
    return None


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _class_dirs(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _image_files(directory: pathlib.Path) -> list[str]:
    found = []
    seen = set()  # (device, inode) of the folders listed so far.
    # Links are followed (a class folder may link to images stored elsewhere), so a link
    # back to an enclosing folder would otherwise make the walk endless.
    for parent, dirs, files in os.walk(directory, followlinks=True):
        try:
            stat = os.stat(parent)
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            logging.warning("Not listing %s again: a symbolic link leads back to a folder "
                            "already listed", parent)
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = [d for d in dirs if not _is_hidden(d)]  # Also prunes .ipynb_checkpoints etc.
        found += [os.path.join(parent, f) for f in files
                  if not _is_hidden(f) and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def _collect(root: pathlib.Path, class_names: list[str], what: str) -> list[tuple[str, int]]:
    found = _class_dirs(root)
    if found != class_names:
        missing = sorted(set(class_names) - set(found))
        extra = sorted(set(found) - set(class_names))
        raise ValueError(
            f"{what} class folders in {root} differ from train's: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {extra[:10]}"
            f"{' ...' if len(extra) > 10 else ''}")
    return [(path, label) for label, name in enumerate(class_names)
            for path in _image_files(root / name)]


def _stratified_split(items: list[tuple[str, int]], fraction: float, seed: int
                      ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Moves round(fraction * n) files of each class out of items (kept, taken).

    A class with 2+ files gives at least 1 and keeps at least 1, so tiny classes still
    appear in both splits; a class with 1 file stays in items.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
    for item in items:
        by_class[item[1]].append(item)
    keep, taken = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = rng.permutation(len(members))
        n = int(round(fraction * len(members)))
        if len(members) >= 2:
            n = min(max(n, 1), len(members) - 1)
        else:
            n = 0
        taken += [members[i] for i in sorted(order[:n])]
        keep += [members[i] for i in sorted(order[n:])]
    return keep, taken


def list_class_folders(data_dir: str | os.PathLike,
                       config: DataConfig = DataConfig()) -> Listing:
    """Finds classes and files, checks every file, and makes the splits.

    Args:
      data_dir: dataset root (see the module docstring for the layouts).
      config: fractions, seed and check mode; the pipeline settings are not used here.

    Returns:
      The Listing: class names, files per split, and skipped files with reasons (each
      also logged once as a warning).

    Raises:
      ValueError: the directory is missing, has fewer than 2 class folders or no usable
        training images, or val/test class folders differ from train's.
    """
    config.validate()
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"data_dir {str(root)!r} does not exist or is not a directory")
    has_train = (root / "train").is_dir()
    if not has_train and any((root / s).is_dir() for s in ("val", "test")):
        raise ValueError(
            f"{root} has val/ or test/ but no train/ folder; put the training classes in "
            f"{root / 'train'}")
    train_root = root / "train" if has_train else root
    class_names = _class_dirs(train_root)
    if len(class_names) < 2:
        raise ValueError(
            f"{train_root} must hold one folder per class (at least 2), found {class_names}")
    items = {"train": _collect(train_root, class_names, "train")}
    for split in ("val", "test"):
        if has_train and (root / split).is_dir():
            items[split] = _collect(root / split, class_names, split)

    # Checked before splitting so that skipped files do not unbalance the split.
    all_paths = [p for split_items in items.values() for p, _ in split_items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=_CHECK_THREADS) as pool:
        reasons = dict(zip(all_paths, pool.map(
            lambda p: check_image_file(p, full=config.full_check), all_paths), strict=True))
    skipped = tuple((p, r) for p, r in reasons.items() if r is not None)
    for path, reason in skipped:
        logging.warning("Skipping %s: %s", path, reason)
    items = {k: [(p, y) for p, y in v if reasons[p] is None] for k, v in items.items()}

    if "test" not in items and config.test_fraction > 0:
        items["train"], items["test"] = _stratified_split(
            items["train"], config.test_fraction, config.seed + 1)
    if "val" not in items and config.val_fraction > 0:
        # The fraction is of the original train set, not of what the test split left.
        taken = config.test_fraction if config.test_fraction > 0 and "test" in items else 0
        items["train"], items["val"] = _stratified_split(
            items["train"], config.val_fraction / (1 - taken), config.seed)
    if not items["train"]:
        raise ValueError(f"no usable training images under {train_root}")
    empty = [class_names[c] for c, n in enumerate(np.bincount(
        [y for _, y in items["train"]], minlength=len(class_names))) if n == 0]
    if empty:
        logging.warning("%d classes have no training images: %s", len(empty), empty[:10])
    splits = {
        name: Split(tuple(p for p, _ in items[name]), tuple(y for _, y in items[name]))
        for name in SPLITS if name in items
    }
    return Listing(tuple(class_names), splits, skipped)


def augment_image(image: tf.Tensor, seed: tf.Tensor, config: AugmentConfig) -> tf.Tensor:
    """Randomly flips, rotates, zooms and changes the contrast of one image.

    Stateless random ops, so the result depends only on `seed`: a pipeline that hands out
    per-image seeds in a fixed order is reproducible however its parallel calls interleave
    (stateful ops or Keras layers draw from a shared state in call order). Rotation and zoom
    are one affine resampling (one interpolation, and about half the cost of two), with
    reflected borders as in keras.layers.RandomRotation/RandomZoom. Measured in a tf.data
    pipeline on 224 px images, 2 cores: ~3 ms per image, against ~7 ms for the equivalent
    Keras layers on batches.

    Args:
      image: float32 [H, W, C] in 0..255.
      seed: int32 or int64 [2], a stateless seed.
      config: the magnitudes; a transform with magnitude 0 (or flip=False) is skipped.

    Returns:
      float32 [H, W, C] in 0..255.
    """
    flip_seed, angle_seed, scale_seed, contrast_seed = tf.unstack(tf.random.split(seed, 4))
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    if config.rotation > 0 or config.zoom > 0:
        turn = 2 * np.pi * config.rotation
        angle = tf.random.stateless_uniform([], angle_seed, -turn, turn) if turn else 0.0
        # Output pixels sample the input at `scale` times their distance from the centre:
        # below 1 zooms in, above 1 zooms out.
        scale = (tf.random.stateless_uniform([], scale_seed, 1 - config.zoom, 1 + config.zoom)
                 if config.zoom else 1.0)
        image = _rotate_and_scale(image, angle, scale)
    if config.contrast > 0:
        # Scales each channel's deviation from its mean, like keras.layers.RandomContrast.
        image = tf.image.stateless_random_contrast(image, 1 - config.contrast,
                                                   1 + config.contrast, contrast_seed)
    # Interpolation and contrast can step outside the input range.
    return tf.clip_by_value(image, 0.0, 255.0)


def _rotate_and_scale(image: tf.Tensor, angle, scale) -> tf.Tensor:
    """Rotates by `angle` radians and scales by `scale` about the image centre (bilinear)."""
    shape = tf.shape(image)
    cy = (tf.cast(shape[0], tf.float32) - 1) / 2
    cx = (tf.cast(shape[1], tf.float32) - 1) / 2
    cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
    # Maps each output pixel (x, y) to the input point it samples: centre + S R (p - centre).
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=transform[tf.newaxis], output_shape=shape[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]
    out.set_shape(image.shape)
    return out


def _cache_path(prefix: str, split: Split, image_size: int) -> str:
    # tf.data reads an existing cache without checking what it holds, so the name carries
    # everything the cached pixels depend on.
    digest = hashlib.sha256(repr((image_size, split.paths, split.labels)).encode(
        "utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{prefix}-{image_size}px-{digest}"


def decoded_bytes(images: int, image_size: int) -> int:
    """Memory that `images` decoded images take in the cache (float32 RGB pixels)."""
    return images * image_size * image_size * 3 * 4


def resolve_cache(cache: str, images: int, image_size: int) -> str:
    """The cache a pipeline over `images` files uses: "auto" becomes "memory" or "none"."""
    if cache == "auto":
        return "memory" if decoded_bytes(images, image_size) < MEMORY_CACHE_LIMIT else "none"
    return cache


def make_dataset(split: Split, *, image_size: int, batch_size: int, training: bool = False,
                 config: DataConfig = DataConfig(), shard: tuple[int, int] = (1, 0),
                 repeat: bool = False) -> tf.data.Dataset:
    """A batched (float32 pixels [B, S, S, 3] in 0..255, int32 labels [B]) pipeline.

    files -> shuffle -> parallel decode_and_resize -> replace decode errors -> cache ->
    shuffle again if cached -> augment -> batch -> prefetch. Shuffling and augmentation
    happen only with training=True; augmentation runs after the cache, so decoded pixels
    are cached once and augmented afresh every epoch. A pipeline built twice with the same
    config.seed yields the same epochs (order and augmentation).

    Args:
      split: the files and labels.
      image_size: output height and width.
      batch_size: examples per batch (the last batch may be smaller).
      training: shuffle each epoch (if config.shuffle) and augment (if config.augment).
      config: cache, shuffle, augment and seed settings.
      shard: (count, index): keep only files index, index + count, ... (one training
        worker's share). Sharding files rather than decoded images means each worker
        decodes only its own; the share is fixed, so a worker's cache holds just it.
      repeat: repeat the examples endlessly before batching, so every batch is full (the
        caller counts steps). Each pass reshuffles and re-augments.

    Raises:
      ValueError: the split is empty, a size is not positive or the shard is out of range.
    """
    if not len(split):
        raise ValueError("cannot make a dataset from an empty split")
    if image_size < 1 or batch_size < 1:
        raise ValueError(f"image_size and batch_size must be positive, got {image_size}, "
                         f"{batch_size}")
    count, index = shard
    if not 0 <= index < count or count > len(split):
        raise ValueError(f"shard {index} of {count} is out of range for {len(split)} files")
    split = Split(split.paths[index::count], split.labels[index::count])
    shuffle = training and config.shuffle
    # Bytes, not str: file names need not be valid UTF-8.
    files = tf.data.Dataset.from_tensor_slices(
        ([os.fsencode(p) for p in split.paths], np.asarray(split.labels, dtype=np.int32)))
    if shuffle:  # Paths are tiny, so a full buffer costs nothing.
        files = files.shuffle(len(split), seed=config.seed, reshuffle_each_iteration=True)

    def load(path, label):
        return preprocessing.decode_and_resize(tf.io.read_file(path), image_size), label

    ds = files.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # Last line of defence: a file that passed the checks but fails to decode is logged and
    # skipped, and the next pass over the files fills its place. So a pass always holds
    # len(split) images and the dataset's cardinality is known: Keras sizes its epochs by
    # it, and warns that the input "ran out of data" when it is unknown.
    ds = ds.ignore_errors(log_warning=True).repeat().take(len(split))
    cache = resolve_cache(config.cache, len(split), image_size)
    image_bytes = decoded_bytes(1, image_size)
    if cache == "memory":
        ds = ds.cache()
        if shuffle:
            # A cache replays its first pass in order, so shuffle after it. The buffer holds
            # references to the cached tensors, not copies.
            ds = ds.shuffle(len(split), seed=config.seed + 1, reshuffle_each_iteration=True)
    elif cache != "none":
        ds = ds.cache(_cache_path(cache, split, image_size))
        if shuffle:
            buffer = max(1, min(len(split), _SHUFFLE_BUFFER_BYTES // image_bytes))
            ds = ds.shuffle(buffer, seed=config.seed + 1, reshuffle_each_iteration=True)
    if training and config.augment is not None and config.augment.enabled:
        augment = config.augment
        # One seed per image, drawn afresh each epoch yet reproducible from config.seed.
        seeds = tf.data.Dataset.random(seed=config.seed + 2, rerandomize_each_iteration=True)
        # Per image rather than per batch: tf.data then spreads the images over the cores,
        # which measured faster than batched ops here.
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda example, seed: (augment_image(example[0], tf.stack([seed, 0]), augment),
                                   example[1]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass(frozen=True)
class ClassFolderData:
    """A listed dataset plus its pipelines, built on each access (cheap: no I/O until used).

    Attributes:
      listing: classes, files per split and skipped files.
      image_size: model input height and width.
      batch_size: examples per batch.
      config: the data settings.
    """

    listing: Listing
    image_size: int
    batch_size: int
    config: DataConfig = DataConfig()

    def __post_init__(self):
        if self.image_size < 1 or self.batch_size < 1:
            raise ValueError(f"image_size and batch_size must be positive, got "
                             f"{self.image_size}, {self.batch_size}")
        self.config.validate()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.listing.class_names

    @property
    def skipped(self) -> tuple[tuple[str, str], ...]:
        """(path, reason) of every file left out."""
        return self.listing.skipped

    @property
    def counts(self) -> dict[str, int]:
        """Images per split, 0 for an absent split."""
        return {split: self.count(split) for split in SPLITS}

    def count(self, split: str) -> int:
        """Images in one split (0 if absent)."""
        _check_split(split)
        return len(self.listing.splits[split]) if split in self.listing.splits else 0

    def files(self, split: str) -> Split | None:
        """The file-level listing of one split (paths and labels), or None if absent."""
        _check_split(split)
        return self.listing.splits.get(split)

    def dataset(self, split: str, *, training: bool = False, batch_size: int | None = None,
                shard: tuple[int, int] = (1, 0), repeat: bool = False
                ) -> tf.data.Dataset | None:
        """The pipeline of one split, or None if it is absent or empty.

        batch_size (default: self.batch_size), shard and repeat: see make_dataset.
        """
        _check_split(split)
        if not self.count(split):
            return None
        config = self.config
        if config.cache not in CACHE_MODES:  # One cache file set per split.
            config = dataclasses.replace(config, cache=f"{config.cache}.{split}")
        return make_dataset(self.listing.splits[split], image_size=self.image_size,
                            batch_size=batch_size or self.batch_size, training=training,
                            config=config, shard=shard, repeat=repeat)

    @property
    def train(self) -> tf.data.Dataset:
        """Shuffled and augmented training batches.

        Each access builds a new pipeline whose randomness restarts from the seed; iterate
        one pipeline for several epochs (as keras Model.fit does) to get fresh shuffles and
        augmentations every epoch.
        """
        return self.dataset("train", training=True)

    @property
    def val(self) -> tf.data.Dataset | None:
        return self.dataset("val")

    @property
    def test(self) -> tf.data.Dataset | None:
        return self.dataset("test")

    def summary(self) -> str:
        return self.listing.summary()


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def load_class_folders(data_dir: str | os.PathLike, *, image_size: int, batch_size: int,
                       config: DataConfig = DataConfig()) -> ClassFolderData:
    """Lists, checks and splits a class-per-folder dataset and wraps it in pipelines.

    Args:
      data_dir: dataset root (see the module docstring for the layouts).
      image_size: model input height and width.
      batch_size: examples per batch.
      config: split, cache, shuffle and augmentation settings.

    Returns:
      ClassFolderData with .train/.val/.test datasets (None when a split is absent),
      .class_names, .counts, .files(split), .skipped and .summary().

    Raises:
      ValueError: bad arguments or layout (see list_class_folders).
    """
    if image_size < 1 or batch_size < 1:
        raise ValueError(f"image_size and batch_size must be positive, got {image_size}, "
                         f"{batch_size}")
    return ClassFolderData(list_class_folders(data_dir, config), image_size, batch_size, config)

