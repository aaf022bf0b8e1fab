"""REST conformance: every URL of TF Serving's REST API, its JSON formats and error codes.

Runs against the local server (serving/), or against a real TF Serving when
TFSERVING_ADDRESSES="grpc_host:port,http://host:port" is set and that server serves the
model written by `python -m serving.conformance --out=DIR` (see serving/README.md).
"""

from __future__ import annotations

import base64
import gzip
import json
import math

import pytest
import requests
import support

from serving import conformance

MODEL = conformance.MODEL_NAME


@pytest.fixture(scope="module")
def rest(endpoint):
    return endpoint.rest


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


RED = conformance.encode_png(conformance.COLOURS["red"])
GREEN = conformance.encode_jpeg(conformance.COLOURS["green"])
BLUE = conformance.encode_png(conformance.COLOURS["blue"])


def get(rest, path):
    return requests.get(rest + path, timeout=30)


def post(rest, path, body, **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(rest + path, data=data, timeout=30, **kwargs)


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


# --- Model status --------------------------------------------------------------------------

def test_status_json_shape(rest):
    response = get(rest, f"/v1/models/{MODEL}")
    assert response.status_code == 200
    statuses = response.json()["model_version_status"]
    assert {s["version"] for s in statuses} == {"1", "2"}
    for status in statuses:
        assert status == {"version": status["version"], "state": "AVAILABLE",
                          "status": {"error_code": "OK", "error_message": ""}}


def test_status_of_one_version(rest):
    response = get(rest, f"/v1/models/{MODEL}/versions/1")
    assert response.status_code == 200
    assert [s["version"] for s in response.json()["model_version_status"]] == ["1"]


def test_status_by_label_answers(rest):
    # GetModelStatusImpl only looks at model_spec.version: a label URL lists the model.
    response = get(rest, f"/v1/models/{MODEL}/labels/stable")
    assert response.status_code == 200
    assert "1" in {s["version"] for s in response.json()["model_version_status"]}


def test_status_of_unknown_model_and_version(rest):
    assert error_of(get(rest, "/v1/models/nope"), 404) == \
        "Could not find any versions of model nope"
    assert error_of(get(rest, f"/v1/models/{MODEL}/versions/9"), 404) == \
        f"Could not find version 9 of model {MODEL}"


def test_status_without_model_name(rest):
    assert error_of(get(rest, "/v1/models"), 400) == "Missing model name in request."


# --- Metadata ------------------------------------------------------------------------------

def test_metadata_shape(rest):
    response = get(rest, f"/v1/models/{MODEL}/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "predict_images", "classify", "multi"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    image_bytes = default["inputs"]["image_bytes"]
    assert image_bytes["dtype"] == "DT_STRING"
    assert image_bytes["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert default["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert default["outputs"]["class_ids"]["dtype"] == "DT_INT64"
    assert signatures["classify"]["method_name"] == "tensorflow/serving/classify"
    images = signatures["predict_images"]["inputs"]["images"]["tensor_shape"]["dim"]
    assert [d["size"] for d in images] == ["-1", str(conformance.SIZE), str(conformance.SIZE), "3"]


def test_metadata_of_version_and_label(rest):
    assert get(rest, f"/v1/models/{MODEL}/versions/1/metadata").json()[
        "model_spec"]["version"] == "1"
    assert get(rest, f"/v1/models/{MODEL}/labels/canary/metadata").json()[
        "model_spec"]["version"] == "2"


def test_metadata_of_unknown_model_version_label(rest):
    assert error_of(get(rest, "/v1/models/nope/metadata"), 404) == \
        "Servable not found for request: Latest(nope)"
    assert error_of(get(rest, f"/v1/models/{MODEL}/versions/9/metadata"), 404) == \
        f"Servable not found for request: Specific({MODEL}, 9)"
    assert error_of(get(rest, f"/v1/models/{MODEL}/labels/nope/metadata"), 400) == \
        "Unrecognized servable version label: nope"


# --- Predict: formats ----------------------------------------------------------------------

OUTPUTS = {"classes", "class_ids", "scores", "probabilities"}


def test_predict_row_format(rest):
    response = post(rest, f"/v1/models/{MODEL}:predict", {"instances": [b64(RED), b64(GREEN)]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert all(set(p) == OUTPUTS for p in predictions)
    assert [p["classes"][0] for p in predictions] == ["red", "green"]
    assert [p["class_ids"][0] for p in predictions] == [0, 1]
    assert all(len(p["probabilities"]) == 3 for p in predictions)
    assert math.isclose(sum(predictions[0]["probabilities"]), 1.0, rel_tol=1e-5)


def test_predict_columnar_format(rest):
    response = post(rest, f"/v1/models/{MODEL}:predict", {"inputs": [b64(BLUE), b64(RED)]})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert set(outputs) == OUTPUTS
    assert [row[0] for row in outputs["classes"]] == ["blue", "red"]
    assert len(outputs["probabilities"]) == 2


def test_predict_row_with_named_inputs_and_every_dtype(rest):
    instance = {"x": [1.5, 0.25], "n": 3, "text": "abc"}
    response = post(rest, f"/v1/models/{MODEL}/versions/1:predict",
                    {"signature_name": "multi", "instances": [instance]})
    assert response.status_code == 200, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction == {"y": [3.0, 0.5], "n_plus_one": 4, "echo_bytes": b64(b"abc"),
                          "upper": "ABC", "flag": True, "d": 0.5}


def test_predict_columnar_several_outputs_are_an_object_by_name(rest):
    # Several outputs -> an object keyed by output name (bytes outputs in b64); a single
    # output is a bare value: test_single_output_is_a_bare_value below.
    response = post(rest, f"/v1/models/{MODEL}:predict", {
        "signature_name": "multi",
        "inputs": {"x": [[1.0, 2.0]], "n": [0], "text": [b64(b"\x00\xff")]}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert outputs["echo_bytes"] == [b64(b"\x00\xff")]
    assert outputs["flag"] == [False]
    assert outputs["y"] == [[3.0, 5.0]]  # Version 2: y = 2x + 1.


@pytest.fixture(scope="module")
def single_output_rest(tmp_path_factory):
    """A local server on a model whose one signature has one input and ONE output (the
    conformance model has none, and a real TF Serving serves only what it was given)."""
    if support.external_endpoint() is not None:
        pytest.skip("needs its own single-output model: local server only")
    import tensorflow as tf

    scale = tf.Variable(3.0, name="scale")  # Restored by the session, as a real model's.

    class Single(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
        def serve(self, x):
            return {"tripled": x * scale}

    module = Single()
    module.scale = scale
    base = tmp_path_factory.mktemp("single-output") / "single"
    tf.saved_model.save(module, str(base / "1"),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    with conformance.local_server(model_name="single", model_base_path=str(base)) as (_, endpoint):
        yield endpoint.rest


def test_single_output_is_a_bare_value(single_output_rest):
    """json_tensor.cc MakeJsonFromTensors: with one output its name is left out, in both
    formats."""
    url = "/v1/models/single:predict"
    columnar = post(single_output_rest, url, {"inputs": [[1.0, 2.0], [0.5, -1.0]]})
    assert columnar.status_code == 200, columnar.text
    assert columnar.json() == {"outputs": [[3.0, 6.0], [1.5, -3.0]]}
    row = post(single_output_rest, url, {"instances": [[1.0, 2.0], [0.5, -1.0]]})
    assert row.status_code == 200, row.text
    assert row.json() == {"predictions": [[3.0, 6.0], [1.5, -3.0]]}
    named = post(single_output_rest, url, {"instances": [{"x": [1.0, 1.0]}]})
    assert named.json() == {"predictions": [[3.0, 3.0]]}  # Named input, still a bare output.


def test_versions_and_labels_route_to_their_version(rest):
    body = {"signature_name": "multi", "instances": [{"x": [1.0, 1.0], "n": 0, "text": ""}]}

    def y(path):
        response = post(rest, path, body)
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["y"]

    assert y(f"/v1/models/{MODEL}/versions/1:predict") == [2.0, 2.0]
    assert y(f"/v1/models/{MODEL}/versions/2:predict") == [3.0, 3.0]
    assert y(f"/v1/models/{MODEL}/labels/stable:predict") == [2.0, 2.0]
    assert y(f"/v1/models/{MODEL}/labels/canary:predict") == [3.0, 3.0]
    assert y(f"/v1/models/{MODEL}:predict") == [3.0, 3.0]  # Latest.


def test_float_formatting_follows_json_tensor(rest):
    body = {"signature_name": "multi",
            "inputs": {"x": [[1 / 3, 1e7], ["NaN", 0.0]], "n": [1, 2], "text": ["a", "b"]}}
    body["inputs"]["x"][1][0] = float("nan")
    response = post(rest, f"/v1/models/{MODEL}/versions/1:predict",
                    json.dumps(body).replace('"NaN"', "NaN"))
    assert response.status_code == 200, response.text
    text = response.text
    # float32 2/3: 6 digits do not round-trip, so 9 (max_digits10); 2e7 keeps %g's form.
    assert "0.666666687" in text and "2e+07" in text
    assert "NaN" in text
    # float64 (1/3)/3 in full: 17 significant digits.
    outputs = json.loads(text)["outputs"]
    assert outputs["d"][0] == pytest.approx(float(__import__("numpy").float32(1 / 3)) / 3)
    assert math.isnan(outputs["y"][1][0])


def test_infinity_is_accepted(rest):
    text = ('{"signature_name": "multi", "inputs": {"x": [[Infinity, -Infinity]], "n": [1], '
            '"text": ["a"]}}')
    response = post(rest, f"/v1/models/{MODEL}/versions/1:predict", text)
    assert response.status_code == 200, response.text
    assert "Infinity" in response.text and "-Infinity" in response.text


def test_gzip_request_body(rest):
    body = gzip.compress(json.dumps({"instances": [b64(RED)]}).encode())
    response = post(rest, f"/v1/models/{MODEL}:predict", body,
                    headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["classes"][0] == "red"


# --- Predict: errors -----------------------------------------------------------------------

def test_unknown_model_version_label_on_predict(rest):
    body = {"instances": [b64(RED)]}
    assert error_of(post(rest, "/v1/models/nope:predict", body), 404) == \
        "Servable not found for request: Latest(nope)"
    assert error_of(post(rest, f"/v1/models/{MODEL}/versions/9:predict", body), 404) == \
        f"Servable not found for request: Specific({MODEL}, 9)"
    assert error_of(post(rest, f"/v1/models/{MODEL}/labels/nope:predict", body), 400) == \
        "Unrecognized servable version label: nope"


def test_unknown_signature(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict",
                            {"signature_name": "nope", "instances": [b64(RED)]}), 400)
    assert message == 'Serving signature name: "nope" not found in signature def'


def test_wrong_input_name(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict", {
        "signature_name": "multi", "instances": [{"x": [1.0, 2.0], "n": 1, "txt": "a"}]}), 400)
    assert "does not have named input: txt" in message
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict", {
        "signature_name": "multi", "inputs": {"x": [[1.0, 2.0]], "n": [1]}}), 400)
    assert message == "Missing named input: text in 'inputs' object."


def test_b64_on_a_float_input(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict", {
        "signature_name": "predict_images", "instances": [b64(RED)]}), 400)
    assert "is not of expected type: float" in message


def test_string_for_an_int_input(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict", {
        "signature_name": "multi", "inputs": {"x": [[1.0, 2.0]], "n": ["1"], "text": ["a"]}}),
        400)
    assert 'JSON Value: "1" Type: String is not of expected type: int64' in message


