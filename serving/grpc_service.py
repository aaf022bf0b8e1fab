"""tensorflow.serving.PredictionService and ModelService over grpcio.

Like tensorflow_model_server, the server lifts gRPC's message size limits (clients still
need to raise their own), and takes extra channel arguments as --grpc_channel_arguments
("grpc.max_connection_age_ms=30000,...").

Each call's input tensors are bounded by the server's tensors.RequestLimits (a local-server
addition), and error details are cut to errors.MAX_MESSAGE_CHARS: they echo client input
(a 256 KiB model name), and grpcio clients fail a call whose trailing metadata passes
16 KiB with RESOURCE_EXHAUSTED "received metadata size exceeds hard limit".
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
from absl import logging
from tensorflow_serving.apis import (
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from serving import tensors
from serving.data_plane import DataPlane
from serving.deadlines import request_deadline
from serving.errors import ServingError, bounded, invalid_argument

UNLIMITED = -1
INT32_MAX = 2 ** 31 - 1


def parse_channel_arguments(text: str) -> list[tuple[str, object]]:
    """--grpc_channel_arguments: comma-separated key=value, integers where they parse."""
    options = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            options.append((key.strip(), int(value)))
        except ValueError:
            options.append((key.strip(), value.strip()))
    return options


def example_count(request_input) -> int:
    """The examples of a Classify/Regress/MultiInference Input (its batch size)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list_with_context":
        return len(request_input.example_list_with_context.examples)
    return len(request_input.example_list.examples) if kind == "example_list" else 0


class _Servicer:
    def __init__(self, data_plane: DataPlane, limits: tensors.RequestLimits | None = None):
        self.data_plane = data_plane
        self.limits = limits

    def _call(self, api: str | None, model_name: str, function, request, context, *,
              examples=None):
        """Runs function(request) as one call.

        Args:
          api: the request metrics' API label; None for the calls TF Serving does not
            count (see serving/metrics.py).
          examples: the request's Input, whose examples are its batch.
        """
        started = time.monotonic()
        try:
            with request_deadline(context.time_remaining()), \
                    tensors.request_limits(self.limits):
                if examples is not None:
                    tensors.check_batch("examples", example_count(examples))
                response = function(request)
        except Exception as error:  # Never let one request take the server down.
            failure = ServingError.from_exception(error)
            if not isinstance(error, ServingError):
                logging.exception("gRPC %s failed", function.__name__)
            self._record(api, model_name, failure.code.name, started)
            context.abort(failure.code, bounded(failure.message))
        self._record(api, model_name, "OK", started)
        return response

    def _record(self, api: str | None, model_name: str, status: str, started: float) -> None:
        if api is not None:
            self.data_plane.metrics.record_request(
                model_name, status, api=api, entrypoint="GRPC",
                latency_us=(time.monotonic() - started) * 1e6)


class PredictionServicer(_Servicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    # API labels as prediction_service_impl.cc:53, 92, 120 record them.
    def Predict(self, request, context):
        return self._call("Predict", request.model_spec.name, self.data_plane.predict, request,
                          context)

    def Classify(self, request, context):
        return self._call("Classify", request.model_spec.name, self.data_plane.classify, request,
                          context, examples=request.input)

    def Regress(self, request, context):
        return self._call("Regress", request.model_spec.name, self.data_plane.regress, request,
                          context, examples=request.input)

    def GetModelMetadata(self, request, context):
        return self._call(None, request.model_spec.name, self.data_plane.get_model_metadata,
                          request, context)

    def MultiInference(self, request, context):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        return self._call(None, name, self.data_plane.multi_inference, request, context,
                          examples=request.input)


class ModelServicer(_Servicer, model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request, context):
        return self._call(None, request.model_spec.name, self.data_plane.get_model_status,
                          request, context)

    def HandleReloadConfigRequest(self, request, context):
        """ModelServiceImpl::HandleReloadConfigRequest: only model_config_list configs."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported")
            try:
                self.data_plane.manager.reload_config(request.config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
        except ServingError as error:
            logging.error("ReloadConfig failed: %s", error.message)
            context.abort(error.code, bounded(error.message))
        response.status.SetInParent()  # OK.
        return response


def create_grpc_server(data_plane: DataPlane, *, port: int, host: str = "0.0.0.0",
                       max_threads: int = 16, channel_arguments: str = "",
                       limits: tensors.RequestLimits | None = None,
                       ) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) grpc.Server and its bound port; limits bound each
    call's input tensors (None: no bound, as TF Serving)."""
    options = [("grpc.max_receive_message_length", UNLIMITED),
               ("grpc.max_send_message_length", UNLIMITED),
               ("grpc.so_reuseport", 0)]
    options += parse_channel_arguments(channel_arguments)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, max_threads), thread_name_prefix="grpc"), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(data_plane, limits), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(data_plane, limits), server)
    bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {host}:{port}")
    return server, bound
