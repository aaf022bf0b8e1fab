"""Scores every image matching a pattern with an exported model, on any Beam runner.

    python -m batch --model=models/cars --input='photos/**/*.jpg' --output=out/cars
    python -m batch --model=models/cars/3 --input='gs://bucket/photos/*' \\
        --output=gs://bucket/scores/cars --formats=jsonl,parquet \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp \\
        --sdk_container_image=REGISTRY/effnet-batch:TAG
    python -m batch --model=cars --server=grpc://localhost:8500 --input='photos/*' \\
        --output=out/cars --concurrency=8                 # the serving fleet does the work
    python -m batch ... --direct_num_workers=2 \\
        --direct_running_mode=multi_processing            # every core of this machine

Flags this module does not define are Beam pipeline options (--runner, --project, ...).
Without --runner the job runs on Beam's local Python runner (FnApiRunner): the
DirectRunner would first try to download Prism from GitHub.
Prints the good/bad counts (Beam metrics) at the end; exit status 0 even when some images
were dead-lettered (they are outputs: PREFIX-errors-*.jsonl), 1 when the job fails.
See batch/README.md for Dataflow, Flink and Spark. Console script: effnet-batch.
"""

from __future__ import annotations

from absl import app, flags

from batch import pipeline
from serving import tf_noise

_MODEL = flags.DEFINE_string(
    "model", None, "models/NAME/VERSION, or models/NAME for its highest version; with "
    "--server, NAME[/VERSION].")
_INPUT = flags.DEFINE_string("input", None, "File pattern of encoded images (glob).")
_OUTPUT = flags.DEFINE_string("output", None, "Output prefix (local, gs://, s3:// ...).")
_SERVER = flags.DEFINE_string(
    "server", None, "Score through this TF Serving gRPC address (host:port, grpc://, "
    "grpcs://) instead of in-process.")
_FORMATS = flags.DEFINE_list("formats", ["jsonl"], f"Prediction formats: {pipeline.FORMATS}.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Classes kept per image (default: the model's).")
_MIN_BATCH = flags.DEFINE_integer("min_batch_size", 1, "RunInference's smallest batch.")
_MAX_BATCH = flags.DEFINE_integer("max_batch_size", 32, "RunInference's largest batch.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 4,
                                    "--server: requests in flight per worker process.")
_REQUEST_SIZE = flags.DEFINE_integer("request_size", 8, "--server: images per request.")
_TIMEOUT = flags.DEFINE_float("timeout", 30.0, "--server: deadline per request, seconds.")
_MAX_ATTEMPTS = flags.DEFINE_integer(
    "max_attempts", 3, "--server: attempts per request on UNAVAILABLE (clients' RetryPolicy).")


def main(argv: list[str]) -> int:
    config = pipeline.BatchConfig(
        model=_MODEL.value, input=_INPUT.value, output=_OUTPUT.value, server=_SERVER.value,
        formats=tuple(_FORMATS.value), top_k=_TOP_K.value, min_batch_size=_MIN_BATCH.value,
        max_batch_size=_MAX_BATCH.value, concurrency=_CONCURRENCY.value,
        request_size=_REQUEST_SIZE.value, timeout=_TIMEOUT.value,
        max_attempts=_MAX_ATTEMPTS.value)
    try:
        config = config.validated()
    except ValueError as error:
        raise app.UsageError(str(error), exitcode=2) from None
    counts = pipeline.run(config, beam_args=argv[1:])
    print(f"scored {counts.scored} images, {counts.failed} failed "
          f"(dead letters: {config.output}-errors-*.jsonl)")
    return 0


def _parse_flags(argv: list[str]) -> list[str]:
    # Unknown flags are left for Beam's PipelineOptions.
    return flags.FLAGS(argv, known_only=True)


def run() -> None:
    """Console script entry point (effnet-batch)."""
    tf_noise.install()  # Before anything imports TensorFlow (workers inherit the filter).
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
