"""Serving throughput and latency: gRPC and REST, batching off and on, vs in-process calls.

    python -m bench.serving                       # lite0 (ImageNet head) at 224 px
    python -m bench.serving --image_size=96 --duration=8 --json=serving.json

Side by side in one run, on one SavedModel (export.signatures, 640x480 photo-like JPEG,
one image per request): the in-process ceiling (the version loaded into a TF1 session as
TF Serving and the local server load it, export/session.py, and its signature run directly
at batch 1 and at a batch as large as the highest concurrency), then the local server
(`python -m serving`, a separate process) at concurrency 1, 4 and 16 over gRPC and REST
with the clients library, without and with --enable_batching (BENCH_BATCHING below by
default). Load generator and server share this machine's cores; the load generator's CPU
share is printed with each run.
Results are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Model input size.")
_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "4", "16"], "Concurrency levels.")
_DURATION = flags.DEFINE_float("duration", 10.0, "Seconds per load run (bound).")
_REQUESTS = flags.DEFINE_integer("requests", 2000, "Requests per load run (bound).")
_BATCHING_FILE = flags.DEFINE_string(
    "batching_parameters_file", None,
    "BatchingParameters for the batched server; default: BENCH_BATCHING (one batch thread "
    "using every core, batches up to the highest concurrency, 2 ms timeout).")
_SERVER_THREADS = flags.DEFINE_integer(
    "server_threads", 64, "--grpc_max_threads and --rest_api_num_threads of the server. Each "
    "request waiting for its batch holds a thread, so the default 4 x cores (8 here) would "
    "cap the requests in flight, and hence the batch size, at 8.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")

MODEL_NAME = "bench"
# Throughput on a small CPU box: one batch at a time lets TensorFlow's intra-op threads use
# every core for it, and bigger batches are what make a batch cheaper per image here.
BENCH_BATCHING = """
max_batch_size {{ value: {max_batch} }}
batch_timeout_micros {{ value: 2000 }}
max_enqueued_batches {{ value: {max_batch} }}
num_batch_threads {{ value: 1 }}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def save_model(base: str, image_size: int) -> bytes:
    """Writes base/1 (lite0 + serving signatures + warmup); returns the request JPEG."""
    from export import signatures, warmup
    from train import backbones
    from train.backbones import imagenet

    model = backbones.build_backbone("lite0", weights="imagenet", input_size=image_size,
                                     include_top=True).model
    module = signatures.ServingModule(model, labels=imagenet.class_names(),
                                      image_size=image_size)
    path = os.path.join(base, "1")
    module.save(path)
    image = warmup.synthetic_photo(640, 480)
    warmup.write_warmup_file(os.path.join(path, warmup.WARMUP_FILE),
                             warmup.build_warmup_records([image], model_name=MODEL_NAME,
                                                         batch_sizes=(1, 4, 16)))
    return image


def in_process(base: str, image: bytes, batch: int, duration: float) -> dict:
    """Images/s of the session-loaded signature run directly: batch 1 and batch `batch`."""
    import numpy as np

    from export import session, signatures

    results = {}
    with session.load(os.path.join(base, "1")) as model:
        for size in (1, batch):
            request = {signatures.IMAGE_BYTES_INPUT: np.array([image] * size, dtype=object)}
            model.run(signatures.SERVING_DEFAULT, request)
            calls, start = 0, time.perf_counter()
            while time.perf_counter() - start < duration / 2:
                model.run(signatures.SERVING_DEFAULT, request)
                calls += 1
            results[f"batch_{size}"] = calls * size / (time.perf_counter() - start)
    return results


