"""Command line client: predict, status, metadata against TF Serving (gRPC or REST).

    python -m clients predict --server=grpc://localhost:8500 --model=effnet photos/ cat.jpg
    python -m clients predict --server=http://localhost:8501 --model=effnet --json cat.jpg
    python -m clients predict --server=grpc://localhost:8500 --model=effnet --label=canary \\
        --concurrency=8 --batch=4 --max_size=1024 --top_k=3 photos/
    python -m clients status --server=http://localhost:8501 --model=effnet
    python -m clients metadata --server=grpc://localhost:8500 --model=effnet --json

predict prints a table (file, top-1 label, score, top-k) or, with --json, one JSON
document. Directories are walked for image files; a file that fails is reported and the
run goes on. Exit status: 0 all files succeeded, 1 some failed (or status/metadata
failed), 2 bad usage. Console script: effnet-client (same arguments).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from clients import cli, connect, errors

_SERVER = flags.DEFINE_string(
    "server", None, "grpc://HOST:PORT, grpcs://HOST:PORT, http://HOST:PORT or https://...")
_MODEL = flags.DEFINE_string("model", None, "Model name.")
_VERSION = flags.DEFINE_integer("version", None, "Model version (default: latest).")
_LABEL = flags.DEFINE_string("label", None, "Version label, e.g. stable (instead of --version).")
_SIGNATURE = flags.DEFINE_string("signature", "serving_default", "Predict signature.")
_CLASSIFY = flags.DEFINE_boolean(
    "classify", False, "Use the Classify API (signature 'classify') instead of Predict.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Classes shown per image (default: all returned).")
_JSON = flags.DEFINE_boolean("json", False, "Print JSON instead of a table.")
_CONCURRENCY = flags.DEFINE_integer("concurrency", 4, "Requests in flight at once.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per request.")
_MAX_SIZE = flags.DEFINE_integer(
    "max_size", None, "Downscale images whose longer side exceeds this (pixels) before sending.")
_QUALITY = flags.DEFINE_integer("quality", 90, "JPEG quality for downscaled images.")
_TIMEOUT = flags.DEFINE_float("timeout", 30.0, "Deadline per request in seconds.")
_HEADER = flags.DEFINE_multi_string(
    "header", [], "KEY=VALUE sent with every call (gRPC metadata or HTTP header), "
    "e.g. authorization='Bearer TOKEN'.")
_ROOT_CERTIFICATES = flags.DEFINE_string(
    "root_certificates", None, "PEM file of the CA to trust (grpcs:// or https://).")
_PROGRESS = flags.DEFINE_enum("progress", "auto", ["auto", "on", "off"],
                              "Progress bar on stderr (auto: when stderr is a terminal).")

COMMANDS = ("predict", "status", "metadata")


def _headers() -> list[tuple[str, str]]:
    pairs = []
    for item in _HEADER.value:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise app.UsageError(f"--header must be KEY=VALUE, got {item!r}", exitcode=2)
        # gRPC metadata keys must be lower case; HTTP headers are case-insensitive.
        pairs.append((key.strip().lower(), value.strip()))
    return pairs


def _client():
    if not _SERVER.value or not _MODEL.value:
        raise app.UsageError("--server and --model are required", exitcode=2)
    kwargs = dict(version=_VERSION.value, label=_LABEL.value, signature=_SIGNATURE.value,
                  timeout=_TIMEOUT.value)
    headers = _headers()
    if _SERVER.value.startswith(("http://", "https://")):
        kwargs["headers"] = dict(headers)
        kwargs["pool_maxsize"] = max(_CONCURRENCY.value, 1)
        if _ROOT_CERTIFICATES.value:
            kwargs["verify"] = _ROOT_CERTIFICATES.value
    else:
        kwargs["metadata"] = headers
        if _ROOT_CERTIFICATES.value:
            kwargs["root_certificates"] = _ROOT_CERTIFICATES.value
    try:
        return connect(_SERVER.value, _MODEL.value, **kwargs)
    except ValueError as error:
        raise app.UsageError(str(error), exitcode=2) from error


def _predict(paths: list[str]) -> int:
    if not paths:
        raise app.UsageError("predict needs at least one image file or directory", exitcode=2)
    try:
        files = cli.find_images(paths)
    except ValueError as error:
        raise app.UsageError(str(error), exitcode=2) from error
    if not files:
        raise app.UsageError(f"no image files in {' '.join(paths)}", exitcode=2)
    client = _client()
    method = client.classify if _CLASSIFY.value else client.predict
    progress = cli.Progress(len(files), enabled={"auto": None, "on": True,
                                                 "off": False}[_PROGRESS.value])
    try:
        results = cli.predict_files(
            lambda data: method(data, top_k=_TOP_K.value), files,
            concurrency=_CONCURRENCY.value, batch=_BATCH.value, max_size=_MAX_SIZE.value,
            quality=_QUALITY.value, progress=progress)
    finally:
        client.close()
    print(cli.format_json(results) if _JSON.value else cli.format_table(results))
    failed = sum(not r.ok for r in results)
    if failed and not _JSON.value:
        print(f"{failed} of {len(results)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _status() -> int:
    with _client() as client:
        statuses = client.status()
    if _JSON.value:
        print(json.dumps([s.to_dict() for s in statuses], indent=2))
    else:
        print(f"{'version':>7}  {'state':<10}  error")
        for s in statuses:
            error = "" if s.error_code == "OK" else f"{s.error_code}: {s.error_message}"
            print(f"{s.version:>7}  {s.state:<10}  {error}".rstrip())
    return 0


def _metadata() -> int:
    with _client() as client:
        metadata = client.metadata()
    if _JSON.value:
        print(json.dumps(metadata.to_dict(), indent=2))
        return 0
    print(f"model {metadata.name} version {metadata.version}")
    for name, signature in sorted(metadata.signatures.items()):
        if name.startswith("__"):  # __saved_model_init_op: TensorFlow internals.
            continue
        print(f"\n{name} ({signature.method_name})")
        for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
            for tensor, spec in sorted(specs.items()):
                shape = "unknown rank" if spec.shape is None else list(spec.shape)
                print(f"  {kind:<6} {tensor}: {spec.dtype} {shape}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"the first argument must be one of {', '.join(COMMANDS)}",
                             exitcode=2)
    command, rest = argv[1], argv[2:]
    if command != "predict" and rest:
        raise app.UsageError(f"{command} takes no positional arguments: {rest}", exitcode=2)
    try:
        if command == "predict":
            return _predict(rest)
        return _status() if command == "status" else _metadata()
    except errors.ClientError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run() -> None:
    """Console script entry point (effnet-client)."""
    app.run(main)


if __name__ == "__main__":
    run()
