"""Request handling shared by gRPC and REST: Predict, Classify, Regress, metadata, status.

Behaviour and messages follow TF Serving (servables/tensorflow/predict_util.cc,
classifier.cc, get_model_metadata_impl.cc, model_servers/get_model_status_impl.cc,
core/basic_manager.cc). Every failure is a ServingError with the code TF Serving returns.

    core = ServingCore(manager)
    response = core.predict(predict_pb2.PredictRequest(...))
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import os
import time
from collections.abc import Callable

import grpc
import numpy as np
from absl import logging
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from serving import tensors
from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import ServingError, failed_precondition, invalid_argument
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.servable import Servable

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
SIGNATURE_DEF_FIELD = "signature_def"  # GetModelMetadataImpl::kSignatureDef
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # WarmupConsts::kMaxNumRecords
PER_MODEL_BATCHING_FILE = "batching_params.pbtxt"  # --enable_per_model_batching_parameters

InputsBuilder = Callable[[object], dict[str, np.ndarray]]  # SignatureDef -> arrays


_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline",
                                                                        default=None)


@contextlib.contextmanager
def request_deadline(seconds: float | None):
    """Bounds the model work of the requests run inside (gRPC deadline, REST timeout).

    A request whose time is up before it runs fails with DEADLINE_EXCEEDED, also while it
    waits in a batching queue (TF Serving passes the deadline to the session the same way).
    """
    token = _DEADLINE.set(time.monotonic() + seconds if seconds is not None else None)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _remaining() -> float | None:
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    return remaining


def _sorted_keys(mapping) -> list[str]:
    return sorted(mapping.keys())


class ServingCore:
    """Transport-independent TF Serving APIs over a ModelManager."""

    def __init__(self, manager: ModelManager | None = None, *, metrics: Metrics | None = None,
                 batching: BatchingOptions | None = None,
                 enable_signature_method_name_check: bool = False,
                 num_request_iterations_for_warmup: int = 1,
                 enable_per_model_batching_parameters: bool = False):
        """Args:
          manager: serves the versions (may be attached later with attach()).
          metrics: runtime latency, batch sizes and warmup are recorded here.
          batching: enables server-side batching with these parameters.
          enable_signature_method_name_check: reject signatures whose method_name does not
            fit the API (off by default, as in tensorflow_model_server: TF2 SavedModels
            write tensorflow/serving/predict for every signature).
          num_request_iterations_for_warmup: times each warmup record is replayed.
          enable_per_model_batching_parameters: with batching, a version directory's own
            batching_params.pbtxt overrides the server-wide parameters.
        """
        self.manager = manager
        self.metrics = metrics or (manager.metrics if manager else Metrics())
        self.batching = batching
        self.method_name_check = enable_signature_method_name_check
        self.warmup_iterations = max(1, num_request_iterations_for_warmup)
        self.per_model_batching = enable_per_model_batching_parameters

    def attach(self, manager: ModelManager) -> None:
        self.manager = manager

    # --- running signatures -----------------------------------------------------------

    def _run(self, servable: Servable, signature_name: str, inputs: dict[str, np.ndarray],
             api: str) -> dict[str, np.ndarray]:
        started = time.monotonic()
        remaining = _remaining()
        if self.batching is None:
            outputs = servable.run(signature_name, inputs, timeout=remaining)
        else:
            batcher = self._batcher(servable, signature_name)
            future = batcher.submit(inputs, deadline=_DEADLINE.get())
            self.metrics.input_batch_size.observe(value=next(iter(
                np.shape(a)[0] for a in inputs.values())))
            try:
                outputs = future.result(timeout=remaining)
            except concurrent.futures.TimeoutError:
                future.cancel()  # Still queued: the batch will leave it out.
                raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   "Deadline Exceeded") from None
        self.metrics.runtime_latency.observe(servable.name, api, "TF2",
                                             value=(time.monotonic() - started) * 1e6)
        return outputs

    def batching_options(self, servable: Servable) -> BatchingOptions:
        """The server's batching parameters, or the version's batching_params.pbtxt."""
        path = os.path.join(servable.path, PER_MODEL_BATCHING_FILE)
        if self.per_model_batching and os.path.isfile(path):
            try:
                return BatchingOptions.from_file(path)
            except Exception as error:  # Unparsable or refused parameters.
                raise invalid_argument(f"Invalid {path}: {error}") from None
        return self.batching

    def _batcher(self, servable: Servable, signature_name: str) -> Batcher:
        with servable.lock:
            if signature_name not in servable.batchers:
                servable.batchers[signature_name] = Batcher(
                    lambda merged, timeout: servable.run(signature_name, merged,
                                                         timeout=timeout),
                    self.batching_options(servable),
                    on_batch=self._record_batch,
                    name=f"batch-{servable.name}-{servable.version}-{signature_name}")
            return servable.batchers[signature_name]

    def _record_batch(self, size: int, padded: int) -> None:
        self.metrics.processed_batch_size.observe(value=padded)
        self.metrics.padding_size.observe(padded, value=padded - size)
        self.metrics.wrapped_run_count.inc()

    def _check_method(self, signature, expected: tuple[str, ...], api: str) -> None:
        """--enable_signature_method_name_check (off by default, as in TF Serving).

        Classify/Regress answer INVALID_ARGUMENT (classifier.cc GetClassificationSignatureDef,
        regressor.cc), Predict INTERNAL (predict_util.cc VerifySignature).
        """
        if not self.method_name_check or signature.method_name in expected:
            return
        if api == "prediction":
            raise ServingError(grpc.StatusCode.INTERNAL,
                               "Expected prediction signature method_name to be one of {"
                               f"{', '.join(expected)}}}. Was: {signature.method_name}")
        raise invalid_argument(f"Expected {api} signature method_name to be "
                               f"{expected[0]}. Was: {signature.method_name}")

    # --- Predict -------------------------------------------------------------------------

    @staticmethod
    def _signature_for_predict(servable: Servable, name: str, *, rest: bool):
        signature_name = name or DEFAULT_SIGNATURE
        if signature_name not in servable.signature_defs:
            if rest:  # HttpRestApiHandler::GetInfoMap
                raise invalid_argument(f'Serving signature name: "{signature_name}" not found '
                                       "in signature def")
            raise failed_precondition(f'Serving signature key "{signature_name}" not found.')
        return signature_name, servable.signature_defs[signature_name]

    @staticmethod
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
        for index, alias in enumerate(_sorted_keys(signature.inputs)):
            info = signature.inputs[alias]
            proto = proto_inputs[alias] if alias in proto_inputs else defaults[alias]
            if proto.dtype != info.dtype:
                raise invalid_argument(
                    f"Expects arg[{index}] to be {tensors.dtype_string(info.dtype)} but "
                    f"{tensors.dtype_string(proto.dtype)} is provided")
            arrays[alias] = tensors.to_numpy(proto, alias)
        return arrays

    @staticmethod
    def check_shapes(signature, arrays: dict[str, np.ndarray]) -> None:
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

    def _predict_on(self, servable: Servable, signature_name: str, signature,
                    arrays: dict[str, np.ndarray], output_filter) -> dict[str, np.ndarray]:
        self._check_method(signature, (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD),
                           "prediction")
        wanted = list(output_filter)
        for alias in wanted:
            if alias not in signature.outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected "
                    f"to be in the set {{{','.join(_sorted_keys(signature.outputs))}}}.")
        if len(set(wanted)) != len(wanted):
            duplicate = next(a for a in wanted if wanted.count(a) > 1)
            raise invalid_argument(f"duplicate output tensor alias: {duplicate}")
        self.check_shapes(signature, arrays)
        outputs = self._run(servable, signature_name, arrays, "Predict")
        return {alias: outputs[alias] for alias in (wanted or _sorted_keys(signature.outputs))}

    @staticmethod
    def _response_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
        spec.version.value = servable.version
        return spec

    @staticmethod
    def _require_model_spec(request) -> None:
        """predict_impl.cc:40, classification_service.cc:38, regression_service.cc:36."""
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        self._require_model_spec(request)
        with self.manager.servable(request.model_spec) as servable:
            return self._predict_proto(servable, request)

    def _predict_proto(self, servable, request) -> predict_pb2.PredictResponse:
        signature_name, signature = self._signature_for_predict(
            servable, request.model_spec.signature_name, rest=False)
        arrays = self.arrays_from_protos(signature, request.inputs)
        outputs = self._predict_on(servable, signature_name, signature, arrays,
                                   request.output_filter)
        response = predict_pb2.PredictResponse(
            model_spec=self._response_spec(servable, signature_name))
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(tensors.to_proto(value))
        return response

    def predict_json(self, spec: model_pb2.ModelSpec, build_inputs: InputsBuilder,
                     ) -> dict[str, np.ndarray]:
        """REST predict: build_inputs(signature_def) turns the JSON body into arrays."""
        with self.manager.servable(spec) as servable:
            signature_name, signature = self._signature_for_predict(
                servable, spec.signature_name, rest=True)
            if not signature.inputs:
                raise invalid_argument("Failed to get input map for signature: "
                                       f"{spec.signature_name or 'DEFAULT'}")
            arrays = build_inputs(signature)
            return self._predict_on(servable, signature_name, signature, arrays, [])

    # --- Classify / Regress -----------------------------------------------------------

    @staticmethod
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

    def _example_signature(self, servable: Servable, spec, method: str, api: str):
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        if signature_name not in servable.signature_defs:
            raise invalid_argument(f"No signature was found with the name: {signature_name}")
        signature = servable.signature_defs[signature_name]
        self._check_method(signature, (method,), api)
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

    def classify(self, request: classification_pb2.ClassificationRequest,
                 ) -> classification_pb2.ClassificationResponse:
        self._require_model_spec(request)
        with self.manager.servable(request.model_spec) as servable:
            return self._classify_on(servable, request)

    def _classify_on(self, servable, request) -> classification_pb2.ClassificationResponse:
        signature_name, signature = self._example_signature(
            servable, request.model_spec, CLASSIFY_METHOD, "classification")
        response = classification_pb2.ClassificationResponse(
            model_spec=self._response_spec(servable, signature_name))
        response.result.CopyFrom(self._classification_result(
            servable, signature_name, signature, self.serialized_examples(request.input)))
        return response

    @staticmethod
    def _check_classification_outputs(signature) -> None:
        if "classes" not in signature.outputs and "scores" not in signature.outputs:
            raise invalid_argument(
                'Expected classification signature outputs to contain at least one of '
                f'"classes" or "scores". Signature was: {signature}')

    def _classification_result(self, servable, signature_name, signature, examples,
                               ) -> classification_pb2.ClassificationResult:
        self._check_classification_outputs(signature)
        outputs = self._run(servable, signature_name, {"inputs": examples}, "Classify")
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

    def regress(self, request: regression_pb2.RegressionRequest,
                ) -> regression_pb2.RegressionResponse:
        self._require_model_spec(request)
        with self.manager.servable(request.model_spec) as servable:
            return self._regress_on(servable, request)

    def _regress_on(self, servable, request) -> regression_pb2.RegressionResponse:
        signature_name, signature = self._example_signature(
            servable, request.model_spec, REGRESS_METHOD, "regression")
        response = regression_pb2.RegressionResponse(
            model_spec=self._response_spec(servable, signature_name))
        response.result.CopyFrom(self._regression_result(
            servable, signature_name, signature, self.serialized_examples(request.input)))
        return response

    @staticmethod
    def _check_regression_outputs(signature) -> None:
        if "outputs" not in signature.outputs:
            raise invalid_argument(f"No regression outputs found in SignatureDef: {signature}")

    def _regression_result(self, servable, signature_name, signature, examples,
                           ) -> regression_pb2.RegressionResult:
        self._check_regression_outputs(signature)
        values = self._run(servable, signature_name, {"inputs": examples}, "Regress")["outputs"]
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

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest,
                        ) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress signatures of one model version on the same examples."""
        if not request.tasks:
            raise invalid_argument("MultiInferenceRequest must contain at least one task.")
        with self.manager.servable(request.tasks[0].model_spec) as servable:
            return self._multi_inference_on(servable, request)

    def _multi_inference_on(self, servable, request) -> inference_pb2.MultiInferenceResponse:
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
                self._check_classification_outputs(signature)
            elif task.method_name == REGRESS_METHOD:
                self._check_regression_outputs(signature)
            else:
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"Unsupported signature method_name: {task.method_name}")
            plan.append((task, signature_name, signature))
        examples = self.serialized_examples(request.input)
        response = inference_pb2.MultiInferenceResponse()
        for task, signature_name, signature in plan:
            result = response.results.add(
                model_spec=self._response_spec(servable, signature_name))
            if task.method_name == CLASSIFY_METHOD:
                result.classification_result.CopyFrom(self._classification_result(
                    servable, signature_name, signature, examples))
            else:
                result.regression_result.CopyFrom(self._regression_result(
                    servable, signature_name, signature, examples))
        return response

    # --- Metadata / status -----------------------------------------------------------------

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid_argument(f"Metadata field {field} is not supported")
        with self.manager.servable(request.model_spec) as servable:
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, signature in servable.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(signature)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
            return response

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest,
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        if not request.HasField("model_spec"):
            raise invalid_argument("Missing ModelSpec")
        return self.manager.model_status(request.model_spec)

    # --- Loading -----------------------------------------------------------------------------

    def prepare(self, servable: Servable, *, warmup: bool = True) -> None:
        """What a version goes through before AVAILABLE: its per-model batching parameters
        are checked (a bad file fails the load, as in TF Serving), then warmup runs.

        Raises:
          ServingError: the load must fail.
        """
        if self.batching is not None:
            self.batching_options(servable)
        if warmup:
            self.warmup(servable)


    def warmup(self, servable: Servable) -> None:
        """Replays assets.extra/tf_serving_warmup_requests before the version serves.

        Raises:
          ServingError: a record fails, cannot be parsed, or there are too many records.
        """
        path = os.path.join(servable.path, WARMUP_FILE)
        if not os.path.isfile(path):
            logging.info("No warmup data file found at %s", path)
            return
        import tensorflow as tf

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
                for _ in range(self.warmup_iterations):
                    self._warmup_record(servable, log)
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
            self.metrics.model_warmup_latency.observe(servable.path, status, value=latency)
            self.metrics.model_warmup_records_read.inc(servable.path, status, by=count)
        logging.info("Finished reading warmup data for model at %s. Number of warmup records "
                     "read: %d. Elapsed time (microseconds): %d.", path, count, latency)

    def _warmup_record(self, servable: Servable, log) -> None:
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            self._predict_proto(servable, log.predict_log.request)
        elif kind == "classify_log":
            self._classify_on(servable, log.classify_log.request)
        elif kind == "regress_log":
            self._regress_on(servable, log.regress_log.request)
        else:
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f"Unsupported log_type for warmup: {kind}")
