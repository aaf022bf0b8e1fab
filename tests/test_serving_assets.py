"""Checks of the real-TF-Serving assets in serving/: config protos, Dockerfiles, compose.

No Docker and no network: the configs are parsed with the protobuf schemas TF Serving
itself reads them with, and the rules the server enforces at load time are checked here.
The Dockerfiles are read as text and held to what the server and the images need. The
health check script runs against a local stand-in HTTP server.

    python -m pytest tests/test_serving_assets.py -q
"""

from __future__ import annotations

import configparser
import dataclasses
import json
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest
import support
from google.protobuf import text_format
from support import http_stub
from tensorflow_serving.config import model_server_config_pb2

from serving import config as serving_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SERVING = REPO / "serving"
CONFIG = SERVING / "config"
DOCKER = SERVING / "docker"
GPU_DOCKERFILE = DOCKER / "Dockerfile"
CPU_DOCKERFILE = DOCKER / "Dockerfile.cpu"
COMPOSE = SERVING / "docker-compose.yml"
HEALTHCHECK = DOCKER / "healthcheck.sh"
MODEL_NAME = "effnet"
SERVER_BINARY = "/usr/bin/tensorflow_model_server"  # Where the official images put it.

# Every flag tensorflow_model_server accepts (tensorflow_serving/model_servers/main.cc).
# An unknown flag stops the server at start-up, so the images may use only these.
SERVER_FLAGS = frozenset("""
    allow_version_labels_for_unavailable_models batching_parameters_file enable_batching
    enable_grpc_healthcheck_service enable_model_warmup enable_per_model_batching_parameters
    enable_profiler enable_serialization_as_tensor_content enable_signature_method_name_check
    file_system_poll_wait_seconds flush_filesystem_caches grpc_channel_arguments
    grpc_max_threads grpc_socket_path load_retry_interval_micros max_num_load_retries
    mixed_precision model_base_path model_config_file model_config_file_poll_wait_seconds
    model_name monitoring_config_file num_load_threads num_request_iterations_for_warmup
    num_tflite_interpreters_per_pool num_tflite_pools num_unload_threads
    per_process_gpu_memory_fraction platform_config_file port prefer_tflite_model
    remove_unused_fields_from_bundle_metagraph rest_api_enable_cors_support
    rest_api_num_threads rest_api_port rest_api_timeout_in_ms saved_model_tags
    skip_initialize_tpu ssl_config_file tensorflow_inter_op_parallelism
    tensorflow_intra_op_parallelism tensorflow_session_config_file
    tensorflow_session_parallelism thread_pool_factory_config_file use_alts_credentials
    version xla_cpu_compilation_enabled xla_gpu_compilation_enabled
""".split())


# --- The pinned TensorFlow -------------------------------------------------------------

