"""Predict: a signature's named input tensors in, its (filtered) output tensors out.

Behaviour and messages follow TF Serving's servables/tensorflow/predict_util.cc (RunPredict)
and TensorFlow's saved_model::GetInputValues; the REST flavour its
http_rest_api_handler.cc.

    response = predict.run_predict(servable, request, metrics=metrics)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from tensorflow_serving.apis import model_pb2, predict_pb2

from serving import tensors
from serving.errors import failed_precondition, invalid_argument
from serving.metrics import Metrics
from serving.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    check_method_name,
    response_spec,
    run_signature,
    sorted_keys,
)

InputsBuilder = Callable[[object], dict[str, np.ndarray]]  # SignatureDef -> arrays


def signature_for_predict(servable, name: str, *, rest: bool):
    """(signature name, SignatureDef) a Predict request names; "" is serving_default."""
    signature_name = name or DEFAULT_SIGNATURE
    if signature_name not in servable.signature_defs:
        if rest:  # HttpRestApiHandler::GetInfoMap
            raise invalid_argument(f'Serving signature name: "{signature_name}" not found '
                                   "in signature def")
        raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
    return signature_name, servable.signature_defs[signature_name]


def arrays_from_protos(signature, proto_inputs) -> dict[str, np.ndarray]:
    """PredictRequest.inputs -> arrays, validated against the signature's inputs."""
    request_keys, signature_keys = set(proto_inputs), set(signature.inputs)
    defaults = getattr(signature, "defaults", {})
    if len(request_keys) > len(signature_keys) or (
            len(request_keys) < len(signature_keys) and not defaults):
        raise invalid_argument(
            f"input size does not match signature: {len(request_keys)}!="
            f"{len(signature_keys)} len({{{','.join(sorted(request_keys))}}}) != "
            f"len({{{','.join(sorted(signature_keys))}}}). Sent extra: "
            f"{{{','.join(sorted(request_keys - signature_keys))}}}. Missing but required: "
            f"{{{','.join(sorted(signature_keys - request_keys))}}}.")
    # saved_model::GetInputValues (tensorflow/cc/saved_model/util.cc), which predict_util
    # calls next: a signature input neither sent nor defaulted, then unused request ones.
    missing = sorted(k for k in signature_keys - request_keys if k not in defaults)
    if missing:
        raise invalid_argument(
            f"Signature input alias: {missing[0]}(feed name: "
            f"{signature.inputs[missing[0]].name}) not found in request and no default "
            f"value provided. Inputs expected to be in the request "
            f"{{{','.join(sorted(request_keys))}}}, or default input alias set: "
            f"{','.join(sorted(defaults))}")
    if request_keys - signature_keys:
        raise invalid_argument(
            "Inputs contains invalid name. Used request inputs: "
            f"{','.join(sorted(request_keys & signature_keys))}, request input: "
            f"{','.join(sorted(request_keys))}")
    arrays = {}
    for index, alias in enumerate(sorted_keys(signature.inputs)):
        info = signature.inputs[alias]
        proto = proto_inputs[alias] if alias in proto_inputs else defaults[alias]
        if proto.dtype != info.dtype:
            raise invalid_argument(
                f"Expects arg[{index}] to be {tensors.dtype_string(info.dtype)} but "
                f"{tensors.dtype_string(proto.dtype)} is provided")
        arrays[alias] = tensors.to_numpy(proto, alias)
    return arrays


def check_shapes(signature, arrays: dict[str, np.ndarray]) -> None:
    """Each array fits its signature input's shape (-1 matches any size)."""
    for alias, array in arrays.items():
        expected = tensors.shape_list(signature.inputs[alias].tensor_shape)
        actual = list(np.shape(array))
        if expected is None:
            continue
        if len(expected) != len(actual) or any(
                e >= 0 and e != a for e, a in zip(expected, actual)):
            raise invalid_argument(
                f"Input {alias} has shape {tensors.shape_string(actual)}, but the "
                f"signature expects {tensors.shape_string(expected)}")


def _predict_on(servable, signature_name: str, signature, arrays: dict[str, np.ndarray],
                output_filter, *, metrics: Metrics, check_method: bool,
                ) -> dict[str, np.ndarray]:
    check_method_name(signature, (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD),
                      "prediction", enabled=check_method)
    wanted = list(output_filter)
    for alias in wanted:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected "
                f"to be in the set {{{','.join(sorted_keys(signature.outputs))}}}.")
    if len(set(wanted)) != len(wanted):
        duplicate = next(a for a in wanted if wanted.count(a) > 1)
        raise invalid_argument(f"duplicate output tensor alias: {duplicate}")
    check_shapes(signature, arrays)
    outputs = run_signature(servable, signature_name, arrays, api="Predict", metrics=metrics)
    return {alias: outputs[alias] for alias in (wanted or sorted_keys(signature.outputs))}


def run_predict(servable, request: predict_pb2.PredictRequest, *, metrics: Metrics,
                check_method: bool = False) -> predict_pb2.PredictResponse:
    """Predict on one version (RunPredict).

    Args:
      servable: the version the request's ModelSpec resolved to.
      request: its inputs are checked against the signature before anything runs.
      metrics: the runtime latency is recorded here.
      check_method: --enable_signature_method_name_check.

    Raises:
      ServingError: with the code TF Serving answers.
    """
    signature_name, signature = signature_for_predict(
        servable, request.model_spec.signature_name, rest=False)
    arrays = arrays_from_protos(signature, request.inputs)
    outputs = _predict_on(servable, signature_name, signature, arrays, request.output_filter,
                          metrics=metrics, check_method=check_method)
    response = predict_pb2.PredictResponse(model_spec=response_spec(servable, signature_name))
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(tensors.to_proto(value))
    return response


def run_predict_json(servable, spec: model_pb2.ModelSpec, build_inputs: InputsBuilder, *,
                     metrics: Metrics, check_method: bool = False) -> dict[str, np.ndarray]:
    """REST predict on one version: build_inputs(signature_def) turns the JSON body into
    arrays; returns every output of the signature.

    Raises:
      ServingError: with the code TF Serving's REST API answers.
    """
    signature_name, signature = signature_for_predict(servable, spec.signature_name, rest=True)
    if not signature.inputs:
        raise invalid_argument("Failed to get input map for signature: "
                               f"{spec.signature_name or 'DEFAULT'}")
    arrays = build_inputs(signature)
    return _predict_on(servable, signature_name, signature, arrays, [], metrics=metrics,
                       check_method=check_method)
