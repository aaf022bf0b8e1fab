"""Export: the serving signatures' contract, warmup, metadata and atomic versioning.

A tiny model stands in for a trained run: it classifies the mean colour of the image's
top-left quadrant into red/green/blue, so labels, ids and orientation handling are all
observable in its answers. It has trainable and non-trainable (BatchNormalization)
variables, like a fine-tuned EfficientNet.

Every signature is run the way TF Serving runs it: the version loaded into a TF1 session
bundle (export/session.py), fed and fetched by the SignatureDef's tensor names.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image
from support import (
    RUN_COLOURS,
    RUN_IMAGE_SIZE,
    RUN_LABELS,
    build_quadrant_model,
    encode,
    make_run,
    oversized_png,
    photo_jpeg,
    quadrant_image,
    save_as_tf_module,
)

from export import exporter, publish, session, signatures, warmup
from serving import conformance
from train import data as data_lib
from train import preprocessing, rundir

SIZE, LABELS, COLOURS = RUN_IMAGE_SIZE, RUN_LABELS, RUN_COLOURS  # Of make_run's model.


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    return make_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported(run_dir) -> exporter.ExportResult:
    config = exporter.ExportConfig(model_dir=str(run_dir),
                                   export_base=str(run_dir.parent / "models" / "colours"))
    return exporter.export_model(config.validated())


@pytest.fixture(scope="module")
def loaded(exported):
    """The exported version in a session bundle, as TF Serving loads it."""
    with session.load(exported.path) as model:
        yield model


def serve(loaded, blobs: list[bytes]) -> dict[str, np.ndarray]:
    return loaded.run(signatures.SERVING_DEFAULT,
                      {signatures.IMAGE_BYTES_INPUT: np.array(blobs, dtype=object)})


# --- Round trip and labels -------------------------------------------------------------


def test_round_trip_matches_the_keras_model_on_real_photos(exported, loaded, run_dir):
    blobs = [photo_jpeg("chelsea"), photo_jpeg("coffee", quality=80),
             encode(Image.fromarray(skimage.data.astronaut()), "PNG")]
    served = serve(loaded, blobs)
    pixels = tf.stack([preprocessing.decode_and_resize(b, SIZE) for b in blobs])
    keras_model = keras.models.load_model(run_dir / "model.keras")
    np.testing.assert_allclose(served["probabilities"], keras_model(pixels).numpy(), atol=1e-6)
    images = loaded.run(signatures.PREDICT_IMAGES, {signatures.IMAGES_INPUT: pixels.numpy()})
    np.testing.assert_allclose(images["probabilities"], served["probabilities"], atol=1e-6)
    np.testing.assert_array_equal(images["classes"], served["classes"])


def test_labels_map_to_the_right_ids_and_scores_are_sorted(loaded):
    served = serve(loaded, [encode(quadrant_image(name)) for name in LABELS])
    assert served["classes"].shape == (3, 3)  # top_k=5 clipped to the 3 classes.
    assert [c.decode() for c in served["classes"][:, 0]] == LABELS
    np.testing.assert_array_equal(served["class_ids"][:, 0], [0, 1, 2])
    assert served["class_ids"].dtype == np.int64
    for row, ids, scores, probs in zip(served["classes"], served["class_ids"],
                                       served["scores"], served["probabilities"]):
        assert [LABELS[i] for i in ids] == [c.decode() for c in row]
        assert np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, probs[ids], atol=1e-7)
        assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_training_and_serving_preprocessing_give_identical_tensors(run_dir, exported):
    paths = sorted((run_dir.parent / "data" / "test").glob("*/*.jpg"))[:3]
    big = run_dir.parent / "big.jpg"
    big.write_bytes(photo_jpeg("astronaut"))  # 512 px: DCT-scaled at this model size.
    paths.append(big)
    split = data_lib.Split(paths=tuple(map(str, paths)), labels=(0,) * len(paths))
    ds = data_lib.make_dataset(split, image_size=SIZE, batch_size=len(paths),
                               config=data_lib.DataConfig(augment=None, cache="none"))
    training_pixels = next(iter(ds))[0].numpy()
    module = signatures.ServingModule(build_quadrant_model(), labels=LABELS, image_size=SIZE)
    serving_pixels = module.decode_images(tf.constant([p.read_bytes() for p in paths])).numpy()
    np.testing.assert_array_equal(training_pixels, serving_pixels)


# --- Accepted inputs --------------------------------------------------------------------


def exif_oriented(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose stored pixels need `orientation` applied to look like `upright`."""
    inverse = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_270}[orientation]
    stored = upright if inverse is None else upright.transpose(inverse)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_each_exif_orientation_is_classified_upright(loaded, orientation):
    blob = exif_oriented(quadrant_image("red", size=(96, 64)), orientation)
    with Image.open(io.BytesIO(blob)) as stored:
        raw_corner = stored.convert("RGB").getpixel((2, 2))
    served = serve(loaded, [blob])
    assert served["classes"][0, 0] == b"red"
    # Without the tag's transform the corner would not be red (a transpose keeps the
    # corner; pixel-exact checks of all eight are in test_preprocessing).
    if orientation not in (1, 5):
        assert raw_corner != pytest.approx(COLOURS["red"], abs=30)


