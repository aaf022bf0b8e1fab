"""The command line's work, as library functions (clients/__main__.py only parses flags).

    from clients import cli, connect

    client = connect("grpc://localhost:8500", "effnet")
    results = cli.predict_files(client.predict, cli.find_images(["photos/"]), concurrency=4)
    print(cli.format_table(results))
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import sys
import threading
import time
from collections.abc import Callable, Sequence

from clients import errors, images
from clients.results import Prediction

# The formats the exported model decodes (train/preprocessing.py; train.data lists the same).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp"})


def find_images(arguments: Sequence[str]) -> list[pathlib.Path]:
    """Files as given; directories walked (sorted, recursively) for image files.

    Raises:
        ValueError: an argument that does not exist.
    """
    found: list[pathlib.Path] = []
    for argument in arguments:
        path = pathlib.Path(argument)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*")
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.exists():
            found.append(path)  # Named explicitly: sent whatever its suffix.
        else:
            raise ValueError(f"no such file or directory: {argument}")
    return found


@dataclasses.dataclass
class FileResult:
    """One file's outcome: a prediction or an error (code and message)."""

    path: str
    prediction: Prediction | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def ok(self) -> bool:
        return self.prediction is not None

    def to_dict(self) -> dict:
        if self.prediction is not None:
            return {"file": self.path, **self.prediction.to_dict()}
        return {"file": self.path, "error": {"code": self.error_code,
                                             "message": self.error_message}}


class Progress:
    """A one-line progress bar on a terminal (stderr), with rate and ETA; silent when not a
    terminal."""

    def __init__(self, total: int, stream=None, enabled: bool | None = None, width: int = 30,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.done = 0
        self.failed = 0
        self._clock = clock
        self._started = clock()
        self._shown = 0  # Length of the line on screen, to blank what a shorter one leaves.
        self._lock = threading.Lock()

    def update(self, done: int, failed: int) -> None:
        with self._lock:
            self.done += done
            self.failed += failed
            if self.enabled:
                elapsed = self._clock() - self._started
                rate = self.done / elapsed if elapsed > 0 else 0.0
                if self.done >= self.total:
                    timing = _duration(elapsed)
                else:
                    timing = f"ETA {_duration((self.total - self.done) / rate)}" if rate else ""
                filled = int(self.width * self.done / max(self.total, 1))
                line = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                        f"files, {self.failed} failed, {rate:.1f} files/s, {timing}")
                self.stream.write(f"\r{line:<{self._shown}}")
                self._shown = len(line)
                self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _failed(path: str, error: Exception) -> FileResult:
    if isinstance(error, errors.ClientError):
        return FileResult(path, error_code=error.code, error_message=error.message)
    return FileResult(path, error_code=type(error).__name__, error_message=str(error))


def _run_batch(predict: Callable, paths: list[str], max_size: int | None,
               quality: int) -> list[FileResult]:
    results: dict[str, FileResult] = {}
    encoded: list[tuple[str, bytes]] = []
    for path in paths:  # Encoded once, here: retries and the fallback below reuse the bytes.
        try:
            encoded.append((path, images.encode(path, max_size=max_size, quality=quality)))
        except (OSError, ValueError) as error:
            results[path] = _failed(path, error)
    if encoded:
        try:
            predictions = predict([data for _, data in encoded])
            results.update((path, FileResult(path, prediction))
                           for (path, _), prediction in zip(encoded, predictions))
        except errors.InvalidInputError as error:
            if len(encoded) == 1:
                results[encoded[0][0]] = _failed(encoded[0][0], error)
            else:
                # One bad image fails its whole request: find which, one by one.
                for path, data in encoded:
                    try:
                        results[path] = FileResult(path, predict([data])[0])
                    except errors.ClientError as single_error:
                        results[path] = _failed(path, single_error)
        except errors.ClientError as error:
            for path, _ in encoded:
                results[path] = _failed(path, error)
    return [results[path] for path in paths]


def predict_files(predict: Callable[[list[bytes]], list[Prediction]],
                  paths: Sequence[os.PathLike | str], *, concurrency: int = 4, batch: int = 1,
                  max_size: int | None = None, quality: int = images.DEFAULT_QUALITY,
                  progress: Progress | None = None) -> list[FileResult]:
    """Runs predict over files with at most `concurrency` requests in flight.

    Args:
        predict: e.g. client.predict or client.classify (takes encoded images).
        paths: image files.
        concurrency: requests in flight at once.
        batch: images per request (a failed request is retried image by image to find
            which image was bad).
        max_size, quality: client-side downscaling, as in images.encode.
        progress: a Progress to update.

    Returns:
        One FileResult per path, in the order given; failures do not stop the run.
    """
    if concurrency < 1 or batch < 1:
        raise ValueError("concurrency and batch must be >= 1")
    names = [str(p) for p in paths]
    batches = [names[i:i + batch] for i in range(0, len(names), batch)]
    by_path: dict[str, FileResult] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(_run_batch, predict, chunk, max_size, quality)
                   for chunk in batches]
        for future in concurrent.futures.as_completed(futures):
            chunk_results = future.result()
            by_path.update((r.path, r) for r in chunk_results)
            if progress is not None:
                progress.update(len(chunk_results), sum(not r.ok for r in chunk_results))
    if progress is not None:
        progress.close()
    return [by_path[name] for name in names]


def format_table(results: Sequence[FileResult], top_k: int | None = None) -> str:
    """file, top-1 label, score, top-k; errors in place of the prediction."""
    rows = [("file", "label", "score", "top-k")]
    for result in results:
        if result.prediction is not None:
            p = result.prediction.truncated(top_k)
            rows.append((result.path, p.label, f"{p.score:.4f}",
                         ", ".join(f"{label} {score:.3f}" for label, score in p.top())))
        else:
            # The first line only: TensorFlow appends graph node details on the next ones.
            message = (result.error_message or "").strip().splitlines()
            rows.append((result.path, "ERROR", "",
                         f"{result.error_code}: {message[0] if message else ''}"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}"
                     .rstrip() for r in rows)


def format_json(results: Sequence[FileResult]) -> str:
    failed = sum(not r.ok for r in results)
    return json.dumps({"results": [r.to_dict() for r in results], "files": len(results),
                       "failed": failed}, indent=2)
