"""The local server loads and runs SavedModels the way TF Serving does: a session bundle.

TF Serving imports the MetaGraph into a TF1 Session, runs the restore and init ops, replays
the warmup through that session and answers with Session::Run by SignatureDef tensor names
(servables/tensorflow/saved_model_bundle_factory.cc, saved_model_warmup.cc, predict_util.cc).
So a version TF Serving cannot run must fail here too, the same way, and one it runs must
serve. These write their own model directories, so they skip when TFSERVING_ADDRESSES is set.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time

import grpc
import numpy as np
import pytest
import requests
import support
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import conformance
from serving.errors import ServingError
from serving.servable import Servable

pytestmark = pytest.mark.skipif(support.external_endpoint() is not None,
                                reason="writes its own models: local server only")


def wait_for_state(rest: str, name: str, version: int, state: str,
                   timeout: float = 60.0) -> dict:
    """The version's status once it reaches state (polled; the bound is only a backstop)."""
    deadline = time.monotonic() + timeout
    while True:
        response = requests.get(f"{rest}/v1/models/{name}/versions/{version}", timeout=10)
        current = response.json().get("model_version_status", [{}])[0]
        if current.get("state") == state:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}/{version} never reached {state}: {current}")
        time.sleep(0.1)


def predict_version(grpc_address: str, name: str, inputs: dict, signature: str = ""):
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=name, signature_name=signature))
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(grpc_address) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=30)


def test_an_export_tf_serving_cannot_run_fails_its_load_and_the_previous_version_serves(
        tmp_path):
    from support import (
        build_quadrant_model,
        encode,
        make_run,
        quadrant_image,
        save_as_tf_module,
    )

    from export import exporter, signatures, warmup

    run = make_run(tmp_path)
    base = tmp_path / "models" / "colours"
    exporter.export_model(exporter.ExportConfig(model_dir=str(run),
                                                export_base=str(base)).validated())
    # Version 2 the way this project used to export: same signatures, same warmup file.
    staging = base / ".staging-2"
    module = signatures.ServingModule(build_quadrant_model(), labels=["red", "green", "blue"],
                                      image_size=32)
    save_as_tf_module(module, staging)
    (staging / "assets.extra").mkdir()
    shutil.copy(base / "1" / warmup.WARMUP_FILE, staging / warmup.WARMUP_FILE)
    red = np.array([encode(quadrant_image("red"))], dtype=object)
    assert tf.saved_model.load(str(staging)).signatures["serving_default"](
        image_bytes=tf.constant(red))["classes"][0, 0] == b"red"  # The forgiving loader.

    with conformance.local_server(model_name="colours", model_base_path=str(base),
                                  max_num_load_retries=0) as (server, endpoint):
        assert predict_version(endpoint.grpc, "colours", {"image_bytes": red}
                               ).model_spec.version.value == 1
        os.rename(staging, base / "2")
        status = wait_for_state(endpoint.rest, "colours", 2, "END")
        assert status["status"]["error_code"] == "FAILED_PRECONDITION"
        assert "Could not find variable" in status["status"]["error_message"]
        # The warmup replay is what failed the load, as in TF Serving.
        assert server.metrics.model_warmup_records_read.value(
            str(base / "2"), "OK") == 0
        response = predict_version(endpoint.grpc, "colours", {"image_bytes": red})
        assert response.model_spec.version.value == 1
        assert response.outputs["classes"].string_val[0] == b"red"
        assert wait_for_state(endpoint.rest, "colours", 1, "AVAILABLE")


class Affine(tf.Module):
    """A plain TF2 SavedModel with variables: y = x * w + b."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable([[2.0], [3.0]])
        self.b = tf.Variable([0.5])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def serve(self, x):
        return {"y": tf.matmul(x, self.w) + self.b}

    @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="n")])
    def spin(self, n):
        """Counts to n: long enough to need a deadline."""
        return {"count": tf.while_loop(lambda i: i < n, lambda i: i + 1,
                                       [tf.constant(0, tf.int64)])[0]}


def save_affine(path: pathlib.Path, *, method_name: str | None = None) -> pathlib.Path:
    module = Affine()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serve.get_concrete_function(),
        "spin": module.spin.get_concrete_function()})
    if method_name:
        saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        saved.meta_graphs[0].signature_def["serving_default"].method_name = method_name
        (path / "saved_model.pb").write_bytes(saved.SerializeToString())
    return path


def test_a_plain_tf2_saved_model_with_variables_serves(tmp_path):
    save_affine(tmp_path / "affine" / "1")
    with conformance.local_server(model_name="affine",
                                  model_base_path=str(tmp_path / "affine")) as (_, endpoint):
        response = requests.post(f"{endpoint.rest}/v1/models/affine:predict",
                                 json={"instances": [[1.0, 1.0], [0.0, 2.0]]}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json() == {"predictions": [[5.5], [6.5]]}


def test_a_session_run_stops_when_the_deadline_passes(tmp_path):
    """TF Serving passes the request's deadline as RunOptions.timeout_in_ms; without it this
    loop of 10^12 steps would run for hours."""
    servable = Servable.load(name="affine", version=1, path=str(save_affine(tmp_path / "1")))
    try:
        with pytest.raises(ServingError) as info:
            servable.run("spin", {"n": np.int64(10**12)}, timeout=0.5)
        assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert servable.run("spin", {"n": np.int64(1000)})["count"] == 1000
        np.testing.assert_allclose(servable.run("serving_default", {
            "x": np.array([[1.0, 0.0]], np.float32)})["y"], [[2.5]])
    finally:
        servable.close()
    with pytest.raises(ServingError) as info:  # Released: no session left to run.
        servable.run("serving_default", {"x": np.zeros((1, 2), np.float32)})
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("check", [False, True])
def test_signature_method_names_are_checked_as_tf_serving_checks_them(tmp_path, check):
    """--enable_signature_method_name_check: off by default; Predict answers INTERNAL
    (predict_util.cc VerifySignature), Classify INVALID_ARGUMENT (classifier.cc)."""
    save_affine(tmp_path / "affine" / "1", method_name="custom/method")
    with conformance.local_server(model_name="affine", model_base_path=str(tmp_path / "affine"),
                                  enable_signature_method_name_check=check) as (_, endpoint):
        inputs = {"x": np.ones((1, 2), np.float32)}
        request = classification_pb2.ClassificationRequest(
            model_spec=model_pb2.ModelSpec(name="affine"))
        request.input.example_list.examples.add()
        with grpc.insecure_channel(endpoint.grpc) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as classify:
                stub.Classify(request, timeout=30)
        assert classify.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        if not check:
            assert predict_version(endpoint.grpc, "affine", inputs).outputs[
                "y"].float_val == [5.5]
            assert "No classification inputs found" in classify.value.details()
            return
        with pytest.raises(grpc.RpcError) as predict:
            predict_version(endpoint.grpc, "affine", inputs)
        assert predict.value.code() == grpc.StatusCode.INTERNAL
        assert predict.value.details() == (
            "Expected prediction signature method_name to be one of {tensorflow/serving/"
            "predict, tensorflow/serving/classify, tensorflow/serving/regress}. Was: "
            "custom/method")
        assert classify.value.details() == (
            "Expected classification signature method_name to be tensorflow/serving/classify."
            " Was: custom/method")
