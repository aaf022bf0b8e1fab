"""Batch scoring (batch/): Beam RunInference, run locally, against the served model.

A small model goes through the real serving signature (export/signatures.py: in-graph
decoding, its size guards, top-k), is scored by the pipeline in-process and by the local
server through the gRPC client, and the two must agree; hostile and broken images become
dead letters with the server's own INVALID_ARGUMENT message while the good images of their
batch are scored. ~40 images; the file takes well under a minute on 2 cores. The local
runner is the DirectRunner's own engine (FnApiRunner), without its attempt to download
Prism from GitHub (batch/pipeline.py).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import skimage.data
from PIL import Image

from batch import pipeline
from clients import errors
from clients.grpc_client import GrpcClient
from export import signatures
from serving import conformance

MODEL = "scenes"
LABELS = ["cat", "coffee", "rocket", "astronaut", "camera"]
SIZE = 32
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut", "camera", "immunohistochemistry")
REPO = pathlib.Path(__file__).resolve().parents[1]


def build_model() -> keras.Model:
    """Tiny but not trivial: a seeded conv layer, so different photos get different scores."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> pathlib.Path:
    """models/ with MODEL/1 written through the project's serving signatures."""
    base = tmp_path_factory.mktemp("batch") / "models"
    module = signatures.ServingModule(build_model(), labels=LABELS, image_size=SIZE, top_k=3)
    module.save(base / MODEL / "1")
    return base


