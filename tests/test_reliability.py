"""Reliability of the whole chain: a model made by the real exporter, served by the local
server (in-process or `python -m serving` in a subprocess), called through clients/.

- Bad-input corpus: every kind of bad request, over gRPC and REST, gets TF Serving's status
  code and a message naming the problem, and the next valid request on the same
  connection/client succeeds.
- Soak: thousands of requests at concurrency 16 (gRPC, then REST) against a server
  subprocess: zero errors, right answers, bounded RSS growth.
- Rollout under load: a version 2 made by the exporter is published atomically (staging
  dir + rename) while traffic runs: zero failures, every caller moves to version 2 and
  never back; a corrupt version 3 never becomes AVAILABLE and version 2 keeps serving.
- SIGTERM under load: requests in flight (big batches among them) complete, the process
  exits 0, and new connections are refused.

Load stays on loopback and is bounded in count and time; the whole file takes ~70 s on
2 cores (`pytest -s` prints throughput, latency, RSS and timings). These tests export models and
mutate model directories, so they skip when TFSERVING_ADDRESSES points at a real server.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
import pytest
import requests
import support
import tensorflow as tf
from support import statuses, wait_for
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_service_pb2_grpc

from clients import GrpcClient, RestClient, errors, loadtest
from clients.retry import NO_RETRY
from serving import conformance

pytestmark = pytest.mark.skipif(support.external_endpoint() is not None,
                                reason="exports models and runs servers: local server only")

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "colours"
LABELS = tuple(support.RUN_LABELS)  # The labels of support.make_run's quadrant model.
BODY_LIMIT = 1_000_000  # REST body limit of the corpus server (bytes).
CONCURRENCY = 16
RSS_GROWTH_LIMIT_MB = 50  # Over SOAK_REQUESTS after the warm-up (measured: +5 MB).
SOAK_REQUESTS = {"grpc": 10000, "rest": 3000}  # ~10 s and ~5 s on 2 quiet cores.
SOAK_BOUND_S = 600  # Only a run that is stuck comes near it.


# --- Shared setup --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Exported:
    run: pathlib.Path  # The training run (python -m train's layout).
    base: pathlib.Path  # models/colours holding version 1; read-only (tests copy it).
    images: dict[str, bytes]  # JPEGs the model classifies as their key.
    photo: bytes  # A real photo (skimage's chelsea), JPEG.
    oversized_png: bytes  # An 8x8 PNG whose IHDR claims 60000x60000.


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Exported:
    """Version 1 of a model written by export.exporter from a finished training run."""
    from support import encode, make_run, oversized_png, photo_jpeg, quadrant_image

    from export import exporter

    root = tmp_path_factory.mktemp("reliability")
    run = make_run(root)
    base = root / "models" / MODEL
    exporter.export_model(exporter.ExportConfig(
        model_dir=str(run), export_base=str(base), warmup_batch_sizes=(1,)).validated())
    return Exported(run=run, base=base,
                    images={name: encode(quadrant_image(name)) for name in LABELS},
                    photo=photo_jpeg(), oversized_png=oversized_png())


def publish_copy(source: pathlib.Path, base: pathlib.Path, version: int) -> None:
    """Publishes a copy of a version directory atomically (export.publish's staging+rename)."""
    from export import publish

    with publish.staging_dir(base) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        publish.publish(staging, base, version)


@dataclasses.dataclass
class ServerProcess:
    process: subprocess.Popen
    grpc: str
    rest: str
    grpc_port: int
    rest_port: int
    log: pathlib.Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024  # kB -> MB

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"the server exited with {self.process.returncode}:\n"
                                 f"{self.output()}")
        try:
            states = statuses(self.rest, MODEL)
        except requests.ConnectionError:
            return False  # Ports open only once the models are loaded.
        return any(s["state"] == "AVAILABLE" for s in states.values())