@contextlib.contextmanager
def server(base: str, batching_file: str | None, threads: int, extra_flags: tuple = ()):
    """The local server in its own process; yields (grpc address, REST URL, its pid)."""
    from clients import GrpcClient, errors

    grpc_port, rest_port = _free_port(), _free_port()
    command = [sys.executable, "-m", "serving", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", f"--model_name={MODEL_NAME}",
               f"--model_base_path={base}", f"--grpc_max_threads={threads}",
               f"--rest_api_num_threads={threads}"]
    if batching_file:
        command += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
    command += list(extra_flags)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        with GrpcClient(f"127.0.0.1:{grpc_port}", MODEL_NAME, timeout=5) as client:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if any(v.state == "AVAILABLE" for v in client.status()):
                        break
                except errors.ClientError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the local server did not load the model")
                time.sleep(0.5)
        yield f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", process.pid
    finally:
        process.terminate()
        process.wait(timeout=60)


def load(grpc_address: str, rest_url: str, image: bytes, levels: list[int], duration: float,
         requests: int) -> list[dict]:
    from clients import GrpcClient, RestClient, loadtest

    rows = []
    for protocol in ("grpc", "rest"):
        for concurrency in levels:
            client = (GrpcClient(grpc_address, MODEL_NAME, timeout=60) if protocol == "grpc"
                      else RestClient(rest_url, MODEL_NAME, timeout=60,
                                      pool_maxsize=concurrency))
            with client:
                client.predict([image])  # Connect outside the measurement.
                cpu_before = time.process_time()
                result = loadtest.run_load(client.predict, [image], concurrency=concurrency,
                                           requests=requests, duration_s=duration)
                cpu = time.process_time() - cpu_before
            rows.append({"protocol": protocol, "concurrency": concurrency,
                         "images_per_s": result.images_per_s, "p50_ms": result.percentile(50),
                         "p99_ms": result.percentile(99), "errors": result.errors,
                         "requests": result.succeeded,
                         # The load generator's own share of the machine's CPU time, which
                         # the server did not get.
                         "client_cpu_share": cpu / (result.elapsed_s * (os.cpu_count() or 1))})
    return rows


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import tensorflow as tf

    levels = [int(c) for c in _CONCURRENCY.value]
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "tensorflow": tf.__version__, "image_size": _IMAGE_SIZE.value, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, MODEL_NAME)
        image = save_model(base, _IMAGE_SIZE.value)
        results["in_process"] = in_process(base, image, max(levels), _DURATION.value)
        batching_file = _BATCHING_FILE.value
        if not batching_file:
            batching_file = os.path.join(tmp, "batching_parameters.txt")
            with open(batching_file, "w") as f:
                f.write(BENCH_BATCHING.format(max_batch=max(levels)))
        with open(batching_file) as f:
            results["batching_parameters"] = f.read()
        for batching in (False, True):
            with server(base, batching_file if batching else None,
                        _SERVER_THREADS.value) as (grpc, rest, _):
                for row in load(grpc, rest, image, levels, _DURATION.value, _REQUESTS.value):
                    results["runs"].append({"batching": batching, **row})
    ceiling = results["in_process"]
    print(f"lite0 at {_IMAGE_SIZE.value} px, 640x480 JPEG, 1 image/request, "
          f"{results['machine']}, TF {results['tensorflow']}")
    print(f"in-process: batch 1 {ceiling['batch_1']:.1f} img/s, batch {max(levels)} "
          f"{ceiling[f'batch_{max(levels)}']:.1f} img/s")
    print(f"{'protocol':<6}{'batching':>9}{'conc':>6}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'% of in-process':>17}{'client CPU':>12}  errors")
    for run in results["runs"]:
        reference = ceiling[f"batch_{max(levels)}"] if run["batching"] else ceiling["batch_1"]
        run["fraction_of_in_process"] = run["images_per_s"] / reference
        print(f"{run['protocol']:<6}{'on' if run['batching'] else 'off':>9}"
              f"{run['concurrency']:>6}{run['images_per_s']:>9.1f}{run['p50_ms']:>9.1f}"
              f"{run['p99_ms']:>9.1f}{100 * run['fraction_of_in_process']:>16.0f}%"
              f"{100 * run['client_cpu_share']:>11.0f}%  {run['errors'] or ''}")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