def test_a_batch_of_mixed_formats_and_sizes(loaded):
    red = quadrant_image("red")
    cmyk = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), quality=95)  # Pure red.
    rgba = quadrant_image("red").convert("RGBA")
    rgba.putalpha(40)
    batch = {
        "baseline": encode(red, quality=90),
        "progressive": encode(red, quality=90, progressive=True),
        "grey": encode(Image.new("L", (50, 40), 90)),
        "cmyk": cmyk,
        "png_alpha": encode(rgba, "PNG"),
        "gif": encode(red, "GIF"),
        "bmp": encode(red, "BMP"),
        "tiny": encode(Image.new("RGB", (1, 1), COLOURS["red"]), "PNG"),
        "large": encode(quadrant_image("red", size=(4000, 3000)), quality=85),
    }
    served = serve(loaded, list(batch.values()))
    top = dict(zip(batch, (c.decode() for c in served["classes"][:, 0])))
    assert top.pop("grey") in LABELS
    assert top == dict.fromkeys(top, "red")
    assert served["probabilities"].shape == (len(batch), 3)


def test_an_empty_batch_returns_empty_outputs(loaded):
    served = serve(loaded, [])
    assert served["classes"].shape == (0, 3)
    assert served["probabilities"].shape == (0, 3)


# --- Rejected inputs --------------------------------------------------------------------


