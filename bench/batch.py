"""Batch scoring throughput: Beam RunInference vs the clients' CLI vs a plain loop.

    python -m bench.batch                       # lite0 (ImageNet head) at 224 px, 256 photos
    python -m bench.batch --images=512 --image_size=96 --json=bench-batch.json

The same exported model and the same images (640x480 photo-like JPEGs) go through each
way once, each in its own process(es), so that each peak RSS (the sum over its process
tree, sampled every 100 ms) is its own:
  * beam: `python -m batch` on Beam's local runner (FnApiRunner, what the DirectRunner runs
    offline) in multi-processing mode, one worker per core (--workers), batches of --batch;
  * cli: `python -m clients predict --batch=8` against the local server
    (`python -m serving`, started and AVAILABLE before the clock starts; its memory counts);
  * loop: one process that loads the version with export.session and runs
    serving_default over batches of --batch: the ceiling without any framework.
Wall times include each command's start (importing TensorFlow, loading the model), which a
user waits for too; the loop also reports its scoring-only rate, and beam runs once more on
8 images to show its fixed cost and the marginal rate beyond it.
"""

from __future__ import annotations

import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

from absl import app, flags

from bench.coldstart import read_memory
from bench.serving import _IMAGE_SIZE, _JSON, _SERVER_THREADS, MODEL_NAME, save_model, server

_IMAGES = flags.DEFINE_integer("images", 256, "Images scored by each way.")
_BATCH = flags.DEFINE_integer("batch", 16, "Images per batch (beam's max, the loop's).")
_WORKERS = flags.DEFINE_integer("workers", os.cpu_count() or 1, "Beam worker processes.")
_CLI_CONCURRENCY = flags.DEFINE_integer("cli_concurrency", 4, "The CLI's requests in flight.")

_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _tree(pid: int) -> list[int]:
    """pid and its descendants (Linux /proc)."""
    pids, index = [pid], 0
    while index < len(pids):
        try:
            for task in os.listdir(f"/proc/{pids[index]}/task"):
                with open(f"/proc/{pids[index]}/task/{task}/children") as f:
                    pids.extend(int(child) for child in f.read().split())
        except OSError:
            pass  # Exited meanwhile.
        index += 1
    return pids


def _rss_mib(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += read_memory(pid)["rss_mib"]
        except (OSError, KeyError):
            pass  # Exited, or a zombie without VmRSS.
    return total


def timed(command: list[str], also: tuple[int, ...] = ()) -> dict:
    """Runs command to the end: wall seconds, peak RSS of its tree plus the `also` trees."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_ENV)
    peak, done = [0.0], threading.Event()

    def sample():
        while not done.wait(0.1):
            pids = _tree(process.pid) + [p for root in also for p in _tree(root)]
            peak[0] = max(peak[0], _rss_mib(pids))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed:\n{stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss_mib": peak[0], "stdout": stdout}


def loop(version_dir: str, pattern: str, batch: int) -> None:
    """Scores the files in batches through the session-loaded signature; prints JSON."""
    import numpy as np

    from export import session, signatures

    paths = sorted(glob.glob(pattern))
    with session.load(version_dir) as model:
        start = time.perf_counter()
        for i in range(0, len(paths), batch):
            blobs = [open(p, "rb").read() for p in paths[i:i + batch]]
            model.run(signatures.SERVING_DEFAULT,
                      {signatures.IMAGE_BYTES_INPUT: np.array(blobs, dtype=object)})
        print(json.dumps({"scoring_s": time.perf_counter() - start, "images": len(paths)}))


def write_images(folder: str, count: int) -> None:
    from export import warmup

    os.makedirs(folder)
    photos = [warmup.synthetic_photo(640, 480, seed=seed) for seed in range(8)]
    for i in range(count):
        with open(os.path.join(folder, f"{i:05d}.jpg"), "wb") as f:
            f.write(photos[i % len(photos)])


def run_benchmark(root: str, count: int, batch: int, workers: int, image_size: int,
                  cli_concurrency: int, server_threads: int) -> dict:
    """Writes the model and images under root; each way's wall time, rate and peak RSS."""
    base = os.path.join(root, "models", MODEL_NAME)
    save_model(base, image_size)
    images = os.path.join(root, "images")
    write_images(images, count)
    pattern = os.path.join(images, "*.jpg")
    python = sys.executable
    results = {}

    def beam(files: str, expected: int) -> dict:
        result = timed([python, "-m", "batch", f"--model={base}", f"--input={files}",
                        f"--output={os.path.join(root, 'out', 'beam')}",
                        f"--max_batch_size={batch}",
                        f"--direct_num_workers={workers}",
                        "--direct_running_mode=multi_processing"])
        if f"scored {expected} images, 0 failed" not in result["stdout"]:
            raise RuntimeError(f"beam did not score every image: {result['stdout']}")
        return result

    results["beam"] = beam(pattern, count)
    # The same job on the first few images: its fixed cost (workers importing TensorFlow
    # and loading the model), to tell the marginal rate a longer job converges to.
    probe = beam(os.path.join(images, "0000[0-7].jpg"), min(count, 8))

    with server(base, None, server_threads) as (grpc_address, _, server_pid):
        cli = timed([python, "-m", "clients", "predict", f"--server=grpc://{grpc_address}",
                     f"--model={MODEL_NAME}", f"--concurrency={cli_concurrency}", "--batch=8",
                     "--json", images], also=(server_pid,))
    if json.loads(cli["stdout"])["failed"]:
        raise RuntimeError("the CLI failed some images")
    results["cli"] = cli

    plain = timed([python, "-c", f"from bench.batch import loop; "
                   f"loop({os.path.join(base, '1')!r}, {pattern!r}, {batch})"])
    plain["scoring_s"] = json.loads(plain["stdout"])["scoring_s"]
    results["loop"] = plain

    for result in results.values():
        result.pop("stdout")
        result["images_per_s"] = count / result["seconds"]
    plain["scoring_images_per_s"] = count / plain["scoring_s"]
    results["beam"]["startup_s"] = probe["seconds"]
    results["beam"]["marginal_images_per_s"] = (
        (count - min(count, 8)) / max(1e-9, results["beam"]["seconds"] - probe["seconds"]))
    return results


def main(argv: list[str]) -> None:
    del argv
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as root:
        results = run_benchmark(root, _IMAGES.value, _BATCH.value, _WORKERS.value,
                                _IMAGE_SIZE.value, _CLI_CONCURRENCY.value,
                                _SERVER_THREADS.value)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "images": _IMAGES.value, "image_size": _IMAGE_SIZE.value,
              "batch": _BATCH.value, "workers": _WORKERS.value, "results": results}
    print(f"{_IMAGES.value} images, lite0 at {_IMAGE_SIZE.value} px, {report['machine']}")
    print(f"{'way':<6} {'wall s':>8} {'img/s':>8} {'peak RSS MiB':>13}")
    for name, result in results.items():
        print(f"{name:<6} {result['seconds']:>8.1f} {result['images_per_s']:>8.1f} "
              f"{result['peak_rss_mib']:>13.0f}")
    loop_result, beam_result = results["loop"], results["beam"]
    print(f"loop scoring only: {loop_result['scoring_s']:.1f} s, "
          f"{loop_result['scoring_images_per_s']:.1f} img/s")
    print(f"beam on 8 images: {beam_result['startup_s']:.1f} s; marginal rate beyond them: "
          f"{beam_result['marginal_images_per_s']:.1f} img/s")
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    app.run(main)