def photo(name: str, index: int) -> Image.Image:
    """Crops of the scikit-image photos, at varied sizes."""
    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    width, height = image.size
    left, top = (index * 37) % (width // 3), (index * 23) % (height // 3)
    return image.crop((left, top, left + width // 2, top + height // 2)).resize(
        (48 + 8 * index, 40 + 4 * index))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("images")
    for i, name in enumerate(PHOTOS * 6):  # 36 images, JPEG and PNG.
        fmt, suffix = ("PNG", "png") if i % 3 == 0 else ("JPEG", "jpg")
        (folder / f"{i:02d}-{name}.{suffix}").write_bytes(
            conformance.encode_image(photo(name, i), fmt))
    return folder


@pytest.fixture(scope="module")
def endpoint(models):
    with conformance.local_server(model_name=MODEL, model_base_path=str(models / MODEL)) as (
            _, endpoint):
        yield endpoint


def read_jsonl(pattern: str) -> list[dict]:
    return [json.loads(line) for path in sorted(glob.glob(pattern))
            for line in pathlib.Path(path).read_text().splitlines()]


def score(config: pipeline.BatchConfig) -> tuple[pipeline.Counts, dict, dict]:
    """Runs the pipeline; (counts, predictions by path, dead letters by path)."""
    counts = pipeline.run(config.validated())
    predictions = read_jsonl(config.output + "-predictions-*.jsonl")
    dead = read_jsonl(config.output + "-errors-*.jsonl")
    return counts, {r["path"]: r for r in predictions}, {r["path"]: r for r in dead}


def assert_same_prediction(record: dict, prediction) -> None:
    assert record["labels"] == list(prediction.labels)
    assert record["class_ids"] == list(prediction.class_ids)
    np.testing.assert_allclose(record["scores"], prediction.scores, rtol=0, atol=1e-5)


def test_batch_output_equals_the_grpc_clients_answers(models, image_dir, endpoint, tmp_path):
    config = pipeline.BatchConfig(model=str(models / MODEL), input=str(image_dir / "*"),
                                  output=str(tmp_path / "out"), max_batch_size=8,
                                  formats=("jsonl", "parquet"))
    counts, predictions, dead = score(config)
    paths = sorted(str(p) for p in image_dir.iterdir())
    assert counts == pipeline.Counts(scored=len(paths), failed=0)
    assert sorted(predictions) == paths and not dead

    with GrpcClient(endpoint.grpc, MODEL) as client:
        for path in paths:
            (expected,) = client.predict([path])
            record = predictions[path]
            assert (record["model"], record["version"]) == (MODEL, 1)
            assert_same_prediction(record, expected)
    # Not every photo in one class: the comparison above has teeth.
    assert len({r["labels"][0] for r in predictions.values()}) > 1

    import pyarrow.parquet as pq

    table = pq.read_table(glob.glob(config.output + "-predictions-*.parquet"))
    rows = {row["path"]: row for row in table.to_pylist()}
    assert rows.keys() == predictions.keys()
    assert rows[paths[0]]["labels"] == predictions[paths[0]]["labels"]


def hostile_images() -> dict[str, bytes]:
    return {
        "gif-bomb.gif": conformance.gif_bomb(),
        "scan-bomb.jpg": conformance.progressive_scan_bomb(side=1024, repeats=300),
        "truncated.jpg": conformance.encode_image(photo("coffee", 1), "JPEG")[:200],
        "notes.jpg": b"these are not pixels",
        "empty.png": b"",
    }


def test_bad_images_are_dead_lettered_with_the_servers_message(models, image_dir, endpoint,
                                                               tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(image_dir.iterdir())[:10]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    bad = hostile_images()
    for name, data in bad.items():
        (folder / name).write_bytes(data)

    # One batch holds everything: every good image shares a batch with the bad ones.
    config = pipeline.BatchConfig(model=str(models / MODEL / "1"), input=str(folder / "*"),
                                  output=str(tmp_path / "out"), min_batch_size=16,
                                  max_batch_size=32)
    counts, predictions, dead = score(config)

    assert sorted(predictions) == sorted(str(folder / p.name) for p in good)
    assert sorted(dead) == sorted(str(folder / name) for name in bad)
    assert counts == pipeline.Counts(scored=len(good), failed=len(bad))
    assert dead[str(folder / "empty.png")]["error"]["code"] == "INVALID_ARGUMENT"
    with GrpcClient(endpoint.grpc, MODEL) as client:
        for name, data in bad.items():
            if not data:
                continue  # The client refuses to send an empty image at all.
            with pytest.raises(errors.InvalidInputError) as refused:
                client.predict([data])
            record = dead[str(folder / name)]
            assert record["error"] == {"code": "INVALID_ARGUMENT",
                                       "message": refused.value.message}, name
            assert (record["model"], record["version"]) == (MODEL, 1)


def test_remote_mode_command_line_matches_in_process(models, image_dir, endpoint, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(image_dir.iterdir())[:10]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "notes.jpg").write_bytes(b"these are not pixels")
    local = pipeline.BatchConfig(model=str(models / MODEL), input=str(folder / "*"),
                                 output=str(tmp_path / "local"))
    _, expected, expected_dead = score(local)

    output = tmp_path / "remote"
    result = subprocess.run(
        [sys.executable, "-m", "batch", f"--model={MODEL}", f"--server={endpoint.grpc}",
         f"--input={folder / '*'}", f"--output={output}", "--concurrency=2",
         "--request_size=3"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "scored 10 images, 1 failed" in result.stdout
    remote = {r["path"]: r for r in read_jsonl(f"{output}-predictions-*.jsonl")}
    assert remote.keys() == expected.keys()
    for path, record in remote.items():
        assert record["labels"] == expected[path]["labels"]
        np.testing.assert_allclose(record["scores"], expected[path]["scores"], atol=1e-5)
        assert record["version"] == 1
    assert read_jsonl(f"{output}-errors-*.jsonl") == list(expected_dead.values())


def test_a_file_that_cannot_be_read_is_a_dead_letter():
    class Vanished:
        metadata = type("Metadata", (), {"path": "gone.jpg"})

        def read(self):
            raise FileNotFoundError("gone.jpg was deleted after it was matched")

    (output,) = pipeline.ReadImage("m", 2).process(Vanished())
    assert output.tag == pipeline.DEAD_LETTER
    assert output.value == {"path": "gone.jpg", "model": "m", "version": 2, "error": {
        "code": "FileNotFoundError", "message": "gone.jpg was deleted after it was matched"}}


def test_the_highest_version_is_scored_unless_one_is_named(tmp_path):
    for version in ("2", "10", "9"):
        (tmp_path / "m" / version).mkdir(parents=True)
        (tmp_path / "m" / version / "saved_model.pb").write_bytes(b"")
    (tmp_path / "m" / "11").mkdir()  # No SavedModel: nothing TF Serving could load.
    (tmp_path / "m" / "tmp").mkdir()
    assert pipeline.latest_version(str(tmp_path / "m")) == 10
    with pytest.raises(ValueError, match="no version"):
        pipeline.latest_version(str(tmp_path / "empty"))


@pytest.mark.parametrize("model, expected", [
    ("models/cars", ("models/cars", "cars", None)),
    ("gs://b/models/cars/12/", ("gs://b/models/cars/12", "cars", 12)),
    ("cars", ("cars", "cars", None)),
])
def test_model_paths_name_the_model_and_version(model, expected):
    assert pipeline.split_model(model) == expected


@pytest.mark.parametrize("field, value", [
    ("formats", ("csv",)), ("min_batch_size", 0), ("max_batch_size", 0), ("top_k", 0),
    ("concurrency", 0), ("input", ""),
])
def test_bad_configs_are_refused(field, value):
    config = pipeline.BatchConfig(model="models/m", input="*.jpg", output="out")
    with pytest.raises(ValueError):
        dataclasses.replace(config, **{field: value}).validated()


def test_no_earlier_stage_imports_batch():
    """batch/ comes last in the chain (train -> export -> serving -> clients -> batch)."""
    import ast

    for package in ("train", "export", "serving", "clients"):
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                         else [])
                assert not any(name.split(".")[0] == "batch" for name in names), (path, names)
