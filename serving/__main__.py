"""python -m serving: a local model server with tensorflow_model_server's flags and APIs.

For machines without Docker or the real binary. Same flags, config files, gRPC services,
REST URLs, JSON and status codes as TF Serving, so clients and tests work unchanged
against either.

    python -m serving --port=8500 --rest_api_port=8501 \
        --model_name=effnet --model_base_path="$PWD/models/effnet"

    python -m serving --port=8500 --rest_api_port=8501 \
        --model_config_file=serving/config/models.config \
        --model_config_file_poll_wait_seconds=60 \
        --enable_batching --batching_parameters_file=serving/config/batching_parameters_cpu.txt \
        --monitoring_config_file=serving/config/monitoring.config \
        --allow_version_labels_for_unavailable_models

SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.

Flags of this server only (tensorflow_model_server has none of them): --host,
--max_request_batch_size and --max_request_tensor_bytes (per-request bounds on input
tensors, refused with INVALID_ARGUMENT before allocation; 0 lifts them).
"""

from __future__ import annotations

import signal
import sys
import threading

from absl import app, flags, logging

from serving import tf_noise
from serving.config import ServerOptions

# Every ServerOptions field with a flag has one flag of its name taking the field's default
# (ServerOptions.flag_names()); main() builds the options from them. The help texts live here.
_DEFAULTS = ServerOptions()
_PORT = flags.DEFINE_integer(
    "port", _DEFAULTS.port,
    "Port to listen on for gRPC API")
_REST_API_PORT = flags.DEFINE_integer(
    "rest_api_port", _DEFAULTS.rest_api_port,
    "Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported.")
_REST_API_TIMEOUT_IN_MS = flags.DEFINE_integer(
    "rest_api_timeout_in_ms", _DEFAULTS.rest_api_timeout_in_ms,
    "Timeout for HTTP/REST API calls.")
_REST_API_NUM_THREADS = flags.DEFINE_integer(
    "rest_api_num_threads", _DEFAULTS.rest_api_num_threads,
    "Number of threads for HTTP/REST API processing (0: 4 x cores).")
_REST_API_ENABLE_CORS_SUPPORT = flags.DEFINE_bool(
    "rest_api_enable_cors_support", _DEFAULTS.rest_api_enable_cors_support,
    "Enable CORS headers in REST API responses.")
_GRPC_MAX_THREADS = flags.DEFINE_integer(
    "grpc_max_threads", _DEFAULTS.grpc_max_threads,
    "Max gRPC server threads (0: 4 x cores).")
_GRPC_CHANNEL_ARGUMENTS = flags.DEFINE_string(
    "grpc_channel_arguments", _DEFAULTS.grpc_channel_arguments,
    "Comma-separated gRPC channel arguments, e.g. grpc.max_connection_age_ms=2000")
_MODEL_NAME = flags.DEFINE_string(
    "model_name", _DEFAULTS.model_name,
    "name of model (ignored if --model_config_file flag is set)")
_MODEL_BASE_PATH = flags.DEFINE_string(
    "model_base_path", _DEFAULTS.model_base_path,
    "path to export (ignored if --model_config_file flag is set, otherwise required)")
_MODEL_CONFIG_FILE = flags.DEFINE_string(
    "model_config_file", _DEFAULTS.model_config_file,
    "If non-empty, read an ascii ModelServerConfig protobuf from the supplied file name, and "
    "serve the models in that file.")
_MODEL_CONFIG_FILE_POLL_WAIT_SECONDS = flags.DEFINE_integer(
    "model_config_file_poll_wait_seconds", _DEFAULTS.model_config_file_poll_wait_seconds,
    "Interval in seconds between each poll of the model config file (0: read once at start-up).")
_FILE_SYSTEM_POLL_WAIT_SECONDS = flags.DEFINE_integer(
    "file_system_poll_wait_seconds", _DEFAULTS.file_system_poll_wait_seconds,
    "Interval in seconds between each poll of the filesystem for new model versions (<= 0: poll "
    "once).")
_MAX_NUM_LOAD_RETRIES = flags.DEFINE_integer(
    "max_num_load_retries", _DEFAULTS.max_num_load_retries,
    "maximum number of times it retries loading a model after the first failure, before giving "
    "up (here: one retry per file system poll)")
_LOAD_RETRY_INTERVAL_MICROS = flags.DEFINE_integer(
    "load_retry_interval_micros", 60 * 1000 * 1000,
    "Accepted for compatibility; retries happen on the file system polls.")
_ENABLE_MODEL_WARMUP = flags.DEFINE_bool(
    "enable_model_warmup", _DEFAULTS.enable_model_warmup,
    "Enables model warmup, which triggers lazy initializations (such as TF optimizations) at "
    "load time, to reduce first request latency.")
_NUM_REQUEST_ITERATIONS_FOR_WARMUP = flags.DEFINE_integer(
    "num_request_iterations_for_warmup", _DEFAULTS.num_request_iterations_for_warmup,
    "Number of times a warmup request is replayed.")
_ENABLE_BATCHING = flags.DEFINE_bool(
    "enable_batching", _DEFAULTS.enable_batching,
    "enable batching")
