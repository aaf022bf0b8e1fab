"""Cold start, first-request latency and server memory, with and without model warmup.

    python -m bench.coldstart                     # lite0 (ImageNet head) at 224 px, 3 launches each
    python -m bench.coldstart --launches=2 --duration=5 --json=coldstart.json

One SavedModel (bench.serving.save_model: lite0 + export.signatures + export.warmup's file
with predict records at batch 1, 4 and 16 and one classify record), served by the local
server (`python -m serving`, a separate process) with --enable_model_warmup=true and =false,
everything else equal (batching on with bench.serving.BENCH_BATCHING, 64 server threads).
The two conditions alternate, --launches server processes each; medians are reported.

Per launch:
1. Cold start: wall time from Popen to the first successful prediction. The client polls
   GetModelStatus every 50 ms (a fresh channel per poll, so gRPC's reconnect backoff does
   not delay it) and predicts as soon as the version is AVAILABLE. The server's absl log
   (stderr) splits it into process start + imports (TensorFlow included) up to
   "Approving load", SavedModel load, warmup replay ("Finished reading warmup data ...
   Elapsed time"), and ports opening / the client noticing. The server opens its ports
   only after the initial load, so AVAILABLE is seen when the port answers.
2. First-request latency: the first predict after AVAILABLE (one 640x480 JPEG, gRPC, on
   the already connected channel), then the median of requests 2..--latency_requests.
3. Memory of the server process from /proc/PID/status: VmRSS and VmHWM (peak RSS) when
   AVAILABLE, idle after the latency requests, and under load (clients.loadtest over gRPC
   at the highest --concurrency, bounded by --duration and --requests; VmRSS sampled every
   100 ms, VmHWM read after the run).

Also timed once: `import tensorflow` in a fresh interpreter, for scale. Files are in the
page cache (this process has just imported TensorFlow and written the model), so "cold"
means a new process, not a cold disk. Shares the flags of bench.serving (--image_size,
--concurrency, --duration, --requests, --batching_parameters_file, --server_threads,
--json). Results are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

from bench.serving import (
    _BATCHING_FILE,
    _CONCURRENCY,
    _DURATION,
    _IMAGE_SIZE,
    _JSON,
    _REQUESTS,
    _SERVER_THREADS,
    BENCH_BATCHING,
    MODEL_NAME,
    _free_port,
    save_model,
)

_LAUNCHES = flags.DEFINE_integer("launches", 3, "Server launches per condition.")
_LATENCY_REQUESTS = flags.DEFINE_integer(
    "latency_requests", 10, "Sequential predicts after AVAILABLE: the first, then the median "
    "of the others.")

POLL_S = 0.05
# absl's log line: I1128 11:03:23.159101 140023213652864 manager.py:314] message
_LOG_LINE = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{6})\s+\d+\s+\S+\]\s(.*)$")
_EVENTS = {
    "approve": "Approving load for servable version",
    "loading": "Loading servable version",
    "warmup_done": "Finished reading warmup data",
    "loaded": "Successfully loaded servable version",
    "grpc_up": "Running gRPC ModelServer",
}
_WARMUP_ELAPSED = re.compile(r"Elapsed time \(microseconds\): (\d+)")


def read_memory(pid: int) -> dict:
    """VmRSS and VmHWM of a process in MiB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB -> MiB
    return {"rss_mib": values["VmRSS"], "hwm_mib": values["VmHWM"]}


def parse_log(path: str) -> dict:
    """Wall-clock times (epoch seconds) of the load events in the server's absl log."""
    year = datetime.datetime.now().year
    events: dict = {}
    with open(path, errors="replace") as f:
        for line in f:
            match = _LOG_LINE.match(line.rstrip("\n"))
            if not match:
                continue
            month, day, hour, minute, second, micros = (int(g) for g in match.groups()[:6])
            message = match.group(7)
            # absl logs local time, like time.time() once converted.
            stamp = datetime.datetime(year, month, day, hour, minute, second,
                                      micros).timestamp()
            for name, prefix in _EVENTS.items():
                if name not in events and message.startswith(prefix):
                    events[name] = stamp
                    if name == "warmup_done":
                        elapsed = _WARMUP_ELAPSED.search(message)
                        if elapsed:
                            events["warmup_s"] = int(elapsed.group(1)) / 1e6
    return events


class _RssSampler(threading.Thread):
    """Highest VmRSS seen while running."""

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, read_memory(self.pid)["rss_mib"])
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return self.peak


def _wait_available(address: str, process: subprocess.Popen, deadline_s: float = 300):
    """A connected GrpcClient as soon as the model's status says AVAILABLE."""
    from clients import GrpcClient, RetryPolicy, errors

    deadline = time.monotonic() + deadline_s
    while True:
        client = GrpcClient(address, MODEL_NAME, timeout=120,
                            retry=RetryPolicy(max_attempts=1))
        try:
            if any(v.state == "AVAILABLE" for v in client.status(timeout=2)):
                return client
        except errors.ClientError:
            pass
        client.close()
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the local server did not load the model")
        time.sleep(POLL_S)


