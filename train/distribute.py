"""Distribution strategy and precision policy selection for training.

- TF_CONFIG describing more than one task (chief/worker) -> MultiWorkerMirroredStrategy
  (set by Kubeflow TFJob or an indexed Job, see k8s/training);
- several local GPUs -> MirroredStrategy;
- otherwise the default strategy (one GPU or the CPU).

Usage:
    strategy = make_strategy(choose_strategy_kind(os.environ.get("TF_CONFIG"), num_gpus()))
    set_precision(mixed=True)
"""

from __future__ import annotations

import json

import keras
import tensorflow as tf

DEFAULT, MIRRORED, MULTI_WORKER = "default", "mirrored", "multi_worker"


def num_gpus() -> int:
    return len(tf.config.list_physical_devices("GPU"))


def choose_strategy_kind(tf_config: str | None, gpus: int) -> str:
    """Which strategy fits the environment.

    Args:
      tf_config: the TF_CONFIG environment variable's value, if any.
      gpus: number of local GPUs.

    Raises:
      ValueError: TF_CONFIG is set but is not valid JSON with a cluster.
    """
    if tf_config:
        try:
            cluster = json.loads(tf_config)["cluster"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"TF_CONFIG is not a JSON object with a 'cluster': {e}") from e
        tasks = sum(len(cluster.get(role, [])) for role in ("chief", "worker"))
        if tasks > 1:
            return MULTI_WORKER
    if gpus > 1:
        return MIRRORED
    return DEFAULT


def make_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == MULTI_WORKER:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == MIRRORED:
        return tf.distribute.MirroredStrategy()
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
