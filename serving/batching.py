"""Server-side dynamic batching, with TF Serving's BasicBatchScheduler semantics.

Concurrent requests to the same version and signature whose inputs agree in dtype and in
every dimension but the first are concatenated along dimension 0, run as one call, and the
outputs are split back. Per BatchingParameters:

* a request larger than max_batch_size fails with INVALID_ARGUMENT;
* a batch closes when full or batch_timeout_micros after its first request;
* at most max_enqueued_batches batches wait; one more request that needs a new batch fails
  with UNAVAILABLE (the client should retry elsewhere or later);
* num_batch_threads batches run at once;
* with allowed_batch_sizes a batch is padded (repeating its first row) to the next allowed
  size, and the padding is cut off the outputs;
* deadlines as batching_session.cc (ProcessBatch) handles RunOptions.timeout_in_ms: a task
  whose deadline passed while queued fails with DEADLINE_EXCEEDED and is left out, and the
  batch runs with the latest deadline among its tasks (none if any task has none).

BatchingServable applies it the way TF Serving's batching session does
(batching/batching_session.h): it wraps a loaded version at load time and runs like one,
so the API code calls run() the same with or without batching.

    served = BatchingServable(servable, options, metrics=metrics)
    outputs = served.run("serving_default", inputs, timeout=5.0)
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
from absl import logging

from serving import deadlines
from serving.config import BatchingOptions
from serving.errors import ServingError, invalid_argument, unavailable
from serving.metrics import Metrics
from serving.servable import Servable

PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"  # --enable_per_model_batching_parameters

# (merged inputs, timeout in seconds or None) -> outputs.
RunFn = Callable[[dict[str, np.ndarray], float | None], dict[str, np.ndarray]]


def batch_size_of(inputs: dict[str, np.ndarray]) -> int:
    """The shared 0th dimension of a request's inputs (the batching session's rule)."""
    sizes = set()
    for array in inputs.values():
        if np.ndim(array) == 0:
            raise invalid_argument("Batching session Run() input tensors must have at least "
                                   "one dimension")
        sizes.add(np.shape(array)[0])
    if len(sizes) != 1:
        raise invalid_argument("Batching session Run() input tensors must have equal "
                               "0th-dimension size")
    return sizes.pop()


class _Task:
    __slots__ = ("inputs", "size", "deadline", "future")

    def __init__(self, inputs, size, deadline):
        self.inputs, self.size, self.deadline = inputs, size, deadline
        self.future = concurrent.futures.Future()


class _Batch:
    __slots__ = ("key", "tasks", "size", "created")

    def __init__(self, key):
        self.key, self.tasks, self.size, self.created = key, [], 0, time.monotonic()


class Batcher:
    """Batches calls to one signature of one servable version."""

    def __init__(self, run: RunFn, options: BatchingOptions, *, on_batch=None,
                 name: str = "batcher"):
        """Args:
          run: the signature call, (inputs, timeout seconds or None) -> outputs (all).
          options: resolved BatchingParameters.
          on_batch: called with (batch size, padded size) after each batch runs.
        """
        self._run = run
        self._options = options
        self._on_batch = on_batch
        self._timeout = options.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._queue: collections.deque[_Batch] = collections.deque()
        self._stopped = False
        self._threads = [threading.Thread(target=self._worker, name=f"{name}-{i}", daemon=True)
                         for i in range(max(1, options.num_batch_threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: dict[str, np.ndarray], *,
               deadline: float | None = None) -> concurrent.futures.Future:
        """Queues a request; the future holds its outputs or a ServingError.

        Args:
          inputs: the request's tensors, batched along dimension 0.
          deadline: time.monotonic() by which the caller stops waiting, or None.
        """
        size = batch_size_of(inputs)
        if size > self._options.max_batch_size:
            raise invalid_argument(f"Task size {size} is larger than maximum input batch "
                                   f"size {self._options.max_batch_size}")
        key = tuple(sorted((name, str(np.asarray(a).dtype), np.shape(a)[1:])
                           for name, a in inputs.items()))
        task = _Task(inputs, size, deadline)
        with self._cond:
            if self._stopped:
                raise unavailable("The batch scheduler is shutting down")
            last = self._queue[-1] if self._queue else None
            if (last is None or last.key != key
                    or last.size + size > self._options.max_batch_size):
                if len(self._queue) >= self._options.max_enqueued_batches:
                    raise unavailable("The batch scheduling queue to which this task was "
                                      "submitted is full")
                last = _Batch(key)
                self._queue.append(last)
            last.tasks.append(task)
            last.size += size
            self._cond.notify_all()
        return task.future

    def _ready(self, now: float) -> bool:
        head = self._queue[0]
        return (head.size >= self._options.max_batch_size or len(self._queue) > 1
                or now - head.created >= self._timeout)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopped and not self._queue:
                        return
                    if self._queue:
                        now = time.monotonic()
                        if self._ready(now) or self._stopped:
                            batch = self._queue.popleft()
                            break
                        self._cond.wait(self._queue[0].created + self._timeout - now)
                    else:
                        self._cond.wait()
            self._process(batch)

    def _padded_size(self, size: int) -> int:
        for allowed in self._options.allowed_batch_sizes:
            if allowed >= size:
                return allowed
        return size

    def _process(self, batch: _Batch) -> None:
        # Tasks whose callers gave up (deadline) while queued are left out.
        now = time.monotonic()
        running = []
        for task in batch.tasks:
            if not task.future.set_running_or_notify_cancel():
                continue
            if task.deadline is not None and task.deadline <= now:
                task.future.set_exception(ServingError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "Run() timeout exceeded while waiting in batching queue"))
                continue
            running.append(task)
        batch.tasks = running
        batch.size = sum(t.size for t in batch.tasks)
        if not batch.tasks:
            return
        deadlines = [t.deadline for t in batch.tasks]
        timeout = None if None in deadlines else max(deadlines) - now
        try:
            names = list(batch.tasks[0].inputs)
            padded = self._padded_size(batch.size)
            merged = {}
            for name in names:
                parts = [np.asarray(t.inputs[name]) for t in batch.tasks]
                if padded > batch.size:
                    first = parts[0][:1]
                    parts.append(np.repeat(first, padded - batch.size, axis=0))
                merged[name] = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
            outputs = self._run(merged, timeout)
            for name, value in outputs.items():
                if np.ndim(value) == 0 or np.shape(value)[0] != padded:
                    raise invalid_argument(
                        "Batched output tensor's 0th dimension does not equal the sum of the "
                        f"0th dimension sizes of the input tensors (output {name})")
            if self._on_batch is not None:
                self._on_batch(batch.size, padded)
            offset = 0
            for task in batch.tasks:
                task.future.set_result({name: value[offset:offset + task.size]
                                        for name, value in outputs.items()})
                offset += task.size
        except Exception as error:
            failure = ServingError.from_exception(error)
            for task in batch.tasks:
                if not task.future.done():
                    task.future.set_exception(failure)
            if not isinstance(error, ServingError):
                logging.exception("Batch failed")

    def stop(self) -> None:
        """Runs what is queued, then ends the threads."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=60)


