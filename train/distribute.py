"""Distribution strategy and precision policy selection for training.

- TF_CONFIG describing more than one task (chief/worker) -> MultiWorkerMirroredStrategy
  (set by Kubeflow TFJob or an indexed Job, see k8s/training);
- several local GPUs (or a CPU split by split_cpu) -> MirroredStrategy;
- otherwise the default strategy (one GPU or the CPU).

Usage:
    strategy = make_strategy(choose_strategy_kind(os.environ.get("TF_CONFIG"),
                                                  local_device_count()))
    task = task_from_tf_config(os.environ.get("TF_CONFIG"))  # Who writes: task.is_chief.
    set_precision(mixed=True)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json

import keras
import tensorflow as tf

DEFAULT, MIRRORED, MULTI_WORKER = "default", "mirrored", "multi_worker"


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the training cluster.

    Attributes:
      workers: tasks that train (chief + workers), each with its own input pipeline.
      index: this task's input pipeline, 0..workers-1: the chief is 0 and the workers
        follow it (MultiWorkerMirroredStrategy's own numbering), or worker i is i when
        there is no chief.
    """

    workers: int = 1
    index: int = 0

    @property
    def is_chief(self) -> bool:
        """The task that writes the run's outputs (the others hold identical weights)."""
        return self.index == 0


def task_from_tf_config(tf_config: str | None) -> Task:
    """The Task that TF_CONFIG describes; a single task when it is unset.

    Raises:
      ValueError: TF_CONFIG is not valid JSON with a cluster, or its task is not a chief
        or worker of that cluster.
    """
    if not tf_config:
        return Task()
    cluster, task = _parse(tf_config)
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    if not task:
        return Task(chiefs + workers, 0)
    kind, index = task.get("type"), task.get("index", 0)
    size = {"chief": chiefs, "worker": workers}.get(kind, 0)
    if not isinstance(index, int) or not 0 <= index < size:
        raise ValueError(f"TF_CONFIG's task {task} is not a chief or worker of its cluster")
    return Task(chiefs + workers, index if kind == "chief" else chiefs + index)


def loopback_tf_configs(ports: list[int]) -> list[str]:
    """TF_CONFIG for each task of a cluster of len(ports) workers on this machine's loopback,
    as the training operator would set them (for tests and benchmarks)."""
    workers = [f"localhost:{port}" for port in ports]
    return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
            for i in range(len(ports))]


def free_loopback_ports(count: int) -> list[int]:
    """count loopback ports free right now, for loopback_tf_configs: every worker's address
    is in every TF_CONFIG before any worker starts, so they cannot bind port 0 and report it.
    A port can be taken before its worker binds it; the worker then fails to start."""
    import socket

    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))  # All held open at once: count distinct ports.
        return [sock.getsockname()[1] for sock in sockets]


def _parse(tf_config: str) -> tuple[dict, dict]:
    try:
        parsed = json.loads(tf_config)
        cluster, task = parsed["cluster"], parsed.get("task") or {}
        if not isinstance(cluster, dict) or not isinstance(task, dict):
            raise TypeError("cluster and task must be objects")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster': {e}") from e
    return cluster, task


def split_cpu(replicas: int) -> None:
    """Splits the CPU into `replicas` logical devices, for MirroredStrategy over them.

    This runs the multi-replica path (per-replica batches, all-reduced gradients) on a
    machine without GPUs, for tests and benchmarks; it brings no speed-up. Call it before
    TensorFlow has initialised its devices.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)])


def local_device_count() -> int:
    """len(local_devices()), without initialising TensorFlow's devices.

    MultiWorkerMirroredStrategy must be created before they are initialised.
    """
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return len(gpus)
    cpu = tf.config.list_physical_devices("CPU")[0]
    return len(tf.config.get_logical_device_configuration(cpu) or [cpu])


def local_devices() -> list[str]:
    """The devices a local MirroredStrategy replicates over: the GPUs, else the CPU(s)."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def choose_strategy_kind(tf_config: str | None, devices: int) -> str:
    """Which strategy fits the environment.

    Args:
      tf_config: the TF_CONFIG environment variable's value, if any.
      devices: number of local devices (local_device_count()).

    Raises:
      ValueError: TF_CONFIG is set but is not valid JSON with a cluster.
    """
    if tf_config:
        cluster, _ = _parse(tf_config)
        tasks = sum(len(cluster.get(role, [])) for role in ("chief", "worker"))
        if tasks > 1:
            return MULTI_WORKER
    if devices > 1:
        return MIRRORED
    return DEFAULT


def make_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == MULTI_WORKER:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == MIRRORED:
        return tf.distribute.MirroredStrategy(devices=local_devices())
    if kind == DEFAULT:
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy kind {kind!r}")


def set_precision(*, mixed: bool) -> str:
    """Sets the global Keras dtype policy; returns its name.

    mixed_float16 speeds up GPUs with tensor cores; the classifier keeps its softmax in
    float32 (see train.model) so probabilities and the loss stay accurate.
    """
    policy = "mixed_float16" if mixed else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return policy