@contextlib.contextmanager
def server_process(base: pathlib.Path, log: pathlib.Path, *flags: str):
    """`python -m serving` on base, on free loopback ports; killed if the test did not
    stop it."""
    # python -m serving has TF Serving's flags, where port 0 means no server: ports up front.
    grpc_port, rest_port = support.free_port(), support.free_port()
    with open(log, "w") as log_file:  # A file, not a pipe: a full pipe would block it.
        process = subprocess.Popen(
            [sys.executable, "-m", "serving", f"--port={grpc_port}",
             f"--rest_api_port={rest_port}", f"--model_name={MODEL}",
             f"--model_base_path={base}", "--host=127.0.0.1", *flags],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    server = ServerProcess(process, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}",
                           grpc_port, rest_port, log)
    try:
        wait_for(server.ready, timeout=90, what="the server subprocess")
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode()}


# --- Bad-input corpus ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_server(exported):
    with conformance.local_server(model_name=MODEL, model_base_path=str(exported.base),
                                  max_body_bytes=BODY_LIMIT) as (_, endpoint):
        yield endpoint


@dataclasses.dataclass
class Outcome:
    """What one request got back, whichever way it was sent."""

    code: str  # Canonical status name; "OK" on success.
    http_status: int | None  # REST only.
    message: str
    error: BaseException | None = None  # The typed client error, when a client sent it.
    rows: int | None = None  # Rows of the answer, on success.


