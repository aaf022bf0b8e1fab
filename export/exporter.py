"""Exports a training run as a new, verified version under a TF Serving base path.

Steps: load model.keras + labels.txt + config.json from the training run; build the
serving signatures; save into a hidden staging dir next to the versions; mark the
classify signature for TF Serving; write the warmup requests and export_config.json;
load the staged SavedModel back the way TF Serving loads it (a TF1 session bundle, see
export/session.py), replay the warmup through it and compare its scores and labels with
the in-memory Keras model; only then rename it to BASE/N. Optionally prune old versions.

Usage:
    result = export_model(ExportConfig(model_dir="runs/cars", export_base="models/cars"))
    print(result.path)  # models/cars/1
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from export import publish, session, signatures, warmup
from export.config import ExportConfig  # Declared apart: its module loads no TensorFlow.
from train import preprocessing, progress, rundir

EXPORT_CONFIG_FILE = "export_config.json"
WARMUP_IMAGE_COUNT = 8
# The staged model must reproduce the Keras model's probabilities this closely.
VERIFY_ATOL = 1e-4


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: pathlib.Path
    version: int
    pruned: list[int]
    metadata: dict


def export_model(config: ExportConfig, *, model: keras.Model | None = None) -> ExportResult:
    """Exports config.model_dir as a new version of config.export_base.

    Args:
      config: a validated ExportConfig.
      model: the run's Keras model if already in memory (else loaded from model_dir).

    Returns:
      The published version's path and number, pruned versions and the metadata written.

    Raises:
      ValueError: a missing or inconsistent training run, an existing version, or a
        staged model that does not reproduce the Keras model (nothing is published).
    """
    model_dir = pathlib.Path(config.model_dir)
    for name in (rundir.CONFIG_FILE, rundir.LABELS_FILE):
        if not (model_dir / name).is_file():
            raise ValueError(f"{model_dir / name} not found: is {model_dir} a finished run?")
    train_config, resolved = rundir.load_config(model_dir / rundir.CONFIG_FILE)
    labels = rundir.read_labels(model_dir / rundir.LABELS_FILE)
    image_size = int(resolved["image_size"])
    model = model if model is not None else rundir.load_trained_model(model_dir)

    base = pathlib.Path(config.export_base)
    for stale in publish.remove_stale_staging(base):
        logging.info("Removed %s, left by an export that crashed", stale)
    module = signatures.ServingModule(
        model, labels=labels, image_size=image_size, top_k=config.top_k,
        max_pixels=config.max_pixels, jpeg_dct_scaling=config.jpeg_dct_scaling,
        max_jpeg_scans=config.max_jpeg_scans, labels_file=str(model_dir / rundir.LABELS_FILE))
    images = _warmup_images(config, train_config)
    records = warmup.build_warmup_records(images, model_name=base.name,
                                          batch_sizes=config.warmup_batch_sizes)

    # Claimed before the expensive work, so concurrent exports of one base build different
    # versions; a version another live export holds fails here, naming it.
    with (publish.claim_version(base, config.version) as version,
          publish.staging_dir(base) as staging):
        metadata = _metadata(config, train_config, labels, image_size, module, version, model_dir)
        module.save(staging)
        publish.set_method_names(staging, {signatures.CLASSIFY: signatures.CLASSIFY_METHOD})
        warmup.write_warmup_file(staging / warmup.WARMUP_FILE, records)
        (staging / EXPORT_CONFIG_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        _verify(staging, model, records, images, image_size, config, labels)
        path = publish.publish(staging, base, version)
    pruned = publish.prune_versions(base, config.keep_versions) if config.keep_versions else []
    return ExportResult(path=path, version=version, pruned=pruned, metadata=metadata)


def _warmup_images(config: ExportConfig, train_config) -> list[bytes]:
    """Encoded images shaped like real traffic: given files, the run's data, or synthetic."""
    paths = config.warmup_images or rundir.sample_images(train_config, WARMUP_IMAGE_COUNT)
    if paths:
        return [pathlib.Path(p).read_bytes() for p in paths]
    return [warmup.synthetic_photo()]


