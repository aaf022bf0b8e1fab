"""clients/ against a server: the local TF-Serving-compatible server (or a real TF Serving
with TFSERVING_ADDRESSES, see serving/README.md), plus small fake servers for what a real
server cannot show (metadata/headers received, retries, TLS).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import os
import pathlib
import subprocess
import sys

import grpc
import numpy as np
import pytest
import support
from PIL import Image
from support import http_stub
from tensorflow_serving.apis import predict_pb2

from clients import (
    AsyncGrpcClient,
    GrpcClient,
    RestClient,
    RetryPolicy,
    cli,
    errors,
    loadtest,
)
from serving import conformance

MODEL = conformance.MODEL_NAME
REPO = pathlib.Path(__file__).resolve().parents[1]
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)


def jpeg(rgb, size=(24, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, rgb).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


RED = jpeg(conformance.COLOURS["red"])
GREEN = jpeg(conformance.COLOURS["green"])
BLUE = jpeg(conformance.COLOURS["blue"])


@pytest.fixture(scope="module", params=["grpc", "rest"])
def make_client(request, endpoint):
    """A factory of clients of one protocol (closed at the end of the module)."""
    made = []

    def make(**kwargs):
        kwargs.setdefault("timeout", 30)
        if request.param == "grpc":
            client = GrpcClient(endpoint.grpc, kwargs.pop("model", MODEL), **kwargs)
        else:
            client = RestClient(endpoint.rest, kwargs.pop("model", MODEL), **kwargs)
        made.append(client)
        return client

    make.protocol = request.param
    yield make
    for client in made:
        client.close()


# --- Library, both protocols ---------------------------------------------------------------

def test_predict_every_input_kind_in_order(make_client, tmp_path):
    path = tmp_path / "green.jpg"
    path.write_bytes(GREEN)
    pixels = np.zeros((16, 24, 3), np.uint8)
    pixels[...] = conformance.COLOURS["blue"]
    red_image = Image.new("RGB", (20, 10), conformance.COLOURS["red"])
    predictions = make_client().predict([RED, path, str(path), red_image, pixels])
    assert [p.label for p in predictions] == ["red", "green", "green", "red", "blue"]
    for p in predictions:
        assert len(p.labels) == conformance.TOP_K and p.scores[0] >= p.scores[1] > 0
        assert p.class_ids[0] == conformance.LABELS.index(p.label)
    assert make_client().predict(BLUE, top_k=1)[0].top() == [("blue", pytest.approx(
        predictions[-1].score, rel=1e-5))]


def test_classify(make_client):
    predictions = make_client().classify([BLUE, RED])
    assert [p.label for p in predictions] == ["blue", "red"]
    assert predictions[0].score > predictions[0].scores[1]


def test_both_protocols_give_the_same_answers(endpoint):
    with GrpcClient(endpoint.grpc, MODEL) as g, RestClient(endpoint.rest, MODEL) as r:
        for a, b in zip(g.predict([RED, GREEN]), r.predict([RED, GREEN])):
            assert a.labels == b.labels and a.class_ids == b.class_ids
            assert a.scores == pytest.approx(b.scores, rel=1e-5)  # REST prints 9 digits.
        assert g.status() == r.status()
        assert g.metadata() == r.metadata()


def test_versions_and_labels(make_client):
    assert make_client(version=1).metadata().version == 1
    assert make_client(label="stable").metadata().version == 1
    assert make_client(label="canary").metadata().version == 2
    assert make_client().metadata().version == 2
    assert [s.version for s in make_client(version=1).status()] == [1]
    statuses = make_client().status()
    assert [(s.version, s.state, s.error_code) for s in statuses] == [
        (1, "AVAILABLE", "OK"), (2, "AVAILABLE", "OK")]


def test_metadata(make_client):
    signatures = make_client().metadata().signatures
    default = signatures["serving_default"]
    assert default.inputs["image_bytes"].dtype == "DT_STRING"
    assert default.inputs["image_bytes"].shape == (-1,)
    assert default.outputs["scores"].shape == (-1, conformance.TOP_K)
    assert signatures["classify"].method_name == "tensorflow/serving/classify"
    assert signatures["predict_images"].inputs["images"].shape == (-1, conformance.SIZE,
                                                                   conformance.SIZE, 3)


def test_typed_errors_carry_the_server_message(make_client):
    client = make_client()
    with pytest.raises(errors.InvalidInputError) as info:
        client.predict([RED, b"junk"])
    assert "image 1" in info.value.message and info.value.code == "INVALID_ARGUMENT"
    with pytest.raises(errors.NotFoundError, match="Could not find any versions of model nope"):
        make_client(model="nope").status()
    with pytest.raises(errors.NotFoundError, match=r"Specific\(tiny, 9\)"):
        make_client(version=9).predict([RED])
    with pytest.raises(errors.InvalidInputError,
                       match="Unrecognized servable version label: nope"):
        make_client(label="nope").predict([RED])
    with pytest.raises(errors.InvalidInputError, match="nope"):
        client.predict([RED], signature="nope")  # FAILED_PRECONDITION (gRPC) / 400 (REST).
    with pytest.raises(errors.InvalidInputError, match="images"):
        client.predict([RED], signature="predict_images")  # Its input is "images".


def test_deadline_exceeded(make_client):
    big = support.png_of_size(600, 400)
    with pytest.raises(errors.DeadlineExceededError, match="^DEADLINE_EXCEEDED: "):
        make_client(retry=FAST_RETRY).predict([big] * 8, timeout=0.001)


def test_unreachable_server_is_unavailable_and_retried(make_client):
    port = support.free_port()  # Free, so closed: nothing answers there.
    target = (f"127.0.0.1:{port}" if make_client.protocol == "grpc"
              else f"http://127.0.0.1:{port}")
    cls = GrpcClient if make_client.protocol == "grpc" else RestClient
    with cls(target, MODEL, retry=FAST_RETRY, timeout=5) as client:
        with pytest.raises(errors.UnavailableError, match="Connection refused"):
            client.status()


def test_large_photos_and_client_side_downscaling(make_client):
    big = support.png_of_size(1400, 1100)
    assert len(big) > 4 * 1024 * 1024  # Over gRPC's default limit.
    full = make_client().predict([big])[0]
    small = make_client(max_size=256).predict([big])[0]
    # The server decoded something else (a 256 px JPEG of the noise): other scores.
    assert full.scores != pytest.approx(small.scores, abs=1e-6)


def test_message_size_limit_is_not_retried(endpoint):
    big = support.png_of_size(1400, 1100)
    with GrpcClient(endpoint.grpc, MODEL, max_message_bytes=1024 * 1024,
                    retry=RetryPolicy(max_attempts=5, initial_backoff_s=1)) as client:
        with pytest.raises(errors.InvalidInputError, match="max_message_bytes"):
            client.predict([big])


def test_rest_gzip_and_headers(endpoint):
    with RestClient(endpoint.rest, MODEL, gzip=True,
                    headers={"Authorization": "Bearer x"}) as client:
        assert [p.label for p in client.predict([RED, BLUE])] == ["red", "blue"]


def test_asyncio_client(endpoint):
    async def main():
        async with AsyncGrpcClient(endpoint.grpc, MODEL, label="stable") as client:
            results = await asyncio.gather(*(client.predict([image]) for image in
                                             (RED, GREEN, BLUE) * 4))
            classified = await client.classify([GREEN])
            status = await client.status()
            metadata = await client.metadata()
            with pytest.raises(errors.InvalidInputError, match="image 0"):
                await client.predict([b"junk"])
            return results, classified, status, metadata

    results, classified, status, metadata = asyncio.run(main())
    assert [r[0].label for r in results] == ["red", "green", "blue"] * 4
    assert classified[0].label == "green"
    assert metadata.version == 1 and {s.version for s in status} == {1, 2}


# --- Fake servers: metadata, retries, TLS ---------------------------------------------------

class FakePredict:
    """A PredictionService built on the OFFICIAL messages: fails with the queued codes, then
    answers; records each call's metadata and image bytes."""

    def __init__(self, failures=()):
        self.failures = list(failures)
        self.calls = []
        self.images: list[list[bytes]] = []

    def __call__(self, request, context):
        self.calls.append(dict(context.invocation_metadata()))
        self.images.append(list(request.inputs["image_bytes"].string_val))
        if self.failures:
            context.abort(self.failures.pop(0), "fake failure")
        count = request.inputs["image_bytes"].tensor_shape.dim[0].size
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        classes = response.outputs["classes"]
        classes.dtype = 7  # DT_STRING
        classes.tensor_shape.dim.add(size=count)
        classes.tensor_shape.dim.add(size=1)
        classes.string_val.extend([b"cat"] * count)
        scores = response.outputs["scores"]
        scores.dtype = 1  # DT_FLOAT
        scores.tensor_shape.dim.add(size=count)
        scores.tensor_shape.dim.add(size=1)
        scores.float_val.extend([0.5] * count)
        return response


