"""The Beam pipeline: match files -> read -> RunInference -> predictions + dead letters.

    config = BatchConfig(model="models/cars", input="photos/*.jpg", output="out/cars")
    counts = run(config.validated())   # Beam options as a list: ["--runner=...", ...]
    print(counts.scored, counts.failed)

Outputs, under the --output prefix (sharded by the runner):
  PREFIX-predictions-*.jsonl   one JSON object per image (batch/handlers.py)
  PREFIX-predictions-*.parquet the same rows, with --formats=jsonl,parquet
  PREFIX-errors-*.jsonl        dead letters: path and {"code", "message"}
JSON lines because every tool reads them and a row is self-describing; Parquet for
analytics (BigQuery, Spark, pandas/DuckDB load it typed and columnar without parsing).
PredictionLog TFRecords would need TensorFlow protos to read back, which analytics
users rarely have.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from batch import handlers
from clients.retry import RetryPolicy

FORMATS = ("jsonl", "parquet")
LOCAL_RUNNER = "FnApiRunner"  # Without --runner: Beam's local Python runner.
DEAD_LETTER = "dead_letter"
SCORED, FAILED = "images_scored", "images_failed"


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """What to score, with what, and where the records go.

    Attributes:
      model: models/NAME/VERSION or models/NAME (its highest version, as TF Serving's
        default policy serves); with server, NAME[/VERSION] is enough.
      input: file pattern of encoded images (local, gs://, s3:// ...).
      output: prefix of the output files.
      server: score through this TF Serving gRPC address instead of in-process.
      formats: output formats of the predictions (jsonl, parquet).
      top_k: keep at most this many classes per image (default: the model's k).
      min_batch_size, max_batch_size: RunInference's batching bounds.
      concurrency, request_size, timeout, max_attempts: remote mode only: requests in
        flight per worker, images per request, deadline per request (seconds), attempts
        per request (the clients' RetryPolicy).
    """

    model: str
    input: str
    output: str
    server: str | None = None
    formats: tuple[str, ...] = ("jsonl",)
    top_k: int | None = None
    min_batch_size: int = 1
    max_batch_size: int = 32
    concurrency: int = 4
    request_size: int = 8
    timeout: float = 30.0
    max_attempts: int = 3

    def validated(self) -> BatchConfig:
        """Raises ValueError naming the first bad field."""
        for field in ("model", "input", "output"):
            if not getattr(self, field):
                raise ValueError(f"--{field} is required")
        unknown = set(self.formats) - set(FORMATS)
        if unknown or not self.formats:
            raise ValueError(f"formats must be some of {FORMATS}, got {self.formats}")
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ValueError(f"need 1 <= min_batch_size <= max_batch_size, got "
                             f"{self.min_batch_size}, {self.max_batch_size}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be positive, got {self.top_k}")
        if self.concurrency < 1 or self.request_size < 1 or self.max_attempts < 1:
            raise ValueError("concurrency, request_size and max_attempts must be >= 1")
        if self.timeout <= 0:
            raise ValueError(f"timeout must be positive, got {self.timeout}")
        return self


@dataclasses.dataclass(frozen=True)
class Counts:
    scored: int
    failed: int


def split_model(model: str) -> tuple[str, str, int | None]:
    """(path, name, version) of NAME, models/NAME or models/NAME/VERSION."""
    path = model.rstrip("/")
    head, last = posixpath.split(path)
    if last.isdigit():
        return path, posixpath.basename(head), int(last)
    return path, last, None


def latest_version(base: str) -> int:
    """The highest numeric version directory under base holding a saved_model.pb, as TF
    Serving's default policy picks it.

    Listed with Beam's file systems (local, gs://, s3:// ...), so the launcher never
    imports TensorFlow: only the workers load the model.

    Raises:
      ValueError: no version there.
    """
    from apache_beam.io.filesystem import BeamIOError
    from apache_beam.io.filesystems import FileSystems

    try:
        (result,) = FileSystems.match([FileSystems.join(base, "*", "saved_model.pb")])
        paths = [metadata.path for metadata in result.metadata_list]
    except BeamIOError:
        paths = []
    versions = [int(name) for name in (posixpath.basename(posixpath.dirname(path))
                                       for path in paths) if name.isdigit()]
    if not versions:
        raise ValueError(f"no version directory (1, 2, ... with a saved_model.pb) under {base}")
    return max(versions)


def serving_version(server: str, name: str, timeout: float) -> int:
    """The highest AVAILABLE version the server has of name (every request is pinned to
    it, so a rollout during the job cannot mix versions in the output)."""
    from clients.grpc_client import GrpcClient

    with GrpcClient(server, name, timeout=timeout) as client:
        available = [s.version for s in client.status() if s.state == "AVAILABLE"]
    if not available:
        raise ValueError(f"{server} has no AVAILABLE version of {name}")
    return max(available)


def make_handler(config: BatchConfig) -> handlers.ImageHandler:
    """The in-process or remote handler, with the version resolved once, here."""
    path, name, version = split_model(config.model)
    common = dict(name=name, top_k=config.top_k, min_batch_size=config.min_batch_size,
                  max_batch_size=config.max_batch_size)
    if config.server:
        if version is None:
            version = serving_version(config.server, name, config.timeout)
        return handlers.GrpcModelHandler(
            config.server, version=version, concurrency=config.concurrency,
            request_size=config.request_size, timeout=config.timeout,
            retry=RetryPolicy(max_attempts=config.max_attempts), **common)
    if version is None:
        version = latest_version(path)
        path = posixpath.join(path, str(version))
    return handlers.SavedModelHandler(path, version=version, **common)


class ReadImage(beam.DoFn):
    """(path, bytes); an unreadable file is a dead letter, not a failed job."""

    def __init__(self, name: str, version: int):
        self.name, self.version = name, version

    def process(self, readable):
        path = readable.metadata.path
        try:
            yield path, readable.read()
        except OSError as error:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, handlers.error_record(
                path, type(error).__name__, str(error), model=self.name,
                version=self.version))


class _Route(beam.DoFn):
    """Predictions to the main output, errors to the dead letters; counts both."""

    def __init__(self):
        self.scored = Metrics.counter(handlers.METRICS_NAMESPACE, SCORED)
        self.failed = Metrics.counter(handlers.METRICS_NAMESPACE, FAILED)

    def process(self, record: dict):
        if handlers.is_error(record):
            self.failed.inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, record)
        else:
            self.scored.inc()
            yield record


def parquet_schema():
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("model", pa.string()), ("version", pa.int64()),
                      ("labels", pa.list_(pa.string())), ("scores", pa.list_(pa.float64())),
                      ("class_ids", pa.list_(pa.int64()))])


def build(pipeline: beam.Pipeline, config: BatchConfig, handler: handlers.ImageHandler):
    """Adds the scoring steps to pipeline; returns (predictions, dead_letters)."""
    read = (pipeline
            | "Match" >> fileio.MatchFiles(config.input)
            # Spreads the files over workers before the (fused) read and inference.
            | "Spread" >> beam.Reshuffle()
            | "Open" >> fileio.ReadMatches()
            | "Read" >> beam.ParDo(ReadImage(handler.name, handler.version)).with_outputs(
                DEAD_LETTER, main="images"))
    scored = read.images | "Score" >> RunInference(handler)
    # Unreadable files join the scored records so that one step counts and routes both.
    routed = ((scored, read[DEAD_LETTER]) | "All" >> beam.Flatten()
              | "Route" >> beam.ParDo(_Route()).with_outputs(DEAD_LETTER, main="predictions"))
    dead_letters = routed[DEAD_LETTER]

    predictions = routed.predictions
    if "jsonl" in config.formats:
        _ = (predictions | "PredictionsJson" >> beam.Map(json.dumps)
             | "WritePredictions" >> beam.io.WriteToText(
                 config.output + "-predictions", file_name_suffix=".jsonl"))
    if "parquet" in config.formats:
        _ = predictions | "WriteParquet" >> beam.io.WriteToParquet(
            config.output + "-predictions", parquet_schema(), file_name_suffix=".parquet")
    _ = (dead_letters | "ErrorsJson" >> beam.Map(json.dumps)
         | "WriteErrors" >> beam.io.WriteToText(config.output + "-errors",
                                                file_name_suffix=".jsonl"))
    return predictions, dead_letters


def _counter(result, name: str) -> int:
    counters = result.metrics().query(
        MetricsFilter().with_namespace(handlers.METRICS_NAMESPACE).with_name(name))["counters"]
    return sum((c.committed if c.committed is not None else c.attempted) or 0
               for c in counters)


def run(config: BatchConfig, beam_args: list[str] | None = None) -> Counts:
    """Builds and runs the pipeline to the end; the good/bad counts from its metrics."""
    handler = make_handler(config)
    options = PipelineOptions(beam_args or [])
    standard = options.view_as(StandardOptions)
    if standard.runner is None:
        # Beam's DirectRunner first tries Prism, a Go binary it downloads from GitHub, and
        # falls back to this runner when that fails, as it does offline: go straight to it.
        # --direct_num_workers and --direct_running_mode configure it.
        standard.runner = LOCAL_RUNNER
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config, handler)
    result = pipeline.run()
    result.wait_until_finish()
    return Counts(scored=_counter(result, SCORED), failed=_counter(result, FAILED))
