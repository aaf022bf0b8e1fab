"""Evaluates a trained model directory on a class-per-folder dataset.

Top-1/top-5 accuracy, per-class accuracy and a confusion matrix (JSON + PNG), on the test
split (or val when there is no test split). Splits carved from train/ are recreated
exactly, from the seed and fraction in the run's config.json.

Usage:
    results = evaluate_model("runs/cars", "car_data")
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from train import rundir

# TensorFlow is imported inside the functions: `python -m train.evaluate` runs this file
# before its entry point, which must come first to keep TensorFlow's start-up noise out.


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def evaluate_model(model_dir: str | pathlib.Path, data_dir: str | pathlib.Path, *,
                   split: str | None = None, batch_size: int = 64) -> dict:
    """Evaluates model_dir's model on data_dir; writes JSON and PNG results into model_dir.

    Args:
      model_dir: a training output directory (model.keras, labels.txt, config.json).
      data_dir: class-per-folder dataset with the same classes.
      split: "test", "val" or "train"; default test if present, else val.
      batch_size: inference batch size.

    Returns:
      {"split", "examples", "top1", "top5", "per_class_accuracy": {name: acc},
       "confusion_matrix": [[...]]}.

    Raises:
      ValueError: missing files, class mismatch or an empty split.
    """
    from train import data as data_lib
    from train import progress, report

    model_dir = pathlib.Path(model_dir)
    config, resolved = rundir.load_config(model_dir / rundir.CONFIG_FILE)
    class_names = rundir.read_labels(model_dir / rundir.LABELS_FILE)
    listing = data_lib.list_class_folders(
        data_dir, data_lib.DataConfig(val_fraction=config.val_fraction, seed=config.seed))
    if list(listing.class_names) != class_names:
        raise ValueError(f"{data_dir} classes differ from the model's labels.txt")
    split = split or ("test" if "test" in listing.splits else "val")
    if split not in listing.splits or not len(listing.splits[split]):
        raise ValueError(f"{data_dir} has no {split} split")
    model = rundir.load_trained_model(model_dir)
    ds = data_lib.make_dataset(
        listing.splits[split], image_size=int(resolved["image_size"]), batch_size=batch_size,
        config=data_lib.DataConfig(augment=None, cache="none"))
    scores, labels = [], []
    # Labels come with the images: robust to a file that fails to decode.
    for images, y in progress.track(
            ds, title=f"Scoring {len(listing.splits[split])} {split} images"):
        scores.append(np.asarray(model(images, training=False)))
        labels.append(y.numpy())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    k = min(5, len(class_names))
    top_k = np.argsort(-scores, axis=1)[:, :k]
    matrix = confusion_matrix(labels, top_k[:, 0], len(class_names))
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    results = {
        "split": split,
        "examples": int(len(labels)),
        "top1": float(np.mean(top_k[:, 0] == labels)),
        "top5": float(np.mean((top_k == labels[:, None]).any(axis=1))),
        "per_class_accuracy": {n: float(a) for n, a in zip(class_names, per_class)},
        "confusion_matrix": matrix.tolist(),
    }
    (model_dir / rundir.RESULTS_FILE.format(split=split)).write_text(json.dumps(results, indent=1))
    report.plot_confusion_matrix(matrix, class_names,
                                 model_dir / rundir.CONFUSION_FILE.format(split=split))
    return results
