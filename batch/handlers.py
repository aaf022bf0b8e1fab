"""RunInference model handlers: the exported version in-process, or TF Serving over gRPC.

Both take batches of (path, encoded image) pairs and return one record per image, either
a prediction or a dead letter:

    {"path": ..., "model": "cars", "version": 3, "labels": [...], "scores": [...],
     "class_ids": [...]}
    {"path": ..., "model": "cars", "version": 3, "error": {"code": "INVALID_ARGUMENT",
     "message": "image 0: ..."}}

    handler = SavedModelHandler("models/cars/3", name="cars", version=3, max_batch_size=32)
    records = pipeline | RunInference(handler)

The serving signature decodes a whole batch as one tensor, so one bad image fails its
batch with INVALID_ARGUMENT; that batch is then scored image by image and only the bad
image becomes a dead letter, with the signature's own message. Any other error (a server
still down after the clients' retries, out of memory) raises: the runner retries the
bundle, and fails the job if it keeps failing, rather than dead-lettering a whole dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from collections.abc import Callable, Sequence

from apache_beam.ml.inference.base import ModelHandler

from clients import client_base, errors
from clients.results import Prediction
from clients.retry import RetryPolicy

Item = tuple[str, bytes]  # (path, encoded image)
METRICS_NAMESPACE = "batch"


def prediction_record(path: str, prediction: Prediction, *, model: str, version: int) -> dict:
    return {"path": path, "model": model, "version": version, **prediction.to_dict()}


def error_record(path: str, code: str, message: str, *, model: str, version: int) -> dict:
    return {"path": path, "model": model, "version": version,
            "error": {"code": code, "message": message}}


def is_error(record: dict) -> bool:
    return "error" in record


def score(predict: Callable[[list[bytes]], list[Prediction]], items: Sequence[Item], *,
          model: str, version: int, top_k: int | None = None) -> list[dict]:
    """One record per item, in order; a batch refused as invalid is retried image by image.

    Raises:
      errors.ClientError: anything but an invalid input (the bundle is retried).
    """
    try:
        predictions = predict([data for _, data in items])
    except (errors.InvalidInputError, ValueError) as error:
        # ValueError: refused before sending, e.g. the clients' "empty image".
        if len(items) == 1:
            return [error_record(items[0][0], getattr(error, "code", "INVALID_ARGUMENT"),
                                 getattr(error, "message", str(error)), model=model,
                                 version=version)]
        return [record for item in items
                for record in score(predict, [item], model=model, version=version,
                                    top_k=top_k)]
    return [prediction_record(path, prediction.truncated(top_k), model=model, version=version)
            for (path, _), prediction in zip(items, predictions)]


class ImageHandler(ModelHandler):
    """What both handlers share: batching bounds, identity and metrics namespace."""

    def __init__(self, *, name: str, version: int, top_k: int | None = None,
                 min_batch_size: int = 1, max_batch_size: int = 32):
        super().__init__(min_batch_size=min_batch_size, max_batch_size=max_batch_size)
        self.name = name
        self.version = version
        self.top_k = top_k

    def get_num_bytes(self, batch: Sequence[Item]) -> int:
        return sum(len(data) for _, data in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def _score(self, predict, items: Sequence[Item]) -> list[dict]:
        return score(predict, items, model=self.name, version=self.version, top_k=self.top_k)


def predict_in_process(servable, blobs: list[bytes]) -> list[Prediction]:
    """serving_default on a loaded serving.servable.Servable, with the clients' results and
    errors, so that both handlers (and the dead letters) say exactly what TF Serving says."""
    # Lazily: the launcher and remote-mode workers never import TensorFlow for this.
    import numpy as np

    from export import signatures
    from serving.errors import ServingError

    try:
        outputs = servable.run(signatures.SERVING_DEFAULT,
                               {signatures.IMAGE_BYTES_INPUT: np.array(blobs, dtype=object)})
    except ServingError as error:
        raise errors.from_code(error.code_name, error.message) from None
    # The same rows -> Prediction parsing as the gRPC client's, so the records match.
    return client_base.predictions_from_rows(
        outputs[signatures.CLASSES].tolist(), outputs[signatures.SCORES].tolist(),
        outputs[signatures.CLASS_IDS].tolist(), len(blobs), None)


class SavedModelHandler(ImageHandler):
    """Runs the version in each worker, loaded as TF Serving loads it (a session bundle).

    Args:
      path: the version directory (local, or gs:// / s3:// where TensorFlow's file
        systems reach).
      name, version: recorded with every prediction.
      top_k, min_batch_size, max_batch_size: see ImageHandler.
    """

    def __init__(self, path: str, **kwargs):
        super().__init__(**kwargs)
        self.path = path

    def load_model(self):
        from serving.servable import Servable  # In the worker: the launcher needs no model.

        return Servable.load(name=self.name, version=self.version, path=self.path)

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> list[dict]:
        return self._score(functools.partial(predict_in_process, model), batch)


@dataclasses.dataclass
class _Remote:
    client: object
    pool: concurrent.futures.ThreadPoolExecutor


class GrpcModelHandler(ImageHandler):
    """Sends the images to a running TF Serving (or serving/'s local server) over gRPC.

    Each batch is split into requests of request_size images, at most `concurrency` in
    flight per worker process; failed requests are retried with the clients' RetryPolicy.

    Args:
      server: "host:port", "grpc://host:port" or "grpcs://host:port".
      name, version: the model and the version every request is pinned to.
      concurrency, request_size, timeout, retry: per worker process; see above.
    """

    def __init__(self, server: str, *, concurrency: int = 4, request_size: int = 8,
                 timeout: float = 30.0, retry: RetryPolicy | None = None, **kwargs):
        super().__init__(**kwargs)
        if concurrency < 1 or request_size < 1:
            raise ValueError("concurrency and request_size must be >= 1")
        self.server = server
        self.concurrency = concurrency
        self.request_size = request_size
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def load_model(self) -> _Remote:
        from clients.grpc_client import GrpcClient

        client = GrpcClient(self.server, self.name, version=self.version,
                            timeout=self.timeout, retry=self.retry)
        return _Remote(client, concurrent.futures.ThreadPoolExecutor(self.concurrency))

    def run_inference(self, batch: Sequence[Item], model: _Remote,
                      inference_args=None) -> list[dict]:
        requests = [batch[i:i + self.request_size]
                    for i in range(0, len(batch), self.request_size)]
        scored = model.pool.map(functools.partial(self._score, model.client.predict), requests)
        return [record for records in scored for record in records]