def launch(base: str, image: bytes, *, warmup: bool, batching_file: str, threads: int,
           latency_requests: int, concurrency: int, duration: float, requests: int,
           log_path: str) -> dict:
    """One server process: cold start, first-request latencies, memory, load."""
    from clients import GrpcClient, loadtest

    grpc_port, rest_port = _free_port(), _free_port()
    address = f"127.0.0.1:{grpc_port}"
    command = [sys.executable, "-m", "serving", f"--port={grpc_port}",
               f"--rest_api_port={rest_port}", f"--model_name={MODEL_NAME}",
               f"--model_base_path={base}", f"--grpc_max_threads={threads}",
               f"--rest_api_num_threads={threads}", "--enable_batching",
               f"--batching_parameters_file={batching_file}",
               f"--enable_model_warmup={'true' if warmup else 'false'}"]
    run: dict = {"warmup": warmup}
    with open(log_path, "w") as log:
        launched = time.time()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        client = _wait_available(address, process)
        available = time.time()
        run["memory_available"] = read_memory(process.pid)
        with client:
            latencies = []
            for _ in range(latency_requests):
                start = time.perf_counter()
                client.predict([image])
                latencies.append((time.perf_counter() - start) * 1000)
                if len(latencies) == 1:
                    first_prediction = time.time()
        run["memory_idle"] = read_memory(process.pid)
        with GrpcClient(address, MODEL_NAME, timeout=60) as load_client:
            load_client.predict([image])  # Connect outside the measurement.
            sampler = _RssSampler(process.pid)
            sampler.start()
            result = loadtest.run_load(load_client.predict, [image], concurrency=concurrency,
                                       requests=requests, duration_s=duration)
            peak_rss = sampler.stop()
        run["memory_load"] = {"rss_peak_mib": peak_rss, **read_memory(process.pid)}
        run["load"] = {"concurrency": concurrency, "images_per_s": result.images_per_s,
                       "p50_ms": result.percentile(50), "p99_ms": result.percentile(99),
                       "requests": result.succeeded, "errors": result.errors}
    finally:
        process.terminate()
        process.wait(timeout=60)
    events = parse_log(log_path)
    missing = {"approve", "loading", "loaded", "grpc_up"} - events.keys()
    if warmup and "warmup_s" not in events:
        missing.add("warmup_done")
    if missing:
        raise RuntimeError(f"server log {log_path} lacks {sorted(missing)}")
    warmup_s = events.get("warmup_s", 0.0)
    run["latency_ms"] = latencies
    run["first_ms"] = latencies[0]
    run["steady_ms"] = statistics.median(latencies[1:])
    run["stages_s"] = {
        "start_imports": events["approve"] - launched,
        "model_load": events["loaded"] - events["loading"] - warmup_s,
        "warmup": warmup_s,
        "ports_and_poll": available - events["loaded"],
        "launch_to_available": available - launched,
        "first_predict": latencies[0] / 1000,
        "launch_to_first_prediction": first_prediction - launched,
    }
    return run


