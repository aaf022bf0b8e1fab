"""Hostile input and overload against the local server (issue 16).

Each probe of the adversarial run is replayed against an in-process local server: it must
get a client-error status (never a 5xx) with a message naming the problem, the server's
memory must stay bounded (peak RSS of this process, which hosts the server), and a good
request must succeed right after. The bounds are generous (the defects cost gigabytes) and
nothing is timed. The local server only: these tests read the server's memory and
metrics, so they skip when TFSERVING_ADDRESSES points at a real TF Serving.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import time
import zlib

import grpc
import numpy as np
import pytest
import requests
import support
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    model_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import conformance, errors, rest, server, tensors

pytestmark = pytest.mark.skipif(support.external_endpoint() is not None,
                                reason="measures the local server's memory and metrics")

MODEL = conformance.MODEL_NAME
METRICS_PATH = "/monitoring/prometheus/metrics"
RED = conformance.encode_png(conformance.COLOURS["red"])
MiB = 1 << 20


@pytest.fixture(scope="module")
def served(tmp_path_factory, conformance_models):
    """(server, endpoint) on the conformance models, with the Prometheus page on."""
    monitoring = tmp_path_factory.mktemp("hostile") / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    with conformance.local_server(model_config_file=str(conformance_models),
                                  allow_version_labels_for_unavailable_models=True,
                                  monitoring_config_file=str(monitoring)) as (srv, endpoint):
        yield srv, endpoint


@pytest.fixture(scope="module")
def endpoint(served):
    return served[1]


@pytest.fixture(scope="module")
def predictions(endpoint):
    channel = grpc.insecure_channel(endpoint.grpc, options=[
        ("grpc.max_send_message_length", 64 * MiB),
        ("grpc.max_receive_message_length", 64 * MiB)])
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


# --- Helpers ---------------------------------------------------------------------------------


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text[:2000]
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


def grpc_error(call, request, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=60)
    assert raised.value.code() == code, raised.value.details()
    return raised.value.details()


def spec(signature: str = "", name: str = MODEL, version: int | None = None):
    model_spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        model_spec.version.value = version
    return model_spec


def tensor(dtype: int, dims: list[int], **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


def assert_serves(endpoint, predictions) -> None:
    """A good request, over REST and gRPC, right after a bad one."""
    response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}/versions/1:predict",
                             json={"instances": [{"b64": base64.b64encode(RED).decode()}]},
                             timeout=60)
    assert response.status_code == 200, response.text[:2000]
    assert response.json()["predictions"][0]["classes"][0] == "red"
    request = predict_pb2.PredictRequest(model_spec=spec(version=1))
    request.inputs["image_bytes"].CopyFrom(
        tensor(types_pb2.DT_STRING, [1], string_val=[RED]))
    assert list(predictions.Predict(request, timeout=60).outputs["classes"].string_val)[0] \
        == b"red"


def metrics_page(endpoint) -> str:
    response = requests.get(endpoint.rest + METRICS_PATH, timeout=30)
    assert response.status_code == 200
    return response.text


def deflate_zeros(size: int) -> bytes:
    """Raw deflate data of size zero bytes (about size/1000 compressed), built cheaply."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    compressor.compress(bytes(MiB))
    compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush the compressor starts afresh: each further MiB compresses alike.
    block = compressor.compress(bytes(MiB)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (size // MiB) + compressor.flush()


def gzip_stream(size: int, declared: int) -> bytes:
    """A gzip member of size zero bytes whose footer claims declared bytes; its CRC is not
    computed (every refusal here comes before it would be checked)."""
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return (header + deflate_zeros(size) + (0).to_bytes(4, "little")
            + declared.to_bytes(4, "little"))


# --- Requests: metrics, bodies, tensor sizes, malformed input (D, E, F, H) ---------------------


def test_unknown_model_names_over_rest_do_not_grow_the_metrics(endpoint, predictions):
    # D: 3,000 distinct names used to add 3,000 label sets. TF Serving records the URL's
    # name as it is; here names the server does not serve are counted under "".
    before = metrics_page(endpoint)
    unknown = ':tensorflow:serving:request_count{model_name="",status="NOT_FOUND"} '
    counted = sum(int(line.split()[-1]) for line in before.splitlines()
                  if line.startswith(unknown))
    with requests.Session() as session:
        for i in range(3000):
            response = session.post(f"{endpoint.rest}/v1/models/ghost-{i}:predict",
                                    data='{"instances": [1]}', timeout=30)
            assert error_of(response, 404) == \
                f"Servable not found for request: Latest(ghost-{i})"
    assert_serves(endpoint, predictions)
    after = metrics_page(endpoint)
    assert "ghost" not in after
    assert len(after) < len(before) + 20_000  # The good request's first series at most.
    assert any(line == f"{unknown}{counted + 3000}" for line in after.splitlines())
    assert f':tensorflow:serving:request_count{{model_name="{MODEL}",status="OK"}}' in after
    assert (f':tensorflow:serving:request_latency_count{{model_name="{MODEL}",'
            'API="predict",entrypoint="REST"}') in after
    assert (f':tensorflow:serving:request_latency_count{{model_name="{MODEL}",'
            'API="Predict",entrypoint="GRPC"}') in after


def test_huge_model_names_over_grpc_are_neither_counted_nor_echoed(endpoint, predictions):
    # D: 400 GetModelMetadata calls with 256 KiB names grew the metrics page from 19 KB to
    # 21 MB (+107 MiB RSS). TF Serving does not count GetModelMetadata at all
    # (prediction_service_impl.cc:64-73); Predict it counts, here under "".
    before = metrics_page(endpoint)
    with support.peak_rss_growth() as growth:
        for i in range(400):
            name = f"{i:06d}" + "n" * (256 * 1024)
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=spec(name=name), metadata_field=["signature_def"])
            message = grpc_error(predictions.GetModelMetadata, request,
                                 grpc.StatusCode.NOT_FOUND)
            # The message echoes the name, bounded (grpcio clients fail the call with
            # RESOURCE_EXHAUSTED on trailers over 16 KiB).
            assert message.startswith(f"Servable not found for request: Latest({i:06d}nnn")
            assert message.endswith("nnn)") and "characters cut" in message
            assert len(message) < errors.MAX_MESSAGE_CHARS + 100
        for i in range(20):
            request = predict_pb2.PredictRequest(
                model_spec=spec(name=f"{i:06d}" + "p" * 256 * 1024))
            grpc_error(predictions.Predict, request, grpc.StatusCode.NOT_FOUND)
    assert growth["mb"] < 60
    assert_serves(endpoint, predictions)
    after = metrics_page(endpoint)
    assert "nnnn" not in after and "pppp" not in after
    assert len(after) < len(before) + 20_000


def test_gzip_bombs_are_refused_without_inflating(endpoint, predictions):
    # E: 8 concurrent 1 MiB gzip bodies inflating to 1 GiB took +3.1 GB. TF Serving reads
    # the gzip footer first and refuses more than 100 MiB (gzip_zlib.cc:787-795); the body
    # then reads as empty, hence its "document is empty" answer.
    bomb = gzip_stream(1 << 30, declared=1 << 30)
    assert len(bomb) < 2 * MiB

    def post(_):
        return requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict", data=bomb,
                             headers={"Content-Encoding": "gzip"}, timeout=60)

    with support.peak_rss_growth() as growth:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(post, range(8)))
    for response in responses:
        assert error_of(response, 400) == (
            "JSON Parse error: The document is empty (the request body was read as empty: "
            f"its gzip footer declares {1 << 30} uncompressed bytes, more than the limit of "
            f"{rest.MAX_UNCOMPRESSED_BYTES})")
    assert growth["mb"] < 300
    assert_serves(endpoint, predictions)


