"""The server's options (ServerOptions) and text-proto configuration files, the latter parsed
as strictly as TF Serving parses them.

ServerOptions is the one declaration of every option of the local server: python -m serving
defines its flags from its fields (names, defaults) and builds it from them. This module
imports neither TensorFlow nor the server, so the entry point can define its flags before
TensorFlow is loaded.

ModelServerConfig (--model_config_file) comes from tensorflow-serving-api. BatchingParameters
(--batching_parameters_file, session_bundle_config.proto) and MonitoringConfig
(--monitoring_config_file, monitoring_config.proto) are not shipped by that package, so they
are built here as descriptors with the same package, names and field numbers: text_format
then rejects unknown fields, unwrapped values and wrong types exactly like the server.

    params = parse_batching_parameters(open("serving/config/batching_parameters.txt").read())
    problems = batching_errors(params)
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import TYPE_CHECKING

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

if TYPE_CHECKING:
    from serving.tensors import RequestLimits

_F = descriptor_pb2.FieldDescriptorProto
_INT64_VALUE = ".google.protobuf.Int64Value"

# Field names and numbers of tensorflow_serving/servables/tensorflow/session_bundle_config.proto.
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _F.TYPE_MESSAGE, _INT64_VALUE),
    ("batch_timeout_micros", 2, _F.TYPE_MESSAGE, _INT64_VALUE),
    ("max_enqueued_batches", 3, _F.TYPE_MESSAGE, _INT64_VALUE),
    ("num_batch_threads", 4, _F.TYPE_MESSAGE, _INT64_VALUE),
    ("thread_pool_name", 5, _F.TYPE_MESSAGE, ".google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, _F.TYPE_INT64, None),
    ("pad_variable_length_inputs", 7, _F.TYPE_BOOL, None),
    ("enable_large_batch_splitting", 8, _F.TYPE_MESSAGE, ".google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, _F.TYPE_MESSAGE, _INT64_VALUE),
)

# BasicBatchScheduler::Options defaults, used for fields a file leaves unset.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath

# Not TF Serving options (tensorflow_model_server has no such bounds): what one request's
# input tensors may materialise, checked before allocation (tensors.RequestLimits; 0 = no
# limit), and the largest REST body (413 beyond).
DEFAULT_MAX_REQUEST_BATCH_SIZE = 1024
DEFAULT_MAX_REQUEST_TENSOR_BYTES = 1 << 30  # 64 12-MP JPEGs (~5 MB each) fit 3 times over.
DEFAULT_MAX_BODY_BYTES = 256 * 1024 * 1024
LABEL_PATTERN = re.compile(r"[a-zA-Z0-9_]+")


@functools.cache
def _serving_protos() -> descriptor_pool.DescriptorPool:
    # A private pool: nothing clashes if a later tensorflow-serving-api ships these.
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    fdp = descriptor_pb2.FileDescriptorProto(
        name="serving/serving_protos.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    batching = fdp.message_type.add(name="BatchingParameters")
    for name, number, type_, type_name in _BATCHING_FIELDS:
        field = batching.field.add(
            name=name, number=number, type=type_,
            label=_F.LABEL_REPEATED if name == "allowed_batch_sizes" else _F.LABEL_OPTIONAL)
        if type_name:
            field.type_name = type_name
    prometheus = fdp.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=_F.TYPE_BOOL, label=_F.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    monitoring = fdp.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=_F.TYPE_MESSAGE,
                         label=_F.LABEL_OPTIONAL, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(fdp)
    return pool


def new_message(name: str):
    """An empty tensorflow.serving.<name> message (BatchingParameters, MonitoringConfig...)."""
    return message_factory.GetMessageClass(
        _serving_protos().FindMessageTypeByName(f"tensorflow.serving.{name}"))()


def parse_batching_parameters(text: str):
    """BatchingParameters text proto -> message. Raises text_format.ParseError."""
    return text_format.Parse(text, new_message("BatchingParameters"))


def parse_monitoring_config(text: str):
    """MonitoringConfig text proto -> message. Raises text_format.ParseError."""
    return text_format.Parse(text, new_message("MonitoringConfig"))


def parse_model_server_config(text: str) -> model_server_config_pb2.ModelServerConfig:
    """ModelServerConfig text proto -> message. Raises text_format.ParseError."""
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


def batching_errors(params) -> list[str]:
    """The rules the server enforces on BatchingParameters, as messages (empty: valid)."""
    errors = []
    for name in ("max_batch_size", "num_batch_threads", "max_enqueued_batches"):
        if params.HasField(name) and getattr(params, name).value < 1:
            errors.append(f"{name} must be positive, got {getattr(params, name).value}")
    if params.HasField("batch_timeout_micros") and params.batch_timeout_micros.value < 0:
        errors.append("batch_timeout_micros must not be negative")
    max_batch = (params.max_batch_size.value if params.HasField("max_batch_size")
                 else DEFAULT_MAX_BATCH_SIZE)
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        if any(b <= a for a, b in zip(sizes, sizes[1:])) or sizes[0] < 1:
            errors.append(f"allowed_batch_sizes must be positive and increasing: {sizes}")
        if sizes[-1] != max_batch:
            errors.append(f"last allowed_batch_sizes entry {sizes[-1]} != max_batch_size "
                          f"{max_batch} (the server refuses to load the model)")
    return errors


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """Resolved BatchingParameters (unset fields take BasicBatchScheduler's defaults)."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, params) -> BatchingOptions:
        """Raises ValueError when the server would refuse the parameters."""
        problems = batching_errors(params)
        if problems:
            raise ValueError("invalid batching parameters: " + "; ".join(problems))
        kwargs = {}
        for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches",
                     "num_batch_threads"):
            if params.HasField(name):
                kwargs[name] = int(getattr(params, name).value)
        return cls(allowed_batch_sizes=tuple(int(s) for s in params.allowed_batch_sizes),
                   **kwargs)

    @classmethod
    def from_file(cls, path: str | None) -> BatchingOptions:
        if not path:
            return cls()
        with open(path) as f:
            return cls.from_proto(parse_batching_parameters(f.read()))


