"""TF Serving conformance, case by case from TF Serving's own source and tests.

Each case cites where the behaviour comes from in tensorflow/serving (2.20 source, the
newest tag; 2.21 serves the same handlers): the REST handler's regexes and dispatch
(model_servers/http_rest_api_util.cc, http_rest_api_handler.cc and its test), the JSON
codec (util/json_tensor.cc and json_tensor_test.cc), the gRPC implementations
(servables/tensorflow/predict_impl.cc, classification_service.cc, regression_service.cc,
regressor.cc, model_servers/server_core.cc) and TensorFlow's saved_model::GetInputValues.
Like tests/test_serving_rest.py, it runs against the local server, or against a real TF
Serving serving `python -m serving.conformance --out=DIR` when TFSERVING_ADDRESSES is set.
"""

from __future__ import annotations

import base64
import json

import grpc
import pytest
import requests
import support
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving import conformance

MODEL = conformance.MODEL_NAME
RED = conformance.encode_png(conformance.COLOURS["red"])
MULTI_ROW = {"x": [1.0, 1.0], "n": 0, "text": ""}


@pytest.fixture(scope="module")
def stubs(endpoint):
    with grpc.insecure_channel(endpoint.grpc) as channel:
        yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
               model_service_pb2_grpc.ModelServiceStub(channel))


def call(endpoint, method: str, path: str, body=None) -> requests.Response:
    data = body if body is None or isinstance(body, (str, bytes)) else json.dumps(body)
    return requests.request(method, endpoint.rest + path, data=data, timeout=30)


def error_of(response: requests.Response, status: int) -> str:
    """The message of a TF Serving error response, checking its exact form: MakeJsonFromStatus
    writes {"error": ...} with rapidjson's PrettyWriter (json_tensor.cc:1129-1138), and every
    response is "Content-Type: application/json" (http_rest_api_util.cc AddHeaders)."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.text.startswith('{\n    "error": ') and response.text.endswith('"\n}')
    return response.json()["error"]


# --- REST routing: kPredictionApiGegex / kModelStatusApiRegex (http_rest_api_util.cc:31-34)


@pytest.mark.parametrize("method, path", [
    # http_rest_api_handler_test.cc:179-257, UnsupportedApiCalls.
    ("GET", "/v1/foo"), ("POST", "/v1/foo"), ("GET", "/v1/models/debug/model_name"),
    ("POST", "/v1/models"), ("GET", f"/v1/models/{MODEL}:predict"),
    ("GET", f"/v1/models/{MODEL}/version/50:predict"),
    ("POST", f"/v1/models/{MODEL}/version/50:regress"),
    ("POST", f"/v1/models/{MODEL}/versions/HELLO:regress"),
    ("POST", f"/v1/models/{MODEL}/metadata"),
    ("POST", f"/v1/models/{MODEL}/label/some_label:regress"),
    ("POST", f"/v1/models/{MODEL}/versions/50/labels/some_label:regress"),
    ("POST", f"/v1/models/{MODEL}/versions/some_label:regress"),
    # The regexes ignore case but the dispatch compares the verb exactly
    # (http_rest_api_handler.cc:85-94): an upper-case verb falls through.
    ("POST", f"/v1/models/{MODEL}:PREDICT"), ("POST", f"/v1/models/{MODEL}:Classify"),
    # The query string is part of the matched path (evhttp_request.cc:105-109, uri_path).
    ("POST", f"/v1/models/{MODEL}:predict?x=1"),
    # Other HTTP methods reach no processor (http_rest_api_handler.cc:85-101).
    ("PUT", f"/v1/models/{MODEL}:predict"), ("DELETE", f"/v1/models/{MODEL}"),
])
def test_malformed_requests(endpoint, method, path):
    body = {"instances": [MULTI_ROW], "signature_name": "multi"} if method != "GET" else None
    assert error_of(call(endpoint, method, path, body), 400) == (
        f"Malformed request: {method} {path}")


def test_version_too_big_for_int64(endpoint):
    """http_rest_api_handler_test.cc:228-234: (\\d+) matches, SimpleAtoi fails."""
    path = f"/v1/models/{MODEL}/versions/{'9' * 25}:predict"
    assert error_of(call(endpoint, "POST", path, {"instances": [MULTI_ROW]}), 400) == (
        f"Failed to convert version: {'9' * 25} to numeric.")


def test_status_without_a_model_name(endpoint):
    """http_rest_api_handler_test.cc:193-196."""
    assert "Missing model name" in error_of(call(endpoint, "GET", "/v1/models"), 400)


def test_metadata_subresource_is_compared_exactly(endpoint):
    """"/METADATA" matches the regex (it ignores case) and is then not "metadata": the
    handler answers a status request (http_rest_api_handler.cc:96-101)."""
    upper = call(endpoint, "GET", f"/v1/models/{MODEL}/METADATA")
    assert upper.status_code == 200
    assert set(upper.json()) == {"model_version_status"}
    lower = call(endpoint, "GET", f"/v1/models/{MODEL}/metadata")
    assert set(lower.json()) == {"model_spec", "metadata"}


def test_a_query_string_becomes_part_of_the_model_name(endpoint):
    """GET: ([^/:]+) takes "tiny?x=1" as the model's name (uri_path is path_and_query)."""
    response = call(endpoint, "GET", f"/v1/models/{MODEL}?x=1")
    assert error_of(response, 404) == f"Could not find any versions of model {MODEL}?x=1"