def test_gzip_footer_that_lies_stops_inflation_at_the_declared_size(endpoint, predictions):
    for declared in (1000, rest.MAX_UNCOMPRESSED_BYTES):
        with support.peak_rss_growth() as growth:
            response = requests.post(
                f"{endpoint.rest}/v1/models/{MODEL}:predict",
                data=gzip_stream(1 << 30, declared=declared),
                headers={"Content-Encoding": "gzip"}, timeout=60)
        assert error_of(response, 400) == (
            "JSON Parse error: The document is empty (the request body was read as empty: "
            f"it inflates to more than the {declared} bytes its gzip footer declares)")
        assert growth["mb"] < 300  # At most the declared 100 MiB, once.
    assert_serves(endpoint, predictions)


@pytest.mark.parametrize("encoding", ["deflate", "br"])
def test_encodings_other_than_gzip_are_not_decoded(endpoint, predictions, encoding):
    # E: deflate was inflated (unbounded) too. TF Serving inflates gzip only
    # (evhttp_request.cc:261-266): other bytes reach the JSON parser as they are.
    bomb = b"\x78\xda" + deflate_zeros(1 << 30) + bytes(4)  # zlib-wrapped, as HTTP deflate
    with support.peak_rss_growth() as growth:
        response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict", data=bomb,
                                 headers={"Content-Encoding": encoding}, timeout=60)
    assert error_of(response, 400).startswith("JSON Parse error: ")
    assert growth["mb"] < 100
    good = zlib.compress(json.dumps({"instances": [1]}).encode())
    response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict", data=good,
                             headers={"Content-Encoding": encoding}, timeout=60)
    assert error_of(response, 400).startswith("JSON Parse error: ")
    assert_serves(endpoint, predictions)