@pytest.mark.parametrize("bad, problem", [
    (b"", "empty"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a JPEG"),
    (photo_jpeg()[:20000], "truncated"),
    (oversized_png(), "exceeds"),
    # 64x64, its last scan repeated: cheap to decode here, refused by the serving graph's
    # scan limit (the cost that limit bounds grows with the image's size).
    (conformance.progressive_scan_bomb(64, 100),
     "JPEG with 1[0-9][0-9] scans exceeds the limit of 64"),
])
def test_bad_images_are_rejected_with_their_index_and_the_process_keeps_working(
        loaded, bad, problem):
    good = encode(quadrant_image("green"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image 1: [^\n]*{problem}"):
        serve(loaded, [good, bad, good])
    assert serve(loaded, [good])["classes"][0, 0] == b"green"


# --- Classify signature, signature defs and assets -------------------------------------


def example(blob: bytes) -> bytes:
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[blob]))
    return tf.train.Example(features=tf.train.Features(
        feature={signatures.EXAMPLE_IMAGE_FEATURE: feature})).SerializeToString()


def test_classify_signature_matches_predict(loaded):
    blobs = [encode(quadrant_image(name)) for name in LABELS]
    classified = loaded.run(signatures.CLASSIFY, {
        signatures.CLASSIFY_INPUT: np.array([example(b) for b in blobs], dtype=object)})
    assert sorted(classified) == ["classes", "scores"]
    served = serve(loaded, blobs)
    np.testing.assert_array_equal(classified["classes"], served["classes"])
    np.testing.assert_allclose(classified["scores"], served["scores"], atol=1e-7)


def saved_signature_defs(path: pathlib.Path):
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
    (meta_graph,) = saved.meta_graphs
    assert list(meta_graph.meta_info_def.tags) == ["serve"]
    return meta_graph.signature_def


def test_signature_defs_are_what_tf_serving_expects(exported):
    defs = saved_signature_defs(exported.path)
    assert set(defs) >= {"serving_default", "predict_images", "classify"}

    def spec(tensor_info):
        return (tf.dtypes.as_dtype(tensor_info.dtype).name,
                [d.size for d in tensor_info.tensor_shape.dim])

    default = defs["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert {k: spec(v) for k, v in default.inputs.items()} == {"image_bytes": ("string", [-1])}
    assert {k: spec(v) for k, v in default.outputs.items()} == {
        "classes": ("string", [-1, 3]), "class_ids": ("int64", [-1, 3]),
        "scores": ("float32", [-1, 3]), "probabilities": ("float32", [-1, 3])}
    images = defs["predict_images"]
    assert {k: spec(v) for k, v in images.inputs.items()} == {
        "images": ("float32", [-1, SIZE, SIZE, 3])}
    classify = defs["classify"]
    assert classify.method_name == "tensorflow/serving/classify"
    assert {k: spec(v) for k, v in classify.inputs.items()} == {"inputs": ("string", [-1])}
    assert {k: spec(v) for k, v in classify.outputs.items()} == {
        "classes": ("string", [-1, 3]), "scores": ("float32", [-1, 3])}


def test_graph_keeps_sorted_top_k_and_parallel_decoding(exported):
    """What the outputs cannot show on a CPU: top-k asks for sorted scores (an unsorted
    top-k may come back in any order on other devices), and a request's images are decoded
    decode_parallelism (16) at a time."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString(
        (exported.path / "saved_model.pb").read_bytes())
    (meta_graph,) = saved.meta_graphs
    nodes = list(meta_graph.graph_def.node) + [
        node for function in meta_graph.graph_def.library.function
        for node in function.node_def]
    top_k = [node for node in nodes if node.op == "TopKV2"]
    # Saved without default-valued attributes: no "sorted" means the default, True.
    assert top_k and all("sorted" not in node.attr or node.attr["sorted"].b for node in top_k)
    loops = {node.attr["parallel_iterations"].i for node in nodes
             if node.op in ("While", "StatelessWhile")}
    assert 16 in loops, loops  # The map_fn over the request's images.


def test_saved_model_cli_shows_the_signatures(exported):
    shown = run_saved_model_cli("show", "--dir", str(exported.path), "--all").stdout
    for name in ("serving_default", "predict_images", "classify",
                 "tensorflow/serving/classify", "image_bytes", "probabilities"):
        assert name in shown


def test_a_keras_model_inside_a_tf_module_fails_in_tf_servings_loader(tmp_path):
    module = signatures.ServingModule(build_quadrant_model(), labels=LABELS, image_size=SIZE)
    save_as_tf_module(module, tmp_path / "old")
    blob = np.array([encode(quadrant_image("red"))], dtype=object)
    # The forgiving object-graph loader answers ...
    assert tf.saved_model.load(str(tmp_path / "old")).signatures[signatures.SERVING_DEFAULT](
        image_bytes=tf.constant(blob))["classes"][0, 0] == b"red"
    # ... the session bundle does not: the signatures read variables nothing restored.
    with session.load(tmp_path / "old") as model:
        with pytest.raises(tf.errors.FailedPreconditionError, match="Could not find variable"):
            model.run(signatures.SERVING_DEFAULT, {signatures.IMAGE_BYTES_INPUT: blob})
    module.save(tmp_path / "new")
    with session.load(tmp_path / "new") as model:
        assert model.run(signatures.SERVING_DEFAULT, {
            signatures.IMAGE_BYTES_INPUT: blob})["classes"][0, 0] == b"red"


def test_an_export_tf_serving_cannot_run_is_never_published(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(signatures.ServingModule, "save", save_as_tf_module)
    base = tmp_path / "colours"
    with pytest.raises(ValueError, match="TF Serving could not run this export.*"
                                         "Could not find variable"):
        export_to(run_dir, base)
    assert list(base.iterdir()) == []


def run_saved_model_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli", *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.mark.parametrize("signature", [signatures.SERVING_DEFAULT, signatures.PREDICT_IMAGES,
                                       signatures.CLASSIFY])
def test_saved_model_cli_runs_every_signature(exported, run_dir, tmp_path, signature):
    """TensorFlow's own tool loads the version into a session as TF Serving does."""
    blobs = [encode(quadrant_image(name)) for name in ("green", "blue")]
    pixels = tf.stack([preprocessing.decode_and_resize(b, SIZE) for b in blobs]).numpy()
    if signature == signatures.SERVING_DEFAULT:
        np.save(tmp_path / "in.npy", np.array(blobs, dtype=object))
        inputs = ["--inputs", f"{signatures.IMAGE_BYTES_INPUT}={tmp_path / 'in.npy'}"]
    elif signature == signatures.PREDICT_IMAGES:
        np.save(tmp_path / "in.npy", pixels)
        inputs = ["--inputs", f"{signatures.IMAGES_INPUT}={tmp_path / 'in.npy'}"]
    else:
        inputs = ["--input_examples", f"{signatures.CLASSIFY_INPUT}=" + repr(
            [{signatures.EXAMPLE_IMAGE_FEATURE: [b]} for b in blobs])]
    done = run_saved_model_cli("run", "--dir", str(exported.path), "--tag_set", "serve",
                               "--signature_def", signature, *inputs,
                               "--outdir", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    classes = np.load(tmp_path / "out" / "classes.npy", allow_pickle=True)
    assert [c.decode() for c in classes[:, 0]] == ["green", "blue"]
    scores = np.load(tmp_path / "out" / "scores.npy")
    expected = keras.models.load_model(run_dir / "model.keras")(pixels).numpy()
    np.testing.assert_allclose(scores[:, 0], expected.max(axis=1), atol=1e-6)


def test_labels_are_read_from_the_asset_wherever_the_version_is_moved(exported, tmp_path):
    moved = tmp_path / "elsewhere" / "1"
    shutil.copytree(exported.path, moved)
    with session.load(moved) as model:
        assert model.run(signatures.SERVING_DEFAULT, {signatures.IMAGE_BYTES_INPUT: np.array(
            [encode(quadrant_image(n)) for n in LABELS], object)})["classes"][:, 0].tolist() \
            == [n.encode() for n in LABELS]


def test_labels_asset_and_export_config(exported, run_dir):
    path = exported.path
    assert rundir.read_labels(path / "assets" / "labels.txt") == LABELS
    meta = json.loads((path / "export_config.json").read_text())
    assert meta["tensorflow_version"] == tf.__version__
    assert meta["image_size"] == SIZE and meta["num_classes"] == 3
    assert meta["backbone"] == "lite0" and meta["version"] == exported.version == 1
    assert meta["training"]["metrics"] == {"evaluation": {"top1": 0.99}}
    assert meta["preprocessing"]["max_pixels"] == preprocessing.DEFAULT_MAX_PIXELS


# --- Warmup ------------------------------------------------------------------------------


def test_warmup_file_holds_prediction_logs_that_replay(exported, loaded):
    records = warmup.read_warmup_file(exported.path / warmup.WARMUP_FILE)
    kinds = [r.WhichOneof("log_type") for r in records]
    assert kinds == ["predict_log", "predict_log", "classify_log"]
    sizes = [r.predict_log.request.inputs["image_bytes"].tensor_shape.dim[0].size
             for r in records[:2]]
    assert sizes == [1, 8]
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.name == "colours"
    # Real JPEGs from the run's dataset, not placeholders.
    assert request.inputs["image_bytes"].string_val[0][:3] == b"\xff\xd8\xff"
    outputs = warmup.replay_warmup(loaded, records)
    assert [o["classes"].shape[0] for o in outputs] == [1, 8, 1]


def test_synthetic_warmup_photo_without_the_dataset(tmp_path):
    blob = warmup.synthetic_photo()
    with Image.open(io.BytesIO(blob)) as image:
        assert (image.format, image.size) == ("JPEG", (640, 480))
        assert np.asarray(image).std() > 20  # Photo-like content, not a flat fill.
    with pytest.raises(ValueError, match="at least one image"):
        warmup.build_warmup_records([], model_name="m")


# --- Atomic, versioned publication -----------------------------------------------------


def export_to(run_dir: pathlib.Path, base: pathlib.Path, **kwargs) -> exporter.ExportResult:
    config = exporter.ExportConfig(model_dir=str(run_dir), export_base=str(base),
                                   warmup_batch_sizes=(1,), **kwargs)
    return exporter.export_model(config.validated())


def test_versions_count_up_and_prune(run_dir, tmp_path):
    base = tmp_path / "models" / "colours"
    for expected in (1, 2):  # Publication alone: full exports are exercised below.
        assert publish.next_version(base) == expected
        with publish.staging_dir(base) as staging:
            (staging / "saved_model.pb").write_bytes(b"")
            publish.publish(staging, base, expected)
    (base / "notes").mkdir()  # Not a version: ignored, as TF Serving ignores it.
    result = export_to(run_dir, base, version=7, keep_versions=2)
    assert (result.version, result.pruned) == (7, [1])
    assert publish.list_versions(base) == [2, 7]
    assert sorted(p.name for p in base.iterdir()) == ["2", "7", "notes"]  # No leftovers.
    assert publish.next_version(base) == 8


def test_an_existing_version_is_never_overwritten(run_dir, tmp_path):
    base = tmp_path / "colours"
    (base / "3").mkdir(parents=True)
    (base / "3" / "marker").write_text("keep me")
    with pytest.raises(ValueError, match="never overwritten"):
        export_to(run_dir, base, version=3)
    assert (base / "3" / "marker").read_text() == "keep me"
    assert export_to(run_dir, base).version == 4


def test_a_crash_mid_export_leaves_no_numbered_dir(run_dir, tmp_path, monkeypatch):
    base = tmp_path / "colours"

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash while writing the warmup file")

    monkeypatch.setattr(warmup, "write_warmup_file", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_to(run_dir, base)
    assert list(base.iterdir()) == []


def test_a_killed_export_leaves_only_a_hidden_dir_that_the_next_export_removes(
        run_dir, tmp_path):
    base = tmp_path / "colours"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    leftover = base / f".export-{dead}-abc"
    (leftover / "variables").mkdir(parents=True)
    assert publish.list_versions(base) == []  # Invisible to TF Serving's version scan.
    assert export_to(run_dir, base).version == 1
    assert not leftover.exists()


def test_a_model_that_fails_verification_is_not_published(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "VERIFY_ATOL", -1.0)
    base = tmp_path / "colours"
    with pytest.raises(ValueError, match="nothing was published"):
        export_to(run_dir, base)
    assert list(base.iterdir()) == []


def test_bad_export_arguments(run_dir, tmp_path):
    with pytest.raises(ValueError, match="top_k"):
        exporter.ExportConfig(model_dir=str(run_dir), export_base="m", top_k=0).validated()
    with pytest.raises(ValueError, match="not found"):
        exporter.export_model(exporter.ExportConfig(model_dir=str(tmp_path),
                                                    export_base=str(tmp_path / "m")))
    with pytest.raises(ValueError, match="labels"):
        signatures.ServingModule(build_quadrant_model(), labels=["a", "b"], image_size=SIZE)


def test_command_line_exports_and_refuses_an_existing_version(run_dir, tmp_path):
    base = tmp_path / "cli"
    command = [sys.executable, "-m", "export", f"--model_dir={run_dir}",
               f"--export_base={base}", "--warmup_batch_sizes=1", "--top_k=2"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert f"Exported version 1: {base / '1'}" in done.stdout
    again = subprocess.run(command + ["--version=1"], capture_output=True, text=True,
                           timeout=300, env=env)
    assert again.returncode == 1
    assert "never overwritten" in again.stderr
