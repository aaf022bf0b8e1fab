"""Client weight and serving throughput: import cost, gRPC vs REST, batching, downscaling.

    python -m bench.clients                                  # local server, tiny model
    python -m bench.clients --grpc=localhost:8500 --rest=http://localhost:8501 \\
        --model=effnet --image=photo.jpg --json=bench-clients.json     # a real server

Measured side by side in one run:
  * import time (median of fresh interpreters) and module count of clients.grpc_client,
    clients.rest_client, clients.aio and the `clients` package, against importing
    tensorflow_serving.apis.predict_pb2 (what a client needed before); target < 0.5 s;
  * clients.loadtest runs: gRPC and REST, concurrency 1 and 4, 1 and 8 images per request;
  * a phone-size photo (4000x3000 JPEG) sent as is and downscaled on the client
    (max_size=1024): bytes sent and latency.
Without --grpc/--rest, a local server (serving/, needs TensorFlow) runs the tiny test
model from serving/conformance.py: its numbers are the clients' and transport's overhead,
not EfficientNet's. The client shares the machine's cores with the server here, so
client-side downscaling shows its bandwidth saving, not the server CPU it saves.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_GRPC = flags.DEFINE_string("grpc", None, "gRPC address of a running server (host:port).")
_REST = flags.DEFINE_string("rest", None, "REST URL of the same server.")
_MODEL = flags.DEFINE_string("model", None, "Model name (default: the tiny test model).")
_IMAGE = flags.DEFINE_string("image", None, "Image to send (default: a synthetic 640x480 JPEG).")
_REQUESTS = flags.DEFINE_integer("requests", 200, "Requests per load run.")
_DURATION = flags.DEFINE_float("duration", 10.0, "Time bound per load run, seconds.")
_IMPORT_REPEATS = flags.DEFINE_integer("import_repeats", 5, "Fresh interpreters per import.")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")

IMPORT_TARGETS = ("clients", "clients.grpc_client", "clients.rest_client", "clients.aio",
                  "tensorflow_serving.apis.predict_pb2")
_IMPORT_PROBE = ("import sys, time; t = time.perf_counter(); import {module}; "
                 "print(time.perf_counter() - t, len(sys.modules))")


def import_cost(module: str, repeats: int) -> dict | None:
    """Median seconds and module count to import `module` in a fresh interpreter."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    times, counts = [], []
    for _ in range(repeats):
        result = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(module=module)],
                                capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            return None  # Not installed (tensorflow-serving-api in a light install).
        seconds, count = result.stdout.split()
        times.append(float(seconds))
        counts.append(int(count))
    return {"seconds": round(statistics.median(times), 4), "modules": max(counts)}


@contextlib.contextmanager
def _endpoint():
    if _GRPC.value and _REST.value:
        yield _GRPC.value, _REST.value, _MODEL.value or "effnet"
        return
    from serving import conformance  # Only here: the benchmark, not the client, needs a server.

    with tempfile.TemporaryDirectory() as tmp:
        config = conformance.write_conformance_models(tmp)
        with conformance.local_server(model_config_file=str(config),
                                      allow_version_labels_for_unavailable_models=True) as (_, e):
            yield e.grpc, e.rest, conformance.MODEL_NAME


def load_runs(grpc_address: str, rest_url: str, model: str, image: bytes, photo: bytes) -> list:
    from clients import GrpcClient, RestClient, loadtest

    runs = []

    def run(protocol, concurrency, per_request, payload, **client_kwargs):
        if protocol == "grpc":
            client = GrpcClient(grpc_address, model, **client_kwargs)
        else:
            client = RestClient(rest_url, model, pool_maxsize=concurrency, **client_kwargs)
        with client:
            result = loadtest.run_load(client.predict, [payload], concurrency=concurrency,
                                       requests=_REQUESTS.value, duration_s=_DURATION.value,
                                       images_per_request=per_request, warmup_requests=3)
        row = {"protocol": protocol, "concurrency": concurrency,
               "images_per_request": per_request, "payload_bytes": len(payload),
               **{k: v for k, v in client_kwargs.items()}, **result.to_dict()}
        runs.append(row)
        lat = row["latency_ms"]
        print(f"{protocol:<5} c={concurrency} n={per_request} "
              f"{('max_size=' + str(client_kwargs['max_size'])) if client_kwargs else '':<14}"
              f"{row['requests_per_s']:>8.1f} req/s {row['images_per_s']:>8.1f} img/s  "
              f"p50 {lat['p50']} ms  p99 {lat['p99']} ms  failed {row['failed']}")

    for protocol in ("grpc", "rest"):
        for concurrency in (1, 4):
            for per_request in (1, 8):
                run(protocol, concurrency, per_request, image)
    for protocol in ("grpc", "rest"):
        run(protocol, 2, 1, photo)
        run(protocol, 2, 1, photo, max_size=1024)
    return runs


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from clients import images, loadtest

    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "python": platform.python_version(), "imports": {}}
    print("import cost (fresh interpreter, median):")
    for module in IMPORT_TARGETS:
        cost = import_cost(module, _IMPORT_REPEATS.value)
        results["imports"][module] = cost
        if cost:
            print(f"  {module:<40}{cost['seconds']:>8.3f} s {cost['modules']:>6} modules")
    image = images.encode(_IMAGE.value) if _IMAGE.value else loadtest.synthetic_jpeg()
    photo = loadtest.synthetic_jpeg(4000, 3000, quality=92)
    downscale_s = []
    for _ in range(5):
        start = time.perf_counter()
        small = images.downscale(photo, 1024)
        downscale_s.append(time.perf_counter() - start)
    results["downscale"] = {"photo_bytes": len(photo), "downscaled_bytes": len(small),
                            "client_ms": round(1000 * statistics.median(downscale_s), 1)}
    print(f"phone-size photo {len(photo)} bytes, downscaled to 1024 px: {len(small)} bytes "
          f"in {results['downscale']['client_ms']} ms of client CPU")
    with _endpoint() as (grpc_address, rest_url, model):
        results["model"] = model
        results["runs"] = load_runs(grpc_address, rest_url, model, image, photo)
    if _JSON.value:
        with open(_JSON.value, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    app.run(main)