def _fake_grpc_server(handler, credentials=None):
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService", {"Predict": grpc.unary_unary_rpc_method_handler(
            handler, request_deserializer=predict_pb2.PredictRequest.FromString,
            response_serializer=predict_pb2.PredictResponse.SerializeToString)})])
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port


def test_grpc_metadata_and_retries_only_on_unavailable():
    handler = FakePredict([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED])
    server, port = _fake_grpc_server(handler)
    try:
        with GrpcClient(f"grpc://127.0.0.1:{port}", "m", retry=FAST_RETRY,
                        metadata=[("authorization", "Bearer t")]) as client:
            assert client.predict([RED], metadata=[("x-request-id", "7")])[0].label == "cat"
            assert len(handler.calls) == 3
            assert handler.calls[-1]["authorization"] == "Bearer t"
            assert handler.calls[-1]["x-request-id"] == "7"
            handler.failures = [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE]
            with pytest.raises(errors.InvalidInputError, match="fake failure"):
                client.predict([RED])
            assert len(handler.calls) == 4  # Not retried.
            handler.failures = [grpc.StatusCode.UNAVAILABLE] * 5
            with pytest.raises(errors.UnavailableError, match="fake failure"):
                client.predict([RED])
            assert len(handler.calls) == 4 + FAST_RETRY.max_attempts
    finally:
        server.stop(None)


