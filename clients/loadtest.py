"""Load generator: throughput and latency of predict against TF Serving, gRPC or REST.

    python -m clients.loadtest --server=grpc://localhost:8500 --model=effnet \\
        --image=cat.jpg --concurrency=8 --requests=2000 --duration=60 --json=load.json
    python -m clients.loadtest --server=http://localhost:8501 --model=effnet \\
        --images_per_request=4 --duration=20        # a synthetic 640x480 JPEG

Every run is bounded twice: it stops issuing requests after --requests requests or
--duration seconds, whichever comes first (requests in flight then finish within
--timeout). --warmup_requests run first and are not measured. Prints requests/s,
images/s, latency percentiles and errors by status code; --json writes the same as JSON.

From Python (bench/clients.py does this):

    from clients import connect, loadtest

    client = connect("grpc://localhost:8500", "effnet")
    result = loadtest.run_load(client.predict, [jpeg_bytes], concurrency=8, requests=500)
    print(result.summary())
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence

from clients import errors


@dataclasses.dataclass
class LoadResult:
    """What a load run measured. Latencies are of successful requests, in milliseconds."""

    requests: int
    succeeded: int
    images_per_request: int
    concurrency: int
    elapsed_s: float
    latencies_ms: list[float]
    errors: dict[str, int]

    @property
    def requests_per_s(self) -> float:
        return self.succeeded / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.requests_per_s * self.images_per_request

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of successful latencies, nearest-rank; NaN if none."""
        if not self.latencies_ms:
            return math.nan
        ordered = sorted(self.latencies_ms)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def to_dict(self) -> dict:
        latencies = self.latencies_ms
        return {
            "requests": self.requests, "succeeded": self.succeeded,
            "failed": self.requests - self.succeeded, "errors": dict(self.errors),
            "concurrency": self.concurrency, "images_per_request": self.images_per_request,
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_per_s": round(self.requests_per_s, 2),
            "images_per_s": round(self.images_per_s, 2),
            "latency_ms": {
                "mean": round(sum(latencies) / len(latencies), 3) if latencies else None,
                **{f"p{q}": _round(self.percentile(q)) for q in (50, 90, 95, 99)},
                "max": round(max(latencies), 3) if latencies else None,
            },
        }

    def summary(self) -> str:
        d = self.to_dict()
        lat = d["latency_ms"]
        lines = [
            f"requests   {d['requests']} ({d['failed']} failed) in {d['elapsed_s']:.2f} s, "
            f"concurrency {d['concurrency']}, {d['images_per_request']} image(s)/request",
            f"throughput {d['requests_per_s']:.1f} requests/s, {d['images_per_s']:.1f} images/s",
            "latency ms " + "  ".join(f"{k} {v}" for k, v in lat.items()),
        ]
        if self.errors:
            lines.append("errors     " + ", ".join(f"{k}: {v}" for k, v in
                                                   sorted(self.errors.items())))
        return "\n".join(lines)


