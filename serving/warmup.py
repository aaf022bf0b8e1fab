"""Load-time warmup: assets.extra/tf_serving_warmup_requests replayed before a version
serves, as TF Serving's servables/tensorflow/saved_model_warmup.cc does.

The records are PredictionLogs (predict, classify or regress); each runs through the same
API code as a request, on the version as it will serve (batching wrapper included).

    warmup.run_warmup(servable, metrics=metrics)
"""

from __future__ import annotations

import os
import time

import grpc
from absl import logging
from tensorflow_serving.apis import prediction_log_pb2

from serving import inference, predict
from serving.errors import ServingError, invalid_argument
from serving.metrics import Metrics

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords


def run_warmup(servable, *, metrics: Metrics, iterations: int = 1,
               check_method: bool = False) -> None:
    """Replays the version's warmup file, if it has one.

    Args:
      servable: the loaded version, as it will serve.
      metrics: warmup latency and records read are recorded here (with the API metrics of
        the replayed requests).
      iterations: --num_request_iterations_for_warmup, times each record is replayed.
      check_method: --enable_signature_method_name_check.

    Raises:
      ServingError: a record fails, cannot be parsed, or there are too many records.
    """
    path = os.path.join(servable.path, WARMUP_FILE)
    if not os.path.isfile(path):
        logging.info("No warmup data file found at %s", path)
        return
    import tensorflow as tf

    iterations = max(1, iterations)
    started, count, status = time.monotonic(), 0, "OK"
    try:
        for raw in tf.data.TFRecordDataset(path):
            if count >= MAX_WARMUP_RECORDS:
                raise invalid_argument("Number of warmup records exceeds the maximum "
                                       f"({MAX_WARMUP_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(raw.numpy())
            except Exception:
                raise invalid_argument(f"Failed to parse warmup record from {path}") from None
            for _ in range(iterations):
                _replay(servable, log, metrics=metrics, check_method=check_method)
            count += 1
    except tf.errors.OpError as error:
        failure = ServingError.from_exception(error)
        if failure.code == grpc.StatusCode.DATA_LOSS:
            failure = ServingError(failure.code, failure.message + ". Please verify your "
                                   "warmup data is in TFRecord format.")
        status = str(failure)
        raise failure from None
    except ServingError as error:
        status = str(error)
        raise
    finally:
        latency = (time.monotonic() - started) * 1e6
        metrics.model_warmup_latency.observe(servable.path, status, value=latency)
        metrics.model_warmup_records_read.inc(servable.path, status, by=count)
    logging.info("Finished reading warmup data for model at %s. Number of warmup records "
                 "read: %d. Elapsed time (microseconds): %d.", path, count, latency)


def _replay(servable, log: prediction_log_pb2.PredictionLog, *, metrics: Metrics,
            check_method: bool) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        predict.run_predict(servable, log.predict_log.request, metrics=metrics,
                            check_method=check_method)
    elif kind == "classify_log":
        inference.run_classify(servable, log.classify_log.request, metrics=metrics,
                               check_method=check_method)
    elif kind == "regress_log":
        inference.run_regress(servable, log.regress_log.request, metrics=metrics,
                              check_method=check_method)
    else:
        raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                           f"Unsupported log_type for warmup: {kind}")
