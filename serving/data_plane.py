"""The data plane both front ends call (gRPC in grpc_service.py, REST in rest.py): each API
resolves its ModelSpec to a version held for the call, then runs the API's own module on it.

Like kserve's protocol/dataplane.py over TF Serving's API implementations (predict_impl.cc,
classification_service.cc, regression_service.cc, multi_inference_helper.cc,
get_model_metadata_impl.cc, get_model_status_impl.cc). Every failure is a ServingError
with the code TF Serving returns.

    data_plane = DataPlane(manager)
    response = data_plane.predict(predict_pb2.PredictRequest(...))
"""

from __future__ import annotations

import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
)

from serving import inference, metadata, predict
from serving.errors import invalid_argument
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.signatures import require_model_spec


class DataPlane:
    """TF Serving's PredictionService and ModelService status APIs over a ModelManager."""

    def __init__(self, manager: ModelManager | None = None, *, metrics: Metrics | None = None,
                 enable_signature_method_name_check: bool = False):
        """Args:
          manager: serves the versions (may be attached later with attach()).
          metrics: runtime latency is recorded here.
          enable_signature_method_name_check: reject signatures whose method_name does not
            fit the API (off by default, as in tensorflow_model_server: TF2 SavedModels
            write tensorflow/serving/predict for every signature).
        """
        self.manager = manager
        self.metrics = metrics or (manager.metrics if manager else Metrics())
        self.check_method = enable_signature_method_name_check

    def attach(self, manager: ModelManager) -> None:
        self.manager = manager

    def _on_version(self, request, run):
        """run(version, request, ...) on the version the request's ModelSpec names."""
        require_model_spec(request)
        with self.manager.servable(request.model_spec) as servable:
            return run(servable, request, metrics=self.metrics, check_method=self.check_method)

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self._on_version(request, predict.run_predict)

    def predict_json(self, spec: model_pb2.ModelSpec, build_inputs: predict.InputsBuilder,
                     ) -> dict[str, np.ndarray]:
        """REST predict: build_inputs(signature_def) turns the JSON body into arrays."""
        with self.manager.servable(spec) as servable:
            return predict.run_predict_json(servable, spec, build_inputs,
                                            metrics=self.metrics,
                                            check_method=self.check_method)

    def classify(self, request: classification_pb2.ClassificationRequest,
                 ) -> classification_pb2.ClassificationResponse:
        return self._on_version(request, inference.run_classify)

    def regress(self, request: regression_pb2.RegressionRequest,
                ) -> regression_pb2.RegressionResponse:
        return self._on_version(request, inference.run_regress)

    def multi_inference(self, request: inference_pb2.MultiInferenceRequest,
                        ) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress signatures of one model version on the same examples."""
        if not request.tasks:
            raise invalid_argument("MultiInferenceRequest must contain at least one task.")
        with self.manager.servable(request.tasks[0].model_spec) as servable:
            return inference.run_multi_inference(servable, request, metrics=self.metrics)

    def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest,
                           ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        return metadata.get_model_metadata(self.manager, request)

    def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest,
                         ) -> get_model_status_pb2.GetModelStatusResponse:
        return metadata.get_model_status(self.manager, request)