class Transport:
    """One connection (gRPC channel / HTTP session) and a typed client on it; requests the
    client refuses to build (wrong dtype, malformed body...) go raw on the same connection."""

    def __init__(self, kind: str, endpoint: conformance.Endpoint):
        self.kind = kind
        self.endpoint = endpoint
        if kind == "grpc":
            self.channel = grpc.insecure_channel(endpoint.grpc, options=[
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.max_receive_message_length", 64 << 20)])
        else:
            self.session = requests.Session()
            self.url = endpoint.rest
        self.client = self.typed_client()

    def typed_client(self, **kwargs):
        kwargs = {"model": MODEL, "retry": NO_RETRY, "timeout": 30, **kwargs}
        if self.kind == "grpc":
            return GrpcClient(self.endpoint.grpc, channel=self.channel, **kwargs)
        return RestClient(self.url, session=self.session, **kwargs)

    def connections_opened(self) -> int | None:
        """REST: TCP connections the session has opened so far (None for gRPC)."""
        if self.kind == "grpc":
            return None
        pools = self.session.get_adapter(self.url).poolmanager.pools
        return sum(pools[key].num_connections for key in pools.keys())

    def close(self):
        if self.kind == "grpc":
            self.channel.close()
        else:
            self.session.close()

    # Sending, three ways; each returns an Outcome.

    def predict(self, images: list[bytes], **client_kwargs) -> Outcome:
        try:
            predictions = self.typed_client(**client_kwargs).predict(images)
        except errors.ClientError as error:
            return Outcome(error.code, error.http_status, error.message, error)
        return Outcome("OK", None, "", rows=len(predictions))

    def grpc_predict(self, inputs: dict[str, tf.Tensor | np.ndarray | list],
                     signature: str = "", dtype=None) -> Outcome:
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(
            name=MODEL, signature_name=signature))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
        return self.grpc_raw(request.SerializeToString())

    def grpc_raw(self, payload: bytes) -> Outcome:
        call = self.channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        try:
            response = predict_pb2.PredictResponse.FromString(call(payload, timeout=30))
        except grpc.RpcError as error:
            return Outcome(error.code().name, None, error.details() or "")
        return Outcome("OK", None, "",
                       rows=tf.make_ndarray(response.outputs["classes"]).shape[0])

    def rest_post(self, body: dict | str | bytes, path: str = f"/v1/models/{MODEL}:predict"
                  ) -> Outcome:
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        response = self.session.post(self.url + path, data=data, timeout=30)
        if response.status_code == 200:
            return Outcome("OK", 200, "", rows=len(response.json()["predictions"]))
        assert response.headers["Content-Type"].startswith("application/json")
        message = response.json()["error"]
        return Outcome(errors.from_http(response.status_code, message).code,
                       response.status_code, message)


@pytest.fixture(scope="module", params=["grpc", "rest"])
def transport(request, corpus_server):
    transport = Transport(request.param, corpus_server)
    yield transport
    transport.close()


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad request, as sent over gRPC and over REST, and what each must answer."""

    grpc: Callable[[Transport, Exported], Outcome]
    rest: Callable[[Transport, Exported], Outcome]
    grpc_code: str
    http_status: int
    grpc_message: str  # A substring of the message.
    rest_message: str | None = None  # Default: grpc_message.


RANDOM = bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))
NOT_AN_IMAGE = "data is not a JPEG, PNG, GIF or BMP image"
GUARD = "image 0: "  # The exported graph names the failing image (export/signatures.py).

CASES = {
    "empty_bytes": Case(  # Clients refuse b"" themselves; sent raw.
        lambda t, e: t.grpc_predict({"image_bytes": [b""]}, dtype=tf.string),
        lambda t, e: t.rest_post({"instances": [b64(b"")]}),
        "INVALID_ARGUMENT", 400, GUARD + "empty input (0 bytes)"),
    "random_bytes": Case(
        lambda t, e: t.predict([RANDOM]), lambda t, e: t.predict([RANDOM]),
        "INVALID_ARGUMENT", 400, GUARD + NOT_AN_IMAGE),
    "truncated_jpeg": Case(
        lambda t, e: t.predict([e.photo[:20000]]), lambda t, e: t.predict([e.photo[:20000]]),
        "INVALID_ARGUMENT", 400, GUARD + "truncated JPEG (no end-of-image marker; 20000 "
        "bytes)"),
    "over_limit_dimensions": Case(
        lambda t, e: t.predict([e.oversized_png]), lambda t, e: t.predict([e.oversized_png]),
        "INVALID_ARGUMENT", 400, GUARD + "60000x60000 pixels (3600.0 MP) exceeds the limit"),
    # REST: not base64 at all. gRPC has no base64: its version of the mistake is sending
    # the base64 text itself as the image bytes.
    "wrong_b64": Case(
        lambda t, e: t.predict([base64.b64encode(e.images["red"])]),
        lambda t, e: t.rest_post({"instances": [{"b64": "!!not base64!!"}]}),
        "INVALID_ARGUMENT", 400, GUARD + NOT_AN_IMAGE,
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable "
        "to base64 decode"),
    # predict_images takes float pixels: b64 (REST) or a string tensor (gRPC) is a type error.
    "b64_on_float_input": Case(
        lambda t, e: t.grpc_predict({"images": [e.images["red"]]}, "predict_images",
                                    dtype=tf.string),
        lambda t, e: t.rest_post({"signature_name": "predict_images",
                                  "instances": [b64(e.images["red"])]}),
        "INVALID_ARGUMENT", 400, "Expects arg[0] to be float but string is provided",
        "is not of expected type: float"),
    "wrong_input_name": Case(
        lambda t, e: t.predict([e.images["red"]], input_name="image"),
        lambda t, e: t.predict([e.images["red"]], input_name="image"),
        "INVALID_ARGUMENT", 400, "Signature input alias: image_bytes(feed name: ",
        "Missing named input: image_bytes in 'inputs' object."),
    "wrong_dtype": Case(
        lambda t, e: t.grpc_predict({"image_bytes": [1.5]}, dtype=tf.float32),
        lambda t, e: t.rest_post({"instances": [1.5]}),
        "INVALID_ARGUMENT", 400, "Expects arg[0] to be string but float is provided",
        "JSON Value: 1.5 Type: Number is not of expected type: string"),
    # A [0] tensor is a valid batch for TF Serving's gRPC API: the graph runs and answers
    # zero rows. REST's row format refuses an empty "instances" list (json_tensor.cc).
    "empty_batch": Case(
        lambda t, e: t.grpc_predict(
            {"image_bytes": np.array([], dtype=object)}, dtype=tf.string),
        lambda t, e: t.rest_post({"instances": []}),
        "OK", 400, "", "No values in 'instances' array"),
    # REST bodies above the server's limit: 413 before any parsing. gRPC has no server
    # limit (TF Serving lifts it): 6 MB arrive whole and fail only as image content.
    "oversized_body": Case(
        lambda t, e: t.predict([bytes(6_000_000)]),
        lambda t, e: t.predict([bytes(BODY_LIMIT)]),
        "INVALID_ARGUMENT", 413, GUARD + NOT_AN_IMAGE + " (its first bytes match none of "
        "their signatures; 6000000 bytes)",
        f"Request body larger than the server's limit of {BODY_LIMIT} bytes"),
    # REST: broken JSON. gRPC: bytes that do not parse as a PredictRequest (grpc answers
    # INTERNAL for a request it cannot deserialize).
    "malformed_body": Case(
        lambda t, e: t.grpc_raw(b"\xff\xff\xff\xff not a protobuf"),
        lambda t, e: t.rest_post('{"instances": [{"b64": '),
        "INTERNAL", 400, "deserializing", "JSON Parse error"),
    "unknown_model": Case(
        lambda t, e: t.predict([e.images["red"]], model="nope"),
        lambda t, e: t.predict([e.images["red"]], model="nope"),
        "NOT_FOUND", 404, "Servable not found for request: Latest(nope)"),
    "unknown_version": Case(
        lambda t, e: t.predict([e.images["red"]], version=9),
        lambda t, e: t.predict([e.images["red"]], version=9),
        "NOT_FOUND", 404, f"Servable not found for request: Specific({MODEL}, 9)"),
    "unknown_label": Case(
        lambda t, e: t.predict([e.images["red"]], label="nope"),
        lambda t, e: t.predict([e.images["red"]], label="nope"),
        "INVALID_ARGUMENT", 400, "Unrecognized servable version label: nope"),
}

_TYPED = {"INVALID_ARGUMENT": errors.InvalidInputError, "NOT_FOUND": errors.NotFoundError,
          "INTERNAL": errors.ServerError}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_its_status_and_the_next_request_succeeds(transport, exported, case):
    spec = CASES[case]
    transport.client.predict([exported.images["blue"]])  # A connection is open.
    connections = transport.connections_opened()
    assert connections is None or connections >= 1
    # Every way of sending has a 30 s deadline: a request the server chews on for too long
    # fails its status check (DEADLINE_EXCEEDED) rather than a clock check.
    outcome = (spec.grpc if transport.kind == "grpc" else spec.rest)(transport, exported)
    if transport.kind == "grpc":
        assert outcome.code == spec.grpc_code, outcome
        expected_message = spec.grpc_message
    else:
        assert outcome.http_status == spec.http_status, outcome
        expected_message = spec.rest_message or spec.grpc_message
    if outcome.code == "OK":
        assert outcome.rows == 0  # Only the empty batch succeeds.
    else:
        assert outcome.message.strip(), "an error needs a message"
        assert expected_message in outcome.message, outcome.message
    if outcome.error is not None:  # Sent by the typed client: its error class and no retry.
        expected_type = (errors.InvalidInputError if outcome.http_status == 413
                         else _TYPED[outcome.code])
        assert type(outcome.error) is expected_type, outcome.error
        assert not errors.is_retryable(outcome.error)

    # The same connection and client serve the next valid request.
    predictions = transport.client.predict([exported.images["green"], exported.images["red"]])
    assert [p.label for p in predictions] == ["green", "red"]
    if outcome.http_status != 413:  # After a 413 the server may close the connection.
        assert transport.connections_opened() == connections, "the connection was dropped"


# --- Soak ----------------------------------------------------------------------------------


def checked_predict(client, expected: dict[bytes, str]):
    """client.predict that also checks every answer (a wrong one counts as an error)."""

    def predict(batch: list[bytes]) -> None:
        labels = [p.label for p in client.predict(batch)]
        if labels != [expected[image] for image in batch]:
            raise errors.ServerError(f"wrong answer {labels}", code="WRONG_ANSWER")

    return predict


def test_soak_zero_errors_and_bounded_memory(exported, tmp_path):
    images = [exported.images[name] for name in LABELS]
    expected = {exported.images[name]: name for name in LABELS}
    with server_process(exported.base, tmp_path / "server.log") as server, \
            GrpcClient(server.grpc, MODEL, timeout=30) as grpc_client, \
            RestClient(server.rest, MODEL, timeout=30, pool_maxsize=CONCURRENCY) as rest_client:
        grpc_predict = checked_predict(grpc_client, expected)
        rest_predict = checked_predict(rest_client, expected)
        # Fixed request counts (SOAK_REQUESTS), never "as many as fit in N seconds": the
        # memory bound below is then per request, whatever the machine's speed.
        # duration_s is only the generous overall bound a load run must have.
        # Warm-up: thread pools, connections and allocator arenas reach their steady size.
        for predict, count in ((grpc_predict, 400), (rest_predict, 300)):
            warm = loadtest.run_load(predict, images, concurrency=CONCURRENCY,
                                     requests=count, duration_s=SOAK_BOUND_S)
            assert warm.errors == {} and warm.succeeded == count, warm.summary()
        rss_before = server.rss_mb()
        grpc_result = loadtest.run_load(grpc_predict, images, concurrency=CONCURRENCY,
                                        requests=SOAK_REQUESTS["grpc"], duration_s=SOAK_BOUND_S)
        rest_result = loadtest.run_load(rest_predict, images, concurrency=CONCURRENCY,
                                        requests=SOAK_REQUESTS["rest"], duration_s=SOAK_BOUND_S,
                                        images_per_request=2)
        rss_after = server.rss_mb()
    print(f"\ngRPC soak:\n{grpc_result.summary()}\nREST soak:\n{rest_result.summary()}")
    print(f"server RSS after warm-up {rss_before:.1f} MB, after the soak {rss_after:.1f} MB, "
          f"growth {rss_after - rss_before:+.1f} MB (limit {RSS_GROWTH_LIMIT_MB} MB)")
    for result, count in ((grpc_result, SOAK_REQUESTS["grpc"]),
                          (rest_result, SOAK_REQUESTS["rest"])):
        assert result.errors == {}, result.summary()
        assert result.succeeded == result.requests == count, result.summary()
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB


# --- Rollout under load --------------------------------------------------------------------


def test_rollout_under_load_then_a_corrupt_version_never_serves(exported, tmp_path):
    from export import exporter, publish

    base = tmp_path / MODEL
    publish_copy(exported.base / "1", base, 1)
    # Version 2, exported before the load starts (exporting competes for the two cores)
    # and published under load: staged beside the versions, renamed into place.
    version_2 = exporter.export_model(exporter.ExportConfig(
        model_dir=str(exported.run), export_base=str(tmp_path / "exports" / MODEL), version=2,
        top_k=2, warmup_batch_sizes=(1,)).validated()).path
    red = exported.images["red"]
    # Version 2 is exported with top_k=2 (version 1 has 3): the typed clients see the version
    # in the answer's shape; the raw gRPC caller reads model_spec.version.
    version_of_top_k = {3: 1, 2: 2}
    # The server in its own process, as in production: the exporter below runs here.
    with server_process(base, tmp_path / "server.log", "--file_system_poll_wait_seconds=1",
                        "--max_num_load_retries=1") as endpoint:
        grpc_client = GrpcClient(endpoint.grpc, MODEL, retry=NO_RETRY, timeout=30)
        rest_client = RestClient(endpoint.rest, MODEL, retry=NO_RETRY, timeout=30,
                                 pool_maxsize=2)
        channel = grpc.insecure_channel(endpoint.grpc)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=MODEL))
        request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([red], dtype=tf.string))
        callers = {
            "grpc-1": lambda: version_of_top_k[len(grpc_client.predict([red])[0].scores)],
            "grpc-2": lambda: version_of_top_k[len(grpc_client.predict([red])[0].scores)],
            "rest": lambda: version_of_top_k[len(rest_client.predict([red])[0].scores)],
            "grpc-raw": lambda: stub.Predict(request, timeout=30).model_spec.version.value,
        }
        served: dict[str, list[int]] = {name: [] for name in callers}
        failures: list = []
        stop = threading.Event()

        def traffic(name):
            while not stop.is_set():
                try:
                    served[name].append(callers[name]())
                except (errors.ClientError, grpc.RpcError, KeyError) as error:
                    failures.append((name, error))

        def more_traffic(count=10):
            marks = {name: len(versions) for name, versions in served.items()}
            wait_for(lambda: all(len(served[n]) >= marks[n] + count for n in served),
                     what=f"{count} more answers from every caller")
            return marks

        workers = [threading.Thread(target=traffic, args=(name,)) for name in callers]
        for worker in workers:
            worker.start()
        try:
            more_traffic()
            started = time.monotonic()
            publish_copy(version_2, base, 2)
            wait_for(lambda: statuses(endpoint.rest, MODEL)["1"]["state"] == "END",
                     what="version 2 to replace version 1")
            rollout_s = time.monotonic() - started
            after_rollout = more_traffic()

            # A corrupt version 3, published as atomically as a good one.
            with publish.staging_dir(base) as staging:
                (staging / "saved_model.pb").write_bytes(b"\x00garbage, not a SavedModel")
                (staging / "variables").mkdir()
                publish.publish(staging, base, 3)
            seen_states = []

            def version_3_failed():
                states = statuses(endpoint.rest, MODEL)
                seen_states.append((states.get("3", {}).get("state"),
                                    states.get("2", {}).get("state")))
                return states.get("3", {}).get("state") == "END" and states["3"]
            failed = wait_for(version_3_failed, what="version 3 to fail for good")
            after_corrupt = more_traffic()
        finally:
            stop.set()
            for worker in workers:
                worker.join(30)
            channel.close()
            grpc_client.close()
            rest_client.close()
    total = sum(len(v) for v in served.values())
    print(f"\nrollout: {total} answers, {len(failures)} failures; publish + switch to version "
          f"2 took {rollout_s:.1f} s; version 3 states seen: {list(dict.fromkeys(seen_states))}")
    assert failures == []
    for name, versions in served.items():
        assert versions[0] == 1 and versions[-1] == 2, name
        assert versions == sorted(versions), f"{name} went back to version 1"
        assert set(versions[after_rollout[name]:]) == {2}, name
        assert set(versions[after_corrupt[name]:]) == {2}, name
    assert all(state != "AVAILABLE" for state, _ in seen_states)
    assert all(state == "AVAILABLE" for _, state in seen_states)  # Version 2 throughout.
    assert failed["status"]["error_code"] != "OK"
    assert failed["status"]["error_message"], "a failed version must say why"


# --- SIGTERM under load --------------------------------------------------------------------


def gradient_png(width: int, height: int) -> bytes:
    """A smooth (small, but slow to decode: no DCT scaling for PNG) image."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)],
                      axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


SLOW_BATCH = 64  # Images per slow request; every other request has one.
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def slow_requests_received(rest: str) -> int:
    """Requests of SLOW_BATCH images the server has taken in (batching's input_batch_size
    histogram, observed as a request enters the batch queue; nothing else is that big)."""
    page = requests.get(f"{rest}{PROMETHEUS_PATH}", timeout=10).text
    name = ":tensorflow:serving:batching_session:input_batch_size"
    values = dict(line.rsplit(" ", 1) for line in page.splitlines()
                  if line.startswith((f'{name}_count{{', f'{name}_bucket{{le="32"}}')))
    if not values:
        return 0
    return int(values[f"{name}_count{{}}"]) - int(values[f'{name}_bucket{{le="32"}}'])


def test_sigterm_under_load_finishes_requests_in_flight_then_refuses(exported, tmp_path):
    slow_batch = [gradient_png(2400, 1800)] * SLOW_BATCH  # ~90 KB each, ~1 s per batch.
    fast = [exported.images["blue"]]
    records: list[tuple[str, float, float, object]] = []  # (caller, start, end, outcome)
    stop = threading.Event()
    # Batching and Prometheus as in production (k8s/base): the batching metrics show when the
    # slow requests are inside the server, so the signal is sent on evidence, not a clock.
    params = tmp_path / "batching.txt"
    params.write_text(f"max_batch_size {{ value: {SLOW_BATCH} }} batch_timeout_micros "
                      "{ value: 0 } num_batch_threads { value: 4 } max_enqueued_batches "
                      "{ value: 32 }")
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text(f'prometheus_config {{ enable: true path: "{PROMETHEUS_PATH}" }}')
    with server_process(exported.base, tmp_path / "server.log", "--enable_batching",
                        f"--batching_parameters_file={params}",
                        f"--monitoring_config_file={monitoring}") as server:
        grpc_client = GrpcClient(server.grpc, MODEL, retry=NO_RETRY, timeout=120)
        rest_client = RestClient(server.rest, MODEL, retry=NO_RETRY, timeout=120,
                                 pool_maxsize=4)
        started = time.monotonic()
        assert len(grpc_client.predict(slow_batch)) == len(slow_batch)
        slow_s = time.monotonic() - started
        slow_before = slow_requests_received(server.rest)
        assert slow_before == 1

        def call(name, client, batch):
            start = time.monotonic()
            try:
                client.predict(batch)
                outcome = "OK"
            except errors.ClientError as error:
                outcome = error
            records.append((name, start, time.monotonic(), outcome))
            return outcome

        def steady(name, client):
            while not stop.is_set():
                if call(name, client, fast) != "OK":
                    time.sleep(0.01)  # Server gone: do not spin.

        steady_threads = [threading.Thread(target=steady, args=(f"fast-{kind}-{i}", client))
                          for i in range(2)
                          for kind, client in (("grpc", grpc_client), ("rest", rest_client))]
        for thread in steady_threads:
            thread.start()
        wait_for(lambda: len(records) >= 20, what="steady traffic")
        slow_threads = [threading.Thread(target=call, args=(name, client, slow_batch))
                        for name, client in (("slow-grpc-1", grpc_client),
                                             ("slow-grpc-2", grpc_client),
                                             ("slow-rest", rest_client))]
        for thread in slow_threads:
            thread.start()
        # All three slow requests are inside the server (each takes well over slow_s with
        # the others and the steady traffic on two cores): now the signal.
        wait_for(lambda: slow_requests_received(server.rest) == slow_before + 3,
                 timeout=120, what="the three slow requests to reach the server")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            returncode = server.process.wait(120)
        finally:
            stop.set()
            for thread in steady_threads + slow_threads:
                thread.join(120)
        exited_s = time.monotonic() - signalled

        refused = []
        for port in (server.grpc_port, server.rest_port):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
            refused.append(port)
        with GrpcClient(server.grpc, MODEL, retry=NO_RETRY, timeout=5) as fresh, \
                pytest.raises(errors.UnavailableError):
            fresh.predict(fast)
        with RestClient(server.rest, MODEL, retry=NO_RETRY, timeout=5) as fresh, \
                pytest.raises(errors.UnavailableError):
            fresh.predict(fast)
        grpc_client.close()
        rest_client.close()
        output = server.output()

    slow = [r for r in records if r[0].startswith("slow")]
    before = [r for r in records if r[2] < signalled]  # Answered before the signal.
    after = [r for r in records if r[2] >= signalled]
    print(f"\nSIGTERM: slow batch alone {slow_s:.2f} s; slow requests ended "
          f"{', '.join(f'{r[2] - signalled:+.2f} s' for r in slow)} after the signal; "
          f"{len(before)} requests answered before it, {len(after)} after "
          f"({sum(r[3] != 'OK' for r in after)} refused); exit {returncode} after "
          f"{exited_s:.2f} s")
    assert returncode == 0, output
    assert "Received signal 15, shutting down" in output
    # In the server at the signal (the metric said so), so answered, however slow.
    assert [r[3] for r in slow] == ["OK"] * 3, slow
    assert max(r[2] for r in slow) > signalled, "no slow request was in flight at SIGTERM"
    assert [r for r in before if r[3] != "OK"] == []
    # Requests that met the shutdown were refused as "try again elsewhere", never answered
    # with a model error.
    for _, _, _, outcome in after:
        assert outcome == "OK" or isinstance(outcome, errors.UnavailableError), outcome
    assert refused == [server.grpc_port, server.rest_port]