_BATCHING_PARAMETERS_FILE = flags.DEFINE_string(
    "batching_parameters_file", _DEFAULTS.batching_parameters_file,
    "If non-empty, read an ascii BatchingParameters protobuf from the supplied file name and "
    "use the contained values instead of the defaults.")
_ENABLE_PER_MODEL_BATCHING_PARAMETERS = flags.DEFINE_bool(
    "enable_per_model_batching_parameters", _DEFAULTS.enable_per_model_batching_parameters,
    "Enables model specific batching params like batch sizes and timeouts to be read from "
    "batching_params.pbtxt in the version directory (with --enable_batching).")
_MONITORING_CONFIG_FILE = flags.DEFINE_string(
    "monitoring_config_file", _DEFAULTS.monitoring_config_file,
    "If non-empty, read an ascii MonitoringConfig protobuf from the supplied file name")
_ALLOW_VERSION_LABELS_FOR_UNAVAILABLE_MODELS = flags.DEFINE_bool(
    "allow_version_labels_for_unavailable_models",
    _DEFAULTS.allow_version_labels_for_unavailable_models,
    "If true, allows assigning unused version labels to models that are not available yet.")
_ENABLE_SIGNATURE_METHOD_NAME_CHECK = flags.DEFINE_bool(
    "enable_signature_method_name_check", _DEFAULTS.enable_signature_method_name_check,
    "Enable method_name check for SignatureDef.")
_SAVED_MODEL_TAGS = flags.DEFINE_string(
    "saved_model_tags", _DEFAULTS.saved_model_tags,
    "Comma-separated set of tags corresponding to the meta graph def to load from SavedModel.")
_TENSORFLOW_INTRA_OP_PARALLELISM = flags.DEFINE_integer(
    "tensorflow_intra_op_parallelism", 0,
    "Number of threads to use to parallelize the execution of an individual op (0: TensorFlow "
    "picks).")
_TENSORFLOW_INTER_OP_PARALLELISM = flags.DEFINE_integer(
    "tensorflow_inter_op_parallelism", 0,
    "Controls the number of operators that can be executed simultaneously (0: TensorFlow picks).")
_TENSORFLOW_SESSION_PARALLELISM = flags.DEFINE_integer(
    "tensorflow_session_parallelism", 0,
    "Sets both intra and inter op parallelism when those flags are 0.")
_PER_PROCESS_GPU_MEMORY_FRACTION = flags.DEFINE_float(
    "per_process_gpu_memory_fraction", 0,
    "Fraction of GPU memory each process may use (accepted; this server runs on CPU).")
_ENABLE_GRPC_HEALTHCHECK_SERVICE = flags.DEFINE_bool(
    "enable_grpc_healthcheck_service", False,
    "Accepted; not implemented by this server.")
_HOST = flags.DEFINE_string(
    "host", _DEFAULTS.host,
    "Address to listen on (not a TF Serving flag).")
_MAX_REQUEST_BATCH_SIZE = flags.DEFINE_integer(
    "max_request_batch_size", _DEFAULTS.max_request_batch_size,
    "Largest dimension 0 of a request's input tensors (and number of examples); larger requests "
    "fail with INVALID_ARGUMENT before anything is allocated. 0: no limit. Not a TF Serving "
    "flag (tensorflow_model_server has no bound).")
_MAX_REQUEST_TENSOR_BYTES = flags.DEFINE_integer(
    "max_request_tensor_bytes", _DEFAULTS.max_request_tensor_bytes,
    "Largest total size in bytes of a request's input tensors, counted from the shapes they "
    "declare (strings: their bytes + 24 each); larger requests fail with INVALID_ARGUMENT "
    "before anything is allocated. 0: no limit. Not a TF Serving flag (tensorflow_model_server "
    "has no bound).")


def apply_tensorflow_threads(*, intra_op: int, inter_op: int) -> None:
    """Sets TensorFlow's thread pools; must run before TensorFlow executes anything."""
    import tensorflow as tf

    try:
        if intra_op > 0:
            tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        if inter_op > 0:
            tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError as error:  # TensorFlow already initialised.
        logging.warning("Could not set TensorFlow thread pools: %s", error)


def main(argv) -> int:
    del argv
    from serving import server as server_lib

    session = _TENSORFLOW_SESSION_PARALLELISM.value
    apply_tensorflow_threads(intra_op=_TENSORFLOW_INTRA_OP_PARALLELISM.value or session,
                             inter_op=_TENSORFLOW_INTER_OP_PARALLELISM.value or session)
    try:
        options = ServerOptions(**{name: flags.FLAGS[name].value
                                   for name in ServerOptions.flag_names()}).validated()
        server = server_lib.Server(options)
        server.start()
    except Exception as error:  # Bad flags/configs, models that cannot load, busy ports.
        logging.error("%s", error)
        return 1

    def on_signal(signum, frame):
        del frame
        logging.info("Received signal %d, shutting down", signum)
        threading.Thread(target=server.stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not server.wait(timeout=1.0):
        pass
    return 0


def run() -> None:
    tf_noise.install()  # Before anything imports TensorFlow.
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