def batching_options_for(servable: Servable, server_options: BatchingOptions, *,
                         per_model: bool) -> BatchingOptions:
    """The server's batching parameters, or the version's batching_params.pbtxt.

    Args:
      servable: the loaded version.
      server_options: --batching_parameters_file's parameters.
      per_model: --enable_per_model_batching_parameters; the version's own file wins.

    Raises:
      ServingError: INVALID_ARGUMENT, the version's file is unparsable or refused (the load
        fails, as in TF Serving).
    """
    path = os.path.join(servable.path, PER_MODEL_BATCHING_FILE)
    if per_model and os.path.isfile(path):
        try:
            return BatchingOptions.from_file(path)
        except Exception as error:  # Unparsable or refused parameters.
            raise invalid_argument(f"Invalid {path}: {error}") from None
    return server_options


class BatchingServable:
    """A loaded version whose runs go through one Batcher per signature.

    Runs like the Servable it wraps (same run() and attributes); closing it stops its
    batchers, then closes the version.
    """

    def __init__(self, servable: Servable, options: BatchingOptions, *, metrics: Metrics):
        """Args:
          servable: the loaded version; it now belongs to this wrapper.
          options: resolved BatchingParameters (see batching_options_for).
          metrics: input and batch sizes are recorded here.
        """
        self._servable = servable
        self.name, self.version, self.path = servable.name, servable.version, servable.path
        self.meta_graph = servable.meta_graph
        self._options = options
        self._metrics = metrics
        self._lock = threading.Lock()  # Guards _batchers.
        self._batchers: dict[str, Batcher] = {}  # Signature name -> its batcher.

    @property
    def signature_defs(self):
        return self.meta_graph.signature_def

    def _batcher(self, signature_name: str) -> Batcher:
        with self._lock:
            if signature_name not in self._batchers:
                self._batchers[signature_name] = Batcher(
                    lambda merged, timeout: self._servable.run(signature_name, merged,
                                                               timeout=timeout),
                    self._options, on_batch=self._record_batch,
                    name=f"batch-{self.name}-{self.version}-{signature_name}")
            return self._batchers[signature_name]

    def _record_batch(self, size: int, padded: int) -> None:
        self._metrics.processed_batch_size.observe(value=padded)
        self._metrics.padding_size.observe(padded, value=padded - size)
        self._metrics.wrapped_run_count.inc()

    def run(self, signature_name: str, inputs: dict[str, np.ndarray], *,
            timeout: float | None = None) -> dict[str, np.ndarray]:
        """Servable.run, merged with concurrent runs of the same signature.

        Raises:
          ServingError: as Servable.run; INVALID_ARGUMENT for a request larger than
            max_batch_size, UNAVAILABLE when the queue is full, DEADLINE_EXCEEDED when the
            timeout passes while queued.
        """
        deadline = time.monotonic() + timeout if timeout is not None else None
        future = self._batcher(signature_name).submit(inputs, deadline=deadline)
        self._metrics.input_batch_size.observe(value=next(iter(
            np.shape(a)[0] for a in inputs.values())))
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # Still queued: the batch will leave it out.
            raise deadlines.deadline_exceeded() from None

    def close(self) -> None:
        """Runs what is queued, stops the batchers, then closes the version."""
        with self._lock:
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for batcher in batchers:
            batcher.stop()
        self._servable.close()
