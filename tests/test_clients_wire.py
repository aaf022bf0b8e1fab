"""clients/ without a server: wire compatibility with the official TF Serving messages,
no TensorFlow in the client's imports, generated code up to date, errors, retries, images.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import any_pb2
from google.protobuf import descriptor as descriptor_lib
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    status_pb2,
)

from clients import errors, images, protos, retry, tensor_protos
from clients.grpc_client import GrpcClient
from clients.protos import regenerate
from clients.results import Prediction, TensorSpec

# Our message -> the official one with the same wire format.
OFFICIAL = {
    protos.TensorShapeProto: tensor_shape_pb2.TensorShapeProto,
    protos.TensorProto: tensor_pb2.TensorProto,
    protos.Example: example_pb2.Example,
    protos.TensorInfo: meta_graph_pb2.TensorInfo,
    protos.SignatureDef: meta_graph_pb2.SignatureDef,
    protos.ModelSpec: model_pb2.ModelSpec,
    protos.PredictRequest: predict_pb2.PredictRequest,
    protos.PredictResponse: predict_pb2.PredictResponse,
    protos.Input: input_pb2.Input,
    protos.ClassificationRequest: classification_pb2.ClassificationRequest,
    protos.ClassificationResponse: classification_pb2.ClassificationResponse,
    protos.SignatureDefMap: get_model_metadata_pb2.SignatureDefMap,
    protos.GetModelMetadataRequest: get_model_metadata_pb2.GetModelMetadataRequest,
    protos.GetModelMetadataResponse: get_model_metadata_pb2.GetModelMetadataResponse,
    protos.StatusProto: status_pb2.StatusProto,
    protos.GetModelStatusRequest: get_model_status_pb2.GetModelStatusRequest,
    protos.GetModelStatusResponse: get_model_status_pb2.GetModelStatusResponse,
}

F = descriptor_lib.FieldDescriptor
# Types that are the same varint on the wire (StatusProto.error_code: enum vs our int32).
VARINT = {F.TYPE_ENUM, F.TYPE_INT32}


def _is_repeated(field) -> bool:
    # protobuf 7 removed FieldDescriptor.label; is_repeated replaces it.
    flag = getattr(field, "is_repeated", None)
    return flag if flag is not None else field.label == F.LABEL_REPEATED


def _compare(ours, theirs, seen):
    if ours.full_name in seen:
        return
    seen.add(ours.full_name)
    for field in ours.fields:
        official = theirs.fields_by_number.get(field.number)
        assert official is not None, f"{ours.full_name}.{field.name}: no field {field.number}"
        where = f"{ours.full_name}.{field.name} vs {official.full_name}"
        assert field.name == official.name, where
        assert field.type == official.type or {field.type, official.type} <= VARINT, where
        assert _is_repeated(field) == _is_repeated(official), where
        if field.type == F.TYPE_MESSAGE:
            _compare(field.message_type, official.message_type, seen)
        if field.type == F.TYPE_ENUM and official.type == F.TYPE_ENUM:
            their_values = {v.name: v.number for v in official.enum_type.values}
            for value in field.enum_type.values:
                assert their_values.get(value.name) == value.number, (where, value.name)
        if (field.containing_oneof is None) != (official.containing_oneof is None):
            raise AssertionError(f"{where}: oneof membership differs")


@pytest.mark.parametrize("ours", list(OFFICIAL), ids=lambda m: m.DESCRIPTOR.name)
def test_descriptors_match_the_official_ones(ours):
    """Every field we define exists in the official message: same number, name, type."""
    _compare(ours.DESCRIPTOR, OFFICIAL[ours].DESCRIPTOR, set())


def test_package_does_not_clash_with_tensorflow():
    assert protos.PredictRequest.DESCRIPTOR.full_name == "effnet_serving.wire.PredictRequest"
    assert predict_pb2.PredictRequest.DESCRIPTOR.full_name == "tensorflow.serving.PredictRequest"


RED = tf.io.encode_png(np.full((4, 6, 3), (230, 20, 20), np.uint8)).numpy()
BLUE = tf.io.encode_jpeg(np.full((4, 6, 3), (20, 20, 230), np.uint8)).numpy()


@pytest.mark.parametrize("selector", [{}, {"version": 3}, {"label": "stable"}])
def test_predict_request_parses_as_the_official_message(selector):
    client = GrpcClient("localhost:1", "effnet", **selector)
    try:
        wire = client.predict_request([RED, BLUE], None).SerializeToString()
    finally:
        client.close()
    request = predict_pb2.PredictRequest.FromString(wire)
    assert request.model_spec.name == "effnet"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.WhichOneof("version_choice") == (
        "version" if "version" in selector else
        "version_label" if "label" in selector else None)
    if "version" in selector:
        assert request.model_spec.version.value == 3
    if "label" in selector:
        assert request.model_spec.version_label == "stable"
    assert list(request.inputs) == ["image_bytes"]
    tensor = tf.make_ndarray(request.inputs["image_bytes"])
    assert tensor.shape == (2,) and list(tensor) == [RED, BLUE]
    assert list(request.output_filter) == ["classes", "scores", "class_ids"]


def _official_response(content: bool):
    response = predict_pb2.PredictResponse()
    response.model_spec.name = "effnet"
    response.model_spec.version.value = 7
    response.model_spec.signature_name = "serving_default"
    scores = np.array([[0.75, 0.25], [0.5, 0.125]], np.float32)
    ids = np.array([[3, 1], [0, 2]], np.int64)
    classes = np.array([[b"cat", b"dog"], [b"ca\xc3\xa9", b"bus"]], object)
    for name, value in (("scores", scores), ("class_ids", ids), ("classes", classes)):
        if content or value.dtype == object:
            # make_tensor_proto packs numbers into tensor_content, as TF Serving does.
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        else:
            proto = response.outputs[name]
            proto.dtype = tf.as_dtype(value.dtype).as_datatype_enum
            proto.tensor_shape.dim.add(size=2)
            proto.tensor_shape.dim.add(size=2)
            getattr(proto, "float_val" if value.dtype == np.float32 else "int64_val").extend(
                value.ravel().tolist())
    return response


@pytest.mark.parametrize("content", [True, False], ids=["tensor_content", "typed_fields"])
def test_official_predict_response_parses_in_the_client(content):
    wire = _official_response(content).SerializeToString()
    response = protos.PredictResponse.FromString(wire)
    assert response.model_spec.version.value == 7
    predictions = GrpcClient._predictions(response, 2, None)
    assert predictions == [Prediction(("cat", "dog"), (0.75, 0.25), (3, 1)),
                           Prediction(("caé", "bus"), (0.5, 0.125), (0, 2))]
    assert GrpcClient._predictions(response, 2, 1)[1] == Prediction(("caé",), (0.5,), (0,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int16, np.int8,
                                   np.uint8, np.uint16, np.int64, np.uint32, np.uint64,
                                   np.bool_, np.float16])
def test_every_numeric_dtype_decodes(dtype):
    values = (np.arange(12).reshape(3, 4) % 5).astype(dtype)
    packed = tf.make_tensor_proto(values)  # tensor_content
    # AsProtoField-style protos (typed *_val fields), as some servers send them: a Python
    # list makes make_tensor_proto fill the typed fields instead of tensor_content.
    field_proto = tf.make_tensor_proto(values.tolist(), dtype=packed.dtype)
    for proto in (packed, field_proto):
        ours = protos.TensorProto.FromString(proto.SerializeToString())
        assert tensor_protos.shape_of(ours) == [3, 4]
        np.testing.assert_array_equal(np.array(tensor_protos.flat_values(ours), dtype),
                                      values.ravel())


def test_scalar_fill_follows_tensor_proto_semantics():
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.5])
    proto.tensor_shape.dim.add(size=3)
    ours = protos.TensorProto.FromString(proto.SerializeToString())
    assert tensor_protos.flat_values(ours) == [2.5, 2.5, 2.5]
    assert np.array_equal(tf.make_ndarray(proto), [2.5, 2.5, 2.5])


def test_classification_request_and_response_round_trip():
    client = GrpcClient("localhost:1", "effnet", version=2)
    request = classification_pb2.ClassificationRequest.FromString(
        client.classify_request([RED, BLUE], None).SerializeToString())
    client.close()
    assert request.model_spec.signature_name == "classify"
    assert request.model_spec.version.value == 2
    examples = request.input.example_list.examples
    assert [e.features.feature["image/encoded"].bytes_list.value[0] for e in examples] == \
        [RED, BLUE]
    # The official parser of tf.Example agrees, too.
    parsed = tf.io.parse_example([e.SerializeToString() for e in examples],
                                 {"image/encoded": tf.io.FixedLenFeature([], tf.string)})
    assert list(parsed["image/encoded"].numpy()) == [RED, BLUE]

    response = classification_pb2.ClassificationResponse()
    for row in ([("red", 0.875), ("blue", 0.125)], [("blue", 0.5), ("red", 0.25)]):
        classifications = response.result.classifications.add()
        for label, score in row:
            classifications.classes.add(label=label, score=score)
    ours = protos.ClassificationResponse.FromString(response.SerializeToString())
    assert GrpcClient._classifications(ours, 2, None) == [
        Prediction(("red", "blue"), (0.875, 0.125)), Prediction(("blue", "red"), (0.5, 0.25))]


def test_metadata_request_and_response_round_trip():
    client = GrpcClient("localhost:1", "effnet", label="canary")
    request = get_model_metadata_pb2.GetModelMetadataRequest.FromString(
        client.metadata_request().SerializeToString())
    client.close()
    assert list(request.metadata_field) == ["signature_def"]
    assert request.model_spec.version_label == "canary"

    signature_map = get_model_metadata_pb2.SignatureDefMap()
    signature = signature_map.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    signature.inputs["image_bytes"].dtype = types_pb2.DT_STRING
    signature.inputs["image_bytes"].tensor_shape.dim.add(size=-1)
    signature.outputs["scores"].dtype = types_pb2.DT_FLOAT
    signature.outputs["scores"].tensor_shape.unknown_rank = True
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = "effnet"
    response.model_spec.version.value = 4
    packed = any_pb2.Any()
    packed.Pack(signature_map)
    response.metadata["signature_def"].CopyFrom(packed)
    metadata = GrpcClient._model_metadata(
        protos.GetModelMetadataResponse.FromString(response.SerializeToString()))
    assert metadata.name == "effnet" and metadata.version == 4
    default = metadata.signatures["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert default.inputs == {"image_bytes": TensorSpec("DT_STRING", (-1,))}
    assert default.outputs == {"scores": TensorSpec("DT_FLOAT", None)}


def test_status_request_and_response_round_trip():
    client = GrpcClient("localhost:1", "effnet", version=5)
    request = get_model_status_pb2.GetModelStatusRequest.FromString(
        client.status_request().SerializeToString())
    client.close()
    assert request.model_spec.name == "effnet" and request.model_spec.version.value == 5
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=2, state=get_model_status_pb2.ModelVersionStatus.END,
                                      status=status_pb2.StatusProto(error_code=3,
                                                                    error_message="bad"))
    response.model_version_status.add(version=1,
                                      state=get_model_status_pb2.ModelVersionStatus.AVAILABLE)
    statuses = GrpcClient._statuses(
        protos.GetModelStatusResponse.FromString(response.SerializeToString()))
    assert [(s.version, s.state, s.error_code, s.error_message) for s in statuses] == [
        (1, "AVAILABLE", "OK", ""), (2, "END", "INVALID_ARGUMENT", "bad")]


# --- No TensorFlow, light imports ----------------------------------------------------------

def test_clients_never_import_tensorflow_numpy_or_pil():
    code = (
        "import sys\n"
        "import clients, clients.grpc_client, clients.rest_client, clients.aio, "
        "clients.protos, clients.errors, clients.images, clients.results, clients.retry, "
        "clients.loadtest, clients.__main__\n"
        "clients.GrpcClient('localhost:1', 'm').close()\n"
        "clients.images.encode_all([b'\\xff\\xd8raw bytes'])\n"
        "heavy = [m for m in ('tensorflow', 'tensorflow_serving', 'numpy', 'PIL', 'train',"
        " 'export', 'serving', 'keras') if m in sys.modules]\n"
        "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_clients_source_never_mentions_the_heavy_packages():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1] / "clients"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for name in ("import tensorflow", "from tensorflow", "from serving", "import serving",
                     "from train", "from export"):
            assert name not in text, f"{path}: {name}"


# --- Generated code policy -----------------------------------------------------------------

def test_committed_descriptor_matches_the_proto_source():
    from clients.protos import wire_descriptor

    proto = regenerate.HERE / regenerate.PROTO
    assert wire_descriptor.PROTO_SHA256 == hashlib.sha256(proto.read_bytes()).hexdigest(), \
        "effnet_serving_wire.proto changed: run python -m clients.protos.regenerate"


@pytest.mark.requires("grpc_tools")
def test_regenerating_yields_the_committed_file():
    assert regenerate.render() == regenerate.OUTPUT.read_text()


# --- Errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("code,http,cls", [
    ("INVALID_ARGUMENT", 400, errors.InvalidInputError),
    ("NOT_FOUND", 404, errors.NotFoundError),
    ("UNAVAILABLE", 503, errors.UnavailableError),
    ("RESOURCE_EXHAUSTED", 429, errors.UnavailableError),
    ("DEADLINE_EXCEEDED", 504, errors.DeadlineExceededError),
    ("UNIMPLEMENTED", 501, errors.UnimplementedError),
    ("INTERNAL", 500, errors.ServerError),
    ("PERMISSION_DENIED", 403, errors.PermissionDeniedError),
])
def test_both_protocols_map_to_the_same_error_classes(code, http, cls):
    import grpc

    number = getattr(grpc.StatusCode, code).value[0]
    by_grpc = errors.from_code(number, "msg")
    by_http = errors.from_http(http, "msg")
    assert type(by_grpc) is cls and type(by_http) is cls
    assert by_grpc.message == by_http.message == "msg"
    assert by_http.http_status == http and by_grpc.http_status is None
    assert errors.is_retryable(by_grpc) == (cls is errors.UnavailableError)


# --- Retries -------------------------------------------------------------------------------

class _Flaky:
    def __init__(self, failures):
        self.failures = list(failures)
        self.timeouts = []

    def __call__(self, remaining):
        self.timeouts.append(remaining)
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


FAST = retry.RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002)


def test_retries_unavailable_and_resource_exhausted_then_succeeds():
    attempt = _Flaky([errors.from_code("UNAVAILABLE", "down"),
                      errors.from_code("RESOURCE_EXHAUSTED", "queue full")])
    assert retry.call(attempt, FAST, timeout=5) == "ok"
    assert len(attempt.timeouts) == 3
    assert attempt.timeouts[0] > attempt.timeouts[2]  # One deadline for all attempts.


def test_never_retries_invalid_input_and_gives_up_after_max_attempts():
    attempt = _Flaky([errors.from_code("INVALID_ARGUMENT", "bad image")])
    with pytest.raises(errors.InvalidInputError):
        retry.call(attempt, FAST, timeout=5)
    assert len(attempt.timeouts) == 1
    attempt = _Flaky([errors.from_code("UNAVAILABLE", str(i)) for i in range(10)])
    with pytest.raises(errors.UnavailableError, match="3"):
        retry.call(attempt, FAST, timeout=None)
    assert len(attempt.timeouts) == 4


def test_no_retry_when_the_deadline_would_pass():
    slow = retry.RetryPolicy(max_attempts=5, initial_backoff_s=10, jitter=0)
    attempt = _Flaky([errors.from_code("UNAVAILABLE", "down")])
    with pytest.raises(errors.UnavailableError):
        retry.call(attempt, slow, timeout=1)
    assert len(attempt.timeouts) == 1


class _FakeClock:
    """time.monotonic and time.sleep for clients.retry: time moves only when slept."""

    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_retry_that_would_end_at_the_deadline_is_not_made(monkeypatch):
    clock = _FakeClock()
    monkeypatch.setattr(retry, "time", clock)
    policy = retry.RetryPolicy(max_attempts=5, initial_backoff_s=1, multiplier=2, jitter=0,
                               max_backoff_s=100)
    # Waits 1 s, then 2 s; a third wait (4 s) would end exactly at the deadline (7 s).
    attempt = _Flaky([errors.from_code("UNAVAILABLE", str(i)) for i in range(5)])
    with pytest.raises(errors.UnavailableError, match="2"):
        retry.call(attempt, policy, timeout=7)
    assert clock.slept == [1, 2]
    assert attempt.timeouts == [7, 6, 4]  # What was left of the deadline at each attempt.
    # A little more time and the third wait fits.
    clock = _FakeClock()
    monkeypatch.setattr(retry, "time", clock)
    attempt = _Flaky([errors.from_code("UNAVAILABLE", str(i)) for i in range(3)])
    assert retry.call(attempt, policy, timeout=7.5) == "ok"
    assert clock.slept == [1, 2, 4] and attempt.timeouts == [7.5, 6.5, 4.5, 0.5]
    # No timeout: only max_attempts ends it.
    attempt = _Flaky([errors.from_code("UNAVAILABLE", str(i)) for i in range(9)])
    with pytest.raises(errors.UnavailableError, match="4"):
        retry.call(attempt, policy, timeout=None)
    assert attempt.timeouts == [None] * 5


class _AsyncFlaky(_Flaky):
    async def __call__(self, remaining):
        return super().__call__(remaining)


def test_async_calls_retry_alike(monkeypatch):
    import asyncio

    waits = []

    async def no_wait(seconds):
        waits.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", no_wait)
    policy = retry.RetryPolicy(max_attempts=3, initial_backoff_s=1, multiplier=3, jitter=0,
                               max_backoff_s=100)
    attempt = _AsyncFlaky([errors.from_code("RESOURCE_EXHAUSTED", "queue full")])
    assert asyncio.run(retry.call_async(attempt, policy, timeout=None)) == "ok"
    assert waits == [1] and attempt.timeouts == [None, None]
    attempt = _AsyncFlaky([errors.from_code("UNAVAILABLE", str(i)) for i in range(5)])
    with pytest.raises(errors.UnavailableError, match="2"):
        asyncio.run(retry.call_async(attempt, policy, timeout=None))
    assert waits == [1, 1, 3] and len(attempt.timeouts) == 3
    attempt = _AsyncFlaky([errors.from_code("INVALID_ARGUMENT", "bad image")])
    with pytest.raises(errors.InvalidInputError, match="bad image"):
        asyncio.run(retry.call_async(attempt, policy, timeout=30))
    assert len(attempt.timeouts) == 1 and 0 < attempt.timeouts[0] <= 30
    # The deadline covers every attempt: no wait that would outlast it.
    patient = retry.RetryPolicy(initial_backoff_s=60, max_backoff_s=60, jitter=0)
    attempt = _AsyncFlaky([errors.from_code("UNAVAILABLE", "down")])
    with pytest.raises(errors.UnavailableError, match="down"):
        asyncio.run(retry.call_async(attempt, patient, timeout=30))
    assert len(attempt.timeouts) == 1 and waits == [1, 1, 3]


def test_backoff_grows_with_jitter_and_cap():
    import random

    policy = retry.RetryPolicy(initial_backoff_s=1, multiplier=2, max_backoff_s=5, jitter=0.5)
    rng = random.Random(0)
    waits = [policy.backoff(n, rng) for n in range(5)]
    assert 0.5 <= waits[0] <= 1 and 1 <= waits[1] <= 2 and 2 <= waits[2] <= 4
    assert all(2.5 <= w <= 5 for w in waits[3:])
    with pytest.raises(ValueError):
        retry.RetryPolicy(max_attempts=0)


# --- Images --------------------------------------------------------------------------------

def test_images_from_paths_bytes_pil_and_numpy(tmp_path):
    from PIL import Image

    path = tmp_path / "red.png"
    path.write_bytes(RED)
    assert images.encode(path) == RED and images.encode(str(path)) == RED
    assert images.encode(bytearray(RED)) == RED
    pixels = np.full((5, 7, 3), (20, 200, 20), np.uint8)
    for value in (Image.fromarray(pixels), pixels, pixels.astype(np.float32),
                  Image.fromarray(pixels).convert("RGBA")):
        decoded = tf.io.decode_jpeg(images.encode(value)).numpy()
        assert decoded.shape == (5, 7, 3)
        assert np.abs(decoded.astype(int) - pixels).max() < 8
    batch = np.stack([pixels, pixels])
    assert len(images.encode_all(batch)) == 2 and len(images.encode_all(pixels)) == 1
    with pytest.raises(ValueError, match="unsupported image type"):
        images.encode(12)
    with pytest.raises(ValueError, match="shape"):
        images.encode(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="no images"):
        images.encode_all([])


def test_downscale_keeps_aspect_ratio_and_leaves_small_images_alone():
    from PIL import Image

    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    small = images.encode(data, max_size=400, quality=80)
    assert len(small) < len(data) / 4
    assert Image.open(io.BytesIO(small)).size == (400, 300)
    assert images.encode(data, max_size=1600) == data  # Fits exactly: sent unchanged.
    assert images.downscale(data, 1600) == data  # Already small enough: untouched.
    assert images.downscale(RED, 100) == RED
    with pytest.raises(ValueError, match="cannot decode"):
        images.downscale(b"junk", 100)


# --- Arguments, packaging, progress ---------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    ({"version": 0}, "positive"), ({"version": True}, "positive"),
    ({"label": "a-b"}, "label"), ({"version": 1, "label": "x"}, "not both"),
    ({"timeout": 0}, "timeout"), ({"max_size": 0}, "max_size"), ({"quality": 101}, "quality"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    from clients import RestClient

    with pytest.raises(ValueError, match=match):
        GrpcClient("localhost:1", "m", **kwargs)
    with pytest.raises(ValueError, match=match):
        RestClient("http://localhost:1", "m", **kwargs)


def test_targets():
    from clients import RestClient, connect

    with pytest.raises(ValueError, match="plaintext"):
        GrpcClient("grpc://localhost:1", "m", root_certificates=b"pem")
    with pytest.raises(ValueError, match="host:port"):
        GrpcClient("http://localhost:1", "m")
    with pytest.raises(ValueError, match="http"):
        RestClient("localhost:1", "m")
    with pytest.raises(ValueError, match="both"):
        GrpcClient("grpcs://localhost:1", "m", private_key=b"key")
    with pytest.raises(ValueError, match="grpc://"):
        connect("ftp://x", "m")
    client = connect("grpcs://localhost:1", "m")
    assert isinstance(client, GrpcClient) and client.tls and client.address == "localhost:1"
    client.close()
    assert isinstance(connect("http://localhost:1", "m"), RestClient)


def test_light_distribution_declares_every_package():
    import pathlib

    tomllib = pytest.importorskip("tomllib")
    root = pathlib.Path(__file__).resolve().parents[1] / "clients"
    config = tomllib.loads((root / "pyproject.toml").read_text())
    packages = {"clients" + ("." + ".".join(p.parent.relative_to(root).parts)
                             if p.parent != root else "")
                for p in root.rglob("__init__.py")}
    assert packages | {"clients.examples"} == set(config["tool"]["setuptools"]["packages"])
    requirements = [line.split(">")[0] for line in (root / "requirements.txt").read_text()
                    .splitlines() if line and not line.startswith("#")]
    assert requirements == [d.split(">")[0] for d in config["project"]["dependencies"]]
    assert config["project"]["scripts"]["effnet-client"] == "clients.__main__:run"


def test_progress_bar():
    from clients import cli

    stream = io.StringIO()
    progress = cli.Progress(4, stream=stream, enabled=True, width=8,
                            clock=iter([0.0, 1.0, 2.0]).__next__)
    progress.update(2, 1)
    assert stream.getvalue() == "\r[####....] 2/4 files, 1 failed, 2.0 files/s, ETA 0:01"
    progress.update(2, 0)
    progress.close()
    # The shorter last line blanks the end of the longer one before it.
    assert stream.getvalue().endswith("\r[########] 4/4 files, 1 failed, 2.0 files/s, 0:02    \n")
    silent = io.StringIO()
    cli.Progress(1, stream=silent, enabled=False).update(1, 0)
    assert silent.getvalue() == ""
