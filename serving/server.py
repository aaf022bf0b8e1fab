"""The local TF-Serving-compatible model server: manager + gRPC + REST, one lifecycle.

    from serving import server
    options = server.ServerOptions(model_name="effnet", model_base_path="/models/effnet",
                                   port=8500, rest_api_port=8501).validated()
    srv = server.Server(options)
    srv.start()            # loads the models, then opens the ports (readiness)
    srv.wait()             # until stop() (SIGTERM/SIGINT in python -m serving)

    # Test harnesses: ports the OS picks, no free_port() race; srv.grpc_port and
    # srv.rest_port are the bound ports once start() returns.
    srv = server.Server(server.ServerOptions(model_base_path="/models/effnet",
                                             host="127.0.0.1", ephemeral_ports=True))
"""

from __future__ import annotations

import functools
import os
import threading

from absl import logging

from serving import config as config_lib
from serving.config import ServerOptions
from serving.data_plane import DataPlane
from serving.grpc_service import create_grpc_server
from serving.loading import prepare_version
from serving.manager import ModelManager
from serving.metrics import Metrics
from serving.rest import RestServer

__all__ = ["Server", "ServerOptions"]  # ServerOptions lives in serving.config (no TensorFlow).


class Server:
    """Owns the manager, the gRPC server and the REST server."""

    def __init__(self, options: ServerOptions):
        self.options = options.validated()
        self.metrics = Metrics()
        batching = None
        if options.enable_batching:
            batching = config_lib.BatchingOptions.from_file(options.batching_parameters_file)
        self.prometheus_path = config_lib.read_prometheus_path(options.monitoring_config_file)
        self.data_plane = DataPlane(
            metrics=self.metrics,
            enable_signature_method_name_check=options.enable_signature_method_name_check)
        prepare = functools.partial(
            prepare_version, metrics=self.metrics, batching=batching,
            per_model_batching=options.enable_per_model_batching_parameters,
            warmup=options.enable_model_warmup,
            warmup_iterations=options.num_request_iterations_for_warmup,
            check_method=options.enable_signature_method_name_check)
        self.manager = ModelManager(
            model_config=options.model_server_config(), metrics=self.metrics,
            file_system_poll_wait_seconds=options.file_system_poll_wait_seconds,
            max_num_load_retries=options.max_num_load_retries,
            prepare=prepare,
            allow_version_labels_for_unavailable_models=(
                options.allow_version_labels_for_unavailable_models),
            saved_model_tags=tuple(t for t in options.saved_model_tags.split(",") if t),
            model_config_file=options.model_config_file or None,
            model_config_file_poll_wait_seconds=options.model_config_file_poll_wait_seconds)
        self.data_plane.attach(self.manager)
        self.grpc_server = None
        self.rest_server = None
        self.grpc_port = None
        self.rest_port = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        """Loads the initial models (raises if they cannot serve), then opens the ports.

        The bound ports are in grpc_port and rest_port afterwards (rest_port stays None
        without a REST API): with options.ephemeral_ports, the ports the OS picked.
        """
        self.manager.start(wait=True)
        threads = 4 * (os.cpu_count() or 1)
        ephemeral = self.options.ephemeral_ports
        self.grpc_server, self.grpc_port = create_grpc_server(
            self.data_plane, port=0 if ephemeral else self.options.port, host=self.options.host,
            max_threads=self.options.grpc_max_threads or threads,
            channel_arguments=self.options.grpc_channel_arguments,
            limits=self.options.request_limits())
        self.grpc_server.start()
        logging.info("Running gRPC ModelServer at %s:%d ...", self.options.host,
                     self.grpc_port)
        if ephemeral:
            self._start_rest(0, threads)
            return
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
            self.data_plane, port=port, host=self.options.host,
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
