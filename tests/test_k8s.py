"""Checks of the Kubernetes manifests in k8s/: they build, validate and follow the rules.

Offline and without a cluster: every kustomization is rendered with `kubectl kustomize`
(the same kustomize that `kubectl apply -k` runs), every built-in object is validated
strictly against the Kubernetes JSON schemas shipped by the `kubernetes-validate` package,
the custom resources (TFJob, InferenceService, ServiceMonitor) get structural checks (their
embedded pod templates and containers are validated as core objects), the timing budget's
inequalities are checked on every serving overlay, and the rest holds the rendered output
to what production needs and the scanners do not check: checkov (tests/test_k8s_checkov.py)
owns the generic security and resource rules. Tests that need kubectl or
kubernetes-validate skip, saying why, where those are absent.

    python -m pytest tests/test_k8s.py -q
"""

from __future__ import annotations

import configparser
import inspect
import json
import os
import re
import shutil
import subprocess
import textwrap

import pytest
import yaml
from support.k8s import (
    ALL_BUILDS,
    CPU_BUILDS,
    GPU_BUILDS,
    K8S,
    KUBECTL,
    MODEL_NAME,
    MULTI_WORKER_BUILDS,
    NO_WORKLOAD_BUILDS,
    PROPAGATION_ALLOWANCE,
    PULL_ALLOWANCE,
    REPO,
    SERVING_BUILDS,
    SERVING_CONFIG,
    STANDALONE_MANIFESTS,
    TRAINING_BUILDS,
    WORKLOAD_BUILDS,
    channel_arguments,
    containers,
    effective_flags,
    hadolint_binary,
    is_long_running,
    needs_kubectl,
    objects,
    one,
    pod_templates,
    probe_window,
    quantity,
    render,
    server,
    standalone,
    train_commands,
    workload_templates,
)

from clients import GrpcClient

HEALTHCHECK = REPO / "serving" / "docker" / "healthcheck.sh"
GPU_DOCKERFILE = REPO / "serving" / "docker" / "Dockerfile"
CPU_DOCKERFILE = REPO / "serving" / "docker" / "Dockerfile.cpu"
TRAINING_DOCKERFILE = K8S / "training" / "Dockerfile"
README = K8S / "README.md"
SYNC_SCRIPT = K8S / "components" / "object-storage" / "sync-models.sh"

# Schemas of a recent Kubernetes; native sidecars (restartable init containers) need >= 1.29.
K8S_VERSION = "1.33.0"


def dockerfile_flags(dockerfile):
    text = dockerfile.read_text()
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*?\])\s*$", text, re.S | re.M)
    assert entrypoint, f"no ENTRYPOINT in {dockerfile}"
    argv = json.loads(entrypoint[1].replace("\\\n", " "))
    return dict(re.fullmatch(r"--(\w+)=(.*)", a).groups() for a in argv[1:])


def batching_value(text: str, field: str) -> int:
    match = re.search(rf"^{field}\s*\{{\s*value:\s*(\d+)\s*\}}", text, re.M)
    assert match, f"no {field} in the batching parameters"
    return int(match[1])


# --- The pinned versions -----------------------------------------------------------------

def setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def pinned_tensorflow_minor() -> str:
    """"2.21" from `tensorflow>=2.21,<2.22` in setup.cfg."""
    for line in setup_cfg()["options"]["install_requires"].splitlines():
        if re.match(r"tensorflow\s*[<>=!~]", line.strip()):
            low = re.search(r">=\s*(\d+)\.(\d+)", line)
            high = re.search(r"<\s*(\d+)\.(\d+)", line)
            assert low and high, f"tensorflow is not pinned to one minor: {line}"
            assert (int(high[1]), int(high[2])) == (int(low[1]), int(low[2]) + 1), line
            return f"{low[1]}.{low[2]}"
    raise AssertionError("no tensorflow requirement in setup.cfg")


def project_version() -> str:
    return setup_cfg()["metadata"]["version"]


def split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    return name, tag


# --- Builds and schemas ------------------------------------------------------------------

def test_every_kustomization_is_checked():
    """A new overlay cannot slip past these tests: each kustomization under k8s/ (components
    aside, which are built through the overlays using them) is in ALL_BUILDS."""
    found = set()
    for path in K8S.rglob("kustomization.yaml"):
        if yaml.safe_load(path.read_text())["kind"] == "Component":
            continue
        found.add(path.parent.relative_to(K8S).as_posix())
    assert found == set(ALL_BUILDS)


@needs_kubectl
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_builds(build):
    """Every build renders, and has pods to check exactly when it is not in
    NO_WORKLOAD_BUILDS (the pod-policy tests below run on the others)."""
    objects_ = render(build)
    assert objects_, f"k8s/{build} renders nothing"
    assert all(o.get("apiVersion") and o.get("metadata", {}).get("name") for o in objects_)
    assert bool(pod_templates(build)) == (build not in NO_WORKLOAD_BUILDS), build


def test_serving_config_comes_from_the_serving_component():
    """k8s/base generates no ConfigMap itself: serving/kustomization.yaml is the one source."""
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    assert "configMapGenerator" not in base
    assert base["components"] == ["../../serving"]
    component = yaml.safe_load((K8S.parent / "serving" / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    files = [f for g in component["configMapGenerator"] for f in g["files"]]
    assert all((K8S.parent / "serving" / f).is_file() for f in files)


def _is_builtin(obj: dict) -> bool:
    group = obj["apiVersion"].rpartition("/")[0]
    return group == "" or "." not in group or group.endswith(".k8s.io")


@needs_kubectl
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_builtin_objects_validate_strictly(build):
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (offline JSON schemas)")
    for obj in render(build):
        if _is_builtin(obj):
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _validate_pod_template(template: dict, where: str) -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (offline JSON schemas)")
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
               "metadata": {"name": where.lower().replace("/", "-").replace("[", "-")
                            .replace("]", "")},
               "template": template}
    kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)


