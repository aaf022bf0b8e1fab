"""What GrpcClient, AsyncGrpcClient and RestClient share: arguments and result parsing."""

from __future__ import annotations

import re
import types

from clients import errors
from clients.results import ModelMetadata, Prediction, Signature, TensorSpec, VersionStatus
from clients.retry import RetryPolicy

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_CLASSIFY_SIGNATURE = "classify"
DEFAULT_INPUT = "image_bytes"
# Feature key of the classify signature's tf.Example (export/signatures.py).
EXAMPLE_IMAGE_KEY = "image/encoded"
DEFAULT_TIMEOUT_S = 30.0
# The outputs predict() reads; probabilities ([N, C], large for many classes) are not asked for.
PREDICT_OUTPUTS = ("classes", "scores", "class_ids")
_LABEL = re.compile(r"[a-zA-Z0-9_]+")


class ClientBase:
    """Argument validation shared by all clients (no I/O here)."""

    def __init__(self, target: str, model: str, *, version: int | None = None,
                 label: str | None = None, signature: str = DEFAULT_SIGNATURE,
                 input_name: str = DEFAULT_INPUT, timeout: float | None = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy | None = None, max_size: int | None = None,
                 quality: int = 90):
        if not target:
            raise ValueError("target is required, e.g. 'localhost:8500' or "
                             "'http://localhost:8501'")
        if not model or "/" in model:
            raise ValueError(f"model must be a model name, got {model!r}")
        if version is not None and label is not None:
            raise ValueError("give version or label, not both")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 1):
            raise ValueError(f"version must be a positive integer, got {version!r}")
        if label is not None and not _LABEL.fullmatch(label):
            raise ValueError(f"label must match [a-zA-Z0-9_]+, got {label!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive (or None), got {timeout}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be in 1..100, got {quality}")
        self.target = target
        self.model = model
        self.version = version
        self.label = label
        self.signature = signature
        self.input_name = input_name
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_size = max_size
        self.quality = quality

    def _timeout(self, timeout: float | None | types.EllipsisType) -> float | None:
        # `...` (every method's default) means the client's timeout; None means no deadline.
        return self.timeout if timeout is ... else timeout

    def __repr__(self) -> str:
        which = (f", version={self.version}" if self.version is not None
                 else f", label={self.label!r}" if self.label is not None else "")
        return f"{type(self).__name__}({self.target!r}, model={self.model!r}{which})"


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def predictions_from_rows(classes: list[list], scores: list[list], class_ids: list[list] | None,
                          count: int, top_k: int | None) -> list[Prediction]:
    """Prediction objects from the [N, k] outputs, checked against the number of images."""
    if len(classes) != count or len(scores) != count:
        raise errors.ServerError(f"the server returned {len(classes)} predictions for {count} "
                                 "images", code="INTERNAL")
    result = []
    for i in range(count):
        ids = tuple(int(v) for v in class_ids[i]) if class_ids else ()
        prediction = Prediction(tuple(_text(v) for v in classes[i]),
                                tuple(float(v) for v in scores[i]), ids)
        result.append(prediction.truncated(top_k))
    return result


def check_outputs(outputs, names=("classes", "scores")) -> None:
    missing = [name for name in names if name not in outputs]
    if missing:
        raise errors.InvalidInputError(
            f"the signature has no output(s) {missing}; predict() needs 'classes' and "
            "'scores' (use the serving_default signature)", code="INVALID_ARGUMENT")


def spec_from_json(info: dict) -> TensorSpec:
    shape = info.get("tensor_shape", {})
    if shape.get("unknown_rank"):
        dims = None
    else:
        dims = tuple(int(d.get("size", 0)) for d in shape.get("dim", []))
    return TensorSpec(info.get("dtype", "DT_INVALID"), dims)


def metadata_from_json(body: dict) -> ModelMetadata:
    """GET /v1/models/NAME/metadata's JSON -> ModelMetadata."""
    spec = body.get("model_spec", {})
    signature_map = body.get("metadata", {}).get("signature_def", {}).get("signature_def", {})
    signatures = {
        name: Signature(
            definition.get("method_name", ""),
            {k: spec_from_json(v) for k, v in definition.get("inputs", {}).items()},
            {k: spec_from_json(v) for k, v in definition.get("outputs", {}).items()})
        for name, definition in signature_map.items()}
    return ModelMetadata(spec.get("name", ""), int(spec.get("version", 0) or 0), signatures)


def status_from_json(body: dict) -> list[VersionStatus]:
    """GET /v1/models/NAME's JSON -> [VersionStatus] sorted by version."""
    result = [VersionStatus(int(s["version"]), s.get("state", "UNKNOWN"),
                            s.get("status", {}).get("error_code", "OK"),
                            s.get("status", {}).get("error_message", ""))
              for s in body.get("model_version_status", [])]
    return sorted(result, key=lambda s: s.version)
