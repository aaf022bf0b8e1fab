"""The server on a model made by the real exporter (export/): the end-to-end contract.

export.exporter turns a tiny fake training run (tests/test_export.py) into models/NAME/N
with the serving signatures and warmup records; the server must load it, replay the
warmup, and answer Predict/Classify over both transports with the exporter's own errors.

By default the server is the local one. Against a real TF Serving (TFSERVING_ADDRESSES, see
tests/support/), the test cannot hand the server a model, so the server must already
serve one named "effnet" from a directory this test can write, named by
TFSERVING_EFFNET_BASE (the same path for both, e.g. a bind mount). Add to its model config:

    config { name: "effnet" base_path: "/that/directory" model_platform: "tensorflow" }

TF Serving opens its ports only once every configured model has a version, so put any
SavedModel there as version 1 before starting it (e.g. a copy of the conformance model's
tiny/1); checked this way with the local server run as `python -m serving`. The test
exports a new version there, waits until the server reports it AVAILABLE (TF Serving polls
the base path every --file_system_poll_wait_seconds), and sends every request to that
version. Warmup replay is read from the local server's metrics only.
"""

from __future__ import annotations

import base64
import os
import pathlib
import time

import grpc
import pytest
import requests
import support
from tensorflow_serving.apis import (
    classification_pb2,
    model_pb2,
    prediction_service_pb2_grpc,
)

from serving import conformance

MODEL = "effnet"
BASE_ENV = "TFSERVING_EFFNET_BASE"


def external_base() -> pathlib.Path | None:
    """The directory a real TF Serving serves MODEL from (None for the local server)."""
    if support.external_endpoint() is None:
        return None
    value = os.environ.get(BASE_ENV, "").strip()
    if not value:
        pytest.skip(f"{support.ADDRESSES_ENV} names a real TF Serving: set {BASE_ENV} to a "
                    f"directory it serves as model {MODEL!r} (see this module's docstring)")
    return pathlib.Path(value)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from support import encode, make_run, quadrant_image

    from export import exporter

    root = tmp_path_factory.mktemp("serving-export")
    run = make_run(root)
    base = external_base() or root / "models" / MODEL
    result = exporter.export_model(exporter.ExportConfig(
        model_dir=str(run), export_base=str(base)).validated())
    images = {name: encode(quadrant_image(name, other=name)) for name in ("red", "green")}
    return base, result.version, images


def _version_state(rest: str, version: int) -> str | None:
    response = requests.get(f"{rest}/v1/models/{MODEL}/versions/{version}", timeout=10)
    if response.status_code != 200:
        return None
    return response.json()["model_version_status"][0]["state"]


@pytest.fixture(scope="module")
def served(exported):
    """(local server or None, endpoint, images, the exported version)."""
    base, version, images = exported
    external = support.external_endpoint()
    if external is not None:
        deadline = time.monotonic() + 300  # Generous: polling, loading and warmup.
        while _version_state(external.rest, version) != "AVAILABLE":
            assert time.monotonic() < deadline, (
                f"{external.rest} never made version {version} of {MODEL} AVAILABLE; does "
                f"it serve {MODEL!r} from {base}?")
            time.sleep(1)
        yield None, external, images, version
        return
    with conformance.local_server(model_name=MODEL, model_base_path=str(base)) as (server,
                                                                                endpoint):
        yield server, endpoint, images, version


def test_exported_version_loads_with_its_warmup(served, exported):
    server, endpoint, _, version = served
    base, _, _ = exported
    assert _version_state(endpoint.rest, version) == "AVAILABLE"
    if server is not None:  # A real server's warmup shows only in its log.
        assert server.metrics.model_warmup_records_read.value(str(base / str(version)),
                                                              "OK") > 0


def test_rest_predict_and_bad_image(served):
    _, endpoint, images, version = served
    url = f"{endpoint.rest}/v1/models/{MODEL}/versions/{version}:predict"
    encoded = [{"b64": base64.b64encode(images[n]).decode()} for n in ("red", "green")]
    response = requests.post(url, json={"instances": encoded}, timeout=30)
    assert response.status_code == 200, response.text
    assert [p["classes"][0] for p in response.json()["predictions"]] == ["red", "green"]
    response = requests.post(url, json={"instances": [encoded[0], {"b64": "bm9wZQ=="}]},
                             timeout=30)
    assert response.status_code == 400
    assert "image 1" in response.json()["error"]


def test_metadata_has_the_exported_signatures(served):
    _, endpoint, _, version = served
    body = requests.get(f"{endpoint.rest}/v1/models/{MODEL}/versions/{version}/metadata",
                        timeout=10).json()
    assert body["model_spec"]["version"] == str(version)
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert signatures["predict_images"]["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"


def test_grpc_classify(served):
    _, endpoint, images, version = served
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name=MODEL, signature_name="classify"))
    request.model_spec.version.value = version
    for name in ("green", "red"):
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(images[name])
    with grpc.insecure_channel(endpoint.grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Classify(request, timeout=30)
        assert response.model_spec.version.value == version
        labels = [row.classes[0].label for row in response.result.classifications]
        assert labels == ["green", "red"]
        request.input.example_list.examples[0].features.feature[
            "image/encoded"].bytes_list.value[0] = b"junk"
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 0" in info.value.details()