@needs_kubectl
def test_tfjob_structure():
    for build in ("training/multiworker",):
        (tfjob,) = objects(build, "TFJob")
        assert tfjob["apiVersion"] == "kubeflow.org/v1"
        assert set(tfjob["spec"]) <= {"runPolicy", "tfReplicaSpecs", "successPolicy",
                                      "enableDynamicWorker"}
        assert set(tfjob["spec"]["runPolicy"]) <= {
            "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished",
            "cleanPodPolicy", "schedulingPolicy", "suspend", "managedBy"}
        assert tfjob["spec"]["runPolicy"]["cleanPodPolicy"] in ("All", "Running", "None")
        specs = tfjob["spec"]["tfReplicaSpecs"]
        assert set(specs) <= {"Chief", "Master", "Worker", "PS", "Evaluator"}
        assert specs["Chief"]["replicas"] == 1
        assert specs["Worker"]["replicas"] >= 1
        for role, spec in specs.items():
            assert set(spec) <= {"replicas", "restartPolicy", "template"}, role
            assert spec["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
            _validate_pod_template(spec["template"], f"tfjob-{role}")
            names = [c["name"] for c in spec["template"]["spec"]["containers"]]
            # The operator sets TF_CONFIG in, and opens 2222 on, the container so named.
            assert "tensorflow" in names, role
        chief = specs["Chief"]["template"]["spec"]["containers"][0]
        worker = specs["Worker"]["template"]["spec"]["containers"][0]
        assert "python3 -m export" in chief["args"][0]
        assert "python3 -m export" not in worker["args"][0]
        for script in (chief["args"][0], worker["args"][0]):
            assert 'run="/runs/${RUN_NAME}"' in script
        # Only the chief writes the run; the workers read it to resume.
        assert not {m["mountPath"]: m.get("readOnly", False)
                    for m in chief["volumeMounts"]}["/runs"]
        assert {m["mountPath"]: m.get("readOnly", False) for m in worker["volumeMounts"]}["/runs"]
        assert "--batch_size=auto" not in render_configmap_text(build)


@needs_kubectl
@pytest.mark.parametrize("build", ["training", *MULTI_WORKER_BUILDS])
def test_every_training_task_runs_the_one_tested_command(build):
    """Chief and workers of the multi-worker manifests run the single-GPU Job's command,
    which tests/test_train_distributed.py runs on loopback workers."""
    (single,) = train_commands("training").values()
    commands = train_commands(build)
    assert len(commands) == (2 if build == "training/multiworker" else 1), commands
    assert set(commands.values()) == {single}


@needs_kubectl
def test_indexed_job_builds_the_tf_config_of_its_pods():
    """Pod i of the indexed Job is task i of WORKERS tasks, at an address its headless
    Service resolves; the TF_CONFIG the script builds is the one python -m train parses."""
    from train import distribute

    (job,) = objects("training/indexed", "Job")
    (service,) = objects("training/indexed", "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    workers = int({e["name"]: e.get("value") for e in trainer["env"]}["WORKERS"])
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers >= 2
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"]["batch.kubernetes.io/job-name"] == job["metadata"]["name"]
    assert service["spec"]["selector"].items() - {
        ("batch.kubernetes.io/job-name", job["metadata"]["name"])} <= job["spec"]["template"][
            "metadata"]["labels"].items()
    script = trainer["args"][0]
    setup = script[:script.index("python3 -m train")] + 'printf %s "${TF_CONFIG}"'
    for index in range(workers):
        env = {"RUN_NAME": "r", "WORKERS": str(workers), "JOB_COMPLETION_INDEX": str(index),
               "PATH": os.environ["PATH"]}
        tf_config = subprocess.run(["bash", "-c", setup], env=env, capture_output=True,
                                   text=True, check=True, timeout=30).stdout
        assert distribute.task_from_tf_config(tf_config) == distribute.Task(workers, index)
        hosts = json.loads(tf_config)["cluster"]["worker"]
        assert hosts == [f"{job['metadata']['name']}-{i}.{pod['subdomain']}:2222"
                         for i in range(workers)]
    assert "--batch_size=auto" not in render_configmap_text("training/indexed")


def render_configmap_text(build: str) -> str:
    return "\n".join(json.dumps(c.get("data", {})) for c in objects(build, "ConfigMap"))


KSERVE_MODEL_FIELDS = {"modelFormat", "runtimeVersion", "storageUri", "protocolVersion",
                       "runtime", "storage"}


@needs_kubectl
@pytest.mark.parametrize("build", ["kserve/stable", "kserve/canary"])
def test_inferenceservice_structure(build):
    isvc = one(build, "InferenceService", MODEL_NAME)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    # Knative revisions carry the canary; "Serverless" is its deprecated name (KServe 0.16).
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "tensorflow"}
    assert re.fullmatch(r"(gs|s3)://[^/]+/.+", model["storageUri"]), model["storageUri"]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # The predictor's pod fields and the model container validate as a core Pod.
    pod_fields = {k: v for k, v in predictor.items()
                  if k in ("serviceAccountName", "nodeSelector", "tolerations")}
    container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    _validate_pod_template({"spec": {**pod_fields, "containers": [
        {"name": "kserve-container", "image": "tensorflow/serving", **container}]}},
        f"isvc-{build}")
    if build == "kserve/canary":
        stable = one("kserve/stable", "InferenceService", MODEL_NAME)["spec"]["predictor"]
        assert 0 < predictor["canaryTrafficPercent"] < 100
        assert model["storageUri"] != stable["model"]["storageUri"]
    else:
        assert "canaryTrafficPercent" not in predictor


@needs_kubectl
def test_servicemonitor_scrapes_the_configured_metrics_path():
    (monitor,) = objects("monitoring", "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    path = re.search(r'path:\s*"([^"]+)"', (SERVING_CONFIG / "monitoring.config").read_text())[1]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == path
    # It selects the ClusterIP Service and names one of its ports; the namespace matches.
    services = [s for s in objects("overlays/gpu", "Service")
                if all(s["metadata"]["labels"].get(k) == v
                       for k, v in monitor["spec"]["selector"]["matchLabels"].items())
                and "effnet-serving/headless" not in s["metadata"]["labels"]]
    assert [s["metadata"]["name"] for s in services] == [MODEL_NAME]
    assert endpoint["port"] in {p["name"] for p in services[0]["spec"]["ports"]}
    assert monitor["metadata"]["namespace"] == services[0]["metadata"]["namespace"]


# --- The mounted configuration is serving/config ----------------------------------------

@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_mounted_config_is_serving_config(build):
    """The ConfigMaps hold serving/config's files byte for byte, /config holds all of them,
    and every file a flag names is there."""
    deployment = one(build, "Deployment", MODEL_NAME)
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    container = server(build)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/config"]
    assert mount.get("readOnly") is True and "subPath" not in mount  # subPath never updates.
    sources = [s["configMap"]["name"] for s in volumes[mount["name"]]["projected"]["sources"]]
    configmaps = {c["metadata"]["name"]: c for c in objects(build, "ConfigMap")}
    mounted = {}
    for name in sources:
        for key, value in configmaps[name]["data"].items():
            assert key not in mounted, f"{key} in two ConfigMaps"
            mounted[key] = value
    expected = {p.name: p.read_text() for p in SERVING_CONFIG.iterdir() if p.is_file()}
    expected["healthcheck.sh"] = HEALTHCHECK.read_text()
    assert mounted == expected
    for flag in ("model_config_file", "batching_parameters_file", "monitoring_config_file"):
        path = effective_flags(container)[flag]
        assert path.startswith("/config/") and path.removeprefix("/config/") in mounted, path


@needs_kubectl
def test_models_config_updates_in_place_and_the_rest_rolls_pods():
    """models.config keeps its name (kubelet refreshes it in running pods, the server
    re-reads it: canary edits without restarts); the start-up-only files are hashed."""
    names = [c["metadata"]["name"] for c in objects("overlays/gpu", "ConfigMap")]
    assert "effnet-models-config" in names
    assert any(re.fullmatch(r"effnet-serving-files-[a-z0-9]{10}", n) for n in names), names
    assert int(effective_flags(server("overlays/gpu"))[
        "model_config_file_poll_wait_seconds"]) > 0


@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_model_base_path_is_where_the_models_are(build):
    base_path = re.search(r'base_path:\s*"([^"]+)"',
                          (SERVING_CONFIG / "models.config").read_text())[1]
    pod = one(build, "Deployment", MODEL_NAME)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in server(build)["volumeMounts"] if m["mountPath"] == base_path]
    if build == "overlays/dev":
        # Baked into the image (serving/docker/Dockerfile.cpu copies it to /models/effnet).
        assert not mounts
        assert split_image(server(build)["image"])[0] == "effnet-serving"
        assert "PersistentVolumeClaim" not in {o["kind"] for o in render(build)}
        return
    (mount,) = mounts
    assert mount.get("readOnly") is True  # The servers only read; exports write.
    volume = volumes[mount["name"]]
    if build == "overlays/gpu-object-storage":
        assert "emptyDir" in volume and "persistentVolumeClaim" not in volume
        (sync,) = pod["initContainers"]
        assert sync["restartPolicy"] == "Always"  # A native sidecar keeps syncing.
        assert any(m["mountPath"] == base_path and not m.get("readOnly")
                   for m in sync["volumeMounts"])
        assert "PersistentVolumeClaim" not in {o["kind"] for o in render(build)}
    else:
        claim = volume["persistentVolumeClaim"]["claimName"]
        pvc = one(build, "PersistentVolumeClaim", claim)
        assert "ReadWriteMany" in pvc["spec"]["accessModes"]  # Exports and many servers.


# --- Server flags ------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_server_flags_match_the_images(build):
    """Same flags and values as serving/docker's images (the device-specific ones aside), so
    the cluster runs what was tested with Docker."""
    flags = effective_flags(server(build))
    image = GPU_DOCKERFILE if build in GPU_BUILDS else CPU_DOCKERFILE
    docker = dockerfile_flags(image)
    assert set(flags) == set(dockerfile_flags(GPU_DOCKERFILE)) | set(
        dockerfile_flags(CPU_DOCKERFILE))
    # Thread counts follow the pod's CPUs; the gRPC connection age is part of the pod's
    # shutdown (test_timing_budget), which a container under Docker does not have.
    tuned = {"tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism",
             "grpc_channel_arguments"}
    for name, value in docker.items():
        if name not in tuned:
            assert flags[name] == value, name
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    assert set(channel_arguments(flags)) == set(channel_arguments(docker))


@needs_kubectl
@pytest.mark.parametrize("build", ["overlays/gpu", "overlays/cpu", "overlays/dev"])
def test_threads_match_cpus_and_batching(build):
    """CPU limit = intra-op threads = num_batch_threads of the batching file in use."""
    container = server(build)
    flags = effective_flags(container)
    batching = (SERVING_CONFIG / flags["batching_parameters_file"].rpartition("/")[2])
    threads = batching_value(batching.read_text(), "num_batch_threads")
    assert int(flags["tensorflow_intra_op_parallelism"]) == threads
    assert quantity(container["resources"]["limits"]["cpu"]) == threads
    expected = "batching_parameters.txt" if build in GPU_BUILDS else \
        "batching_parameters_cpu.txt"
    assert batching.name == expected


# --- Policy the scanners do not check -------------------------------------------------
# checkov (tests/test_k8s_checkov.py) checks requests and limits being set, privileges,
# capabilities, root, seccomp, read-only root filesystems, token mounts, liveness and
# readiness probes of regular containers, image tags. What remains here is what it cannot
# know.

@needs_kubectl
@pytest.mark.parametrize("build", WORKLOAD_BUILDS)
def test_memory_request_equals_limit(build):
    """A pod using more memory than it requested is the first the kernel's OOM killer
    picks when the node runs short: request what the limit allows."""
    for where, template in workload_templates(build):
        for c in containers(template["spec"]):
            requests, limits = c["resources"]["requests"], c["resources"]["limits"]
            assert requests["memory"] == limits["memory"], f"{where}/{c['name']}"


@needs_kubectl
@pytest.mark.parametrize("build", WORKLOAD_BUILDS)
def test_read_only_root_has_a_writable_tmp(build):
    """With a read-only root filesystem (checkov CKV_K8S_22), /tmp must be a writable
    emptyDir and HOME (and CUDA's cache) must live there."""
    for where, template in workload_templates(build):
        pod = template["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in containers(pod):
            name = f"{where}/{c['name']}"
            (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly"), name
            assert all(e["value"].startswith("/tmp") for e in c.get("env", [])
                       if e["name"] in ("HOME", "CUDA_CACHE_PATH", "RCLONE_CONFIG")), name


@needs_kubectl
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_service_accounts_mount_no_token(build):
    """checkov looks at the pods; the accounts themselves should not offer a token either."""
    for account in objects(build, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@needs_kubectl
@pytest.mark.parametrize("build", WORKLOAD_BUILDS)
def test_long_running_containers_have_probes(build):
    """A start-up probe everywhere (checkov does not ask for one), and all three on native
    sidecars (init containers with restartPolicy Always, which checkov skips)."""
    for where, template in workload_templates(build):
        pod = template["spec"]
        for c in containers(pod):
            if not is_long_running(c, where):
                continue
            wanted = ["startupProbe"]
            if c in pod.get("initContainers", []):
                wanted += ["readinessProbe", "livenessProbe"]
            for probe in wanted:
                assert probe in c, f"{where}/{c['name']} has no {probe}"


@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_probes_require_the_model_available(build):
    """Readiness and start-up run healthcheck.sh (passes only on a version AVAILABLE), not an
    httpGet (200 while LOADING); start-up allows minutes; liveness does not need the model."""
    container = server(build)
    script = ["/bin/bash", "/config/healthcheck.sh", MODEL_NAME]
    for name in ("startupProbe", "readinessProbe"):
        assert container[name]["exec"]["command"] == script, name
        assert container[name]["timeoutSeconds"] >= 6  # The script waits up to 5 s.
    assert "tcpSocket" in container["livenessProbe"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["REST_API_PORT"] == effective_flags(container)["rest_api_port"]


# --- Timing budget (k8s/README.md, "Timing budget") ---------------------------------------
# gRPC adds up to 10 % of jitter to max_connection_age (grpc-core's max age filter).
MAX_CONNECTION_AGE_JITTER = 1.1


def budget(build: str) -> dict[str, float]:
    """The timing budget of a serving build, in seconds, read from the rendered objects."""
    deployment = one(build, "Deployment", MODEL_NAME)
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    annotations = deployment["metadata"]["annotations"]
    container = server(build)
    flags = effective_flags(container)
    grpc_args = channel_arguments(flags)
    readiness = container["readinessProbe"]
    sidecars = [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "/bin/sleep" and len(sleep) == 2, sleep
    return {
        "pull": int(annotations[PULL_ALLOWANCE]),
        "propagation": int(annotations[PROPAGATION_ALLOWANCE]),
        # Native sidecars start (startup probe passed) before the server starts.
        "sync": sum(probe_window(c["startupProbe"]) for c in sidecars),
        "startup": probe_window(container["startupProbe"]),
        # Once started, the first readiness probe runs within one period (and its timeout).
        "first_ready": readiness.get("periodSeconds", 10) + readiness.get("timeoutSeconds", 1),
        "min_ready": spec.get("minReadySeconds", 0),
        "deadline": spec.get("progressDeadlineSeconds", 600),
        "age": grpc_args["grpc.max_connection_age_ms"] / 1000,
        "age_grace": grpc_args["grpc.max_connection_age_grace_ms"] / 1000,
        "rest_timeout": int(flags.get("rest_api_timeout_in_ms", 30000)) / 1000,
        "pre_stop": float(sleep[1]),
        "grace_period": pod["terminationGracePeriodSeconds"],
    }


@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_timing_budget(build):
    """The inequalities between the deadlines (not their values): a normal slow start is
    never a failed roll-out, and a stopping pod drains before any signal reaches it."""
    b = budget(build)
    # Roll-out: one step = scheduling and pull, the model sync (object storage), the
    # server's start-up allowance, the first readiness probe, minReadySeconds.
    step = b["pull"] + b["sync"] + b["startup"] + b["first_ready"] + b["min_ready"]
    assert b["deadline"] > step, (
        f"progressDeadlineSeconds {b['deadline']} <= {step} s that a roll-out step may take")
    # Calls in flight when the server sends GOAWAY keep the clients' full default deadline.
    assert b["age_grace"] >= inspect.signature(GrpcClient).parameters["timeout"].default
    # Drain: every gRPC connection a client opened before the pod left the endpoints is
    # closed by the server (max age + jitter), and its calls finished (grace), before the
    # preStop sleep ends; a REST call accepted until then finishes too.
    drain = b["propagation"] + MAX_CONNECTION_AGE_JITTER * b["age"] + b["age_grace"]
    assert b["pre_stop"] >= drain, f"preStop {b['pre_stop']} s < drain {drain} s"
    assert b["pre_stop"] >= b["propagation"] + b["rest_timeout"]
    # tensorflow_model_server ignores SIGTERM: the SIGKILL at the end of the grace period
    # must come after the drain (a server that handles SIGTERM gets the difference).
    assert b["grace_period"] > b["pre_stop"]


README_BUDGET_ROWS = {"P": "pull", "S": "sync", "U": "startup", "R": "first_ready",
                      "D": "deadline", "E": "propagation", "A": "age", "G": "age_grace",
                      "T": "rest_timeout", "W": "pre_stop", "K": "grace_period"}
README_BUDGET_COLUMNS = ("overlays/gpu", "overlays/gpu-object-storage", "overlays/cpu",
                         "overlays/dev")


@needs_kubectl
def test_readme_timing_budget_is_the_rendered_one():
    """The budget is written down once, in k8s/README.md's table: it must say what the
    overlays render."""
    rows = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\| ([A-Z]): [^|]+\|[^|]+\|(.*)\|\s*$", line)
        if match and match[1] in README_BUDGET_ROWS:
            rows[match[1]] = [cell.strip() for cell in match[2].split("|")]
    assert set(rows) == set(README_BUDGET_ROWS)
    for key, field in README_BUDGET_ROWS.items():
        for build, cell in zip(README_BUDGET_COLUMNS, rows[key], strict=True):
            seconds = 0 if cell == "-" else int(re.fullmatch(r"(\d+) s", cell)[1])
            assert budget(build)[field] == seconds, (key, build, cell)


@needs_kubectl
def test_sync_sidecar_liveness_outlasts_a_copy():
    """The sidecar's liveness probe lets one version copy for the whole sync allowance (its
    start-up window) plus a sync interval before it calls the loop hung."""
    build = "overlays/gpu-object-storage"
    pod = one(build, "Deployment", MODEL_NAME)["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    liveness = sidecar["livenessProbe"]
    command = " ".join(liveness["exec"]["command"])
    assert "/tmp/heartbeat" in command
    stale_after = int(re.search(r"-mmin -(\d+)", command)[1]) * 60
    (config,) = [c for c in objects(build, "ConfigMap")
                 if c["metadata"]["name"].startswith("effnet-model-sync-")]
    interval = int(config["data"]["SYNC_INTERVAL_SECONDS"])
    assert stale_after >= probe_window(sidecar["startupProbe"]) + interval
    assert stale_after + probe_window(liveness) > probe_window(sidecar["startupProbe"])


@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_service_ports(build):
    service = one(build, "Service", MODEL_NAME)
    ports = {p["port"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {8500, 8501}
    assert ports[8500]["appProtocol"] == "grpc" and ports[8500]["name"] == "grpc"
    assert ports[8501]["name"] == "http"
    container_ports = {p["name"]: p["containerPort"] for p in server(build)["ports"]}
    flags = effective_flags(server(build))
    assert container_ports == {"grpc": int(flags["port"]), "http": int(flags["rest_api_port"])}
    for port in ports.values():
        assert container_ports[port["targetPort"]] == port["port"]
    labels = one(build, "Deployment", MODEL_NAME)["spec"]["template"]["metadata"]["labels"]
    for svc in objects(build, "Service"):
        assert svc["spec"]["selector"].items() <= labels.items()


@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_disruption_budget_autoscaler_and_network_policy_select_the_servers(build):
    deployment = one(build, "Deployment", MODEL_NAME)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(build, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    if build == "overlays/dev":
        assert not objects(build, "HorizontalPodAutoscaler")
        assert deployment["spec"]["replicas"] == 1
    else:
        hpa = one(build, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": MODEL_NAME}
        assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in deployment["spec"]  # The autoscaler owns it.
    policy = one(build, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        assert rule["from"], "an empty `from` lets every pod in"
        for peer in rule["from"]:
            assert "podSelector" in peer and peer["podSelector"]["matchLabels"], peer
        assert {p["port"] for p in rule["ports"]} <= {"grpc", "http"}


@needs_kubectl
@pytest.mark.parametrize("build", ["overlays/gpu", "overlays/cpu"])
def test_spread_across_nodes(build):
    pod = one(build, "Deployment", MODEL_NAME)["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys


@needs_kubectl
@pytest.mark.parametrize("build", WORKLOAD_BUILDS)
def test_gpus(build):
    """One GPU per GPU pod (one TF Serving / trainer uses one GPU well), none elsewhere."""
    for where, template in workload_templates(build):
        pod = template["spec"]
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu", 0) for c in containers(pod)]
        requests = [c["resources"]["requests"].get("nvidia.com/gpu", 0)
                    for c in containers(pod)]
        assert gpus == requests, where
        if build in CPU_BUILDS:
            assert sum(gpus) == 0, where
        else:
            assert sorted(gpus) == [0] * (len(gpus) - 1) + [1], where
        if build not in CPU_BUILDS and build != "base":
            assert pod["nodeSelector"], where
            assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]), where
    if build in ("overlays/gpu", "overlays/gpu-object-storage"):
        env = {e["name"]: e["value"] for e in server(build)["env"]}
        assert env["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


@needs_kubectl
@pytest.mark.parametrize("build", WORKLOAD_BUILDS)
def test_image_tags_are_pinned(build):
    minor = pinned_tensorflow_minor()
    images = [c["image"] for _, t in workload_templates(build) for c in containers(t["spec"])]
    for image in images:
        name, tag = split_image(image)  # checkov CKV_K8S_14: a tag, never "latest".
        if name == "tensorflow/serving":
            expected = r"-gpu" if build in GPU_BUILDS else r""
            assert re.fullmatch(rf"{re.escape(minor)}\.\d+{expected}", tag), image
        elif name == "effnet-serving":
            assert tag == f"{project_version()}-cpu", image
        elif name == "effnet-train":
            assert tag == project_version(), image
        else:
            assert re.fullmatch(r"\d+\.\d+\.\d+", tag), image
    for isvc in objects(build, "InferenceService"):
        version = isvc["spec"]["predictor"]["model"]["runtimeVersion"]
        assert re.fullmatch(rf"{re.escape(minor)}\.\d+-gpu", version), version


@needs_kubectl
@pytest.mark.parametrize("build", WORKLOAD_BUILDS)
def test_references_resolve(build):
    """Every ConfigMap, Secret and claim a pod names exists (the models claim of the
    volume-based training comes from the serving overlays; optional Secrets are made out of
    band)."""
    names = {(o["kind"], o["metadata"]["name"]) for o in render(build)}
    if build in ("training", *MULTI_WORKER_BUILDS):
        names |= {(o["kind"], o["metadata"]["name"]) for o in render("overlays/gpu")}
    for where, template in workload_templates(build):
        pod = template["spec"]
        wanted = []
        for v in pod.get("volumes", []):
            if "configMap" in v:
                wanted.append(("ConfigMap", v["configMap"]["name"]))
            if "persistentVolumeClaim" in v:
                wanted.append(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
            for source in v.get("projected", {}).get("sources", []):
                wanted.append(("ConfigMap", source["configMap"]["name"]))
        for c in containers(pod):
            for source in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in source and not source[key].get("optional"):
                        wanted.append((kind, source[key]["name"]))
        for ref in wanted:
            assert ref in names, f"{where} refers to missing {ref}"


@needs_kubectl
def test_namespace_enforces_restricted_pod_security():
    namespace = one("overlays/gpu", "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for build in ("overlays/gpu", "monitoring") + TRAINING_BUILDS:
        for obj in render(build):
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == namespace["metadata"]["name"], build


# --- Training ----------------------------------------------------------------------------

@needs_kubectl
def test_training_job_trains_then_exports_where_the_servers_read():
    (job,) = objects("training", "Job")
    pod = job["spec"]["template"]["spec"]
    (trainer,) = pod["containers"]
    script = trainer["args"][0]
    assert "python3 -m train --data_dir=/data" in script
    assert "python3 -m export" in script and "--export_base=/models/effnet" in script
    mounts = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}
    served = one("overlays/gpu", "Deployment", MODEL_NAME)["spec"]["template"]["spec"]
    served_claim = {v["name"]: v for v in served["volumes"]}["models"][
        "persistentVolumeClaim"]["claimName"]
    assert claims[mounts["/models/effnet"]] == served_claim
    assert claims[mounts["/data"]] == "effnet-dataset"
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1
    # Writes with the servers' group, so their exports are readable by the servers.
    assert pod["securityContext"]["fsGroup"] == served["securityContext"]["fsGroup"]


@needs_kubectl
def test_object_storage_training_works_with_the_object_storage_servers():
    """k8s/training/object-storage mounts no models volume (gpu-object-storage has none) and
    publishes where the servers' sync reads; everything it names exists beside them."""
    served = render("overlays/gpu-object-storage")
    trained = render("training/object-storage")
    names = {(o["kind"], o["metadata"]["name"]) for o in served + trained}
    (job,) = [o for o in trained if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
              if "persistentVolumeClaim" in v}
    assert "effnet-models" not in claims
    assert all(("PersistentVolumeClaim", c) in names for c in claims)
    assert ("ServiceAccount", pod["serviceAccountName"]) in names
    remote = {c["metadata"]["name"].rsplit("-", 1)[0]: c["data"]["MODEL_REMOTE"]
              for c in served + trained if c["kind"] == "ConfigMap"
              and "MODEL_REMOTE" in c.get("data", {})}
    assert remote["effnet-model-target"] == remote["effnet-model-source"]
    # Steps in order: choose the version, train and export, publish.
    assert [c["name"] for c in pod["initContainers"]] == ["version", "trainer"]
    assert [c["name"] for c in pod["containers"]] == ["publish"]


@needs_kubectl
def test_object_storage_trainer_is_the_jobs_trainer():
    """The two single-GPU Jobs train alike: same image, resources, security, environment and
    training command; only where the export goes differs."""
    (plain,) = objects("training", "Job")
    (published,) = objects("training/object-storage", "Job")
    a = plain["spec"]["template"]["spec"]
    b = published["spec"]["template"]["spec"]
    (trainer_a,) = a["containers"]
    trainer_b = {c["name"]: c for c in b["initContainers"]}["trainer"]
    for field in ("image", "imagePullPolicy", "resources", "securityContext", "env", "command"):
        assert trainer_a[field] == trainer_b[field], field
    assert trainer_a["envFrom"] == trainer_b["envFrom"]
    train = re.compile(r"python3 -m train .*?\$\{TRAIN_FLAGS\}", re.S)
    assert train.search(trainer_a["args"][0])[0] == train.search(trainer_b["args"][0])[0]
    for field in ("securityContext", "nodeSelector", "tolerations", "restartPolicy"):
        assert a[field] == b[field], field
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert plain["spec"][field] == published["spec"][field], field
    params = {c["metadata"]["name"].rsplit("-", 1)[0]: c["data"]
              for c in objects("training", "ConfigMap")}
    params_b = {c["metadata"]["name"].rsplit("-", 1)[0]: c["data"]
                for c in objects("training/object-storage", "ConfigMap")}
    assert params["effnet-train-params"] == params_b["effnet-train-params"]


def test_model_upload_pod():
    """The stand-alone upload pod validates and follows the same rules."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (offline JSON schemas)")
    documents = [doc for path in STANDALONE_MANIFESTS for doc in standalone(path)]
    for doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    (pod,) = [d for d in documents if d["kind"] == "Pod"]
    (policy,) = [d for d in documents if d["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"][
        "labels"].items()
    spec = pod["spec"]
    assert spec["securityContext"]["fsGroup"] == 10001  # The servers' group.
    (container,) = spec["containers"]
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
              for v in spec["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/models/effnet"]
    assert claims[mount["name"]] == "effnet-models"


def test_training_dockerfile_matches_setup_cfg():
    text = TRAINING_DOCKERFILE.read_text()
    version = re.search(r"^ARG TF_VERSION=(\S+)$", text, re.M)[1]
    assert version.rpartition(".")[0] == pinned_tensorflow_minor()
    assert re.search(r"^FROM tensorflow/tensorflow:\$\{TF_VERSION\}-gpu$", text, re.M)
    assert "pip install ." in text
    assert re.search(r"^USER \d+:\d+$", text, re.M)
    ignore = (TRAINING_DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    copied = {source for line in re.findall(r"^COPY\s+(.*)$", text, re.M)
              for source in line.split()[:-1] if not source.startswith("--")}
    packages = setup_cfg()["options.packages.find"]["include"].split()
    for needed in ["setup.cfg", "pyproject.toml", "README.md"] + [
            f"{p}/" for p in packages if "." not in p]:
        assert f"!{needed}" in ignore, needed
        assert needed in copied, needed


def test_training_dockerfile_lint():
    result = subprocess.run([hadolint_binary(), str(TRAINING_DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("build", ["training", "training/object-storage", *MULTI_WORKER_BUILDS])
def test_training_scripts_parse(build):
    """The shell scripts in the Job/TFJob args parse (bash -n, or sh -n for the rclone
    image's POSIX shell)."""
    shells = {"/bin/bash": shutil.which("bash"), "/bin/sh": shutil.which("sh")}
    if None in shells.values() or KUBECTL is None:
        pytest.skip("needs bash, sh and kubectl")
    for where, template in workload_templates(build):
        for c in containers(template["spec"]):
            shell, flag = c["command"]
            assert shell in shells and flag == "-c", where
            result = subprocess.run([shells[shell], "-n", "-c", c["args"][0]],
                                    capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode == 0, f"{where}/{c['name']}: {result.stderr}"


# --- Model sync from object storage ------------------------------------------------------

FAKE_RCLONE = textwrap.dedent("""\
    #!/bin/sh
    # rclone stand-in over local directories, for the commands the scripts use:
    #   lsf --max-depth 1 DIR | copy --checksum SRC DST | sync --checksum SRC DST | touch FILE
    # copy and sync transfer only files that differ (logged to $RCLONE_LOG); sync also
    # deletes what SRC lacks. A missing DIR exits 3, rclone's "directory not found".
    transfer() {
      mkdir -p "$2"
      (cd "$1" && find . -type f) | while read -r f; do
        if ! cmp -s "$1/$f" "$2/$f"; then
          mkdir -p "$(dirname "$2/$f")" && cp "$1/$f" "$2/$f"
          echo "${2##*/}/${f#./}" >> "${RCLONE_LOG:-/dev/null}"
        fi
      done
    }
    case "$1" in
      lsf) [ -d "$4" ] || exit 3
           for p in "$4"/*; do
             [ -e "$p" ] || continue
             if [ -d "$p" ]; then echo "${p##*/}/"; else echo "${p##*/}"; fi
           done ;;
      copy) transfer "$3" "$4" ;;
      sync) mkdir -p "$4"
            (cd "$4" && find . -type f) | while read -r f; do
              [ -e "$3/$f" ] || rm -f "$4/$f"
            done
            transfer "$3" "$4" ;;
      touch) mkdir -p "$(dirname "$2")" && touch "$2" ;;
      *) exit 2 ;;
    esac
    """)


@pytest.fixture
def rclone_env(tmp_path):
    """PATH with the stand-in rclone first, and the files it and the scripts write."""
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX sh")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "rclone").write_text(FAKE_RCLONE)
    (bin_dir / "rclone").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "RCLONE_LOG": str(tmp_path / "transfers.log"),
            "HEARTBEAT_FILE": str(tmp_path / "heartbeat")}


def run_sh(script: str, env: dict, *, file: bool = False) -> subprocess.CompletedProcess:
    argv = ["sh", script] if file else ["sh", "-c", script]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def sync_once(env: dict, remote, local) -> subprocess.CompletedProcess:
    return run_sh(str(SYNC_SCRIPT), {**env, "MODEL_REMOTE": str(remote),
                                     "MODEL_DIR": str(local), "SYNC_ONCE": "1"}, file=True)


def test_model_sync_copies_only_complete_versions(tmp_path, rclone_env):
    remote, local = tmp_path / "remote", tmp_path / "local"
    for d in (remote / "1", remote / "2", remote / "3", local / "7"):
        d.mkdir(parents=True)
    for version in ("1", "2", "3"):
        (remote / version / "saved_model.pb").write_text(version)
    (remote / "1.complete").touch()
    (remote / "3.complete").touch()  # 2 is still uploading: no marker yet.
    sync_once(rclone_env, remote, local)
    assert sorted(p.name for p in local.iterdir()) == [".synced", "1", "3"]  # 7 is gone.
    assert (local / "3" / "saved_model.pb").read_text() == "3"
    assert (tmp_path / "heartbeat").exists()


def test_model_sync_resumes_an_interrupted_copy(tmp_path, rclone_env):
    """A copy cut short (the container restarted, a transfer failed) is resumed, not
    restarted: the files already complete stay, and what the remote lacks goes."""
    remote, local = tmp_path / "remote", tmp_path / "local"
    (remote / "3" / "variables").mkdir(parents=True)
    (remote / "3" / "saved_model.pb").write_text("graph")
    (remote / "3" / "variables" / "variables.data").write_text("weights")
    (remote / "3.complete").touch()
    staging = local / ".sync-3"
    staging.mkdir(parents=True)
    (staging / "saved_model.pb").write_text("graph")         # Copied before the cut.
    (staging / "stale.tmp").write_text("not in the remote")
    (local / ".sync-9").mkdir()                              # A version since deleted.
    result = sync_once(rclone_env, remote, local)
    assert "resuming version 3" in result.stdout
    assert (tmp_path / "transfers.log").read_text().split() == [
        ".sync-3/variables/variables.data"]
    assert sorted(p.name for p in local.iterdir()) == [".synced", "3"]
    assert sorted(str(p.relative_to(local / "3")) for p in (local / "3").rglob("*")) == [
        "saved_model.pb", "variables", "variables/variables.data"]


def job_scripts(build: str) -> dict[str, str]:
    """The scripts of a build's Job, by container name."""
    (job,) = objects(build, "Job")
    pod = job["spec"]["template"]["spec"]
    return {c["name"]: c["args"][0] for c in containers(pod)}


@needs_kubectl
def test_object_storage_training_publishes_what_the_servers_sync(tmp_path, rclone_env):
    """The object-storage Job's steps against a stand-in bucket: the version chosen counts
    uploads in progress and holds across retries; publishing uploads, then writes the marker,
    and repeats safely; the servers' sync then copies exactly the published versions."""
    remote, runs, local = tmp_path / "bucket", tmp_path / "runs", tmp_path / "local"
    scripts = {name: script.replace('"/runs/', f'"{runs}/')
               for name, script in job_scripts("training/object-storage").items()}
    assert all(f'"{runs}/' in s for s in scripts.values())
    env = {**rclone_env, "RUN_NAME": "cars", "MODEL_REMOTE": str(remote)}
    run = runs / "cars"

    # An empty bucket (the prefix does not exist: rclone exits 3): version 1.
    run_sh(scripts["version"], {**env, "RUN_NAME": "first"})
    assert (runs / "first" / ".publish-version").read_text().strip() == "1"

    # 1 published, 2 still uploading (no marker): this run publishes 3, also when retried.
    for d in (remote / "1", remote / "2"):
        d.mkdir(parents=True)
        (d / "saved_model.pb").write_text(d.name)
    (remote / "1.complete").touch()
    for _ in range(2):
        run_sh(scripts["version"], env)
        assert (run / ".publish-version").read_text().strip() == "3"

    # What the trainer leaves: the export of version 3 in the run directory.
    (run / "export" / "3").mkdir(parents=True)
    (run / "export" / "3" / "saved_model.pb").write_text("3")
    for _ in range(2):  # A retry after a publish repeats it harmlessly.
        run_sh(scripts["publish"], env)
        assert (remote / "3" / "saved_model.pb").read_text() == "3"
        assert (remote / "3.complete").exists()

    sync_once(rclone_env, remote, local)
    assert sorted(p.name for p in local.iterdir()) == [".synced", "1", "3"]


# --- README ------------------------------------------------------------------------------

def test_readme_documents_the_commands():
    text = README.read_text()
    for needed in (
            "kubectl apply -k k8s/overlays/gpu",
            "python -m clients predict --server=grpc://localhost:8500 --model=effnet",
            "python -m clients predict --server=http://localhost:8501 --model=effnet",
            "curl -X POST localhost:8501/v1/models/effnet:predict",
            "kubectl -n effnet port-forward svc/effnet 8500:8500 8501:8501",
            "canary",
            "## Operations", "### Timing budget", "### Shutdown", "### Roll out",
            "### Roll back", "### Scaling", "### Alerts",
            "kubectl -n effnet rollout undo deploy/effnet",
            "kubectl apply -k k8s/training/object-storage"):
        assert needed in text, needed
    # The Deployment's own deadline decides a roll-out's failure, not a --timeout.
    assert "rollout status deploy/effnet --timeout" not in text
    # No build command needs kustomize's load restrictor relaxed any more.
    assert "load-restrictor" not in text
