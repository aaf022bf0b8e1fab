"""What every API shares: the ModelSpec in and out, signature and method names, and running
one signature of a version within the request's deadline.

Behaviour and messages follow TF Serving (servables/tensorflow/util.cc, predict_util.cc,
classifier.cc, regressor.cc, predict_impl.cc).
"""

from __future__ import annotations

import time

import grpc
import numpy as np
from tensorflow_serving.apis import model_pb2

from serving import deadlines
from serving.errors import ServingError, invalid_argument
from serving.metrics import Metrics

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def sorted_keys(mapping) -> list[str]:
    return sorted(mapping.keys())


def require_model_spec(request) -> None:
    """predict_impl.cc:40, classification_service.cc:38, regression_service.cc:36."""
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")


def response_spec(servable, signature_name: str) -> model_pb2.ModelSpec:
    """The ModelSpec a response carries: the version that answered and its signature."""
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


def check_method_name(signature, expected: tuple[str, ...], api: str, *,
                      enabled: bool) -> None:
    """--enable_signature_method_name_check (off by default, as in TF Serving).

    Classify/Regress answer INVALID_ARGUMENT (classifier.cc GetClassificationSignatureDef,
    regressor.cc), Predict INTERNAL (predict_util.cc VerifySignature).

    Args:
      signature: the SignatureDef the request names.
      expected: the method names the API accepts.
      api: "prediction", "classification" or "regression".
      enabled: the flag; nothing is checked without it.
    """
    if not enabled or signature.method_name in expected:
        return
    if api == "prediction":
        raise ServingError(grpc.StatusCode.INTERNAL,
                           "Expected prediction signature method_name to be one of {"
                           f"{', '.join(expected)}}}. Was: {signature.method_name}")
    raise invalid_argument(f"Expected {api} signature method_name to be "
                           f"{expected[0]}. Was: {signature.method_name}")


def run_signature(servable, signature_name: str, inputs: dict[str, np.ndarray], *,
                  api: str, metrics: Metrics) -> dict[str, np.ndarray]:
    """Runs a signature with what is left of the request's deadline; records its latency.

    Args:
      servable: the version (batched or not: both run the same way).
      api: the runtime latency metric's API label ("Predict", "Classify", "Regress").

    Raises:
      ServingError: DEADLINE_EXCEEDED before it runs, or what the run raises.
    """
    started = time.monotonic()
    outputs = servable.run(signature_name, inputs, timeout=deadlines.remaining())
    metrics.runtime_latency.observe(servable.name, api, "TF2",
                                    value=(time.monotonic() - started) * 1e6)
    return outputs
