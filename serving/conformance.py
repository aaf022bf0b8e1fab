"""Conformance models: what to serve to check a model server against this project's tests.

`python -m serving.conformance --out=DIR` writes DIR/tiny/{1,2} and DIR/models.config for a
real TF Serving; the conformance tests (tests/test_serving_*.py) then run against it when
TFSERVING_ADDRESSES names it, and against the local server (local_server below) otherwise:

    python -m serving.conformance --out=/tmp/conformance
    tensorflow_model_server --port=8500 --rest_api_port=8501 \\
        --model_config_file=/tmp/conformance/models.config \\
        --allow_version_labels_for_unavailable_models
    TFSERVING_ADDRESSES=localhost:8500,http://localhost:8501 pytest tests/test_serving_*.py

The model ("tiny") classifies the mean colour of an image into red/green/blue, with the
signatures of export/signatures.py: serving_default (image_bytes), predict_images (images),
classify (serialized tf.Example, method tensorflow/serving/classify), plus "multi" with
several dtypes and a *_bytes output, and a warmup file. Its parameters are variables (a
logit scale and bias, and batch-norm-like moving statistics), so a server that fails to
restore variables fails every request, as it would with a real model.

Also public, for checking any server (the tests and bench/ use them): the hostile images
a server must refuse without exhausting memory or CPU (gif_bomb, progressive_scan_bomb),
and local_server, the local server run in-process on ports the system picks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import sys

LABELS = ("red", "green", "blue")
SIZE = 8
TOP_K = 2
MODEL_NAME = "tiny"


def encode_png(rgb, size=(6, 4)) -> bytes:
    """A solid-colour PNG."""
    import numpy as np
    import tensorflow as tf

    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[...] = rgb
    return tf.io.encode_png(pixels).numpy()


def encode_jpeg(rgb, size=(6, 4)) -> bytes:
    import numpy as np
    import tensorflow as tf

    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[...] = rgb
    return tf.io.encode_jpeg(pixels, quality=95).numpy()


COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}


def save_tiny_model(path: str | os.PathLike, *, bias: float = 0.0, warmup: bool = True,
                    classify_method: bool = True) -> pathlib.Path:
    """Writes one version of the tiny model to path (a version directory)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow_serving.apis import (
        classification_pb2,
        model_pb2,
        predict_pb2,
        prediction_log_pb2,
    )

    labels = tf.constant(list(LABELS))
    # Restored from variables/ (never folded into the graph as constants): identity moving
    # statistics, like a frozen BatchNormalization, then the logit scale and bias.
    moving_mean = tf.Variable([0.0, 0.0, 0.0], trainable=False, name="moving_mean")
    moving_variance = tf.Variable([1.0, 1.0, 1.0], trainable=False, name="moving_variance")
    scale = tf.Variable(8.0, name="scale")
    logit_bias = tf.Variable([0.0, 0.0, bias], name="bias")

    def outputs(images):
        mean = tf.reduce_mean(images, axis=[1, 2]) / 255.0  # [B, 3]
        normalised = (mean - moving_mean) / tf.sqrt(moving_variance)
        probabilities = tf.nn.softmax(normalised * scale + logit_bias)
        scores, ids = tf.math.top_k(probabilities, k=TOP_K)
        return {"classes": tf.gather(labels, ids), "class_ids": tf.cast(ids, tf.int64),
                "scores": scores, "probabilities": probabilities}

    def decode(item):
        data, index = item
        magic = tf.strings.substr(data, 0, 2)
        ok = tf.logical_or(tf.equal(magic, b"\xff\xd8"), tf.equal(magic, b"\x89P"))
        with tf.control_dependencies([tf.debugging.Assert(
                ok, [tf.strings.format("image {}: not a JPEG or PNG image", index)])]):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
        return tf.image.resize(tf.cast(image, tf.float32), [SIZE, SIZE])

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
        def serve(self, image_bytes):
            count = tf.shape(image_bytes, out_type=tf.int64)[0]
            images = tf.map_fn(decode, (image_bytes, tf.range(count)),
                               fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
            return outputs(images)

        @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32,
                                                    name="images")])
        def predict_images(self, images):
            return outputs(images)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            features = tf.io.parse_example(
                inputs, {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
            count = tf.shape(inputs, out_type=tf.int64)[0]
            images = tf.map_fn(decode, (features["image/encoded"], tf.range(count)),
                               fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
            result = outputs(images)
            return {"classes": result["classes"], "scores": result["scores"]}

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="n"),
                                      tf.TensorSpec([None], tf.string, name="text")])
        def multi(self, x, n, text):
            return {"y": x * 2.0 + logit_bias[2], "n_plus_one": n + 1,
                    "echo_bytes": text, "upper": tf.strings.upper(text),
                    "flag": tf.greater(n, 0), "d": tf.cast(x[:, 0], tf.float64) / 3.0}

    module = Tiny()
    module.parameters = [moving_mean, moving_variance, scale, logit_bias]  # Saved with it.
    path = pathlib.Path(path)
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serve.get_concrete_function(),
        "predict_images": module.predict_images.get_concrete_function(),
        "classify": module.classify.get_concrete_function(),
        "multi": module.multi.get_concrete_function(),
    })
    if classify_method:
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        for meta_graph in saved.meta_graphs:
            meta_graph.signature_def["classify"].method_name = "tensorflow/serving/classify"
        (path / "saved_model.pb").write_bytes(saved.SerializeToString())
    if warmup:
        records = []
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=MODEL_NAME, signature_name="serving_default"))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(
            [encode_png(COLOURS["red"]), encode_jpeg(COLOURS["blue"])], dtype=tf.string))
        records.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
        classify = classification_pb2.ClassificationRequest(model_spec=model_pb2.ModelSpec(
            name=MODEL_NAME, signature_name="classify"))
        example = classify.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(
            encode_png(COLOURS["green"]))
        records.append(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=classify)))
        (path / "assets.extra").mkdir(exist_ok=True)
        with tf.io.TFRecordWriter(str(path / "assets.extra" / "tf_serving_warmup_requests")) as w:
            for record in records:
                w.write(record.SerializeToString())
    return path


