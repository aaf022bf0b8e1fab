"""Fashion-MNIST materialiser on the real Debian files, idx parsing, and the CLI."""

from __future__ import annotations

import gzip
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from train import datasets
from train.datasets import fashion_mnist

REAL = fashion_mnist.DEBIAN_DIR
# Skipped without the Debian package dataset-fashion-mnist; failed in CI (tests/conftest.py).
needs_real_data = pytest.mark.requires("fashion-mnist")
PER_CLASS = 5


@pytest.fixture(scope="module")
def materialised(tmp_path_factory, require) -> tuple[pathlib.Path, dict[str, int]]:
    require("fashion-mnist")
    out = tmp_path_factory.mktemp("fashion") / "data"
    return out, datasets.materialise("fashion_mnist", out, per_class=PER_CLASS, seed=1)


def write_idx(path: pathlib.Path, array: np.ndarray, *, magic: bytes | None = None) -> None:
    header = magic or bytes([0, 0, 8, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_real_data
def test_writes_the_class_per_folder_tree(materialised):
    out, counts = materialised
    assert counts == {"train": 50, "val": 50, "test": 50}
    for split in ("train", "val", "test"):
        classes = sorted(p.name for p in (out / split).iterdir())
        assert classes == sorted(fashion_mnist.CLASS_NAMES)
        for name in classes:
            assert len(list((out / split / name).glob("*.jpg"))) == PER_CLASS
    manifest = json.loads((out / fashion_mnist.MANIFEST).read_text())
    assert manifest["counts"] == counts
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # No temp dirs.


@needs_real_data
def test_images_are_28x28_grey_jpegs_matching_the_idx_labels_and_pixels(materialised):
    out, _ = materialised
    sources = {"train": ("train_images", "train_labels"), "test": ("test_images", "test_labels")}
    for split, prefix in (("train", "train"), ("val", "train"), ("test", "test")):
        images, labels = fashion_mnist.load_split(
            REAL / fashion_mnist.FILES[sources[prefix][0]],
            REAL / fashion_mnist.FILES[sources[prefix][1]])
        for path in sorted((out / split).glob("*/*.jpg"))[::7]:
            index = int(path.stem.removeprefix(prefix))
            assert path.parent.name == fashion_mnist.CLASS_NAMES[labels[index]]
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.mode == "L" and image.size == (28, 28)
                pixels = np.asarray(image, np.float32)
            assert np.abs(pixels - images[index]).mean() < 4  # JPEG quality 95.


@needs_real_data
def test_val_is_disjoint_from_train(materialised):
    out, _ = materialised
    train = {p.name for p in (out / "train").glob("*/*.jpg")}
    val = {p.name for p in (out / "val").glob("*/*.jpg")}
    assert len(train) == len(val) == 50 and not train & val


@needs_real_data
def test_rerun_with_same_arguments_does_not_rewrite(materialised):
    out, counts = materialised
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert datasets.materialise("fashion_mnist", out, per_class=PER_CLASS, seed=1) == counts
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


@needs_real_data
def test_different_arguments_replace_the_copy_and_foreign_dirs_are_refused(tmp_path):
    out = tmp_path / "data"
    datasets.materialise("fashion_mnist", out, per_class=2, seed=0)
    assert datasets.materialise("fashion_mnist", out, per_class=3, seed=0)["test"] == 30
    assert len(list((out / "test").glob("*/*.jpg"))) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not a Fashion-MNIST copy"):
        datasets.materialise("fashion_mnist", foreign, per_class=2)
    assert (foreign / "thesis.tex").read_text() == "precious"


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((20, 28, 28)))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(20) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    calls = []

    def failing_write(root, *args):
        calls.append(root)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(root, *args)

    original = fashion_mnist.write_split
    monkeypatch.setattr(fashion_mnist, "write_split", failing_write)
    out = tmp_path / "out" / "fashion"
    with pytest.raises(KeyboardInterrupt):
        fashion_mnist.materialise(out, per_class=1, debian_dir=tmp_path)
    assert not out.exists() and not list(out.parent.iterdir())
    monkeypatch.setattr(fashion_mnist, "write_split", original)
    counts = fashion_mnist.materialise(out, per_class=1, debian_dir=tmp_path)
    assert counts == {"train": 10, "val": 10, "test": 10}


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"plain bytes"), "not a readable gzip file"),
    (lambda p: p.write_bytes(p.read_bytes()[:-40]), "not a readable gzip file"),
    (lambda p: write_idx(p, np.zeros((3, 28, 28)), magic=b"\x00\x00\x0d\x03"), "element type"),
    (lambda p: write_idx(p, np.zeros((3, 28, 28)), magic=b"\x08\x03\x00\x00"), "magic number"),
    (lambda p: gzip.open(p, "wb").close(), "magic number"),
])
def test_corrupt_idx_files_give_clear_errors(tmp_path, damage, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.ones((3, 28, 28)))
    damage(path)
    with pytest.raises(ValueError, match=message) as error:
        fashion_mnist.read_idx(path)
    assert str(path) in str(error.value)


