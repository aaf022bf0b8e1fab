"""gRPC conformance: PredictionService and ModelService as TF Serving answers them.

Local server by default; a real TF Serving with TFSERVING_ADDRESSES (serving/README.md).
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import support
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import conformance

MODEL = conformance.MODEL_NAME
RED = conformance.encode_png(conformance.COLOURS["red"])
BLUE = conformance.encode_jpeg(conformance.COLOURS["blue"])
BIG = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def channel(endpoint):
    channel = grpc.insecure_channel(endpoint.grpc, options=[
        ("grpc.max_send_message_length", BIG), ("grpc.max_receive_message_length", BIG)])
    yield channel
    channel.close()


@pytest.fixture(scope="module")
def predictions(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def models(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def spec(signature="", version=None, label=None, name=MODEL) -> model_pb2.ModelSpec:
    model_spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        model_spec.version.value = version
    if label is not None:
        model_spec.version_label = label
    return model_spec


def image_request(images, **kwargs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(model_spec=spec(**kwargs))
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(images, dtype=tf.string))
    return request


def fails(call, request, code):
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=30)
    assert info.value.code() == code, info.value.details()
    return info.value.details()


def test_predict(predictions):
    response = predictions.Predict(image_request([RED, BLUE]), timeout=30)
    assert set(response.outputs) == {"classes", "class_ids", "scores", "probabilities"}
    classes = tf.make_ndarray(response.outputs["classes"])
    assert classes.shape == (2, conformance.TOP_K)
    assert [c.decode() for c in classes[:, 0]] == ["red", "blue"]
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    assert tf.make_ndarray(response.outputs["class_ids"]).dtype == np.int64
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"


def test_predict_by_version_and_label(predictions):
    def y(**kwargs):
        request = predict_pb2.PredictRequest(model_spec=spec("multi", **kwargs))
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0, 1.0]], dtype=tf.float32))
        request.inputs["n"].CopyFrom(tf.make_tensor_proto([0], dtype=tf.int64))
        request.inputs["text"].CopyFrom(tf.make_tensor_proto([b""], dtype=tf.string))
        response = predictions.Predict(request, timeout=30)
        return response.model_spec.version.value, tf.make_ndarray(response.outputs["y"])[0, 0]

    assert y(version=1) == (1, 2.0)
    assert y(label="canary") == (2, 3.0)
    assert y(label="stable") == (1, 2.0)


def test_output_filter(predictions):
    request = image_request([RED])
    request.output_filter.append("scores")
    response = predictions.Predict(request, timeout=30)
    assert list(response.outputs) == ["scores"]
    request.output_filter.append("nope")
    assert "output tensor alias not found in signature: nope" in fails(
        predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT)


def test_unknown_model_version_label(predictions):
    assert fails(predictions.Predict, image_request([RED], name="nope"),
                 grpc.StatusCode.NOT_FOUND) == "Servable not found for request: Latest(nope)"
    assert fails(predictions.Predict, image_request([RED], version=9),
                 grpc.StatusCode.NOT_FOUND) == \
        f"Servable not found for request: Specific({MODEL}, 9)"
    assert fails(predictions.Predict, image_request([RED], label="nope"),
                 grpc.StatusCode.INVALID_ARGUMENT) == "Unrecognized servable version label: nope"


def test_unknown_signature(predictions):
    assert fails(predictions.Predict, image_request([RED], signature="nope"),
                 grpc.StatusCode.FAILED_PRECONDITION) == \
        'Serving signature key "nope" not found.'


def test_missing_extra_and_misnamed_inputs(predictions):
    request = image_request([RED])
    request.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0]))
    assert fails(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT).startswith(
        "input size does not match signature: 2!=1 len({extra,image_bytes}) != "
        "len({image_bytes}). Sent extra: {extra}. Missing but required: {}.")
    request = predict_pb2.PredictRequest(model_spec=spec())
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([RED], dtype=tf.string))
    fails(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT)
    request = predict_pb2.PredictRequest(model_spec=spec())
    assert "input size does not match signature: 0!=1" in fails(
        predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT)


def test_wrong_dtype(predictions):
    request = predict_pb2.PredictRequest(model_spec=spec())
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([1.0, 2.0], dtype=tf.float32))
    assert "to be string but float is provided" in fails(
        predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT)


def test_bad_image_bytes(predictions):
    message = fails(predictions.Predict, image_request([RED, RED, b"junk"]),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert "image 2" in message


def test_messages_over_4mb_are_accepted(predictions):
    big = support.png_of_size(1400, 1100)
    assert len(big) > 4 * 1024 * 1024
    response = predictions.Predict(image_request([big]), timeout=60)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1, 3)


def classify_request(images, signature="classify", **kwargs):
    request = classification_pb2.ClassificationRequest(model_spec=spec(signature, **kwargs))
    for image in images:
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(image)
    return request


def test_classify(predictions):
    response = predictions.Classify(classify_request([RED, BLUE]), timeout=30)
    rows = response.result.classifications
    assert [row.classes[0].label for row in rows] == ["red", "blue"]
    assert all(len(row.classes) == conformance.TOP_K for row in rows)
    assert rows[0].classes[0].score > rows[0].classes[1].score
    assert response.model_spec.signature_name == "classify"
    assert response.model_spec.version.value == 2


def test_classify_errors(predictions):
    assert fails(predictions.Classify, classify_request([]),
                 grpc.StatusCode.INVALID_ARGUMENT) == "Input is empty."
    assert fails(predictions.Classify, classify_request([RED], signature="nope"),
                 grpc.StatusCode.INVALID_ARGUMENT) == "No signature was found with the name: nope"
    assert "image 0" in fails(predictions.Classify, classify_request([b"junk"]),
                              grpc.StatusCode.INVALID_ARGUMENT)


def test_get_model_metadata(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec(version=1), metadata_field=["signature_def"])
    response = predictions.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def["serving_default"]
    assert default.inputs["image_bytes"].dtype == tf.string.as_datatype_enum
    assert signature_map.signature_def["classify"].method_name == "tensorflow/serving/classify"


def test_get_model_metadata_errors(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec())
    assert fails(predictions.GetModelMetadata, request, grpc.StatusCode.INVALID_ARGUMENT) == \
        "GetModelMetadataRequest must specify at least one metadata_field"
    request.metadata_field.append("nope")
    assert fails(predictions.GetModelMetadata, request, grpc.StatusCode.INVALID_ARGUMENT) == \
        "Metadata field nope is not supported"
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=spec(name="nope"), metadata_field=["signature_def"])
    fails(predictions.GetModelMetadata, request, grpc.StatusCode.NOT_FOUND)


def test_get_model_status(models):
    response = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=spec()), timeout=30)
    states = {s.version: s.state for s in response.model_version_status}
    assert states == {1: get_model_status_pb2.ModelVersionStatus.AVAILABLE,
                      2: get_model_status_pb2.ModelVersionStatus.AVAILABLE}
    response = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec=spec(version=1)), timeout=30)
    assert [s.version for s in response.model_version_status] == [1]
    assert response.model_version_status[0].status.error_code == 0


def test_get_model_status_errors(models):
    assert fails(models.GetModelStatus,
                 get_model_status_pb2.GetModelStatusRequest(model_spec=spec(name="nope")),
                 grpc.StatusCode.NOT_FOUND) == "Could not find any versions of model nope"
    assert fails(models.GetModelStatus,
                 get_model_status_pb2.GetModelStatusRequest(model_spec=spec(version=7)),
                 grpc.StatusCode.NOT_FOUND) == f"Could not find version 7 of model {MODEL}"
    fails(models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest(),
          grpc.StatusCode.INVALID_ARGUMENT)


def multi_inference_request(*signatures):
    request = inference_pb2.MultiInferenceRequest()
    for signature in signatures:
        request.tasks.add(model_spec=spec(signature, version=1),
                          method_name="tensorflow/serving/classify")
    for image in (RED, BLUE):
        example = request.input.example_list.examples.add()
        example.features.feature["image/encoded"].bytes_list.value.append(image)
    return request


def test_multi_inference(predictions):
    response = predictions.MultiInference(multi_inference_request("classify"), timeout=30)
    (result,) = response.results
    assert result.model_spec.version.value == 1
    assert result.model_spec.signature_name == "classify"
    assert [row.classes[0].label for row in result.classification_result.classifications] \
        == ["red", "blue"]
    assert fails(predictions.MultiInference, multi_inference_request("classify", "classify"),
                 grpc.StatusCode.INVALID_ARGUMENT) == \
        "Duplicate evaluation of signature: classify"


def test_server_survives_garbage(predictions):
    request = predict_pb2.PredictRequest(model_spec=spec())
    request.inputs["image_bytes"].dtype = tf.string.as_datatype_enum
    request.inputs["image_bytes"].tensor_shape.dim.add(size=3)  # Shape says 3, no values.
    fails(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT)
    assert predictions.Predict(image_request([RED]), timeout=30).outputs