def _openssl(tmp: pathlib.Path, name: str, ca: str | None) -> None:
    """A key and a certificate for 127.0.0.1/localhost, self-signed or signed by ca."""
    subject = ["-subj", f"/CN={name}"]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-keyout", tmp / f"{name}.key", "-out", tmp / f"{name}.pem", *subject,
                        "-addext", "basicConstraints=critical,CA:TRUE"],
                       check=True, capture_output=True)
        return
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    tmp / f"{name}.key", "-out", tmp / f"{name}.csr", *subject],
                   check=True, capture_output=True)
    (tmp / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", tmp / f"{name}.csr", "-CA",
                    tmp / f"{ca}.pem", "-CAkey", tmp / f"{ca}.key", "-CAcreateserial", "-days",
                    "2", "-out", tmp / f"{name}.pem", "-extfile", tmp / "ext.cnf"],
                   check=True, capture_output=True)


@pytest.mark.requires("openssl")
def test_grpc_tls_with_client_certificate(tmp_path):
    for name, ca in (("ca", None), ("server", "ca"), ("client", "ca")):
        _openssl(tmp_path, name, ca)
    read = lambda name: (tmp_path / name).read_bytes()  # noqa: E731
    credentials = grpc.ssl_server_credentials(
        [(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"),
        require_client_auth=True)
    handler = FakePredict()
    server, port = _fake_grpc_server(handler, credentials)
    try:
        with GrpcClient(f"grpcs://localhost:{port}", "m", root_certificates=tmp_path / "ca.pem",
                        private_key=tmp_path / "client.key",
                        certificate_chain=tmp_path / "client.pem") as client:
            assert client.predict([RED])[0].label == "cat"
        # Without the client certificate the server refuses the handshake.
        with GrpcClient(f"grpcs://localhost:{port}", "m", root_certificates=read("ca.pem"),
                        retry=FAST_RETRY, timeout=5) as client:
            with pytest.raises(errors.UnavailableError, match="failed to connect"):
                client.predict([RED])
        assert len(handler.calls) == 1  # The refused client never reached the service.
    finally:
        server.stop(None)


def test_rest_retries_503_and_429_sends_headers_and_reports_messages():
    seen = []
    answers = [(503, {"error": "queue full"}), (429, {"error": "slow down"}),
               (200, {"outputs": {"classes": [["cat"]], "scores": [[0.5]]}}),
               (400, {"error": "image 0: bad"})]

    def answer(method, path, headers, body):
        seen.append(headers)
        return answers.pop(0)

    with http_stub.json_server(answer) as port:
        with RestClient(f"http://127.0.0.1:{port}", "m", retry=FAST_RETRY,
                        headers={"Authorization": "Bearer t"}) as client:
            assert client.predict([RED])[0].label == "cat"
            assert len(seen) == 3 and seen[-1]["Authorization"] == "Bearer t"
            with pytest.raises(errors.InvalidInputError) as info:
                client.predict([RED], headers={"X-Request-Id": "7"})
            assert info.value.message == "image 0: bad" and info.value.http_status == 400
            assert seen[-1]["X-Request-Id"] == "7" and len(seen) == 4


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_client_side_downscaling_sends_a_smaller_jpeg(protocol):
    """What goes over the wire, as the server receives it: stand-ins record the bytes."""
    big = support.png_of_size(1400, 1100)
    if protocol == "grpc":
        handler = FakePredict()
        server, port = _fake_grpc_server(handler)
        try:
            for max_size in (256, None):
                with GrpcClient(f"127.0.0.1:{port}", "m", max_size=max_size) as client:
                    client.predict([big, RED])
        finally:
            server.stop(None)
        received = handler.images
    else:
        received = []

        def answer(method, path, headers, body):
            images = json.loads(body)["inputs"]["image_bytes"]
            received.append([base64.b64decode(image["b64"]) for image in images])
            return 200, {"outputs": {"classes": [["cat"]] * len(images),
                                     "scores": [[0.5]] * len(images)}}

        with http_stub.json_server(answer) as port:
            for max_size in (256, None):
                with RestClient(f"http://127.0.0.1:{port}", "m", max_size=max_size) as client:
                    client.predict([big, RED])
    (small, red), (original, red_again) = received
    image = Image.open(io.BytesIO(small))
    assert image.format == "JPEG" and image.size == (256, 201)  # Longer side 256, 14:11.
    assert len(small) < len(big) / 20
    assert red == red_again == RED  # Already small enough: sent untouched.
    assert original == big  # Without max_size the file goes as it is.


COMPAT_ENV = "CLIENTS_COMPAT_PYTHONS"


@pytest.mark.skipif(not os.environ.get(COMPAT_ENV), reason=f"set {COMPAT_ENV} to run")
def test_light_install_interpreters(endpoint):
    """The clients in other interpreters: e.g. venvs with only grpcio, requests and an old
    protobuf (3.20, 5.x), no TensorFlow. CLIENTS_COMPAT_PYTHONS=/venv1/bin/python,..."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from clients import GrpcClient, RestClient\n"
        "import google.protobuf\n"
        "image = bytes.fromhex(sys.argv[4])\n"
        "for c in (GrpcClient(sys.argv[2], 'tiny', label='stable'),"
        " RestClient(sys.argv[3], 'tiny')):\n"
        "    assert c.predict([image])[0].label == 'red'\n"
        "    assert c.classify([image])[0].label == 'red'\n"
        "    assert c.status()[0].state == 'AVAILABLE'\n"
        "    assert 'serving_default' in c.metadata().signatures\n"
        "assert not any(m in sys.modules for m in ('tensorflow', 'numpy', 'PIL'))\n"
        "print(google.protobuf.__version__)\n")
    for python in os.environ[COMPAT_ENV].split(","):
        result = subprocess.run([python, "-c", code, str(REPO), endpoint.grpc, endpoint.rest,
                                 RED.hex()], capture_output=True, text=True, timeout=60,
                                check=False)
        assert result.returncode == 0, (python, result.stderr)


# --- Command line, curl, load generator -----------------------------------------------------

def _run(*args, env=None, timeout=60):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, **(env or {})}, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-images")
    (root / "sub").mkdir()
    (root / "a_red.jpg").write_bytes(RED)
    (root / "sub" / "b_blue.JPG").write_bytes(BLUE)
    (root / "c_broken.jpg").write_bytes(b"junk")
    (root / "notes.txt").write_text("not an image: skipped by the directory walk")
    return root


@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_cli_predict_directory_with_a_bad_file(endpoint, image_dir, protocol):
    server = f"grpc://{endpoint.grpc}" if protocol == "grpc" else endpoint.rest
    result = _run("-m", "clients", "predict", f"--server={server}", f"--model={MODEL}",
                  "--json", "--batch=2", "--concurrency=2", str(image_dir))
    assert result.returncode == 1, result.stderr  # One file failed.
    body = json.loads(result.stdout)
    assert body["files"] == 3 and body["failed"] == 1
    by_name = {pathlib.Path(r["file"]).name: r for r in body["results"]}
    assert by_name["a_red.jpg"]["labels"][0] == "red"
    assert by_name["b_blue.JPG"]["labels"][0] == "blue"
    assert by_name["c_broken.jpg"]["error"]["code"] == "INVALID_ARGUMENT"
    table = _run("-m", "clients", "predict", f"--server={server}", f"--model={MODEL}",
                 "--top_k=1", "--label=stable", str(image_dir / "a_red.jpg"))
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.strip().splitlines()
    assert header.split() == ["file", "label", "score", "top-k"]
    assert row.split()[1] == "red"


def test_cli_status_metadata_and_usage(endpoint):
    status = _run("-m", "clients", "status", f"--server={endpoint.rest}", f"--model={MODEL}",
                  "--json")
    assert status.returncode == 0, status.stderr
    assert [s["state"] for s in json.loads(status.stdout)] == ["AVAILABLE", "AVAILABLE"]
    metadata = _run("-m", "clients", "metadata", f"--server=grpc://{endpoint.grpc}",
                    f"--model={MODEL}")
    assert metadata.returncode == 0, metadata.stderr
    assert "input  image_bytes: DT_STRING [-1]" in metadata.stdout
    missing = _run("-m", "clients", "status", f"--server={endpoint.rest}", "--model=nope")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    assert _run("-m", "clients", "predict", "--server=ftp://x", "--model=m", "x").returncode == 2
    assert _run("-m", "clients", "nonsense").returncode == 2


def test_cli_library_table_and_find_images(image_dir):
    files = cli.find_images([str(image_dir)])
    assert [f.name for f in files] == ["a_red.jpg", "c_broken.jpg", "b_blue.JPG"]
    with pytest.raises(ValueError, match="no such file"):
        cli.find_images([str(image_dir / "missing.jpg")])


EXAMPLES = REPO / "clients" / "examples"


def _curl(script, *args, **env):
    result = subprocess.run(["bash", str(EXAMPLES / script), *map(str, args)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**os.environ, **env})
    return result


@pytest.mark.requires("bash", "curl")
def test_curl_examples(endpoint, image_dir):
    env = {"SERVER": endpoint.rest, "MODEL": MODEL}
    status = _curl("status.sh", **env)
    assert status.returncode == 0, status.stderr
    assert {s["state"] for s in json.loads(status.stdout)["model_version_status"]} == \
        {"AVAILABLE"}
    metadata = json.loads(_curl("metadata.sh", **env, LABEL="stable").stdout)
    assert metadata["model_spec"]["version"] == "1"
    red, blue = image_dir / "a_red.jpg", image_dir / "sub" / "b_blue.JPG"
    row = _curl("predict_row.sh", red, blue, **env)
    assert row.returncode == 0, row.stderr
    assert [p["classes"][0] for p in json.loads(row.stdout)["predictions"]] == ["red", "blue"]
    for extra in ({}, {"GZIP_BODY": "1", "VERSION": "1"}):
        columnar = _curl("predict_columnar.sh", blue, red, **env, **extra)
        assert columnar.returncode == 0, columnar.stderr
        assert [c[0] for c in json.loads(columnar.stdout)["outputs"]["classes"]] == \
            ["blue", "red"]
    classify = _curl("classify.sh", red, **env)
    assert json.loads(classify.stdout)["results"][0][0][0] == "red"
    bad = _curl("predict_row.sh", image_dir / "c_broken.jpg", **env)
    assert bad.returncode != 0 and "image 0" in json.loads(bad.stdout)["error"]


def test_loadtest_library_and_command(endpoint, tmp_path):
    with GrpcClient(endpoint.grpc, MODEL) as client:
        result = loadtest.run_load(client.predict, [RED, BLUE, b"junk"], concurrency=3,
                                   requests=30, duration_s=30, images_per_request=1)
    assert result.requests == 30 and result.succeeded == 20
    assert result.errors == {"INVALID_ARGUMENT": 10}
    assert 0 < result.percentile(50) <= result.percentile(99) <= max(result.latencies_ms)
    # Without a request count only the time bound ends the run: it must end (a generous
    # minute for a 0.2 s bound), and not before the bound.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        timed = pool.submit(loadtest.run_load, lambda batch: None, [RED], concurrency=2,
                            requests=None, duration_s=0.2).result(timeout=60)
    assert timed.elapsed_s >= 0.2 and timed.succeeded == timed.requests > 0
    out = tmp_path / "load.json"
    command = _run("-m", "clients.loadtest", f"--server={endpoint.rest}", f"--model={MODEL}",
                   "--concurrency=2", "--requests=20", "--duration=30", "--images_per_request=2",
                   "--synthetic_size=64x48", f"--json={out}")
    assert command.returncode == 0, command.stderr
    assert "requests/s" in command.stdout
    report = json.loads(out.read_text())
    assert report["requests"] == 20 and report["failed"] == 0
    assert report["images_per_s"] == pytest.approx(2 * report["requests_per_s"], rel=0.01)
    assert set(report["latency_ms"]) == {"mean", "p50", "p90", "p95", "p99", "max"}