def tensorflow_import_s() -> float:
    """Wall time from launching a fresh interpreter to its `import tensorflow` returning
    (interpreter exit not included), comparable with the server's first stage."""
    launched = time.time()
    done = subprocess.run(
        [sys.executable, "-c", "import time, tensorflow; print(time.time())"], check=True,
        capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return float(done.stdout.split()[-1]) - launched


def summarise(runs: list[dict]) -> dict:
    """Medians over launches of every number in the runs."""
    def median(getter):
        return statistics.median(getter(run) for run in runs)

    summary = {"launches": len(runs),
               "first_ms": median(lambda r: r["first_ms"]),
               "steady_ms": median(lambda r: r["steady_ms"]),
               "stages_s": {key: median(lambda r, k=key: r["stages_s"][k])
                            for key in runs[0]["stages_s"]}}
    for phase in ("memory_available", "memory_idle", "memory_load"):
        summary[phase] = {key: median(lambda r, p=phase, k=key: r[p][k])
                          for key in runs[0][phase]}
    summary["load"] = {key: median(lambda r, k=key: r["load"][k])
                       for key in ("images_per_s", "p50_ms", "p99_ms")}
    summary["first_ms_range"] = [min(r["first_ms"] for r in runs),
                                 max(r["first_ms"] for r in runs)]
    return summary


def report(results: dict) -> None:
    on, off = results["warmup_on"], results["warmup_off"]
    print(f"lite0 at {results['image_size']} px, 640x480 JPEG, 1 image/request over gRPC, "
          f"{results['machine']}, TF {results['tensorflow']}; medians of "
          f"{on['launches']} launches per condition")
    print("launch -> `import tensorflow` done, fresh interpreter doing nothing else: "
          f"{results['tensorflow_import_s']:.2f} s")
    print(f"{'':<44}{'warmup on':>12}{'warmup off':>12}{'off/on':>9}")

    def row(label, a, b, fmt="{:>12.2f}"):
        ratio = f"{b / a:>8.2f}x" if a and b else f"{'':>9}"
        print(f"{label:<44}" + fmt.format(a) + fmt.format(b) + ratio)

    stage_labels = {
        "start_imports": "process start + imports (s)",
        "model_load": "SavedModel load (s)",
        "warmup": "warmup replay (s)",
        "ports_and_poll": "ports open + client sees AVAILABLE (s)",
        "launch_to_available": "launch -> AVAILABLE (s)",
        "first_predict": "first predict (s)",
        "launch_to_first_prediction": "launch -> first prediction (s)",
    }
    for key, label in stage_labels.items():
        row(label, on["stages_s"][key], off["stages_s"][key])
    row("first request after AVAILABLE (ms)", on["first_ms"], off["first_ms"], "{:>12.1f}")
    row(f"median of requests 2..{results['latency_requests']} (ms)", on["steady_ms"],
        off["steady_ms"], "{:>12.1f}")
    row("first / steady", on["first_ms"] / on["steady_ms"], off["first_ms"] / off["steady_ms"])
    memory_labels = [
        ("memory_available", "rss_mib", "VmRSS at AVAILABLE (MiB)"),
        ("memory_available", "hwm_mib", "VmHWM at AVAILABLE (MiB)"),
        ("memory_idle", "rss_mib", "VmRSS idle after the requests (MiB)"),
        ("memory_idle", "hwm_mib", "VmHWM idle after the requests (MiB)"),
        ("memory_load", "rss_peak_mib", "VmRSS peak under load (MiB, 100 ms samples)"),
        ("memory_load", "hwm_mib", "VmHWM after load (MiB)"),
        ("memory_load", "rss_mib", "VmRSS after load (MiB)"),
    ]
    for phase, key, label in memory_labels:
        row(label, on[phase][key], off[phase][key], "{:>12.0f}")
    concurrency = results["concurrency"]
    row(f"load c={concurrency} batching: img/s", on["load"]["images_per_s"],
        off["load"]["images_per_s"], "{:>12.1f}")
    row(f"load c={concurrency} batching: p50 ms", on["load"]["p50_ms"], off["load"]["p50_ms"],
        "{:>12.1f}")
    row(f"load c={concurrency} batching: p99 ms", on["load"]["p99_ms"], off["load"]["p99_ms"],
        "{:>12.1f}")
    print(f"first-request latency without/with warmup: {off['first_ms'] / on['first_ms']:.1f}x "
          f"(ranges: on {on['first_ms_range'][0]:.0f}-{on['first_ms_range'][1]:.0f} ms, "
          f"off {off['first_ms_range'][0]:.0f}-{off['first_ms_range'][1]:.0f} ms)")
    print("launch -> first prediction without/with warmup: "
          f"{off['stages_s']['launch_to_first_prediction']:.2f} / "
          f"{on['stages_s']['launch_to_first_prediction']:.2f} s")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _LAUNCHES.value < 1 or _LATENCY_REQUESTS.value < 2:
        raise app.UsageError("--launches >= 1 and --latency_requests >= 2")
    import tensorflow as tf

    concurrency = max(int(c) for c in _CONCURRENCY.value)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "tensorflow": tf.__version__, "image_size": _IMAGE_SIZE.value,
               "concurrency": concurrency, "latency_requests": _LATENCY_REQUESTS.value,
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, MODEL_NAME)
        image = save_model(base, _IMAGE_SIZE.value)
        batching_file = _BATCHING_FILE.value
        if not batching_file:
            batching_file = os.path.join(tmp, "batching_parameters.txt")
            with open(batching_file, "w") as f:
                f.write(BENCH_BATCHING.format(max_batch=concurrency))
        results["tensorflow_import_s"] = tensorflow_import_s()
        for i in range(_LAUNCHES.value):
            # Alternate which condition goes first, so drift on a shared machine evens out.
            for warmup in (True, False) if i % 2 == 0 else (False, True):
                run = launch(base, image, warmup=warmup, batching_file=batching_file,
                             threads=_SERVER_THREADS.value,
                             latency_requests=_LATENCY_REQUESTS.value,
                             concurrency=concurrency, duration=_DURATION.value,
                             requests=_REQUESTS.value,
                             log_path=os.path.join(tmp, f"server_{i}_{warmup}.log"))
                print(f"launch {i + 1} warmup {'on' if warmup else 'off'}: first "
                      f"{run['first_ms']:.1f} ms, steady {run['steady_ms']:.1f} ms, "
                      f"launch->first prediction "
                      f"{run['stages_s']['launch_to_first_prediction']:.2f} s", flush=True)
                results["runs"].append(run)
    for warmup in (True, False):
        results[f"warmup_{'on' if warmup else 'off'}"] = summarise(
            [run for run in results["runs"] if run["warmup"] == warmup])
    report(results)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
