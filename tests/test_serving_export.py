"""The local server on a model made by the real exporter (export/): the end-to-end contract.

export.exporter turns a tiny fake training run (tests/test_export.py) into models/NAME/1
with the serving signatures and warmup records; the server must load it, replay the
warmup, and answer Predict/Classify over both transports with the exporter's own errors.
"""

from __future__ import annotations

import base64

import grpc
import pytest
import requests
from tensorflow_serving.apis import (
    classification_pb2,
    model_pb2,
    prediction_service_pb2_grpc,
)

from serving import testing

pytestmark = pytest.mark.skipif(testing.external_endpoint() is not None,
                                reason="exports a fresh model: local server only")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from test_export import encode, make_run, quadrant_image

    from export import exporter

    root = tmp_path_factory.mktemp("serving-export")
    run = make_run(root)
    base = root / "models" / "effnet"
    result = exporter.export_model(exporter.ExportConfig(
        model_dir=str(run), export_base=str(base)).validated())
    images = {name: encode(quadrant_image(name, other=name)) for name in ("red", "green")}
    return base, result.version, images


@pytest.fixture(scope="module")
def served(exported):
    base, _, images = exported
    with testing.local_server(model_name="effnet", model_base_path=str(base)) as (server,
                                                                                  endpoint):
        yield server, endpoint, images


def test_exported_version_loads_with_its_warmup(served, exported):
    server, endpoint, _ = served
    base, version, _ = exported
    status = requests.get(f"{endpoint.rest}/v1/models/effnet", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    assert server.metrics.model_warmup_records_read.value(str(base / str(version)), "OK") > 0


def test_rest_predict_and_bad_image(served):
    _, endpoint, images = served
    url = f"{endpoint.rest}/v1/models/effnet:predict"
    encoded = [{"b64": base64.b64encode(images[n]).decode()} for n in ("red", "green")]
    response = requests.post(url, json={"instances": encoded}, timeout=30)
    assert response.status_code == 200, response.text
    assert [p["classes"][0] for p in response.json()["predictions"]] == ["red", "green"]
    response = requests.post(url, json={"instances": [encoded[0], {"b64": "bm9wZQ=="}]},
                             timeout=30)
    assert response.status_code == 400
    assert "image 1" in response.json()["error"]


def test_metadata_has_the_exported_signatures(served):
    _, endpoint, _ = served
    body = requests.get(f"{endpoint.rest}/v1/models/effnet/metadata", timeout=10).json()
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    assert signatures["predict_images"]["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"


def test_grpc_classify(served):
    _, endpoint, images = served
    request = classification_pb2.ClassificationRequest(
        model_spec=model_pb2.ModelSpec(name="effnet", signature_name="classify"))
    for name in ("green", "red"):
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(images[name])
    with grpc.insecure_channel(endpoint.grpc) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Classify(request, timeout=30)
        labels = [row.classes[0].label for row in response.result.classifications]
        assert labels == ["green", "red"]
        request.input.example_list.examples[0].features.feature[
            "image/encoded"].bytes_list.value[0] = b"junk"
        with pytest.raises(grpc.RpcError) as info:
            stub.Classify(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 0" in info.value.details()