def test_model_names_are_url_decoded(endpoint):
    """ParseModelInfo decodes the name with curl_easy_unescape (http_rest_api_util.cc)."""
    encoded = "".join(f"%{ord(c):02x}" for c in MODEL)
    response = call(endpoint, "POST", f"/v1/models/{encoded}:predict",
                    {"signature_name": "multi", "instances": [MULTI_ROW]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["n_plus_one"] == 1


def test_success_responses_are_application_json(endpoint):
    response = call(endpoint, "GET", f"/v1/models/{MODEL}")
    assert response.headers["Content-Type"] == "application/json"


# --- JSON codec: json_tensor.cc and json_tensor_test.cc ----------------------------------


@pytest.mark.parametrize("body, message", [
    # json_tensor.cc:473-476: an empty body is refused before rapidjson runs.
    ("", "JSON Parse error: The document is empty"),
    # http_rest_api_handler_test.cc:298-301; rapidjson's own wording (GetParseError_En).
    ("instances = [1, 2]", "JSON Parse error: Invalid value. at offset: 0"),
    ('{"instances": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array "
                             "element. at offset: 17"),
    ('{"instances": [1] "x": 2}', "JSON Parse error: Missing a comma or '}' after an object "
                                  "member. at offset: 18"),
    ('{instances: [1]}', "JSON Parse error: Missing a name for object member. at offset: 1"),
    ('{"instances" [1]}', "JSON Parse error: Missing a colon after a name of object member. "
                          "at offset: 13"),
    # rapidjson reports an invalid escape at its backslash.
    ('{"signature_name": "\\q"}', "JSON Parse error: Invalid escape character in string. "
                                  "at offset: 20"),
])
def test_json_parse_errors(endpoint, body, message):
    response = call(endpoint, "POST", f"/v1/models/{MODEL}:predict", body)
    assert error_of(response, 400) == message


def multi_error(endpoint, body: dict) -> str:
    return error_of(call(endpoint, "POST", f"/v1/models/{MODEL}:predict",
                         {"signature_name": "multi", **body}), 400)


def test_named_tensor_errors(endpoint):
    """json_tensor_test.cc:642-795 (SingleUnnamedTensorErrors, MultipleNamedTensorErrors),
    on the "multi" signature: x float [None, 2], n int64 [None], text string [None]."""
    assert "must be a string value" in error_of(call(
        endpoint, "POST", f"/v1/models/{MODEL}:predict",
        {"signature_name": 5, "instances": [MULTI_ROW]}), 400)
    assert "Not formatted correctly" in multi_error(
        endpoint, {"instances": [MULTI_ROW], "inputs": {"x": [[1.0, 1.0]]}})
    assert "Expecting tensor size" in multi_error(endpoint, {"instances": [
        MULTI_ROW, {**MULTI_ROW, "x": [1.0, 2.0, 3.0]}]})
    assert "Expecting shape" in multi_error(endpoint, {"instances": [
        MULTI_ROW, {**MULTI_ROW, "x": [[1.0, 2.0]]}]})
    assert "not of expected type" in multi_error(endpoint, {"instances": [
        {**MULTI_ROW, "n": "a"}]})
    assert "Expecting object but got list" in multi_error(endpoint, {"instances": [
        MULTI_ROW, [1, 20, 30]]})


def test_base64_with_line_breaks_is_decoded(endpoint):
    """absl::Base64Unescape skips whitespace (json_tensor.cc:383 calls it), so the output of
    Python's base64.encodebytes, broken every 76 characters, is accepted."""
    image = support.png_of_size(40, 40)
    wrapped = base64.encodebytes(image).decode()
    assert "\n" in wrapped
    response = call(endpoint, "POST", f"/v1/models/{MODEL}:predict",
                    {"instances": [{"b64": wrapped}]})
    assert response.status_code == 200, response.text
    assert error_of(call(endpoint, "POST", f"/v1/models/{MODEL}:predict",
                         {"instances": [{"b64": "@@@@"}]}), 400).endswith(
        "Unable to base64 decode")


def test_classify_and_regress_answer_results(endpoint):
    """kClassifyRegressResponseKey is "results" (json_tensor.cc:82, 1076-1126)."""
    example = {"image/encoded": {"b64": base64.b64encode(RED).decode()}}
    response = call(endpoint, "POST", f"/v1/models/{MODEL}:classify",
                    {"signature_name": "classify", "examples": [example]})
    assert response.status_code == 200, response.text
    (row,) = response.json()["results"]
    assert row[0][0] == "red" and len(row) == conformance.TOP_K
    # Regress on the classify signature: PreProcessRegression (regressor.cc:179-184).
    assert error_of(call(endpoint, "POST", f"/v1/models/{MODEL}:regress",
                         {"signature_name": "classify", "examples": [example]}), 400) == (
        "Expected one output Tensor.")


# --- gRPC: ModelSpec validation and input aliases ------------------------------------------


def grpc_error(method, request) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        method(request, timeout=30)
    return info.value.code(), info.value.details()


def test_a_request_without_model_spec(stubs):
    """predict_impl.cc:40, classification_service.cc:38, regression_service.cc:36,
    get_model_metadata_impl.cc:79, get_model_status_impl.cc:70."""
    prediction, models = stubs
    for method, request in (
            (prediction.Predict, predict_pb2.PredictRequest()),
            (prediction.Classify, classification_pb2.ClassificationRequest()),
            (prediction.Regress, regression_pb2.RegressionRequest()),
            (prediction.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
                metadata_field=["signature_def"])),
            (models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest())):
        assert grpc_error(method, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Missing ModelSpec"), method


def test_a_model_spec_without_a_name(stubs):
    """ServerCore::ServableRequestFromModelSpec (server_core.cc:843-845)."""
    prediction, _ = stubs
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=""))
    request.inputs["image_bytes"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[RED],
        tensor_shape={"dim": [{"size": 1}]}))
    assert grpc_error(prediction.Predict, request) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "ModelSpec has no name specified.")