def _pinned_tensorflow_minor() -> tuple[int, int]:
    """(major, minor) of `tensorflow>=X.Y,<X.Y+1` in setup.cfg's install_requires."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    for line in cfg["options"]["install_requires"].splitlines():
        if re.match(r"tensorflow\s*[<>=!~]", line.strip()):
            low = re.search(r">=\s*(\d+)\.(\d+)", line)
            high = re.search(r"<\s*(\d+)\.(\d+)", line)
            assert low and high, f"tensorflow is not pinned to one minor in setup.cfg: {line}"
            major, minor = int(low[1]), int(low[2])
            assert (int(high[1]), int(high[2])) == (major, minor + 1), (
                f"tensorflow must be pinned to one minor (the image tag follows it): {line}")
            return major, minor
    raise AssertionError("no tensorflow requirement in setup.cfg install_requires")


# --- Protos the pip package does not ship ---------------------------------------------
# BatchingParameters and MonitoringConfig are parsed with the local server's runtime
# parser (serving/config.py builds them as descriptors: unknown fields, unwrapped values,
# wrong types and repeated singular fields all fail, as in TF Serving).


def _message(name: str):
    return serving_config.new_message(name)


def _parse_batching(text: str):
    return serving_config.parse_batching_parameters(text)


def _batching_errors(params) -> list[str]:
    """What would stop the model from loading, or make the file meaningless, as messages.

    The server's own rules come from serving.config; on top, the images set every limit
    explicitly and leave large-batch splitting off.
    """
    errors = []
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
                 "max_enqueued_batches"):
        if not params.HasField(name):
            errors.append(f"{name} is not set")
    if errors:
        return errors
    errors += serving_config.batching_errors(params)
    if params.HasField("enable_large_batch_splitting"):
        errors.append("enable_large_batch_splitting: not used by these images; its limits "
                      "differ (max_execution_batch_size), review them before enabling")
    return errors


def _load_batching(name: str):
    return _parse_batching((CONFIG / name).read_text())


def _load_models_config():
    return text_format.Parse((CONFIG / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())


# --- Dockerfiles ------------------------------------------------------------------------

@dataclasses.dataclass
class Dockerfile:
    path: pathlib.Path
    instructions: list[tuple[str, str]]  # (KEYWORD, arguments), continuations joined

    @classmethod
    def read(cls, path: pathlib.Path) -> Dockerfile:
        logical, current = [], ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue  # Comments and blank lines, also inside continuations.
            if line.endswith("\\"):
                current += line[:-1] + " "
                continue
            logical.append(current + line)
            current = ""
        assert not current, f"{path}: dangling line continuation"
        instructions = []
        for line in logical:
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        return cls(path, instructions)

    def all(self, keyword: str) -> list[str]:
        return [rest for kw, rest in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"{self.path.name}: expected one {keyword}, found {found}"
        return found[0]

    @property
    def arg_defaults(self) -> dict[str, str]:
        args = {}
        for rest in self.all("ARG"):
            name, sep, default = rest.partition("=")
            if sep:
                args[name.strip()] = default.strip()
        return args

    def expand(self, text: str) -> str:
        """Substitutes ARG defaults for ${NAME} and $NAME."""
        args = self.arg_defaults

        def value(match: re.Match) -> str:
            name = match[1] or match[2]
            assert name in args, f"{self.path.name}: ${name} has no ARG default"
            return args[name]
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)

    @property
    def base_image(self) -> str:
        return self.expand(self.one("FROM").split()[0])

    @property
    def env(self) -> dict[str, str]:
        env = {}
        for rest in self.all("ENV"):
            for item in shlex.split(rest):
                name, sep, val = item.partition("=")
                assert sep, f"{self.path.name}: use ENV NAME=value, got {item!r}"
                env[name] = val
        return env

    @property
    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of every COPY, ARG defaults substituted."""
        result = []
        for rest in self.all("COPY"):
            words = [w for w in self.expand(rest).split() if not w.startswith("--")]
            result.append((words[:-1], words[-1]))
        return result

    def copied_to(self, target: str) -> str:
        """The build-context source that lands at target (a file or a directory)."""
        for sources, dest in self.copies:
            for source in sources:
                landed = dest + pathlib.PurePosixPath(source).name if dest.endswith("/") else dest
                if landed.rstrip("/") == target.rstrip("/"):
                    return source
        raise AssertionError(f"{self.path.name}: nothing is copied to {target}")

    @property
    def entrypoint(self) -> list[str]:
        entrypoint = json.loads(self.one("ENTRYPOINT"))  # Exec form: signals reach the server.
        assert isinstance(entrypoint, list), f"{self.path.name}: ENTRYPOINT must be exec form"
        return entrypoint

    @property
    def server_flags(self) -> dict[str, str]:
        entrypoint = self.entrypoint
        assert entrypoint[0] == SERVER_BINARY, entrypoint[0]
        flags = {}
        for arg in entrypoint[1:]:
            match = re.fullmatch(r"--(\w+)(?:=(.*))?", arg)
            assert match, f"{self.path.name}: not a --flag[=value]: {arg!r}"
            assert match[1] not in flags, f"{self.path.name}: --{match[1]} given twice"
            flags[match[1]] = "true" if match[2] is None else match[2]
        return flags


DOCKERFILES = {"gpu": GPU_DOCKERFILE, "cpu": CPU_DOCKERFILE}
BATCHING_FILES = {"gpu": "batching_parameters.txt", "cpu": "batching_parameters_cpu.txt"}


@pytest.fixture(params=sorted(DOCKERFILES), ids=lambda v: v)
def variant(request) -> str:
    return request.param


def _dockerfile(variant: str) -> Dockerfile:
    return Dockerfile.read(DOCKERFILES[variant])


# --- models.config ------------------------------------------------------------------------

