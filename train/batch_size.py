"""`--batch_size=auto`: the largest power-of-two batch whose training step fits in memory.

Running out of memory is the classic failure when the backbone is unfrozen (phase 2
stores activations for every backbone layer). The estimate counts, per example, every
layer output of the model (kept for the backward pass, plus as much again for gradients
and workspace), and once per model the weights, their gradients and two Adam moments.
The budget is the accelerator's memory when there is one, else available RAM, times a
safety fraction.

Usage:
    batch = auto_batch_size(classifier.model, budget_bytes=memory_budget())
"""

from __future__ import annotations

import math
import os
import subprocess

import keras
import numpy as np
import tensorflow as tf

_MAX_BATCH = 256
_SAFETY = 0.6  # Fraction of memory the estimate may use: allocator overheads, fragmentation.
_ACTIVATION_FACTOR = 2.0  # Forward activations + their gradients in the backward pass.
_WEIGHT_COPIES = 4  # Weights, gradients and Adam's two moments.


def _output_elements(layer: keras.layers.Layer) -> int:
    if isinstance(layer, keras.Model):
        return sum(_output_elements(inner) for inner in layer.layers)
    try:
        shapes = keras.tree.flatten(layer.output)
    except (AttributeError, ValueError):
        return 0
    return sum(int(np.prod([d for d in t.shape[1:] if d is not None])) for t in shapes)


def per_example_bytes(model: keras.Model, bytes_per_value: int = 4) -> int:
    """Estimated training memory per example: every layer's output, times the factor."""
    return int(_output_elements(model) * bytes_per_value * _ACTIVATION_FACTOR)


def fixed_bytes(model: keras.Model, bytes_per_value: int = 4) -> int:
    """Memory independent of the batch: weights and optimizer state."""
    return int(model.count_params() * bytes_per_value * _WEIGHT_COPIES)


def largest_batch(per_example: int, fixed: int, budget: int, max_batch: int = _MAX_BATCH) -> int:
    """The largest power of two <= max_batch with fixed + batch * per_example <= budget.

    Raises:
      ValueError: not even one example fits (the message gives the numbers).
    """
    if per_example <= 0:
        raise ValueError("per_example must be positive")
    room = budget - fixed
    if room < per_example:
        raise ValueError(
            f"one example needs ~{(fixed + per_example) / 2**20:.0f} MiB but the budget is "
            f"{budget / 2**20:.0f} MiB: use a smaller image_size or backbone"
        )
    fits = min(room // per_example, max_batch)
    return 2 ** int(math.floor(math.log2(fits)))


def memory_budget() -> int:
    """Bytes a training step may use: GPU 0's memory if present, else available RAM."""
    if tf.config.list_physical_devices("GPU"):
        total = _gpu_memory() or 8 * 2**30  # Conservative when the driver does not say.
    else:
        total = available_ram()
    return int(total * _SAFETY)


def _gpu_memory() -> int:
    """Total memory of GPU 0 in bytes per nvidia-smi, or 0 if it cannot be read."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0]) * 2**20)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return 0


def available_ram() -> int:
    """Bytes of RAM available to new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def auto_batch_size(model: keras.Model, *, budget_bytes: int | None = None,
                    replicas: int = 1, mixed_precision: bool = False) -> int:
    """Picks a global batch size for training `model` (per-replica batch x replicas)."""
    bytes_per_value = 2 if mixed_precision else 4
    per_replica = largest_batch(
        per_example_bytes(model, bytes_per_value),
        fixed_bytes(model),
        budget_bytes if budget_bytes is not None else memory_budget(),
    )
    return per_replica * max(1, replicas)
