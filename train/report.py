"""Training curves and confusion matrices as PNG files (matplotlib, no display needed).

Usage:
    plot_training_curves(history, "runs/cars/training_curves.png")
    plot_confusion_matrix(matrix, class_names, "runs/cars/confusion_matrix.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # Files only: works on servers without a display.
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict], path: str | os.PathLike) -> None:
    """Loss and accuracy, train vs validation, both phases on one epoch axis.

    Args:
      history: one dict per epoch, in order, with "phase" (1 or 2) and any of "loss",
        "accuracy", "val_loss", "val_accuracy".
      path: PNG file to write.
    """
    if not history:
        raise ValueError("no epochs to plot")
    plt = _pyplot()
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    boundary = next((i for i, h in enumerate(history) if h.get("phase") == 2), None)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label, style in ((metric, "train", "-o"), (f"val_{metric}", "validation", "-s")):
            values = [h.get(key, np.nan) for h in history]
            if not np.all(np.isnan(values)):
                ax.plot(epochs, values, style, label=label, markersize=3)
        if boundary is not None:
            ax.axvline(boundary + 0.5, color="grey", linestyle="--", linewidth=1)
            ax.text(boundary + 0.6, ax.get_ylim()[1], " fine-tune", va="top", color="grey")
        ax.set_xlabel("epoch (phase 1: head only; phase 2: fine-tuning)")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                          path: str | os.PathLike) -> None:
    """A row-normalised confusion matrix (rows: true class, columns: predicted)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix shape {matrix.shape} does not match {n} class names")
    plt = _pyplot()
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = min(4 + n * 0.35, 40)
    fig, ax = plt.subplots(figsize=(size, size), constrained_layout=True)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 50:  # Beyond that, tick labels are unreadable anyway.
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.savefig(path, dpi=100)
    plt.close(fig)