def test_models_config_serves_effnet_with_labels_on_served_versions():
    config = _load_models_config()
    models = config.model_config_list.config
    assert [m.name for m in models] == [MODEL_NAME]
    model = models[0]
    assert model.base_path == f"/models/{MODEL_NAME}"
    assert model.model_platform == "tensorflow"
    # `specific`: a newly exported version takes no traffic until the config names it.
    assert model.model_version_policy.WhichOneof("policy_choice") == "specific"
    served = set(model.model_version_policy.specific.versions)
    assert served and all(v > 0 for v in served)
    labels = dict(model.version_labels)
    assert {"stable", "canary"} <= set(labels)
    for label, version in labels.items():
        assert re.fullmatch(r"[a-zA-Z0-9_]+", label), label
        # A label can only point at a version the server has loaded.
        assert version in served, f"label {label!r} -> {version}, but only {served} are served"


def test_models_config_base_path_is_where_the_images_put_the_model(variant):
    base_path = _load_models_config().model_config_list.config[0].base_path
    source = _dockerfile(variant).copied_to(base_path)
    assert source == f"models/{MODEL_NAME}", source


def test_labelled_config_starts_only_with_the_label_flag(variant):
    # ServerCore::ReloadConfig checks labels before it loads any version, so at start-up a
    # config with labels is refused unless this flag is set (serving issues 1413, 1608).
    if _load_models_config().model_config_list.config[0].version_labels:
        flags = _dockerfile(variant).server_flags
        assert flags.get("allow_version_labels_for_unavailable_models") == "true"


# --- monitoring.config ------------------------------------------------------------------

def _monitoring_config_message():
    try:  # The real one, if a tensorflow-serving-api release ships it.
        from tensorflow_serving.config import monitoring_config_pb2
    except ImportError:
        return _message("MonitoringConfig")
    return monitoring_config_pb2.MonitoringConfig()


def test_monitoring_config_enables_prometheus():
    config = text_format.Parse((CONFIG / "monitoring.config").read_text(),
                               _monitoring_config_message())
    assert config.prometheus_config.enable
    assert config.prometheus_config.path == "/monitoring/prometheus/metrics"


# --- Batching parameters --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BATCHING_FILES.values()))
def test_batching_file_parses_and_would_load(name):
    params = _load_batching(name)
    assert _batching_errors(params) == []


def test_gpu_batches_are_at_least_as_large_as_cpu_batches():
    gpu, cpu = _load_batching(BATCHING_FILES["gpu"]), _load_batching(BATCHING_FILES["cpu"])
    assert gpu.max_batch_size.value >= cpu.max_batch_size.value
    # The GPU file pads to fixed shapes (cuDNN tunes once per shape, warmup covers them);
    # on CPU padding only costs decodes and inference.
    assert gpu.allowed_batch_sizes
    assert not cpu.allowed_batch_sizes


_GOOD = ("max_batch_size { value: 8 } batch_timeout_micros { value: 0 } "
         "num_batch_threads { value: 2 } max_enqueued_batches { value: 2 } ")


@pytest.mark.parametrize("text", [
    "max_batch_size: 8",                                         # value not wrapped
    "max_batch_size { valu: 8 }",                                # typo inside the wrapper
    "max_batch_sizes { value: 8 }",                              # unknown field
    "max_batch_size { value: 8 } max_batch_size { value: 16 }",  # singular field twice
    "max_batch_size { value: 8.5 }",                             # not an integer
    "allowed_batch_sizes { value: 8 }",                          # repeated int64, not wrapped
])
def test_batching_checker_rejects_malformed_text(text):
    with pytest.raises(text_format.ParseError):
        _parse_batching(text)


@pytest.mark.parametrize("extra, complaint", [
    ("allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8", "increasing"),
    ("allowed_batch_sizes: 2 allowed_batch_sizes: 4", "max_batch_size"),
    ("", None),
])
def test_batching_checker_enforces_the_servers_rules(extra, complaint):
    errors = _batching_errors(_parse_batching(_GOOD + extra))
    if complaint is None:
        assert errors == []
    else:
        assert any(complaint in e for e in errors), errors


@pytest.mark.parametrize("text, complaint", [
    (_GOOD.replace("num_batch_threads { value: 2 }", "num_batch_threads { value: 0 }"),
     "num_batch_threads must be positive"),
    (_GOOD.replace("max_enqueued_batches { value: 2 } ", ""), "max_enqueued_batches is not set"),
])
def test_batching_checker_wants_positive_explicit_limits(text, complaint):
    errors = _batching_errors(_parse_batching(text))
    assert any(complaint in e for e in errors), errors


