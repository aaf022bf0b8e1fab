"""The run directory: what a training run leaves in its output_dir, and how to read it back.

The contract between training and everything after it (evaluation, export): file names and
the readers/writers of the model, labels, resolved config and metrics. Importing this module
does not import TensorFlow or Keras; loading the model does.

    runs/cars/
        model.keras               final model (best weights of the last phase)
        labels.txt                class names, one a line, in class-index order
        config.json               the TrainConfig and resolved values (batch size, image size)
        metrics.json              final evaluation and per-phase results
        training_curves.png       accuracy and loss per epoch
        evaluation_<split>.json   written by train.evaluate, with a confusion matrix PNG
        checkpoints/, logs/       resumable checkpoint, best weights, TensorBoard logs

Usage:
    config, resolved = rundir.load_config(pathlib.Path("runs/cars") / rundir.CONFIG_FILE)
    labels = rundir.read_labels(pathlib.Path("runs/cars") / rundir.LABELS_FILE)
    model = rundir.load_trained_model("runs/cars")
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from train.config import TrainConfig, from_dict, to_dict

if TYPE_CHECKING:
    import keras

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints/last"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
LOG_DIR = "logs"
RESULTS_FILE = "evaluation_{split}.json"
CONFUSION_FILE = "confusion_matrix_{split}.png"


def write_labels(class_names: Iterable[str], path: str | os.PathLike) -> None:
    """Writes one class name per line (UTF-8, "\\n" line ends), in class-index order.

    Raises:
      ValueError: a name is empty, holds a line break or repeats, any of which would not
        read back as the same list.
    """
    names = list(class_names)
    for name in names:
        if not name or len(name.splitlines()) != 1 or name.splitlines()[0] != name:
            raise ValueError(f"class name {name!r} cannot be written to a labels file")
    repeated = sorted(n for n, k in collections.Counter(names).items() if k > 1)
    if repeated:
        raise ValueError(f"class names repeat: {repeated}")
    pathlib.Path(path).write_bytes("".join(f"{n}\n" for n in names).encode("utf-8"))


def read_labels(path: str | os.PathLike) -> list[str]:
    """Reads a labels file written by `write_labels`; index i is the name of class i.

    Names are kept exactly (folder names may end in spaces); empty lines and a "\\r" from
    Windows line ends are dropped.
    """
    text = pathlib.Path(path).read_bytes().decode("utf-8")
    return [line.removesuffix("\r") for line in text.split("\n") if line.removesuffix("\r")]


def save_config(config: TrainConfig, path: str | os.PathLike, **resolved: Any) -> None:
    """Writes the config as JSON, plus resolved facts (e.g. the chosen batch size)."""
    payload = {"config": to_dict(config), "resolved": resolved}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def load_config(path: str | os.PathLike) -> tuple[TrainConfig, dict[str, Any]]:
    """Reads a config written by `save_config`: (the TrainConfig, the resolved facts)."""
    with open(path) as f:
        payload = json.load(f)
    return from_dict(payload["config"]), payload.get("resolved", {})


def write_metrics(metrics: dict, run_dir: str | os.PathLike) -> None:
    """Writes the run's final metrics as run_dir/metrics.json."""
    (pathlib.Path(run_dir) / METRICS_FILE).write_text(json.dumps(metrics, indent=2))


def read_metrics(run_dir: str | os.PathLike) -> dict:
    """The run's metrics.json, or {} when the run has none."""
    path = pathlib.Path(run_dir) / METRICS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def sample_images(config: TrainConfig, count: int) -> list[pathlib.Path]:
    """Up to count image files of the run's dataset, spread over its classes.

    From the test split if there is one, else val, else train; [] when the dataset is not
    there (it need not travel with the trained model) or not a dataset.
    """
    from train import data as data_lib  # TensorFlow: only for callers that need the data.

    try:
        listing = data_lib.list_class_folders(config.data_dir)
    except (ValueError, OSError):
        return []
    split = listing.splits.get("test") or listing.splits.get("val") or listing.splits["train"]
    # Spread over the classes rather than the first folder's files.
    step = max(1, len(split.paths) // count)
    return [pathlib.Path(p) for p in list(split.paths)[::step][:count]]


def save_model(model: keras.Model, run_dir: str | os.PathLike) -> pathlib.Path:
    """Saves the final model as run_dir/model.keras; returns its path."""
    path = pathlib.Path(run_dir) / MODEL_FILE
    model.save(path)
    return path


def load_trained_model(run_dir: str | os.PathLike) -> keras.Model:
    """Loads model.keras from a training output directory."""
    import keras

    path = pathlib.Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found: is {run_dir} a finished training run?")
    config, _ = load_config(pathlib.Path(run_dir) / CONFIG_FILE)
    if config.backbone.startswith("efn-"):
        import efficientnet.tfkeras  # noqa: F401  Registers the package's custom layers.
    return keras.models.load_model(path, compile=False)