def test_both_instances_and_inputs(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict",
                            {"instances": [b64(RED)], "inputs": [b64(RED)]}), 400)
    assert "expecting only one of 'inputs' or 'instances' keys to exist" in message


def test_malformed_json(rest):
    assert error_of(post(rest, f"/v1/models/{MODEL}:predict", '{"instances": [1,'),
                    400).startswith("JSON Parse error: ")
    assert error_of(post(rest, f"/v1/models/{MODEL}:predict", ""), 400) == \
        "JSON Parse error: The document is empty"
    assert "Is not object" in error_of(post(rest, f"/v1/models/{MODEL}:predict", "[1]"), 400)


def test_missing_instances_and_inputs(rest):
    assert error_of(post(rest, f"/v1/models/{MODEL}:predict", {"signature_name": ""}),
                    400) == "Missing 'inputs' or 'instances' key"


def test_empty_instances(rest):
    assert "No values in 'instances' array" in error_of(
        post(rest, f"/v1/models/{MODEL}:predict", {"instances": []}), 400)


def test_ragged_instances(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict", {
        "signature_name": "multi",
        "instances": [{"x": [1.0, 2.0], "n": 1, "text": "a"},
                      {"x": [1.0], "n": 1, "text": "a"}]}), 400)
    assert "Failed to process element: 1" in message


