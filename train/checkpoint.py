"""Resumable training state: model weights, optimizer state and progress, saved atomically.

A checkpoint is a directory holding `model.weights.h5`, `optimizer.npz` (every optimizer
variable, including its step counter, so learning-rate schedules resume where they were)
and `state.json` (phase, completed epochs, early-stopping bookkeeping, per-epoch history).
It is written to a temporary sibling and swapped in with renames, so a run killed at any
moment leaves either the previous or the new checkpoint, never a torn one.

Usage:
    save(ckpt_dir, model, optimizer, state)
    state = load(ckpt_dir, model, optimizer)   # None when there is nothing to resume
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil

import keras
import numpy as np

_WEIGHTS, _OPTIMIZER, _STATE = "model.weights.h5", "optimizer.npz", "state.json"


@dataclasses.dataclass
class RunState:
    """Where a run is.

    Attributes:
      phase: the phase in progress or last finished (1 or 2).
      epochs_done: epochs completed in that phase.
      phase_done: whether that phase has finished (all epochs or early stopping).
      best_val_accuracy / best_epoch / wait: early-stopping bookkeeping of the phase.
      history: one dict of metrics per completed epoch, both phases, in order.
      phase_best: best validation accuracy of each finished phase, keyed "1"/"2".
    """

    phase: int = 1
    epochs_done: int = 0
    phase_done: bool = False
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    wait: int = 0
    history: list[dict] = dataclasses.field(default_factory=list)
    phase_best: dict[str, float] = dataclasses.field(default_factory=dict)

    def start_phase(self, phase: int) -> None:
        self.phase, self.epochs_done, self.phase_done = phase, 0, False
        self.best_val_accuracy, self.best_epoch, self.wait = -1.0, 0, 0


def save(directory: str | os.PathLike, model: keras.Model,
         optimizer: keras.optimizers.Optimizer | None, state: RunState) -> None:
    """Atomically replaces the checkpoint in `directory` (created if needed)."""
    final = pathlib.Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_weights(tmp / _WEIGHTS)
    variables = {} if optimizer is None else {
        f"{i}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)
    }
    np.savez(tmp / _OPTIMIZER, **variables)
    (tmp / _STATE).write_text(json.dumps(dataclasses.asdict(state), indent=1))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _recover(final: pathlib.Path) -> None:
    # Killed between the two renames: the previous checkpoint is complete in ".old".
    old = final.with_name(final.name + ".old")
    if not final.exists() and old.exists():
        old.rename(final)


def read_state(directory: str | os.PathLike) -> RunState | None:
    """The saved progress, without touching any model; None if there is no checkpoint."""
    final = pathlib.Path(directory)
    _recover(final)
    path = final / _STATE
    if not path.is_file():
        return None
    return RunState(**json.loads(path.read_text()))


def load(directory: str | os.PathLike, model: keras.Model,
         optimizer: keras.optimizers.Optimizer | None) -> RunState | None:
    """Restores weights (and optimizer variables, if given) from a checkpoint.

    The optimizer must be built over the same trainable variables as when it was saved
    (same phase setup); mismatches raise ValueError rather than training from a wrong state.
    """
    state = read_state(directory)
    if state is None:
        return None
    final = pathlib.Path(directory)
    model.load_weights(final / _WEIGHTS)
    if optimizer is not None:
        with np.load(final / _OPTIMIZER) as saved:
            values = [saved[str(i)] for i in range(len(saved.files))]
        if len(values) != len(optimizer.variables):
            raise ValueError(
                f"checkpoint has {len(values)} optimizer variables, the optimizer has "
                f"{len(optimizer.variables)}: the run's configuration changed"
            )
        for variable, value in zip(optimizer.variables, values):
            if tuple(variable.shape) != value.shape:
                raise ValueError(f"optimizer variable {variable.path} changed shape")
            variable.assign(value)
    return state