def _verify(staging: pathlib.Path, model: keras.Model, records, images: list[bytes],
            image_size: int, config: ExportConfig, labels: list[str]) -> None:
    """Loads the staged SavedModel as TF Serving does, replays the warmup, checks the answers.

    Raises:
      ValueError: the session-loaded model fails, or its scores or labels differ from the
        Keras model's (nothing is published).
    """
    try:
        with session.load(staging) as served_model:
            warmup.replay_warmup(served_model, progress.track(
                records, unit="request",
                title=f"Replaying {len(records)} warmup requests through the staged version "
                      "the way TF Serving loads it"))
            served = served_model.run(signatures.SERVING_DEFAULT, {
                signatures.IMAGE_BYTES_INPUT: np.array(images, dtype=object)})
    except tf.errors.OpError as error:
        # A session's message starts with "Graph execution error:"; the cause follows.
        cause = next((line for line in error.message.splitlines() if line.strip()
                      and not line.startswith("Graph execution error")), error.message)
        raise ValueError(f"TF Serving could not run this export ({type(error).__name__}: "
                         f"{cause}); nothing was published") from None
    pixels = tf.stack([preprocessing.decode_and_resize(
        image, image_size, max_pixels=config.max_pixels,
        jpeg_dct_scaling=config.jpeg_dct_scaling, max_jpeg_scans=config.max_jpeg_scans)
        for image in images])
    expected = np.asarray(model(pixels, training=False), dtype=np.float32)
    worst = float(np.max(np.abs(served[signatures.PROBABILITIES] - expected)))
    if worst > VERIFY_ATOL:
        raise ValueError(f"the exported model's probabilities differ from the Keras model's by "
                         f"{worst:.2e} (> {VERIFY_ATOL}); nothing was published")
    expected_labels = [labels[i] for i in served[signatures.CLASS_IDS][:, 0]]
    served_labels = [c.decode("utf-8") for c in served[signatures.CLASSES][:, 0]]
    if served_labels != expected_labels:
        raise ValueError(f"the exported model names classes {served_labels}, expected "
                         f"{expected_labels} from {rundir.LABELS_FILE}; nothing was published")


def _metadata(config: ExportConfig, train_config, labels: list[str], image_size: int,
              module: signatures.ServingModule, version: int, model_dir: pathlib.Path) -> dict:
    metrics = rundir.read_metrics(model_dir)
    return {
        "model_name": pathlib.Path(config.export_base).name,
        "version": version,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "source_model_dir": str(model_dir.resolve()),
        "backbone": train_config.backbone,
        "image_size": image_size,
        "num_classes": len(labels),
        "labels_file": "assets/" + rundir.LABELS_FILE,
        "top_k": module.top_k,
        "preprocessing": {
            "decode": "JPEG/PNG/GIF (first frame)/BMP in the graph, EXIF orientation "
                      "applied, RGB",
            "resize": f"bilinear antialiased squash to {image_size}x{image_size}",
            "jpeg_dct_scaling": config.jpeg_dct_scaling,
            "max_pixels": config.max_pixels,
            "max_jpeg_scans": config.max_jpeg_scans,
            "pixel_range": "0..255 float32; normalisation inside the model",
        },
        "signatures": {
            signatures.SERVING_DEFAULT: {"method": signatures.PREDICT_METHOD,
                                         "inputs": [signatures.IMAGE_BYTES_INPUT]},
            signatures.PREDICT_IMAGES: {"method": signatures.PREDICT_METHOD,
                                        "inputs": [signatures.IMAGES_INPUT]},
            signatures.CLASSIFY: {"method": signatures.CLASSIFY_METHOD,
                                  "inputs": [signatures.CLASSIFY_INPUT],
                                  "example_feature": signatures.EXAMPLE_IMAGE_FEATURE},
        },
        "training": {"config": dataclasses.asdict(train_config), "metrics": metrics},
    }