def _round(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


def run_load(predict: Callable[[list[bytes]], object], images: Sequence[bytes], *,
             concurrency: int = 4, requests: int | None = 1000, duration_s: float = 60.0,
             images_per_request: int = 1, warmup_requests: int = 0) -> LoadResult:
    """Calls predict(batch) from `concurrency` threads until a bound is reached.

    Args:
        predict: takes a list of encoded images, e.g. GrpcClient(...).predict.
        images: encoded images; requests cycle through them.
        concurrency: threads, i.e. requests in flight.
        requests: stop after this many requests (None: only the time bound).
        duration_s: stop issuing requests after this many seconds (always bounded).
        images_per_request: images per request.
        warmup_requests: unmeasured requests first (one thread).

    Raises:
        ValueError: bad bounds or no images.
    """
    if concurrency < 1 or images_per_request < 1:
        raise ValueError("concurrency and images_per_request must be >= 1")
    if duration_s is None or duration_s <= 0:
        raise ValueError("duration_s must be positive: a load run is always time-bounded")
    if requests is not None and requests < 1:
        raise ValueError(f"requests must be >= 1 (or None), got {requests}")
    if not images:
        raise ValueError("no images to send")
    batches = [[images[(i + j) % len(images)] for j in range(images_per_request)]
               for i in range(len(images))]
    for i in range(warmup_requests):
        try:
            predict(batches[i % len(batches)])
        except errors.ClientError:
            pass  # Counted in the measured part if it persists.

    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    error_counts: collections.Counter = collections.Counter()
    start = time.perf_counter()
    stop_at = start + duration_s

    def worker():
        nonlocal issued
        while True:
            with lock:
                if (requests is not None and issued >= requests) or \
                        time.perf_counter() >= stop_at:
                    return
                index = issued
                issued += 1
            t0 = time.perf_counter()
            try:
                predict(batches[index % len(batches)])
            except errors.ClientError as error:
                with lock:
                    error_counts[error.code] += 1
                continue
            elapsed = (time.perf_counter() - t0) * 1000
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed_s = time.perf_counter() - start
    return LoadResult(issued, len(latencies), images_per_request, concurrency, elapsed_s,
                      latencies, dict(error_counts))


def synthetic_jpeg(width: int = 640, height: int = 480, quality: int = 90) -> bytes:
    """A photo-like JPEG (smooth gradients plus noise) made with Pillow, for load tests
    without an image at hand."""
    import random

    from PIL import Image, ImageFilter

    rng = random.Random(0)
    noise = Image.frombytes("RGB", (width // 4, height // 4),
                            bytes(rng.randrange(256) for _ in range(width // 4 * height // 4 * 3)))
    image = noise.resize((width, height), Image.Resampling.BICUBIC).filter(
        ImageFilter.GaussianBlur(2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _main(argv):
    from absl import flags

    from clients import connect, images

    del argv
    f = flags.FLAGS
    kwargs = dict(version=f.version, label=f.label, signature=f.signature, timeout=f.timeout,
                  max_size=f.max_size)
    if f.server.startswith(("http://", "https://")):
        kwargs.update(pool_maxsize=f.concurrency, gzip=f.gzip)
    payload = ([images.encode(path) for path in f.image] if f.image
               else [synthetic_jpeg(*map(int, f.synthetic_size.split("x")))])
    with connect(f.server, f.model, **kwargs) as client:
        result = run_load(client.classify if f.classify else client.predict, payload,
                          concurrency=f.concurrency, requests=f.requests or None,
                          duration_s=f.duration, images_per_request=f.images_per_request,
                          warmup_requests=f.warmup_requests)
    print(result.summary())
    if f.json:
        report = {"server": f.server, "model": f.model, "protocol": f.server.split(":")[0],
                  "image_bytes": [len(p) for p in payload],
                  "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                  **result.to_dict()}
        with open(f.json, "w") as file:
            json.dump(report, file, indent=2)
    return 0 if result.succeeded else 1


def _define_flags():
    from absl import flags

    flags.DEFINE_string("server", None, "grpc://HOST:PORT or http://HOST:PORT.", required=True)
    flags.DEFINE_string("model", None, "Model name.", required=True)
    flags.DEFINE_integer("version", None, "Model version.")
    flags.DEFINE_string("label", None, "Version label.")
    flags.DEFINE_string("signature", "serving_default", "Predict signature.")
    flags.DEFINE_boolean("classify", False, "Call the Classify API instead of Predict.")
    flags.DEFINE_multi_string("image", [], "Image file(s) to send (default: synthetic JPEG).")
    flags.DEFINE_string("synthetic_size", "640x480", "WIDTHxHEIGHT of the synthetic JPEG.")
    flags.DEFINE_integer("concurrency", 4, "Requests in flight.", lower_bound=1)
    flags.DEFINE_integer("requests", 1000, "Stop after this many requests (0: time only).",
                         lower_bound=0)
    flags.DEFINE_float("duration", 60.0, "Stop issuing requests after this many seconds.",
                       lower_bound=0.001)
    flags.DEFINE_integer("images_per_request", 1, "Images per request.", lower_bound=1)
    flags.DEFINE_integer("warmup_requests", 5, "Unmeasured requests first.", lower_bound=0)
    flags.DEFINE_integer("max_size", None, "Client-side downscaling (longer side, pixels).")
    flags.DEFINE_float("timeout", 30.0, "Deadline per request in seconds.")
    flags.DEFINE_boolean("gzip", False, "REST: gzip request bodies.")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(_main)