def read_prometheus_path(path: str | None) -> str | None:
    """--monitoring_config_file -> the Prometheus URL path, or None when disabled."""
    if not path:
        return None
    with open(path) as f:
        config = parse_monitoring_config(f.read())
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def single_model_config(name: str, base_path: str) -> model_server_config_pb2.ModelServerConfig:
    """What --model_name/--model_base_path mean: one model, latest version served."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(name=name, base_path=base_path,
                                                model_platform="tensorflow")
    model.model_version_policy.latest.num_versions = 1
    return config


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """Raises ValueError for a config TF Serving refuses (duplicate names, bad labels...)."""
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError("only model_config_list is supported in the model config file")
    seen = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ValueError("every model config needs a name")
        if model.name in seen:
            raise ValueError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not model.base_path:
            raise ValueError(f"model {model.name} has no base_path")
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(f"model {model.name}: platform {model.model_platform!r} is not "
                             "supported (only tensorflow)")
        for label in model.version_labels:
            if not LABEL_PATTERN.fullmatch(label):
                raise ValueError(f"Invalid label: {label}. Labels must match "
                                 f"{LABEL_PATTERN.pattern}")


# Metadata of the ServerOptions fields python -m serving has no flag for (library use only).
_NO_FLAG = {"flag": False}


@dataclasses.dataclass
class ServerOptions:
    """tensorflow_model_server's flags, same names and defaults (model_servers/main.cc).

    python -m serving defines one flag per field, with the field's name and default, except
    the fields marked _NO_FLAG; flag_names() lists the others.
    """

    port: int = 8500
    rest_api_port: int = 0  # 0: no REST API, as tensorflow_model_server.
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
    # Not TF Serving flags: per-request tensor bounds (see DEFAULT_MAX_REQUEST_BATCH_SIZE).
    max_request_batch_size: int = DEFAULT_MAX_REQUEST_BATCH_SIZE
    max_request_tensor_bytes: int = DEFAULT_MAX_REQUEST_TENSOR_BYTES
    # Not flags. max_body_bytes: the REST body limit (413).
    max_body_bytes: int = dataclasses.field(default=DEFAULT_MAX_BODY_BYTES, metadata=_NO_FLAG)
    # ephemeral_ports: bind gRPC and REST to free ports the OS picks (port and rest_api_port
    # are ignored; read Server.grpc_port and Server.rest_port after start()). For test
    # harnesses: no free_port() race. Not a flag, because tensorflow_model_server gives 0 other
    # meanings: --port=0 disables gRPC over TCP (refused without --grpc_socket_path,
    # tensorflow_serving/model_servers/server.cc:183-187) and --rest_api_port=0 disables REST
    # (main.cc:95-98, server.cc:437).
    ephemeral_ports: bool = dataclasses.field(default=False, metadata=_NO_FLAG)

    @classmethod
    def flag_names(cls) -> tuple[str, ...]:
        """The fields python -m serving has a flag for, named as the field."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("flag", True))

    def validated(self) -> ServerOptions:
        """Raises ValueError for the combinations tensorflow_model_server refuses."""
        from serving.grpc_service import parse_channel_arguments  # Loads TensorFlow.

        # Server::BuildAndStart: the config file, when given, wins over model_base_path.
        if not self.model_config_file and not self.model_base_path:
            raise ValueError("Both server_options.model_base_path and "
                             "server_options.model_config_file are empty!")
        if self.port == 0 and not self.ephemeral_ports:  # server.cc:183-187
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

    def request_limits(self) -> RequestLimits:
        """The per-request tensor bounds; ValueError if negative."""
        from serving import tensors  # Loads TensorFlow.

        return tensors.RequestLimits(max_batch_size=self.max_request_batch_size,
                                     max_tensor_bytes=self.max_request_tensor_bytes)

    def model_server_config(self) -> model_server_config_pb2.ModelServerConfig:
        if self.model_config_file:
            with open(self.model_config_file) as f:
                return parse_model_server_config(f.read())
        return single_model_config(self.model_name, self.model_base_path)