def test_idx_size_mismatch_and_shape_checks(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match=r"declares shape \(5,\)"):
        fashion_mnist.read_idx(path)
    write_idx(tmp_path / "img.gz", np.zeros((4, 28, 28)))
    write_idx(tmp_path / "lab.gz", np.zeros(3))
    with pytest.raises(ValueError, match="4 images but"):
        fashion_mnist.load_split(tmp_path / "img.gz", tmp_path / "lab.gz")
    write_idx(tmp_path / "small.gz", np.zeros((3, 14, 14)))
    with pytest.raises(ValueError, match=r"28, 28"):
        fashion_mnist.load_split(tmp_path / "small.gz", tmp_path / "lab.gz")


@needs_real_data
def test_real_idx_files_parse():
    images, labels = fashion_mnist.load_split(REAL / fashion_mnist.FILES["test_images"],
                                              REAL / fashion_mnist.FILES["test_labels"])
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10


def test_missing_source_offline_gives_install_hint(tmp_path, monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(fashion_mnist.DataUnavailableError, match="apt-get install dataset-"):
        fashion_mnist.materialise(tmp_path / "out", per_class=1, debian_dir=tmp_path / "none")


def test_registry_rejects_unknown_datasets(tmp_path):
    with pytest.raises(ValueError, match="fashion_mnist"):
        datasets.materialise("imagenet", tmp_path)
    with pytest.raises(ValueError, match="per_class"):
        datasets.materialise("fashion_mnist", tmp_path, per_class=0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train.datasets", *args], capture_output=True,
                          text=True, timeout=120, cwd=pathlib.Path(__file__).parents[1])


@needs_real_data
def test_cli_materialises_and_inspects(materialised, tmp_path):
    out = tmp_path / "cli"
    result = run_cli("fashion_mnist", f"--out={out}", "--per_class=2", "--seed=3")
    assert result.returncode == 0, result.stderr
    assert "train 20, val 20, test 20" in result.stdout
    again = run_cli("fashion_mnist", f"--out={out}", "--per_class=2", "--seed=3")
    assert again.returncode == 0 and "train 20" in again.stdout

    data_dir, _ = materialised
    shutil.copy(__file__, data_dir / "test" / "Bag" / "not_an_image.jpg")
    try:
        result = run_cli("inspect", f"--data_dir={data_dir}", "--image_size=32")
    finally:
        (data_dir / "test" / "Bag" / "not_an_image.jpg").unlink()
    assert result.returncode == 0, result.stderr
    assert "10 classes; train 50, val 50, test 50 images; 1 skipped" in result.stdout
    assert "Ankle_boot" in result.stdout and "not_an_image.jpg: not an image" in result.stdout


def test_cli_inspect_bad_layout_exits_1(tmp_path):
    (tmp_path / "only_one_class").mkdir()
    result = run_cli("inspect", f"--data_dir={tmp_path}")
    assert result.returncode == 1
    assert "at least 2" in result.stderr
    usage = run_cli("frobnicate")
    assert usage.returncode != 0 and "fashion_mnist" in usage.stderr
