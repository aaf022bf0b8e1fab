"""Prometheus metrics with TF Serving's names, labels and text format.

TF Serving registers metrics as "/tensorflow/serving/request_count" and its exporter
(tensorflow_serving/util/prometheus_exporter.cc) turns every character outside
[a-zA-Z0-9_] into ':', so Prometheus sees ":tensorflow:serving:request_count". Counters are
written without a "_total" suffix, histograms as NAME_bucket{...,le="..."}, NAME_sum,
NAME_count. prometheus_client would rename counters, so the few metrics live here.

Request metrics (request_count, request_latency) are recorded where TF Serving records them:
every REST request (model_servers/http_server.cc:194-201, API = the URL's verb, "" for the
status and metadata GETs), and only Predict, Classify and Regress over gRPC
(model_servers/prediction_service_impl.cc:52-59, 91-98, 119-126; GetModelMetadata,
MultiInference and GetModelStatus record nothing). One deliberate difference: TF Serving
labels them with whatever model name the request carries, so every distinct name a client
sends (3,000 names, or 256 KiB ones) adds series forever. Here a name the server does not
track as a model (no version of it in :serving_local:model_version_state) is recorded as
model_name="", the label TF Serving gives requests that name no model, so the label sets
stay bounded by the configured models.
"""

from __future__ import annotations

import bisect
import re
import threading

UNKNOWN_MODEL = ""  # The model_name of requests that name no model the server tracks.


def prometheus_name(name: str) -> str:
    out = re.sub(r"[^a-zA-Z0-9_]", ":", name)
    return "_" + out if out[:1].isdigit() else out


def _label_value(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"')


def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    """monitoring::Buckets::Exponential: upper bounds scale * growth**i."""
    return [scale * growth ** i for i in range(count)]


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, description: str, labels: tuple[str, ...]):
        self.name = prometheus_name(name)
        self.description = description
        self.labels = labels
        self._lock = threading.Lock()

    def _key(self, values: tuple) -> tuple:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}, got {values}")
        return tuple(str(v) for v in values)

    def _label_text(self, key: tuple, extra: str = "") -> str:
        parts = [f'{name}="{_label_value(v)}"' for name, v in zip(self.labels, key)]
        if extra:
            parts.append(extra)
        return ",".join(parts)


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, description, labels=()):
        super().__init__(name, description, tuple(labels))
        self._values: dict[tuple, int] = {}

    def inc(self, *labels, by: int = 1) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0) + by

    def value(self, *labels) -> int:
        with self._lock:
            return self._values.get(self._key(labels), 0)

    def has_label(self, index: int, value: str) -> bool:
        """Whether some series has label number index equal to value."""
        with self._lock:
            return any(key[index] == value for key in self._values)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        out = [f"# TYPE {self.name} {self.kind}"]
        out += [f"{self.name}{{{self._label_text(k)}}} {v}" for k, v in items]
        return out


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels, value: int) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, description, labels=(), buckets=()):
        super().__init__(name, description, tuple(labels))
        self.bounds = list(buckets)
        self._values: dict[tuple, tuple[list[int], float]] = {}

    def observe(self, *labels, value: float) -> None:
        key = self._key(labels)
        index = bisect.bisect_left(self.bounds, value)
        with self._lock:
            counts, total = self._values.get(key, ([0] * (len(self.bounds) + 1), 0.0))
            counts[index] += 1
            self._values[key] = (counts, total + value)

    def count(self, *labels) -> int:
        with self._lock:
            entry = self._values.get(self._key(labels))
            return sum(entry[0]) if entry else 0

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), s)) for k, (c, s) in self._values.items())
        out = [f"# TYPE {self.name} histogram"]
        for key, (counts, total) in items:
            cumulative = 0
            for i, count in enumerate(counts):
                cumulative += count
                bound = _number(self.bounds[i]) if i < len(self.bounds) else "+Inf"
                le = 'le="' + bound + '"'
                out.append(f"{self.name}_bucket{{{self._label_text(key, le)}}} {cumulative}")
            out.append(f"{self.name}_sum{{{self._label_text(key)}}} {_number(total)}")
            out.append(f"{self.name}_count{{{self._label_text(key)}}} {cumulative}")
        return out


class Metrics:
    """The server's metrics (one instance per server, so tests do not share counts)."""

    def __init__(self):
        latency = exponential_buckets(10, 1.8, 33)  # Microseconds, as in servables/util.cc.
        self.request_count = Counter(
            "/tensorflow/serving/request_count", "The total number of requests.",
            ("model_name", "status"))
        self.request_latency = Histogram(
            "/tensorflow/serving/request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"), latency)
        self.runtime_latency = Histogram(
            "/tensorflow/serving/runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"), latency)
        # TensorFlow's SavedModel loader metrics (tensorflow/cc/saved_model/loader.cc), which
        # TF Serving exports too: cumulative microseconds, attempts by outcome.
        self.load_latency = Counter(
            "/tensorflow/cc/saved_model/load_latency",
            "Latency in microseconds for SavedModels that were successfully loaded.",
            ("model_path",))
        self.load_attempt_count = Counter(
            "/tensorflow/cc/saved_model/load_attempt_count",
            "The number of times a SavedModel was successfully loaded.",
            ("model_path", "status"))
        self.model_warmup_latency = Histogram(
            "/tensorflow/serving/model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path", "status"), latency)
        self.model_warmup_records_read = Counter(
            "/tensorflow/serving/model_warmup_records_read",
            "Number of warmup records read.", ("model_path", "status"))
        # batching/batching_util.h, BatchingSessionTask::Name() == "batching_session".
        sizes = exponential_buckets(1, 2, 14)
        self.input_batch_size = Histogram(
            "/tensorflow/serving/batching_session/input_batch_size",
            "Tracks the batch size distribution on the inputs.", (), sizes)
        self.processed_batch_size = Histogram(
            "/tensorflow/serving/batching_session/processed_batch_size",
            "Tracks the batch size distribution on processing.", (), sizes)
        self.padding_size = Histogram(
            "/tensorflow/serving/batching_session/padding_size",
            "Tracks the padding size distribution on batches.", ("execution_batch_size",),
            sizes)
        self.wrapped_run_count = Counter(
            "/tensorflow/serving/batching_session/wrapped_run_count",
            "Total count of run calls on the wrapped session")
        # Not a TF Serving metric (hence its own prefix): 1 for each version's current state,
        # so dashboards and alerts can follow loads, failures and unloads.
        self.model_state = Gauge(
            "/serving_local/model_version_state",
            "Servable versions by state (1 for the version's current state).",
            ("model_name", "version", "state"))

    def model_label(self, name: str) -> str:
        """The model_name label of a request for name (see the module docstring)."""
        return name if name and self.model_state.has_label(0, name) else UNKNOWN_MODEL

    def record_request(self, model_name: str, status: str, *, api: str, entrypoint: str,
                       latency_us: float) -> None:
        """RecordModelRequestCount, and RecordRequestLatency when status is "OK"
        (servables/tensorflow/util.cc:117-123, 358-361)."""
        label = self.model_label(model_name)
        if status == "OK":
            self.request_latency.observe(label, api, entrypoint, value=latency_us)
        self.request_count.inc(label, status)

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        lines = []
        for metric in sorted(self.all(), key=lambda m: m.name):
            lines += metric.lines()
        return "\n".join(lines) + "\n"