def test_batch_of_2000_images_is_refused_before_it_runs(endpoint, predictions):
    # F: a batch of 2,000 tiny JPEGs left +3.7 GB behind. Refused at the request limit.
    jpeg = conformance.encode_jpeg(conformance.COLOURS["green"])
    message = ("Input image_bytes: batch size 2000 is larger than the maximum request batch "
               f"size {tensors.DEFAULT_MAX_REQUEST_BATCH_SIZE} (--max_request_batch_size, a "
               "local-server limit)")
    request = predict_pb2.PredictRequest(model_spec=spec())
    request.inputs["image_bytes"].CopyFrom(
        tensor(types_pb2.DT_STRING, [2000], string_val=[jpeg] * 2000))
    with support.peak_rss_growth() as growth:
        assert grpc_error(predictions.Predict, request,
                          grpc.StatusCode.INVALID_ARGUMENT) == message
        response = requests.post(
            f"{endpoint.rest}/v1/models/{MODEL}:predict",
            json={"instances": [{"b64": base64.b64encode(jpeg).decode()}] * 2000}, timeout=60)
        assert error_of(response, 400) == message
    assert growth["mb"] < 300
    assert_serves(endpoint, predictions)


def test_tensors_declaring_huge_shapes_are_refused_before_allocation(endpoint, predictions):
    # F: a 40-byte DT_STRING tensor declaring [5,000,000] cost +1.7 GB, a float tensor
    # declaring [1,9600,9600,3] with one value +1.0 GB before the shape check. Tensor::FromProto
    # would fill both with the last value; the request limits refuse them first.
    strings = predict_pb2.PredictRequest(model_spec=spec())
    strings.inputs["image_bytes"].CopyFrom(
        tensor(types_pb2.DT_STRING, [5_000_000], string_val=[b"x" * 40]))
    floats = predict_pb2.PredictRequest(model_spec=spec("predict_images"))
    floats.inputs["images"].CopyFrom(
        tensor(types_pb2.DT_FLOAT, [1, 9600, 9600, 3], float_val=[0.5]))
    with support.peak_rss_growth() as growth:
        assert grpc_error(predictions.Predict, strings, grpc.StatusCode.INVALID_ARGUMENT) \
            .startswith("Input image_bytes: batch size 5000000 is larger than the maximum "
                        "request batch size 1024")
        size = 9600 * 9600 * 3 * 4
        assert grpc_error(predictions.Predict, floats, grpc.StatusCode.INVALID_ARGUMENT) == (
            f"Input images (float [1,9600,9600,3], {size} bytes) brings the request's input "
            f"tensors to {size} bytes, more than the limit of {1 << 30} bytes "
            "(--max_request_tensor_bytes, a local-server limit)")
    assert growth["mb"] < 100
    assert_serves(endpoint, predictions)


def test_fewer_values_than_the_shape_follow_tensor_from_proto(predictions):
    # Sane FromProto semantics kept: too few typed values are padded with the last one (none:
    # zeros), too many are cut; tensor_content must match the shape exactly.
    request = predict_pb2.PredictRequest(model_spec=spec("multi", version=1))
    request.inputs["x"].CopyFrom(tensor(types_pb2.DT_FLOAT, [3, 2], float_val=[1.0, 4.0]))
    request.inputs["n"].CopyFrom(tensor(types_pb2.DT_INT64, [3]))
    request.inputs["text"].CopyFrom(tensor(types_pb2.DT_STRING, [3],
                                           string_val=[b"a", b"b", b"c", b"d"]))
    outputs = predictions.Predict(request, timeout=60).outputs
    assert list(outputs["y"].float_val) == [2.0, 8.0, 8.0, 8.0, 8.0, 8.0]
    assert list(outputs["n_plus_one"].int64_val) == [1, 1, 1]
    assert list(outputs["upper"].string_val) == [b"A", b"B", b"C"]
    request.inputs["x"].CopyFrom(tensor(types_pb2.DT_FLOAT, [3, 2],
                                        tensor_content=np.ones(5, np.float32).tobytes()))
    assert grpc_error(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT) == (
        "tensor parsing error: x (tensor_content has 20 bytes, float [3,2] needs 24)")


