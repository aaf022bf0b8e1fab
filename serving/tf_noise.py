"""Keeps TensorFlow's known start-up noise off stderr, and nothing else.

TensorFlow's C++ libraries log through absl before anything could configure absl, so
their start-up lines go straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says:
absl's "All log messages before absl::InitializeLog() ..." notice, a oneDNN notice, and on
a machine without an NVIDIA driver "Could not find cuda drivers" plus, at the first device
query, an E-line "failed call to cuInit ... CUDA error" that reads as a failure. install()
points fd 2 at a pipe whose reader drops complete lines matching the exact patterns below
and passes every other byte through unchanged: real warnings and errors, tracebacks,
partial lines (after a short wait) and anything printed by child processes.

The reader is a small child process, not a thread: when TensorFlow aborts (a CHECK
failure), the dying process's last message is still in the pipe, and only a reader that
outlives it can pass it on. It exits when every writer has closed the pipe.

Every entry point that loads TensorFlow calls install() before importing it (train,
export and serving). The module lives in serving/ because serving may import no other
package of this project; it uses the standard library only.

Usage:
    from serving import tf_noise
    tf_noise.install()       # first thing in an entry point's run()
    # SHOW_TF_STARTUP_LOGS=1 python -m train ...   shows everything again
"""

from __future__ import annotations

import atexit
import glob
import os
import re
import select
import signal
import subprocess
import sys

SHOW_ENV = "SHOW_TF_STARTUP_LOGS"
# A partial line (a prompt, a progress bar) is passed on after this long without more.
_PARTIAL_LINE_WAIT = 0.05


def _log_line(severity: str, source: str, message: str) -> re.Pattern:
    # absl's prefix, from C++ ("I0000 00:00:1796051252.166493   17091 port.cc:153] ") or
    # Python ("I1130 15:08:12.922496 140105180277632 signature_serialization.py:156] ").
    return re.compile(rf"{severity}\d{{4}} [\d:.]+ +\d+ {re.escape(source)}:\d+\] {message}")


_CPU_FEATURES = _log_line("I", "cpu_feature_guard.cc", r"This TensorFlow binary is optimized "
                          r"to use available CPU instructions in performance-critical "
                          r"operations\.")
# Its message's second line, dropped only right after the first.
_CPU_FEATURES_CONTINUATION = re.compile(
    r"To enable the following instructions: [\w ]+, in other operations, rebuild TensorFlow "
    r"with the appropriate compiler flags\.")
# Lines that say nothing about this run, on any machine.
NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are "
               r"written to STDERR"),
    _log_line("I", "port.cc", r"oneDNN custom operations are on\. You may see slightly "
              r"different numerical results due to floating-point round-off errors from "
              r"different computation orders\. To turn them off, set the environment variable "
              r"`TF_ENABLE_ONEDNN_OPTS=0`\."),
    _CPU_FEATURES,
    # TensorFlow's SavedModel writer names captured variables and tables "resource" and
    # "table_handle" itself, then renames them; the signatures' inputs are unaffected.
    _log_line("I", "signature_serialization.py", r"Function `[^`]+` contains input name\(s\) "
              r".+ with unsupported characters which will be renamed to .+ in the SavedModel\."),
    # TensorFlow decodes PNG pixels without colour management, so a mislabelled sRGB profile
    # changes nothing (skimage's chelsea.png, used by the demo's weights check, has one).
    _log_line("W", "png_io.cc", r"PNG warning: iCCP: known incorrect sRGB profile"),
)
# Lines that are noise only where no GPU can be used anyway: without an NVIDIA device, or
# with every GPU hidden (CUDA_VISIBLE_DEVICES="" or -1). On a GPU machine they explain why
# the GPU is not used, so they stay.
NO_GPU_NOISE = (
    _log_line("I", "cudart_stub.cc", r"Could not find cuda drivers on your machine, GPU will "
              r"not be used\."),
    _log_line("E", "cuda_platform.cc", r"failed call to cuInit: .*"),
)


class LineFilter:
    """Decides line by line (complete lines, without the line end) what is noise."""

    def __init__(self, *, gpu_expected: bool):
        self._patterns = NOISE if gpu_expected else NOISE + NO_GPU_NOISE
        self._after_cpu_features = False

    def is_noise(self, line: str) -> bool:
        line = line.rstrip("\r")
        follows_cpu_features, self._after_cpu_features = self._after_cpu_features, False
        if follows_cpu_features and _CPU_FEATURES_CONTINUATION.fullmatch(line):
            return True
        for pattern in self._patterns:
            if pattern.fullmatch(line):
                self._after_cpu_features = pattern is _CPU_FEATURES
                return True
        return False


def gpu_expected() -> bool:
    """Whether this process could use an NVIDIA GPU (device present and not hidden)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    # /dev/dxg: a GPU shared into WSL2.
    return bool(glob.glob("/dev/nvidia[0-9]*")) or any(
        os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/dxg"))


def copy_filtered(source: int, destination: int, line_filter: LineFilter) -> None:
    """Copies source to destination until end of file, without the noise lines."""
    pending = b""  # The start of a line not yet complete.
    at_line_start = True  # False after a partial line was passed on: its rest is no new line.
    writable = True

    def write(data: bytes) -> None:
        nonlocal writable
        while data and writable:
            try:
                data = data[os.write(destination, data):]
            except OSError:  # Whoever reads our stderr is gone; keep draining the pipe.
                writable = False

    while True:
        ready, _, _ = select.select([source], [], [], _PARTIAL_LINE_WAIT if pending else None)
        if not ready:
            write(pending)
            pending, at_line_start = b"", False
            continue
        chunk = os.read(source, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        kept = []
        for line in lines:
            if not (at_line_start and line_filter.is_noise(line.decode("utf-8", "replace"))):
                kept.append(line + b"\n")
            at_line_start = True
        write(b"".join(kept))
    write(pending)


_child: subprocess.Popen | None = None


def install() -> None:
    """Filters this process's fd 2 (and its children's) from now on; see the module doc.

    Call it before TensorFlow is imported. Also makes TensorFlow's C++ INFO logs opt-in
    (TF_CPP_MIN_LOG_LEVEL=1 unless set): its warnings and errors still show. Does nothing
    when SHOW_TF_STARTUP_LOGS is set, when called again, or off POSIX systems.
    """
    global _child
    if _child is not None or os.environ.get(SHOW_ENV) or os.name != "posix":
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    read_end, write_end = os.pipe()
    original = os.dup(2)
    _child = subprocess.Popen(
        [sys.executable, "-I", "-S", os.path.abspath(__file__),
         "--gpu" if gpu_expected() else "--no-gpu"],
        stdin=read_end, stdout=original, stderr=original)
    os.close(read_end)
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    atexit.register(_restore, original)


def _restore(original: int) -> None:
    # At exit: fd 2 back to the real stderr, which also closes this process's end of the
    # pipe, then the reader gets the time to pass on the last lines before the shell
    # prompt appears. Later output (interpreter shutdown) goes to stderr unfiltered.
    sys.stderr.flush()
    os.dup2(original, 2)
    try:
        _child.wait(timeout=5)
    except subprocess.TimeoutExpired:  # A child process of ours still holds the pipe.
        pass


def _reader_main(argv: list[str]) -> int:
    # Interrupts and terminal hang-ups are for the process being filtered; the reader must
    # keep reading until it exits, or its last words would hit a closed pipe.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    copy_filtered(0, 1, LineFilter(gpu_expected="--gpu" in argv))
    return 0


if __name__ == "__main__":
    sys.exit(_reader_main(sys.argv[1:]))
