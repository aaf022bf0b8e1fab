"""The class-per-folder loader on generated trees with real (and broken) image files."""

from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from train import data, rundir

SIZE = 16
# Class name -> colour; one colour channel per class so labels can be read off the pixels.
CLASSES = {"blue": (10, 20, 230), "green café": (15, 225, 25), "red car 2012": (235, 12, 18)}
CMYK = {"blue": (255, 255, 0, 0), "green café": (255, 0, 255, 0), "red car 2012": (0, 255, 255, 0)}
CHANNEL = {"blue": 2, "green café": 1, "red car 2012": 0}
NO_AUGMENT = data.DataConfig(augment=None, val_fraction=0.2)


def save(image: Image.Image, path: pathlib.Path, fmt: str, **kwargs) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **kwargs)
    return path


def jpeg_bytes(colour=(200, 100, 50), size=(48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_class_tree(root: pathlib.Path, per_class: int = 10, classes=CLASSES) -> int:
    """Writes per_class coloured JPEG/PNG images per class; returns the number written."""
    for name, colour in classes.items():
        for i in range(per_class):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "PNG")  # Upper-case extension too.
            save(Image.new("RGB", (40 + i, 30), colour), root / name / f"img {i:03d}.{ext}", fmt)
    return per_class * len(classes)


def add_odd_files(class_dir: pathlib.Path, class_name: str) -> dict[str, str]:
    """Adds usable odd formats and broken files; returns {broken file name: reason kind}."""
    colour = CLASSES[class_name]
    save(Image.new("CMYK", (30, 30), CMYK[class_name]), class_dir / "cmyk.jpg", "JPEG")
    save(Image.new("RGBA", (30, 30), (*colour, 40)), class_dir / "rgba.png", "PNG")
    save(Image.new("L", (30, 30), 128), class_dir / "grey.png", "PNG")
    save(Image.new("RGB", (30, 30), colour), class_dir / "anim.gif", "GIF")
    save(Image.new("RGB", (30, 30), colour), class_dir / "bitmap.bmp", "BMP")
    # Not images, or not usable:
    full = jpeg_bytes(colour, (64, 64))
    (class_dir / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (class_dir / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    (class_dir / "empty.jpeg").write_bytes(b"")
    save(Image.new("1", (30, 30), 1), class_dir / "mono.bmp", "BMP")
    # Ignored entirely: hidden files and folders, and other extensions.
    save(Image.new("RGB", (30, 30), colour), class_dir / ".hidden.jpg", "JPEG")
    save(Image.new("RGB", (30, 30), colour), class_dir / ".ipynb_checkpoints" / "x.jpg", "JPEG")
    (class_dir / "readme.txt").write_text("ignored")
    return {"truncated.jpg": "truncated JPEG", "notes.jpg": "not an image",
            "empty.jpeg": "empty file", "mono.bmp": "unsupported BMP format"}


def all_examples(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for x, y in ds:
        assert x.dtype == tf.float32 and y.dtype == tf.int32
        images.append(x.numpy())
        labels.append(y.numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.fixture
def odd_tree(tmp_path) -> tuple[pathlib.Path, int, dict[str, str]]:
    written = make_class_tree(tmp_path / "train")
    broken = add_odd_files(tmp_path / "train" / "red car 2012", "red car 2012")
    return tmp_path, written + 5, broken  # 5 usable odd files.


def test_listing_counts_skips_broken_files_with_reasons(odd_tree, caplog):
    root, usable, broken = odd_tree
    listing = data.list_class_folders(root, NO_AUGMENT)
    assert listing.class_names == ("blue", "green café", "red car 2012")
    assert len(listing.splits["train"]) + len(listing.splits["val"]) == usable
    assert "test" not in listing.splits
    reasons = {pathlib.Path(p).name: r for p, r in listing.skipped}
    assert set(reasons) == set(broken)
    for name, kind in broken.items():
        assert reasons[name].startswith(kind), reasons[name]
    listed = [pathlib.Path(p).name for s in listing.splits.values() for p in s.paths]
    assert not any(n.startswith(".") or n == "x.jpg" or n.endswith(".txt") for n in listed)
    assert "4 skipped" in listing.summary() and "1 truncated JPEG" in listing.summary()
    report = listing.report()
    assert "green café" in report and "skipped" in report and "notes.jpg" in report


def test_each_skipped_file_logs_one_warning(odd_tree):
    root, _, broken = odd_tree
    with pytest.MonkeyPatch.context() as patch:
        warnings = []
        patch.setattr(data.logging, "warning", lambda msg, *args: warnings.append(msg % args))
        data.list_class_folders(root, NO_AUGMENT)
    assert len(warnings) == len(broken)
    assert all(w.startswith("Skipping ") for w in warnings)


def test_full_epoch_returns_every_usable_image_with_its_colour_label(odd_tree):
    root, usable, _ = odd_tree
    loaded = data.load_class_folders(root, image_size=SIZE, batch_size=4, config=NO_AUGMENT)
    assert loaded.counts == {"train": loaded.count("train"), "val": loaded.count("val"),
                             "test": 0}
    assert loaded.test is None
    total = 0
    for ds in (loaded.train, loaded.val):
        images, labels = all_examples(ds)
        assert images.shape[1:] == (SIZE, SIZE, 3)
        assert images.min() >= 0 and images.max() <= 255
        total += len(labels)
        for image, label in zip(images, labels, strict=True):
            mean = image.mean(axis=(0, 1))
            if np.ptp(mean) < 5:  # The grey PNG carries no colour.
                assert loaded.class_names[label] == "red car 2012"
                continue
            expected = CHANNEL[loaded.class_names[label]]
            assert mean.argmax() == expected, (loaded.class_names[label], mean)
    assert total == usable == loaded.count("train") + loaded.count("val")


def test_file_listing_is_exposed_per_split(odd_tree):
    root, _, _ = odd_tree
    loaded = data.load_class_folders(root, image_size=SIZE, batch_size=4, config=NO_AUGMENT)
    train = loaded.files("train")
    assert len(train.paths) == len(train.labels) == loaded.count("train")
    assert all(pathlib.Path(p).is_file() for p in train.paths)
    assert loaded.files("test") is None
    with pytest.raises(ValueError, match="unknown split"):
        loaded.files("validation")


def test_seeded_split_is_reproducible_and_stratified(tmp_path):
    make_class_tree(tmp_path, per_class=20)  # Plain DATA/<class>/ layout, no train/.
    config = data.DataConfig(val_fraction=0.25, seed=7)
    first = data.list_class_folders(tmp_path, config)
    assert first.splits == data.list_class_folders(tmp_path, config).splits
    other = data.list_class_folders(tmp_path, data.DataConfig(val_fraction=0.25, seed=8))
    assert other.splits["val"].paths != first.splits["val"].paths
    assert first.splits["val"].class_counts(3) == [5, 5, 5]
    assert first.splits["train"].class_counts(3) == [15, 15, 15]
    assert not set(first.splits["val"].paths) & set(first.splits["train"].paths)


def test_test_split_only_when_asked_and_fractions_are_of_the_whole(tmp_path):
    make_class_tree(tmp_path / "train", per_class=20)
    listing = data.list_class_folders(
        tmp_path, data.DataConfig(val_fraction=0.1, test_fraction=0.2))
    assert [len(listing.splits[s]) for s in data.SPLITS] == [42, 6, 12]
    assert len(set().union(*(s.paths for s in listing.splits.values()))) == 60
    no_val = data.list_class_folders(tmp_path, data.DataConfig(val_fraction=0))
    assert list(no_val.splits) == ["train"]


def test_stanford_cars_layout_keeps_its_test_dir_and_splits_val(tmp_path):
    classes = {"AM General Hummer SUV 2000": (200, 10, 10),
               "Škoda Octavia Kombi 2011": (10, 200, 10)}
    make_class_tree(tmp_path / "car_data" / "train", per_class=10, classes=classes)
    make_class_tree(tmp_path / "car_data" / "test", per_class=4, classes=classes)
    loaded = data.load_class_folders(tmp_path / "car_data", image_size=SIZE, batch_size=3)
    assert loaded.class_names == tuple(sorted(classes))
    assert loaded.counts == {"train": 18, "val": 2, "test": 8}
    images, labels = all_examples(loaded.test)
    assert len(images) == 8 and labels.tolist() == [0] * 4 + [1] * 4
    images, _ = all_examples(loaded.train)  # Augmented by default: shape and range kept.
    assert images.shape == (18, SIZE, SIZE, 3) and 0 <= images.min() and images.max() <= 255


def test_mismatched_val_classes_raise_a_value_error_naming_them(tmp_path):
    make_class_tree(tmp_path / "train", per_class=2)
    make_class_tree(tmp_path / "val", per_class=2, classes={"blue": (0, 0, 255),
                                                             "purple": (128, 0, 128)})
    with pytest.raises(ValueError, match=r"val class folders.*'green café'.*'purple'"):
        data.list_class_folders(tmp_path)


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "does not exist"),
    (lambda root: make_class_tree(root, classes={"only": (1, 2, 3)}), "at least 2"),
    (lambda root: (root / "val" / "a").mkdir(parents=True), "no train/"),
])
def test_bad_layouts_raise_value_errors(tmp_path, setup, message):
    root = tmp_path / "data"
    if message != "does not exist":
        root.mkdir()
    setup(root)
    with pytest.raises(ValueError, match=message):
        data.list_class_folders(root)


def test_no_usable_images_is_a_value_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.jpg").write_text("text")
    with pytest.raises(ValueError, match="no usable training images"):
        data.list_class_folders(tmp_path)


def test_labels_file_round_trip(tmp_path):
    names = ["AM General Hummer SUV 2000", "Škoda", "日本語 クラス", "trailing space ", "#1"]
    rundir.write_labels(names, tmp_path / "labels.txt")
    assert rundir.read_labels(tmp_path / "labels.txt") == names
    assert (tmp_path / "labels.txt").read_text(encoding="utf-8").count("\n") == len(names)
    for bad in (["a", "two\nlines"], ["", "b"], ["a", "a"], ["x\u2028y"]):
        with pytest.raises(ValueError):
            rundir.write_labels(bad, tmp_path / "bad.txt")


def test_augmentation_keeps_shape_and_range_and_varies(tmp_path):
    photo = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
    for name in ("a", "b"):
        for i in range(4):
            save(Image.fromarray(photo), tmp_path / name / f"{i}.png", "PNG")
    strong = data.AugmentConfig(flip=True, rotation=0.2, zoom=0.3, contrast=0.5)
    config = data.DataConfig(augment=strong, val_fraction=0, shuffle=False, cache="memory")
    loaded = data.load_class_folders(tmp_path, image_size=SIZE, batch_size=8, config=config)
    train = loaded.train
    first, _ = all_examples(train)
    second, _ = all_examples(train)  # A second epoch over the same pipeline, as in fit().
    assert first.shape == (8, SIZE, SIZE, 3)
    assert first.min() >= 0 and first.max() <= 255
    assert np.abs(first - second).max() > 1  # Fresh randomness every epoch.
    assert np.abs(first[0] - first[1]).max() > 1  # And per image within a batch.
    plain, _ = all_examples(loaded.dataset("train", training=False))
    np.testing.assert_allclose(plain, np.broadcast_to(plain[0], plain.shape))  # No augment.


def test_memory_cache_still_reshuffles_every_epoch(tmp_path):
    make_class_tree(tmp_path, per_class=16)
    config = data.DataConfig(augment=None, val_fraction=0, cache="memory", seed=3)
    train = data.load_class_folders(tmp_path, image_size=4, batch_size=48, config=config).train
    orders = [all_examples(train)[0].reshape(48, -1).sum(axis=1) for _ in range(3)]
    assert sorted(orders[0].tolist()) == sorted(orders[1].tolist())
    assert not (np.array_equal(orders[0], orders[1]) and np.array_equal(orders[1], orders[2]))


def test_file_cache_is_named_after_its_contents_and_reused(tmp_path):
    make_class_tree(tmp_path / "data", per_class=3)
    prefix = tmp_path / "cache" / "pixels"
    prefix.parent.mkdir()
    config = data.DataConfig(augment=None, val_fraction=0, cache=str(prefix))
    loaded = data.load_class_folders(tmp_path / "data", image_size=SIZE, batch_size=4,
                                     config=config)
    first = all_examples(loaded.dataset("train"))
    cache_files = sorted(p.name for p in prefix.parent.iterdir())
    assert cache_files and all(n.startswith(f"pixels.train-{SIZE}px-") for n in cache_files)
    second = all_examples(loaded.dataset("train"))
    np.testing.assert_array_equal(first[0], second[0])
    bigger = data.load_class_folders(tmp_path / "data", image_size=SIZE * 2, batch_size=4,
                                     config=config)
    assert all_examples(bigger.dataset("train"))[0].shape[1:] == (SIZE * 2, SIZE * 2, 3)


def test_pipeline_replaces_a_file_that_passes_the_fast_checks_but_fails_to_decode(tmp_path):
    make_class_tree(tmp_path, per_class=3)
    # Right signature and end marker, garbage in between.
    sneaky = b"\xff\xd8\xff\xe0" + b"\x00" * 300 + b"\xff\xd9"
    (tmp_path / "blue" / "sneaky.jpg").write_bytes(sneaky)
    config = data.DataConfig(augment=None, val_fraction=0)
    loaded = data.load_class_folders(tmp_path, image_size=SIZE, batch_size=4, config=config)
    assert loaded.count("train") == 10 and not loaded.skipped
    _, labels = all_examples(loaded.train)
    # Skipped, and an image of the next pass takes its place: the epoch completes with as
    # many images as files, a length known before it runs (Keras sizes epochs by it).
    assert len(labels) == 10 and len(loaded.train) == 3
    full = data.list_class_folders(tmp_path, data.DataConfig(val_fraction=0, full_check=True))
    assert [pathlib.Path(p).name for p, _ in full.skipped] == ["sneaky.jpg"]
    assert full.skipped[0][1] == "corrupt or truncated header (JPEG, 306 bytes)"


def test_jpeg_with_trailing_junk_is_kept(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(jpeg_bytes() + b"\x00" * 5000)  # Past the 1 KiB end-marker window.
    assert data.check_image_file(str(path)) is None
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg_bytes(size=(200, 200))[:-300])
    assert data.check_image_file(str(truncated)).startswith("truncated JPEG")


@pytest.mark.parametrize("kwargs, message", [
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"test_fraction": -0.1}, "test_fraction"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave training images"),
    ({"cache": ""}, "cache"),
    ({"augment": data.AugmentConfig(rotation=0.7)}, "augment.rotation"),
    ({"augment": data.AugmentConfig(zoom=-0.1)}, "augment.zoom"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        data.DataConfig(**kwargs).validate()


def test_sizes_must_be_positive(tmp_path):
    make_class_tree(tmp_path, per_class=2)
    with pytest.raises(ValueError, match="positive"):
        data.load_class_folders(tmp_path, image_size=0, batch_size=4)
    listing = data.list_class_folders(tmp_path)
    with pytest.raises(ValueError, match="positive"):
        data.ClassFolderData(listing, SIZE, 0, data.DataConfig())


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_truncated_png_gif_bmp_are_detected(tmp_path, fmt):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    whole = save(image, tmp_path / f"whole.{fmt.lower()}", fmt)
    assert data.check_image_file(str(whole)) is None
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    assert data.check_image_file(str(cut)).startswith(f"truncated {fmt}")


def test_augmented_epochs_are_reproducible_from_the_seed(tmp_path):
    photo = np.linspace(0, 255, 24 * 24 * 3).reshape(24, 24, 3).astype(np.uint8)
    for name in ("a", "b"):
        for i in range(3):
            save(Image.fromarray(photo), tmp_path / name / f"{i}.png", "PNG")

    def two_epochs(seed: int) -> list[np.ndarray]:
        config = data.DataConfig(val_fraction=0, seed=seed, cache="memory")
        train = data.load_class_folders(tmp_path, image_size=SIZE, batch_size=6,
                                        config=config).train
        return [all_examples(train)[0] for _ in range(2)]

    first, again = two_epochs(5), two_epochs(5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)  # Same seed, same pipeline: same epochs.
    assert np.abs(first[0] - first[1]).max() > 1
    assert np.abs(first[0] - two_epochs(6)[0]).max() > 1


def augmented(image: np.ndarray, config: data.AugmentConfig, seeds=range(8)) -> np.ndarray:
    return np.stack([data.augment_image(tf.constant(image), tf.constant([s, 0], tf.int64),
                                        config).numpy() for s in seeds])


def test_each_augmentation_does_what_it_says():
    rng = np.random.default_rng(0)
    image = rng.uniform(40, 210, (15, 21, 3)).astype(np.float32)
    off = dict(flip=False, rotation=0.0, zoom=0.0, contrast=0.0)

    flips = augmented(image, data.AugmentConfig(**{**off, "flip": True}))
    mirrored = [np.array_equal(x, image[:, ::-1]) for x in flips]
    assert all(m or np.array_equal(x, image) for m, x in zip(mirrored, flips))
    assert 0 < sum(mirrored) < len(flips)

    # Contrast scales each channel's deviation from its own mean; the means stay.
    for x in augmented(image, data.AugmentConfig(**{**off, "contrast": 0.3})):
        mean = image.mean(axis=(0, 1))
        np.testing.assert_allclose(x.mean(axis=(0, 1)), mean, atol=0.1)
        factor = ((x - mean) * (image - mean)).sum() / ((image - mean) ** 2).sum()
        assert 0.7 <= factor <= 1.3
        np.testing.assert_allclose(x - mean, factor * (image - mean), atol=0.05)

    # Rotation and zoom act about the centre: the centre pixel stays; others move.
    for key, value in (("rotation", 0.1), ("zoom", 0.3)):
        moved = augmented(image, data.AugmentConfig(**{**off, key: value}))
        np.testing.assert_allclose(moved[:, 7, 10], np.broadcast_to(image[7, 10], (8, 3)),
                                   atol=1e-3)
        assert all(np.abs(x - image).max() > 1 for x in moved)
        assert moved.shape == (8, 15, 21, 3) and moved.min() >= 0 and moved.max() <= 255


def test_a_link_back_to_an_enclosing_folder_is_listed_once(tmp_path):
    make_class_tree(tmp_path, per_class=2)
    (tmp_path / "blue" / "loop").symlink_to(tmp_path / "blue", target_is_directory=True)
    (tmp_path / "blue" / "all").symlink_to(tmp_path, target_is_directory=True)
    listing = data.list_class_folders(tmp_path, data.DataConfig(val_fraction=0))
    blue = [p for p, y in zip(listing.splits["train"].paths, listing.splits["train"].labels)
            if y == 0]
    # Own 2 images, plus the other classes' 4 reached through the "all" link; no repeats.
    assert len(blue) == 6 and len({pathlib.Path(p).resolve() for p in blue}) == 6