# --- Dockerfiles ------------------------------------------------------------------------

def test_image_tag_follows_the_pinned_tensorflow(variant):
    image = _dockerfile(variant).base_image
    match = re.fullmatch(r"tensorflow/serving:(\d+)\.(\d+)\.(\d+)(-gpu)?", image)
    assert match, f"base image must be tensorflow/serving:X.Y.Z[-gpu] (never latest): {image}"
    assert (int(match[1]), int(match[2])) == _pinned_tensorflow_minor(), image
    assert bool(match[4]) == (variant == "gpu"), image


def test_both_images_pin_the_same_tf_serving_release():
    gpu, cpu = _dockerfile("gpu").base_image, _dockerfile("cpu").base_image
    assert gpu.removesuffix("-gpu") == cpu


def test_image_runs_as_a_numeric_non_root_user(variant):
    user = _dockerfile(variant).all("USER")
    assert user, "no USER: the server would run as root"
    uid = user[-1].split(":")[0]
    # Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0, user[-1]


def test_image_exposes_grpc_and_rest(variant):
    ports = {p.split("/")[0] for rest in _dockerfile(variant).all("EXPOSE") for p in rest.split()}
    assert {"8500", "8501"} <= ports


def test_server_flags_are_real_and_set_up_the_server(variant):
    flags = _dockerfile(variant).server_flags
    unknown = set(flags) - SERVER_FLAGS
    assert not unknown, f"tensorflow_model_server does not know {sorted(unknown)}"
    assert flags["port"] == "8500"
    assert flags["rest_api_port"] == "8501"
    assert flags["enable_batching"] == "true"
    assert flags["enable_model_warmup"] == "true"
    assert int(flags["model_config_file_poll_wait_seconds"]) == 60
    # One model, from the config file: no single-model flags that would contradict it.
    assert "model_name" not in flags and "model_base_path" not in flags
    assert pathlib.PurePosixPath(flags["batching_parameters_file"]).name == BATCHING_FILES[variant]


def test_config_files_named_by_flags_exist_and_are_copied_in(variant):
    dockerfile = _dockerfile(variant)
    file_flags = {k: v for k, v in dockerfile.server_flags.items() if k.endswith("_file")}
    assert {"model_config_file", "batching_parameters_file",
            "monitoring_config_file"} <= set(file_flags)
    for flag, target in file_flags.items():
        source = dockerfile.copied_to(target)
        assert source == f"serving/config/{pathlib.PurePosixPath(target).name}", (flag, source)
        assert (REPO / source).is_file(), f"--{flag}: {source} does not exist"


def test_gpu_image_lets_gpu_memory_grow():
    assert _dockerfile("gpu").env.get("TF_FORCE_GPU_ALLOW_GROWTH") == "true"


def test_cpu_image_threads_match_its_batching_threads():
    flags = _dockerfile("cpu").server_flags
    threads = _load_batching(BATCHING_FILES["cpu"]).num_batch_threads.value
    assert int(flags["tensorflow_intra_op_parallelism"]) == threads
    assert 1 <= int(flags["tensorflow_inter_op_parallelism"]) <= threads


