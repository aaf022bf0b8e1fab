"""Hand-written mutants for the modules mutmut cannot afford here (see TESTING.md).

Each mutant is one deliberate bug in a production file. The script copies the repository to
a temporary directory once, applies one mutant at a time THERE (the working tree is never
touched), runs the tests that should notice, and reports each mutant as killed (a test
failed), timeout, or survived (every test passed). Not collected by pytest.

    .venv/bin/python tests/mutation_check.py                 # every mutant, current tests
    .venv/bin/python tests/mutation_check.py --file export/signatures.py
    .venv/bin/python tests/mutation_check.py --tests-ref HEAD  # tests as of a git commit
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
COPIED = ("clients", "serving", "train", "export", "tests", "setup.cfg", "pyproject.toml")
TIMEOUT_S = 900


@dataclasses.dataclass(frozen=True)
class Mutant:
    file: str
    old: str  # Must occur exactly once in the file.
    new: str
    what: str


PREPROCESSING = "train/preprocessing.py"
SIGNATURES = "export/signatures.py"
TESTS = {
    PREPROCESSING: ["tests/test_preprocessing.py", "tests/test_preprocessing_guards.py"],
    SIGNATURES: ["tests/test_export.py"],
}

MUTANTS = [
    Mutant(PREPROCESSING, "pixels_ok = header.height * header.width <= max_pixels",
           "pixels_ok = header.height * header.width < max_pixels",
           "max_pixels exclusive"),
    Mutant(PREPROCESSING, "scans_ok = header.scans <= max_jpeg_scans",
           "scans_ok = header.scans < max_jpeg_scans", "max_jpeg_scans exclusive"),
    Mutant(PREPROCESSING, "        with tf.control_dependencies([check]):\n"
           "            image_bytes = tf.identity(image_bytes)",
           "        if True:\n            image_bytes = tf.identity(image_bytes)",
           "graph: the decoder no longer waits for the header check"),
    Mutant(PREPROCESSING, "        if not bool(ok):", "        if False:",
           "eager: the header check is dropped"),
    Mutant(PREPROCESSING, 'method="bilinear", antialias=True)',
           'method="bilinear", antialias=False)', "resize without antialiasing"),
    Mutant(PREPROCESSING, 'dct_method="INTEGER_ACCURATE"', 'dct_method="INTEGER_FAST"',
           "fast (inexact) JPEG IDCT"),
    Mutant(PREPROCESSING, "ratios, ratio_index = DCT_RATIOS, dct_ratio_index(header, image_size)",
           "ratios, ratio_index = DCT_RATIOS, tf.constant(len(DCT_RATIOS) - 1)",
           "DCT scaling silently never used"),
    Mutant(PREPROCESSING, "(shorter + ratio - 1) // ratio >= image_size, i, index)",
           "(shorter + ratio - 1) // ratio > image_size, i, index)",
           "DCT ratio boundary off by one"),
    Mutant(PREPROCESSING, "lambda: tf.reverse(transpose(image), [1]),  # 6",
           "lambda: tf.reverse(transpose(image), [0]),  # 6", "EXIF 6 rotated the wrong way"),
    Mutant(PREPROCESSING, "palette = tf.reverse(tf.reshape(raw, [-1, 4])[:, :3], axis=[1])",
           "palette = tf.reshape(raw, [-1, 4])[:, :3]", "BMP palette read as RGB, not BGR"),
    Mutant(PREPROCESSING, 'lambda: tf.strings.join([name, ": ", problem()]))',
           'lambda: problem())', "error message without the input's name"),
    Mutant(PREPROCESSING, "    return tf.clip_by_value(resized, 0.0, 255.0)",
           "    return resized", "no clipping after the resize"),
    Mutant(SIGNATURES, "if not labels or (outputs is not None and outputs != len(labels)):",
           "if not labels:", "labels/outputs mismatch accepted"),
    Mutant(SIGNATURES, "self.top_k = min(int(top_k), len(labels))", "self.top_k = int(top_k)",
           "top_k not clipped to the class count"),
    Mutant(SIGNATURES, "self.model(images, training=False)", "self.model(images, training=True)",
           "model run in training mode"),
    Mutant(SIGNATURES, 'name=tf.strings.format("image {}", item[1])', 'name="image"',
           "errors no longer name the image's index"),
    Mutant(SIGNATURES, "item[0], self.image_size, max_pixels=self.max_pixels,",
           "item[0], self.image_size, max_pixels=None,", "serving ignores max_pixels"),
    Mutant(SIGNATURES, "max_jpeg_scans=self.max_jpeg_scans,", "max_jpeg_scans=None,",
           "serving ignores max_jpeg_scans"),
    Mutant(SIGNATURES, "jpeg_dct_scaling=self.jpeg_dct_scaling,", "jpeg_dct_scaling=False,",
           "serving ignores jpeg_dct_scaling"),
    Mutant(SIGNATURES, "scores, class_ids = tf.math.top_k(probabilities, k=self.top_k)",
           "scores, class_ids = tf.math.top_k(probabilities, k=self.top_k, sorted=False)",
           "top-k not sorted"),
    Mutant(SIGNATURES, "        archive.track(self.label_table)  # Tables",
           "        pass  # Tables", "label table not tracked in the SavedModel"),
    Mutant(SIGNATURES, "parallel_iterations=self.decode_parallelism)",
           "parallel_iterations=1)", "decode_parallelism ignored"),
]


def _copy(destination: pathlib.Path, tests_ref: str | None) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
        else:
            shutil.copy2(source, destination / name)
    if tests_ref:
        shutil.rmtree(destination / "tests")
        archive = subprocess.run(["git", "-C", str(REPO), "archive", tests_ref, "tests"],
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(destination, filter="data")


def run(mutants: list[Mutant], tests_ref: str | None) -> list[tuple[Mutant, str, float]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        root = pathlib.Path(tmp)
        _copy(root, tests_ref)
        for mutant in mutants:
            path = root / mutant.file
            original = path.read_text()
            if original.count(mutant.old) != 1:
                raise SystemExit(f"{mutant.file}: {mutant.old!r} does not occur exactly once")
            path.write_text(original.replace(mutant.old, mutant.new))
            started = time.monotonic()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                     *TESTS[mutant.file]], cwd=root, capture_output=True, text=True,
                    timeout=TIMEOUT_S)
                outcome = "survived" if done.returncode == 0 else "killed"
            except subprocess.TimeoutExpired:
                outcome = "timeout"
            finally:
                path.write_text(original)
            results.append((mutant, outcome, time.monotonic() - started))
            print(f"{outcome:8s} {time.monotonic() - started:6.1f} s  {mutant.file}: "
                  f"{mutant.what}", flush=True)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", choices=sorted(TESTS), help="only this file's mutants")
    parser.add_argument("--tests-ref", help="git ref whose tests/ to run (default: the "
                                            "working tree's)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if args.file in (None, m.file)]
    results = run(mutants, args.tests_ref)
    for file in sorted({m.file for m in mutants}):
        outcomes = [outcome for mutant, outcome, _ in results if mutant.file == file]
        print(f"{file}: {len(outcomes)} mutants, {outcomes.count('survived')} survived, "
              f"{outcomes.count('killed')} killed, {outcomes.count('timeout')} timeout")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
