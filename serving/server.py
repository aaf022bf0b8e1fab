"""The local TF-Serving-compatible model server: manager + gRPC + REST, one lifecycle.

    from serving import server
    options = server.ServerOptions(model_name="effnet", model_base_path="/models/effnet",
                                   port=8500, rest_api_port=8501).validated()
    srv = server.Server(options)
    srv.start()            # loads the models, then opens the ports (readiness)
    srv.wait()             # until stop() (SIGTERM/SIGINT in python -m serving)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading

from absl import logging

from serving import config as config_lib
from serving import tensors
from serving.core import ServingCore
from serving.grpc_service import create_grpc_server, parse_channel_arguments
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.rest import DEFAULT_MAX_BODY_BYTES, RestServer


@dataclasses.dataclass
class ServerOptions:
    """tensorflow_model_server's flags, same names and defaults (model_servers/main.cc)."""

    port: int = 8500
    rest_api_port: int = 0
    rest_api_timeout_in_ms: int = 30000
    rest_api_num_threads: int = 0  # 0: 4 x cores, as TF Serving.
    rest_api_enable_cors_support: bool = False
    grpc_max_threads: int = 0  # 0: 4 x cores.
    grpc_channel_arguments: str = ""
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    max_num_load_retries: int = 5
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    monitoring_config_file: str = ""
    allow_version_labels_for_unavailable_models: bool = False
    enable_signature_method_name_check: bool = False
    saved_model_tags: str = "serve"
    host: str = "0.0.0.0"  # Not a TF Serving flag: the listening address (tests: 127.0.0.1).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES  # Not a flag: REST body limit (413).
    # Not TF Serving flags (tensorflow_model_server has no such bounds): what one request's
    # input tensors may materialise, checked before allocation (tensors.RequestLimits;
    # 0 = no limit). The flags of python -m serving have the same names.
    max_request_batch_size: int = tensors.DEFAULT_MAX_REQUEST_BATCH_SIZE
    max_request_tensor_bytes: int = tensors.DEFAULT_MAX_REQUEST_TENSOR_BYTES

    def validated(self) -> ServerOptions:
        """Raises ValueError for the combinations tensorflow_model_server refuses."""
        # Server::BuildAndStart: the config file, when given, wins over model_base_path.
        if not self.model_config_file and not self.model_base_path:
            raise ValueError("Both server_options.model_base_path and "
                             "server_options.model_config_file are empty!")
        if self.port == 0:
            raise ValueError("At least one of server_options.grpc_port or "
                             "server_options.grpc_socket_path must be set.")
        if self.batching_parameters_file and not self.enable_batching:
            raise ValueError("server_options.batching_parameters_file is set without setting "
                             "server_options.enable_batching to true.")
        for name in ("port", "rest_api_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"--{name} out of range: {getattr(self, name)}")
        parse_channel_arguments(self.grpc_channel_arguments)
        self.request_limits()
        return self

    def request_limits(self) -> tensors.RequestLimits:
        """The per-request tensor bounds; ValueError if negative."""
        return tensors.RequestLimits(max_batch_size=self.max_request_batch_size,
                                     max_tensor_bytes=self.max_request_tensor_bytes)

    def model_server_config(self):
        if self.model_config_file:
            with open(self.model_config_file) as f:
                return config_lib.parse_model_server_config(f.read())
        return config_lib.single_model_config(self.model_name, self.model_base_path)


class Server:
    """Owns the manager, the gRPC server and the REST server."""

    def __init__(self, options: ServerOptions):
        self.options = options.validated()
        self.metrics = Metrics()
        batching = None
        if options.enable_batching:
            batching = config_lib.BatchingOptions.from_file(options.batching_parameters_file)
        self.prometheus_path = config_lib.read_prometheus_path(options.monitoring_config_file)
        self.core = ServingCore(
            metrics=self.metrics, batching=batching,
            enable_signature_method_name_check=options.enable_signature_method_name_check,
            num_request_iterations_for_warmup=options.num_request_iterations_for_warmup,
            enable_per_model_batching_parameters=options.enable_per_model_batching_parameters)
        self.manager = ModelManager(
            model_config=options.model_server_config(), metrics=self.metrics,
            file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            warmup=functools.partial(self.core.prepare, warmup=options.enable_model_warmup),
            allow_version_labels_for_unavailable_models=(
                options.allow_version_labels_for_unavailable_models),
            saved_model_tags=tuple(t for t in options.saved_model_tags.split(",") if t),
            model_config_file=options.model_config_file or None,
            model_config_file_poll_wait_seconds=options.model_config_file_poll_wait_seconds)
        self.core.attach(self.manager)
        self.grpc_server = None
        self.rest_server = None
        self.grpc_port = None
        self.rest_port = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        """Loads the initial models (raises if they cannot serve), then opens the ports."""
        self.manager.start(wait=True)
        threads = 4 * (os.cpu_count() or 1)
        self.grpc_server, self.grpc_port = create_grpc_server(
            self.core, port=self.options.port, host=self.options.host,
            max_threads=self.options.grpc_max_threads or threads,
            channel_arguments=self.options.grpc_channel_arguments,
            limits=self.options.request_limits())
        self.grpc_server.start()
        logging.info("Running gRPC ModelServer at %s:%d ...", self.options.host,
                     self.grpc_port)
        if not self.options.rest_api_port:  # 0 = no REST API, as tensorflow_model_server.
            return
        if self.options.rest_api_port == self.options.port:
            logging.error("server_options.http_port cannot be same as grpc_port. Please use "
                          "a different port for HTTP/REST API. Skipped exporting HTTP/REST "
                          "API.")
            return
        try:
            self._start_rest(self.options.rest_api_port, threads)
        except OSError as error:  # The real server logs this and serves gRPC only.
            logging.error("Failed to start HTTP Server at localhost:%d: %s",
                          self.options.rest_api_port, error)
            self.rest_server = None

    def _start_rest(self, port: int, threads: int) -> None:
        self.rest_server = RestServer(
            self.core, port=port, host=self.options.host,
            timeout_in_ms=self.options.rest_api_timeout_in_ms,
            num_threads=self.options.rest_api_num_threads or threads,
            prometheus_path=self.prometheus_path, metrics=self.metrics,
            max_body_bytes=self.options.max_body_bytes,
            limits=self.options.request_limits(),
            enable_cors_support=self.options.rest_api_enable_cors_support)
        self.rest_port = self.rest_server.start()
        logging.info("Exporting HTTP/REST API at:localhost:%d ...", self.rest_port)

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets requests in flight finish, unloads the models.

        Safe to call more than once and from several threads (signals may repeat): later
        calls wait for the first to finish.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stop(grace)
            self._stopped.set()

    def _stop(self, grace: float) -> None:
        logging.info("Shutting down the model server (grace %.0f s)", grace)
        if self.rest_server is not None:
            self.rest_server.stop_accepting()
        done = self.grpc_server.stop(grace) if self.grpc_server is not None else None
        if self.rest_server is not None:
            self.rest_server.stop(grace)
        if done is not None:
            done.wait(grace + 5)
        self.manager.stop()