MODELS_CONFIG = """model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
"""


def write_conformance_models(root: str | os.PathLike) -> pathlib.Path:
    """Writes root/tiny/{1,2} and root/models.config; returns the config's path.

    Version 2 leans to blue (bias 1 on its logit) and its "multi" answers y = 2x + 1.
    """
    root = pathlib.Path(root)
    base = root / MODEL_NAME
    save_tiny_model(base / "1")
    save_tiny_model(base / "2", bias=1.0)
    config = root / "models.config"
    config.write_text(MODELS_CONFIG.format(name=MODEL_NAME, base=base.resolve()))
    return config


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where a server answers: gRPC "host:port" and REST "http://host:port"."""

    grpc: str
    rest: str
    local: bool  # False for an external (real) TF Serving.


@contextlib.contextmanager
def local_server(**option_overrides):
    """Runs serving.server.Server in this process, gRPC and REST on loopback ports the system
    picks (ServerOptions.ephemeral_ports: nothing can take them between choosing and binding);
    yields (server, Endpoint) with the bound ports.

    option_overrides are serving.server.ServerOptions fields (model_config_file, ...).
    """
    from serving import server as server_lib

    options = dict(ephemeral_ports=True, host="127.0.0.1", file_system_poll_wait_seconds=1)
    options.update(option_overrides)
    server = server_lib.Server(server_lib.ServerOptions(**options))
    server.start()
    try:
        yield server, Endpoint(grpc=f"127.0.0.1:{server.grpc_port}",
                               rest=f"http://127.0.0.1:{server.rest_port}", local=True)
    finally:
        server.stop(grace=5)


def encode_image(image, fmt: str = "JPEG", **kwargs) -> bytes:
    """A PIL image encoded in memory (kwargs go to Image.save: quality, progressive...)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gif_bomb() -> bytes:
    """A real 12000 x 12000 (144 MP) single-colour GIF of ~50 KB, re-labelled as a 10 x 10
    screen: the screen is all that an image header reader stopping there sees."""
    from PIL import Image

    data = bytearray(encode_image(Image.new("P", (12000, 12000), 1), "GIF"))
    data[6:10] = (10).to_bytes(2, "little") * 2
    return bytes(data)


def progressive_scan_bomb(side: int = 4000, repeats: int = 2000) -> bytes:
    """A side x side progressive JPEG whose last scan is repeated: every repetition is one
    more decoding pass over the whole image."""
    import numpy as np
    from PIL import Image

    gradient = np.add.outer(np.arange(side) // 16, np.arange(side) // 16).astype(np.uint8)
    data = encode_image(Image.fromarray(gradient).convert("RGB"), "JPEG", progressive=True,
                       quality=70)
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeats + data[end:]


def main(argv: list[str]) -> int:
    """python -m serving.conformance --out=DIR: writes the models; prints models.config."""
    out = next((a.split("=", 1)[1] for a in argv if a.startswith("--out=")), None)
    if out is None:
        print("usage: python -m serving.conformance --out=DIR", file=sys.stderr)
        return 2
    print(write_conformance_models(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