def test_image_health_check_is_the_copied_script(variant):
    dockerfile = _dockerfile(variant)
    healthcheck = dockerfile.one("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + len("CMD"):])
    assert dockerfile.copied_to(command[0]) == "serving/docker/healthcheck.sh"


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rules: last matching pattern wins; a pattern also matches a parent dir."""
    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        cleaned = pattern.lstrip("!").strip("/")
        if any(regex(cleaned).fullmatch(c) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_holds_exactly_what_the_image_copies(variant):
    dockerfile = _dockerfile(variant)
    ignore = dockerfile.path.with_name(dockerfile.path.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} missing: the whole repository would be sent"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for sources, _ in dockerfile.copies:
        for source in sources:
            assert not _dockerignore_excludes(patterns, source), source
    assert not _dockerignore_excludes(patterns, f"models/{MODEL_NAME}/1/saved_model.pb")
    for unwanted in ("runs/demo/model.keras", ".venv/bin/python", "data/x.jpg",
                     f"models/{MODEL_NAME}/.export-123-abc/saved_model.pb"):
        assert _dockerignore_excludes(patterns, unwanted), unwanted


def test_dockerfile_passes_hadolint(variant, hadolint):
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[variant])],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- docker-compose.yml ---------------------------------------------------------------------

def _compose() -> dict:
    import yaml

    return yaml.safe_load(COMPOSE.read_text())


@pytest.mark.requires("yaml")
def test_compose_builds_both_images_with_mounts_ports_and_health():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"effnet-gpu", "effnet-cpu"}
    flags = _dockerfile("gpu").server_flags
    config_dir = str(pathlib.PurePosixPath(flags["model_config_file"]).parent)
    base_path = _load_models_config().model_config_list.config[0].base_path
    for name, variant in (("effnet-gpu", "gpu"), ("effnet-cpu", "cpu")):
        service = services[name]
        assert service["profiles"] == [variant]  # Both use 8500/8501: one at a time.
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context / service["build"]["dockerfile"] == DOCKERFILES[variant]
        assert {"8500:8500", "8501:8501"} <= set(service["ports"])
        mounts = {v["target"]: v for v in service["volumes"]}
        assert set(mounts) == {base_path, config_dir}
        assert all(v["read_only"] for v in mounts.values())
        assert (COMPOSE.parent / mounts[config_dir]["source"]).resolve() == CONFIG
        assert mounts[base_path]["source"].endswith(f"../models/{MODEL_NAME}}}")
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert _dockerfile(variant).copied_to(test[1]) == "serving/docker/healthcheck.sh"
        assert test[2:] == [MODEL_NAME]
    devices = services["effnet-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cpu_threads = _dockerfile("cpu").server_flags["tensorflow_intra_op_parallelism"]
    assert services["effnet-cpu"]["cpus"] == int(cpu_threads)


def test_every_tf_serving_image_in_serving_is_the_pinned_one():
    pinned = _dockerfile("cpu").base_image.split(":")[1]
    references = []
    for path in [*DOCKER.iterdir(), COMPOSE]:
        text = path.read_text()
        references += [(path.name, m[1]) for m in re.finditer(r"tensorflow/serving:(\S+)", text)]
    assert references
    for name, tag in references:
        if "$" not in tag:  # ${TF_SERVING_VERSION} forms are checked through the ARG.
            assert tag.removesuffix("-gpu") == pinned, (name, tag)


# --- Health check script -----------------------------------------------------------------------

_AVAILABLE = {"model_version_status": [
    {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
_LOADING = {"model_version_status": [
    {"version": "1", "state": "LOADING", "status": {"error_code": "OK", "error_message": ""}}]}
_FAILED = {"model_version_status": [
    {"version": "1", "state": "END",
     "status": {"error_code": "UNAVAILABLE", "error_message": "Could not load"}}]}
_NOT_FOUND = {"error": "Servable not found for request: Latest(effnet)"}


def _fake_rest_server(status: int, body: dict):
    """Answers GET /v1/models/effnet like TF Serving's REST API; anything else is 404."""
    def answer(method, path, headers, request_body):
        return (status, body) if path == f"/v1/models/{MODEL_NAME}" else (404, _NOT_FOUND)

    return http_stub.json_server(answer)


def _run_healthcheck(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("bash"), str(HEALTHCHECK), *args], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={"PATH": "/usr/bin:/bin", "REST_API_PORT": str(port)})


@pytest.mark.requires("bash")
@pytest.mark.parametrize("status, body, healthy", [
    (200, _AVAILABLE, True),
    (200, _LOADING, False),
    (200, _FAILED, False),  # Its "UNAVAILABLE" error code must not pass for AVAILABLE.
    (404, _NOT_FOUND, False),
])
def test_healthcheck_passes_only_when_a_version_is_available(status, body, healthy):
    with _fake_rest_server(status, body) as port:
        result = _run_healthcheck(port)
    assert (result.returncode == 0) == healthy, result.stderr


@pytest.mark.requires("bash")
def test_healthcheck_asks_for_the_named_model():
    with _fake_rest_server(200, _AVAILABLE) as port:
        assert _run_healthcheck(port, MODEL_NAME).returncode == 0
        result = _run_healthcheck(port, "other")
    assert result.returncode != 0 and "404" in result.stderr


@pytest.mark.requires("bash")
def test_healthcheck_fails_when_nothing_listens():
    port = support.free_port()  # Free, so closed: nothing listens there.
    result = _run_healthcheck(port)
    assert result.returncode != 0