def test_input_aliases_follow_get_input_values(stubs):
    """saved_model::GetInputValues (tensorflow/cc/saved_model/util.cc), after
    VerifyRequestInputsSize (predict_util.cc:51-73) has passed."""
    prediction, _ = stubs
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
    request.inputs["image"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[RED], tensor_shape={"dim": [{"size": 1}]}))
    code, message = grpc_error(prediction.Predict, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("Signature input alias: image_bytes(feed name: ")
    assert message.endswith(") not found in request and no default value provided. Inputs "
                            "expected to be in the request {image}, or default input alias "
                            "set: ")
    request.inputs["image_bytes"].CopyFrom(request.inputs["image"])
    code, message = grpc_error(prediction.Predict, request)
    assert message.startswith("input size does not match signature: 2!=1")


def test_a_scalar_string_for_a_batch_input_is_refused(stubs):
    """TF Serving's resnet_client_grpc.py sends make_tensor_proto(data), a scalar: the
    [None] image_bytes input needs make_tensor_proto([data]) (clients/README.md)."""
    prediction, _ = stubs
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
    request.inputs["image_bytes"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[RED]))
    assert grpc_error(prediction.Predict, request)[0] == grpc.StatusCode.INVALID_ARGUMENT
    request.inputs["image_bytes"].tensor_shape.dim.add(size=1)
    assert prediction.Predict(request, timeout=30).outputs["classes"].string_val[0] == b"red"
