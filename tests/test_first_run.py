"""What a newcomer sees: the demo's steps raise no false alarms, and real problems still show.

Every entry point filters TensorFlow's known start-up noise out of stderr
(serving/tf_noise.py). These tests run the demo's own Makefile steps on a tiny dataset and
read their whole output, and check the filter and the progress bars on their own.
"""

from __future__ import annotations

import io
import os
import pathlib
import re
import subprocess
import sys

import pytest
import support

from serving import tf_noise
from train import progress

REPO = pathlib.Path(__file__).resolve().parents[1]

# Lines seen in this project's output before they were filtered or their cause fixed.
NOISE_SAMPLES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796051252.166493   17091 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796051496.759144   18597 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, "
    "in other operations, rebuild TensorFlow with the appropriate compiler flags.",
    "I1130 15:08:12.922496 140105180277632 signature_serialization.py:156] Function "
    "`_serve_image_bytes` contains input name(s) resource, table_handle with unsupported "
    "characters which will be renamed to lite0_classifier_1_head_dense_1_biasadd_readvariableop"
    "_resource, none_lookup_lookuptablefindv2_table_handle in the SavedModel.",
    "W0000 00:00:1796051565.257135   19083 png_io.cc:96] PNG warning: iCCP: known incorrect "
    "sRGB profile",
]
NO_GPU_SAMPLES = [
    "I0000 00:00:1796051252.167064   17091 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "E0000 00:00:1796051253.005445   17091 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]
REAL = [
    "E0000 00:00:1796051253.005445   17091 cuda_executor.cc:1228] out of memory",
    "W1130 15:12:15.402580 139737981438848 trainer.py:99] Skipping /data/x.jpg: truncated JPEG",
    "Traceback (most recent call last):",
    "error: data_dir '/nope' does not exist or is not a directory",
    "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
    "with the appropriate compiler flags.",  # Not after its first line: not known noise.
]
# What the issue saw in the demo's output, and anything else that reads as a problem.
ALARM_MARKERS = ("absl::InitializeLog", "cuInit", "CUDA error", "cuda drivers", "oneDNN",
                 "cpu_feature_guard", "rebuild TensorFlow", "ran out of data",
                 "unsupported characters", "iCCP")
ALARM_LINE = re.compile(r"^[WEF]\d{4} |^(WARNING|ERROR|FATAL)\b|\w+Warning: |^Traceback |"
                        r"^error: |\bERROR\b")


def alarms(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if ALARM_LINE.search(line) or any(marker in line for marker in ALARM_MARKERS)]


def test_the_filter_drops_exactly_the_known_noise():
    line_filter = tf_noise.LineFilter(gpu_expected=False)
    assert [line for line in NOISE_SAMPLES + NO_GPU_SAMPLES + REAL
            if not line_filter.is_noise(line)] == REAL
    # With a GPU to use, the lines saying why it is not used are real problems.
    with_gpu = tf_noise.LineFilter(gpu_expected=True)
    assert [line for line in NO_GPU_SAMPLES if not with_gpu.is_noise(line)] == NO_GPU_SAMPLES


def test_gpus_hidden_on_purpose_make_the_no_gpu_lines_noise(monkeypatch):
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not tf_noise.gpu_expected()


FILTERED_CHILD = """
import os, sys
from serving import tf_noise
tf_noise.install()
for line in sys.argv[1:]:
    os.write(2, line.encode() + b"\\n")
os.write(2, b"a prompt without a line end: ")
os.abort()  # As TensorFlow does on a failed CHECK: no exit handlers run.
"""


def run_python(code: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env={**os.environ, **env})


def test_what_a_crashing_process_writes_last_still_shows():
    done = run_python(FILTERED_CHILD, *NOISE_SAMPLES, *REAL, CUDA_VISIBLE_DEVICES="")
    assert done.returncode != 0
    assert done.stderr.splitlines() == REAL + ["a prompt without a line end: "]


def test_setting_show_env_shows_everything():
    done = run_python(FILTERED_CHILD, *NOISE_SAMPLES, **{tf_noise.SHOW_ENV: "1"})
    assert done.stderr.splitlines()[:len(NOISE_SAMPLES)] == NOISE_SAMPLES


def test_tensorflow_errors_show_and_its_start_up_noise_does_not():
    code = ("from serving import tf_noise\n"
            "tf_noise.install()\n"
            "import tensorflow as tf\n"
            "tf.config.list_physical_devices()\n"  # Where the cuInit E-line comes from.
            "tf.io.decode_jpeg(b'not a jpeg')\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=env)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "InvalidArgumentError" in done.stderr
    assert [marker for marker in ALARM_MARKERS if marker in done.stderr] == []


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_on_a_terminal_only(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log)
    assert list(progress.track(range(3), title="Scoring")) == [0, 1, 2]
    assert log.getvalue() == ""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert list(progress.track(range(3), title="Scoring")) == [0, 1, 2]
    shown = terminal.getvalue()
    assert shown.startswith("Scoring\n") and "3/3" in shown and shown.endswith("\n")
    # Fewer items than expected (files that failed to decode): the bar still ends its line.
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    assert list(progress.track(iter(range(2)), total=3, title="Scoring")) == [0, 1]
    assert "2/3" in terminal.getvalue() and terminal.getvalue().endswith("\n")


@pytest.mark.requires("make", "fashion-mnist", "skimage")
def test_demo_steps_raise_no_false_alarms(tmp_path):
    demo, size = tmp_path / "demo", 32
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "demo-steps", f"PY={sys.executable}",
         f"DEMO_DIR={demo}", "DEMO_PER_CLASS=4", f"DEMO_IMAGE_SIZE={size}",
         "DEMO_TRAIN_FLAGS=--noaugment --phase1_epochs=1 --phase2_epochs=1 "
         "--phase2_warmup_epochs=0 --batch_size=16",
         # The demo's client steps are given the ports as make variables, before the server
         # starts: chosen free here, as a user picks them.
         f"DEMO_GRPC_PORT={support.free_port()}", f"DEMO_REST_PORT={support.free_port()}"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=900)
    output = done.stdout
    assert done.returncode == 0, output
    assert alarms(output) == []
    assert alarms((demo / "server.log").read_text()) == []
    # The cache estimate is at the size the demo trains at, and says whether it fits.
    assert re.search(rf"^decoded cache at {size}px: .* fits in the [\d.]+ GiB of RAM available$",
                     output, re.M), output
    # It ends with the summary: results, where the outputs are, and what to run next.
    summary = output[output.rindex("== Summary\n"):].splitlines()[1:]
    assert re.fullmatch(r"test: 40 images, top-1 \d\.\d{4}, top-5 \d\.\d{4}", summary[0])
    places = dict(re.fullmatch(r"(.+?) {2,}(\S+)", line).groups() for line in summary[1:5])
    assert list(places) == ["training curves", "confusion matrix", "trained model", "export"]
    assert all(pathlib.Path(path).exists() for path in places.values())
    assert [line.split(":")[0] for line in summary[5:8]] == ["serve", "call", "deploy"]
    assert f"--model_base_path={demo}/models/fashion" in summary[5]
