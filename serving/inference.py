"""Classify, Regress and MultiInference: the APIs that take tf.Examples.

Behaviour and messages follow TF Serving's servables/tensorflow/classifier.cc,
regressor.cc and multi_inference.cc: the examples are serialized into the signature's one
"inputs" tensor, and the outputs are checked and turned into results.

    response = inference.run_classify(servable, request, metrics=metrics)
"""

from __future__ import annotations

import grpc
import numpy as np
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import classification_pb2, inference_pb2, regression_pb2

from serving import tensors
from serving.errors import ServingError, invalid_argument
from serving.metrics import Metrics
from serving.signatures import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    REGRESS_METHOD,
    check_method_name,
    response_spec,
    run_signature,
)


def serialized_examples(request_input) -> np.ndarray:
    """Input (example_list or example_list_with_context) -> serialized Examples [N]."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context
        examples = []
        for example in request_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)  # Example features win over the context's.
            examples.append(merged.SerializeToString())
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    return np.array(examples, dtype=object)


def _example_signature(servable, spec, method: str, api: str, *, check_method: bool):
    signature_name = spec.signature_name or DEFAULT_SIGNATURE
    if signature_name not in servable.signature_defs:
        raise invalid_argument(f"No signature was found with the name: {signature_name}")
    signature = servable.signature_defs[signature_name]
    check_method_name(signature, (method,), api, enabled=check_method)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if api == "classification":
        if len(signature.outputs) not in (1, 2):
            raise invalid_argument(
                f"Expected one or two output Tensors, found {len(signature.outputs)}")
    elif len(signature.outputs) != 1:  # regressor.cc PreProcessRegression
        raise invalid_argument("Expected one output Tensor.")
    if "inputs" not in signature.inputs:
        raise invalid_argument(f"No {api} inputs found in SignatureDef: {signature}")
    return signature_name, signature


def _check_classification_outputs(signature) -> None:
    if "classes" not in signature.outputs and "scores" not in signature.outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of '
            f'"classes" or "scores". Signature was: {signature}')


def _check_regression_outputs(signature) -> None:
    if "outputs" not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {signature}")


def _classification_result(servable, signature_name, signature, examples, *,
                           metrics: Metrics) -> classification_pb2.ClassificationResult:
    _check_classification_outputs(signature)
    outputs = run_signature(servable, signature_name, {"inputs": examples}, api="Classify",
                            metrics=metrics)
    count = len(examples)
    classes, scores = outputs.get("classes"), outputs.get("scores")
    for name, value, kind in (("classes", classes, "DT_STRING"),
                              ("scores", scores, "DT_FLOAT")):
        if value is None:
            continue
        if value.ndim != 2:
            raise invalid_argument("Expected Tensor shape: [batch_size num_classes] but "
                                   f"got {tensors.shape_string(list(value.shape))}")
        actual = tensors.types_pb2.DataType.Name(tensors.datatype_of(value))
        if actual != kind:
            raise invalid_argument(f"Expected {name} Tensor of {kind}. Got: {actual}")
        if value.shape[0] != count:
            raise invalid_argument(f"Expected {name} output batch size of {count}. "
                                   f"Got: {value.shape[0]}")
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise invalid_argument("Tensors class and score should match in dim_size(1). Got "
                               f"{classes.shape[1]} vs. {scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    result = classification_pb2.ClassificationResult()
    for i in range(count):
        row = result.classifications.add()
        for c in range(width):
            item = row.classes.add()
            if classes is not None:
                label = classes[i, c]
                item.label = label.decode("utf-8", "replace") if isinstance(
                    label, bytes) else str(label)
            if scores is not None:
                item.score = float(scores[i, c])
    return result


def _regression_result(servable, signature_name, signature, examples, *,
                       metrics: Metrics) -> regression_pb2.RegressionResult:
    _check_regression_outputs(signature)
    values = run_signature(servable, signature_name, {"inputs": examples}, api="Regress",
                           metrics=metrics)["outputs"]
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != len(examples):
        raise invalid_argument("Expected output Tensor shape to be either [batch_size] or "
                               "[batch_size, 1] but got "
                               f"{tensors.shape_string(list(values.shape))}")
    result = regression_pb2.RegressionResult()
    for value in values:
        result.regressions.add(value=float(value))
    return result


def _run_example_api(servable, request, response, method: str, api: str, result_of, *,
                     metrics: Metrics, check_method: bool):
    signature_name, signature = _example_signature(
        servable, request.model_spec, method, api, check_method=check_method)
    response.model_spec.CopyFrom(response_spec(servable, signature_name))
    response.result.CopyFrom(result_of(servable, signature_name, signature,
                                       serialized_examples(request.input), metrics=metrics))
    return response


def run_classify(servable, request: classification_pb2.ClassificationRequest, *,
                 metrics: Metrics, check_method: bool = False,
                 ) -> classification_pb2.ClassificationResponse:
    """Classify on one version (RunClassify).

    Args:
      servable: the version the request's ModelSpec resolved to.
      metrics: the runtime latency is recorded here.
      check_method: --enable_signature_method_name_check.

    Raises:
      ServingError: with the code TF Serving answers.
    """
    return _run_example_api(servable, request, classification_pb2.ClassificationResponse(),
                            CLASSIFY_METHOD, "classification", _classification_result,
                            metrics=metrics, check_method=check_method)


def run_regress(servable, request: regression_pb2.RegressionRequest, *, metrics: Metrics,
                check_method: bool = False) -> regression_pb2.RegressionResponse:
    """Regress on one version (RunRegress); arguments as run_classify."""
    return _run_example_api(servable, request, regression_pb2.RegressionResponse(),
                            REGRESS_METHOD, "regression", _regression_result,
                            metrics=metrics, check_method=check_method)


def run_multi_inference(servable, request: inference_pb2.MultiInferenceRequest, *,
                        metrics: Metrics) -> inference_pb2.MultiInferenceResponse:
    """Several classify/regress signatures of one version on the same examples.

    Every task is checked before any runs (multi_inference.cc TensorFlowMultiInferenceRunner).
    """
    model_name, seen, plan = "", set(), []
    for task in request.tasks:
        if not task.model_spec.name:
            raise invalid_argument("Found ModelSpec with an empty model name.")
        if model_name and task.model_spec.name != model_name:
            raise invalid_argument("All ModelSpecs in a MultiInferenceRequest must access "
                                   "the same model name.")
        model_name = task.model_spec.name
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in seen:
            raise invalid_argument(f"Duplicate evaluation of signature: {signature_name}")
        seen.add(signature_name)
        if signature_name not in servable.signature_defs:
            raise invalid_argument("Requested signature not found in model graph: "
                                   f"{signature_name}")
        signature = servable.signature_defs[signature_name]
        if task.method_name == CLASSIFY_METHOD:
            _check_classification_outputs(signature)
        elif task.method_name == REGRESS_METHOD:
            _check_regression_outputs(signature)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported signature method_name: {task.method_name}")
        plan.append((task, signature_name, signature))
    examples = serialized_examples(request.input)
    response = inference_pb2.MultiInferenceResponse()
    for task, signature_name, signature in plan:
        result = response.results.add(model_spec=response_spec(servable, signature_name))
        if task.method_name == CLASSIFY_METHOD:
            result.classification_result.CopyFrom(_classification_result(
                servable, signature_name, signature, examples, metrics=metrics))
        else:
            result.regression_result.CopyFrom(_regression_result(
                servable, signature_name, signature, examples, metrics=metrics))
    return response