def test_bad_image_bytes_name_the_image(rest):
    message = error_of(post(rest, f"/v1/models/{MODEL}:predict",
                            {"instances": [b64(RED), b64(b"not an image")]}), 400)
    assert "image 1" in message


def test_bad_base64(rest):
    assert error_of(post(rest, f"/v1/models/{MODEL}:predict",
                         {"instances": [{"b64": "***"}]}), 400) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: "
        "Unable to base64 decode")


def test_wrong_method_on_a_url(rest):
    assert error_of(get(rest, f"/v1/models/{MODEL}:predict"), 400) == \
        f"Malformed request: GET /v1/models/{MODEL}:predict"
    assert error_of(post(rest, f"/v1/models/{MODEL}", {}), 400) == \
        f"Malformed request: POST /v1/models/{MODEL}"


# --- Classify ------------------------------------------------------------------------------

def test_classify(rest):
    response = post(rest, f"/v1/models/{MODEL}:classify", {
        "signature_name": "classify",
        "examples": [{"image/encoded": b64(RED)}, {"image/encoded": b64(BLUE)}]})
    assert response.status_code == 200, response.text
    result = response.json()["results"]
    assert len(result) == 2 and all(len(row) == conformance.TOP_K for row in result)
    assert result[0][0][0] == "red" and result[1][0][0] == "blue"
    assert all(isinstance(score, float) for row in result for _, score in row)
    assert result[0][0][1] > result[0][1][1]


