"""TF Serving warmup requests: assets.extra/tf_serving_warmup_requests.

TF Serving replays these PredictionLog records (a TFRecord file, at most 1000) against a
new version before marking it AVAILABLE, so the first real request does not pay for
graph initialisation. The records are shaped like real traffic: realistic encoded images
at batch size 1 and at a typical batch size, through serving_default, plus one Classify
request.

Usage:
    records = build_warmup_records(images, model_name="cars", batch_sizes=(1, 8))
    write_warmup_file(version_dir / WARMUP_FILE, records)
    with session.load(version_dir) as model:
        replay_warmup(model, records)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, model_pb2, predict_pb2, prediction_log_pb2

from export import session, signatures

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving reads no more than this.


def synthetic_photo(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A photo-like JPEG (smooth colour regions plus sensor-like noise) for warmup.

    Used when no real images are at hand: it exercises the same decode path as a camera
    JPEG of that size, which a flat test pattern compresses too well to do.
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(1, 6, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, [height, width], method="bicubic")[0]
    noisy = smooth + rng.normal(0, 6, size=(height, width, 3)).astype(np.float32)
    pixels = tf.cast(tf.clip_by_value(noisy, 0, 255), tf.uint8)
    return tf.io.encode_jpeg(pixels, quality=90).numpy()


def build_warmup_records(images: Sequence[bytes], *, model_name: str,
                         batch_sizes: Iterable[int] = (1, 8),
                         classify: bool = True) -> list[prediction_log_pb2.PredictionLog]:
    """PredictionLogs for serving_default at each batch size (images reused cyclically).

    Raises:
      ValueError: no images, a non-positive batch size or more than MAX_RECORDS records.
    """
    if not images:
        raise ValueError("warmup needs at least one image")
    batch_sizes = list(batch_sizes)
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"warmup batch sizes must be positive, got {batch_sizes}")
    records = []
    for size in batch_sizes:
        batch = [images[i % len(images)] for i in range(size)]
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name=signatures.SERVING_DEFAULT))
        request.inputs[signatures.IMAGE_BYTES_INPUT].CopyFrom(
            tf.make_tensor_proto(batch, dtype=tf.string))
        records.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    if classify:
        request = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(
            name=model_name, signature_name=signatures.CLASSIFY))
        example = request.input.example_list.examples.add()
        example.features.feature[signatures.EXAMPLE_IMAGE_FEATURE].bytes_list.value.append(
            images[0])
        records.append(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    if len(records) > MAX_RECORDS:
        raise ValueError(f"{len(records)} warmup records; TF Serving reads at most {MAX_RECORDS}")
    return records


def write_warmup_file(path: str | os.PathLike, records: Sequence) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for record in records:
            writer.write(record.SerializeToString())


def read_warmup_file(path: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    return [prediction_log_pb2.PredictionLog.FromString(raw.numpy())
            for raw in tf.data.TFRecordDataset(os.fspath(path))]


def replay_warmup(model: session.SessionModel,
                  records: Iterable[prediction_log_pb2.PredictionLog]) -> list[dict]:
    """Runs each record through a session-loaded version, as TF Serving does; returns outputs.

    Raises:
      ValueError: a record of a kind this exporter does not write.
      tf.errors.OpError: the model rejects a request.
    """
    outputs = []
    for record in records:
        kind = record.WhichOneof("log_type")
        if kind == "predict_log":
            request = record.predict_log.request
            outputs.append(model.run(
                request.model_spec.signature_name or signatures.SERVING_DEFAULT,
                {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}))
        elif kind == "classify_log":
            request = record.classify_log.request
            serialized = [example.SerializeToString()
                          for example in request.input.example_list.examples]
            outputs.append(model.run(request.model_spec.signature_name or
                                     signatures.SERVING_DEFAULT,
                                     {signatures.CLASSIFY_INPUT: np.array(serialized, object)}))
        else:
            raise ValueError(f"unsupported warmup record kind {kind!r}")
    return outputs