def test_request_limits_are_options(conformance_models):
    with conformance.local_server(model_config_file=str(conformance_models),
                                  allow_version_labels_for_unavailable_models=True,
                                  max_request_batch_size=2, max_request_tensor_bytes=1000,
                                  enable_model_warmup=False) as (_, endpoint):
        channel = grpc.insecure_channel(endpoint.grpc)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec=spec("predict_images"))
        request.inputs["images"].CopyFrom(tensor(types_pb2.DT_FLOAT, [1, 8, 8, 3],
                                                 float_val=[9.0]))  # 768 bytes
        assert len(stub.Predict(request, timeout=60).outputs["scores"].float_val) == 2
        request.inputs["images"].CopyFrom(tensor(types_pb2.DT_FLOAT, [2, 8, 8, 3],
                                                 float_val=[9.0]))
        assert "more than the limit of 1000 bytes" in grpc_error(
            stub.Predict, request, grpc.StatusCode.INVALID_ARGUMENT)
        channel.close()
        png = {"b64": base64.b64encode(RED).decode()}
        response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict",
                                 json={"instances": [png] * 3}, timeout=60)
        assert error_of(response, 400).startswith(
            "Input image_bytes: batch size 3 is larger than the maximum request batch size 2")
        response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:classify", json={
            "signature_name": "classify",
            "examples": [{"image/encoded": png}] * 3}, timeout=60)
        assert error_of(response, 400).startswith(
            "Input examples: batch size 3 is larger than the maximum request batch size 2")
    with pytest.raises(ValueError, match="max_batch_size must be >= 0"):
        server.ServerOptions(model_base_path="/m", max_request_batch_size=-1).validated()


def test_default_limits_admit_64_twelve_megapixel_jpegs():
    # Real traffic must pass: 64 JPEGs of a 12-MP camera (~5 MB each, 8 MB to be safe),
    # counted as the request would declare them (FromProto repeats the one value given).
    photo = b"\xff\xd8" + bytes(8 * MiB)
    proto = tensor(types_pb2.DT_STRING, [64], string_val=[photo])
    with tensors.request_limits(tensors.RequestLimits()):
        array = tensors.to_numpy(proto, "image_bytes")
    assert array.shape == (64,) and array[63] is array[0]


@pytest.mark.parametrize("depth", [65, 66])
def test_deeply_nested_instances_are_a_client_error(endpoint, predictions, depth):
    # H: "instances" nested 65/66 deep answered 500 (numpy holds at most 64 dimensions).
    value = "x"
    for _ in range(depth):
        value = [value]
    response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict",
                             json={"instances": value}, timeout=60)
    assert error_of(response, 400) == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON "
        f"Value nested {depth - 1} lists deep: input image_bytes would have {depth} "
        "dimensions, more than the 64 this server supports")
    response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict",
                             json={"inputs": value}, timeout=60)
    assert error_of(response, 400) == (
        f"JSON Value nested {depth} lists deep: input image_bytes would have {depth} "
        "dimensions, more than the 64 this server supports")
    response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict",
                             data='{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}",
                             timeout=60)
    assert error_of(response, 400) == "JSON Parse error: nesting too deep"
    assert_serves(endpoint, predictions)


def test_unknown_dtype_and_negative_dims_are_invalid_argument(endpoint, predictions):
    # H: dtype 999 answered INTERNAL; a DT_STRING dim of -5 was read as [1].
    request = predict_pb2.PredictRequest(model_spec=spec())
    request.inputs["image_bytes"].CopyFrom(tensor(999, [1], string_val=[RED]))
    assert grpc_error(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT) == \
        "Expects arg[0] to be string but unknown dtype enum (999) is provided"
    request.inputs["image_bytes"].CopyFrom(tensor(types_pb2.DT_STRING, [-5],
                                                  string_val=[RED]))
    assert grpc_error(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT) == \
        "tensor parsing error: image_bytes (tensor_shape dim 0 is -5; sizes must be >= 0)"
    request.inputs["image_bytes"].CopyFrom(tensor(types_pb2.DT_STRING, [],
                                                  string_val=[RED]))
    request.inputs["image_bytes"].tensor_shape.unknown_rank = True
    assert grpc_error(predictions.Predict, request, grpc.StatusCode.INVALID_ARGUMENT) == \
        "tensor parsing error: image_bytes (tensor_shape has unknown rank)"
    assert_serves(endpoint, predictions)


def test_errors_echo_a_bounded_part_of_the_request(endpoint, predictions):
    # A 50 MB malformed body came back as a 50 MB error: TF Serving's message prefix is
    # kept, the echoed JSON cut.
    body = '{"instances": "' + "x" * 50_000_000 + '"}'
    response = requests.post(f"{endpoint.rest}/v1/models/{MODEL}:predict", data=body,
                             timeout=120)
    assert len(response.content) < 8000
    message = error_of(response, 400)
    assert message.startswith('JSON Value: {"instances":"xxxx')
    assert message.endswith("...(cut) Expecting 'instances' to be an list/array")
    assert_serves(endpoint, predictions)


