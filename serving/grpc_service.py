"""tensorflow.serving.PredictionService and ModelService over grpcio.

Like tensorflow_model_server, the server lifts gRPC's message size limits (clients still
need to raise their own), and takes extra channel arguments as --grpc_channel_arguments
("grpc.max_connection_age_ms=30000,...").
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

from serving.core import ServingCore, request_deadline
from serving.errors import ServingError, invalid_argument

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


class _Servicer:
    def __init__(self, core: ServingCore):
        self.core = core

    def _call(self, api: str, model_name: str, function, request, context):
        started = time.monotonic()
        try:
            with request_deadline(context.time_remaining()):
                response = function(request)
            code = grpc.StatusCode.OK
        except ServingError as error:
            code = error.code
            self.core.metrics.request_count.inc(model_name, code.name)
            context.abort(error.code, error.message)
        except Exception as error:  # Never let one request take the server down.
            failure = ServingError.from_exception(error)
            logging.exception("gRPC %s failed", api)
            self.core.metrics.request_count.inc(model_name, failure.code.name)
            context.abort(failure.code, failure.message)
        self.core.metrics.request_count.inc(model_name, code.name)
        self.core.metrics.request_latency.observe(model_name, api, "GRPC",
                                                  value=(time.monotonic() - started) * 1e6)
        return response


class PredictionServicer(_Servicer, prediction_service_pb2_grpc.PredictionServiceServicer):
    def Predict(self, request, context):
        return self._call("predict", request.model_spec.name, self.core.predict, request,
                          context)

    def Classify(self, request, context):
        return self._call("classify", request.model_spec.name, self.core.classify, request,
                          context)

    def Regress(self, request, context):
        return self._call("regress", request.model_spec.name, self.core.regress, request,
                          context)

    def GetModelMetadata(self, request, context):
        return self._call("GetModelMetadata", request.model_spec.name,
                          self.core.get_model_metadata, request, context)

    def MultiInference(self, request, context):
        name = request.tasks[0].model_spec.name if request.tasks else ""
        return self._call("MultiInference", name, self.core.multi_inference, request, context)


class ModelServicer(_Servicer, model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request, context):
        return self._call("GetModelStatus", request.model_spec.name,
                          self.core.get_model_status, request, context)

    def HandleReloadConfigRequest(self, request, context):
        """ModelServiceImpl::HandleReloadConfigRequest: only model_config_list configs."""
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise invalid_argument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. Only "
                    "ModelConfigList is currently supported")
            try:
                self.core.manager.reload_config(request.config)
            except ValueError as error:
                raise invalid_argument(str(error)) from None
        except ServingError as error:
            logging.error("ReloadConfig failed: %s", error.message)
            context.abort(error.code, error.message)
        response.status.SetInParent()  # OK.
        return response


def create_grpc_server(core: ServingCore, *, port: int, host: str = "0.0.0.0",
                       max_threads: int = 16, channel_arguments: str = "",
                       ) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) grpc.Server and its bound port."""
    options = [("grpc.max_receive_message_length", UNLIMITED),
               ("grpc.max_send_message_length", UNLIMITED),
               ("grpc.so_reuseport", 0)]
    options += parse_channel_arguments(channel_arguments)
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, max_threads), thread_name_prefix="grpc"), options=options)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)
    bound = server.add_insecure_port(f"{host}:{port}" if ":" not in host else f"[{host}]:{port}")
    if bound == 0:
        raise OSError(f"could not bind the gRPC port {host}:{port}")
    return server, bound