def test_classify_with_context(rest):
    response = post(rest, f"/v1/models/{MODEL}/versions/1:classify", {
        "signature_name": "classify", "context": {"image/encoded": b64(GREEN)},
        "examples": [{}, {"image/encoded": b64(RED)}]})
    assert response.status_code == 200, response.text
    assert [row[0][0] for row in response.json()["results"]] == ["green", "red"]


def test_classify_errors(rest):
    assert "Expected one or two output Tensors, found 4" in error_of(post(
        rest, f"/v1/models/{MODEL}:classify", {"examples": [{"image/encoded": b64(RED)}]}), 400)
    assert "'examples' is expected and was not found" in error_of(post(
        rest, f"/v1/models/{MODEL}:classify", {"signature_name": "classify"}), 400)
    assert "'examples' value is an empty array" in error_of(post(
        rest, f"/v1/models/{MODEL}:classify", {"signature_name": "classify", "examples": []}),
        400)
    assert error_of(post(rest, f"/v1/models/{MODEL}:classify", {
        "signature_name": "nope", "examples": [{}]}), 400) == \
        "No signature was found with the name: nope"
    assert "image 0" in error_of(post(rest, f"/v1/models/{MODEL}:classify", {
        "signature_name": "classify", "examples": [{"image/encoded": "junk"}]}), 400)