# --- Images through the exported graph, and deadlines (A, B, C) --------------------------
# These go through a model made by the real exporter: its serving signature is what the
# real TF Serving runs too, so the first two cases protect it as well as this server.


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory):
    from support import encode, make_run, quadrant_image

    from export import exporter

    root = tmp_path_factory.mktemp("hostile-export")
    base = root / "models" / "colours"
    exporter.export_model(exporter.ExportConfig(
        model_dir=str(make_run(root)), export_base=str(base),
        warmup_batch_sizes=(1,)).validated())
    return base, encode(quadrant_image("red"))


@pytest.fixture(scope="module")
def export_server(exported_model):
    base, _ = exported_model
    with conformance.local_server(model_name="colours", model_base_path=str(base),
                                  rest_api_timeout_in_ms=1000) as (_, endpoint):
        yield endpoint


def _rest_predict(endpoint, images: list[bytes], timeout: float = 60):
    body = {"instances": [{"b64": base64.b64encode(b).decode()} for b in images]}
    return requests.post(f"{endpoint.rest}/v1/models/colours:predict", json=body,
                         timeout=timeout)


def _grpc_predict(endpoint, images: list[bytes], timeout: float = 60):
    request = predict_pb2.PredictRequest(model_spec=spec(name="colours"))
    request.inputs["image_bytes"].CopyFrom(
        tensor(types_pb2.DT_STRING, [len(images)], string_val=images))
    options = [("grpc.max_send_message_length", 1 << 30)]
    with grpc.insecure_channel(endpoint.grpc, options=options) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout)


def _assert_good_request_succeeds(endpoint, good: bytes) -> None:
    response = _rest_predict(endpoint, [good])
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["classes"][0] == "red"


@pytest.mark.parametrize("case, make, message", [
    ("A: GIF frame of 144 MP on a 10x10 screen", conformance.gif_bomb,
     "image 0: 12000x12000 pixels (144.0 MP) exceeds the limit of 50.0 MP"),
    ("C: progressive JPEG repeating a scan 2,000 times", conformance.progressive_scan_bomb,
     "image 0: JPEG with 2010 scans exceeds the limit of 64 (a progressive JPEG has about 10)"),
])
@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_images_that_would_exhaust_the_decoder_are_refused_by_the_graph(
        export_server, exported_model, transport, case, make, message):
    bomb = make()
    started = time.process_time()
    with support.peak_rss_growth() as growth:
        if transport == "rest":
            message_seen = error_of(_rest_predict(export_server, [bomb]), 400)
        else:
            with pytest.raises(grpc.RpcError) as info:
                _grpc_predict(export_server, [bomb])
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            message_seen = info.value.details()
    assert message in message_seen
    # Generous bounds; the defects took +554 MB (A) and 22 CPU-seconds (C).
    assert growth["mb"] < 150, f"{case}: peak RSS grew by {growth['mb']:.0f} MB"
    assert time.process_time() - started < 5, case
    _assert_good_request_succeeds(export_server, exported_model[1])


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_request_past_its_deadline_stops_using_the_cpu(export_server, exported_model,
                                                         transport):
    """B: the REST timeout (1 s here) or the gRPC deadline reaches the session as
    RunOptions.timeout_in_ms, so the work stops instead of running on for seconds."""
    from PIL import Image

    # A smooth 1500 x 1500 PNG: a few KB to send, ~10 ms to decode in full.
    gradient = np.add.outer(np.arange(1500), np.arange(1500)) % 256
    image = conformance.encode_image(Image.fromarray(gradient.astype(np.uint8)).convert("RGB"),
                                     "PNG")
    images = [image] * 600  # Several CPU-seconds of decoding.
    if transport == "rest":
        response = _rest_predict(export_server, images)
        assert response.status_code == 504, response.text
    else:
        with pytest.raises(grpc.RpcError) as info:
            _grpc_predict(export_server, images, timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server shares this process: once the session gives up, the process idles. Without
    # the deadline in the session both cores stay busy for seconds more (~2 CPU-s per s).
    time.sleep(0.3)
    started, cpu = time.monotonic(), time.process_time()
    time.sleep(1.5)
    busy = (time.process_time() - cpu) / (time.monotonic() - started)
    assert busy < 0.5, f"{busy:.2f} cores still busy after the deadline"
    _assert_good_request_succeeds(export_server, exported_model[1])
