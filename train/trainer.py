"""Two-phase transfer learning: a new head on a frozen backbone, then fine-tuning.

Phase 1 trains only the head at a higher learning rate. Without augmentation (and with
BN frozen) the backbone's output for each image never changes, so its pooled features
are computed once and the head trains on them: same head layers, same result, many
times faster. Phase 2 unfreezes the backbone (or its top N blocks) and fine-tunes at a
low, warmed-up, cosine-decayed learning rate with early stopping that restores the best
weights.

Every epoch ends with an atomic checkpoint; running again with the same output_dir
resumes from the last completed epoch and phase, and refuses (rather than silently
restarting) if the configuration changed.

Usage:
    result = train(TrainConfig(data_dir="car_data", output_dir="runs/cars").validated())
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from train import backbones, checkpoint, distribute, report
from train import batch_size as batch_size_lib
from train import data as data_lib
from train.config import AUTO, TrainConfig, load_config, save_config, to_dict
from train.model import Classifier, build_classifier, set_phase1_trainable, set_phase2_trainable

# Files in output_dir.
CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
MODEL_FILE = "model.keras"
CHECKPOINT_DIR = "checkpoints/last"
BEST_WEIGHTS = "checkpoints/best.weights.h5"
LOG_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    output_dir: str
    metrics: dict
    model_path: str


def _metrics(num_classes: int) -> list:
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=min(5, num_classes), name="top5"),
    ]


def compile_phase1(classifier: Classifier, config: TrainConfig, *,
                   on_features: bool) -> keras.Model:
    """Phase 1: frozen backbone, trainable head. Returns the compiled model to fit.

    on_features: fit the head alone on precomputed pooled features instead of pixels.
    """
    set_phase1_trainable(classifier, bn_trainable=config.bn_trainable)
    model = classifier.head_model() if on_features else classifier.model
    model.compile(
        optimizer=keras.optimizers.Adam(config.phase1.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=_metrics(classifier.num_classes),
    )
    return model


def compile_phase2(classifier: Classifier, config: TrainConfig, *,
                   steps_per_epoch: int) -> keras.Model:
    """Phase 2: backbone (or its top N blocks) unfrozen, low learning rate with a schedule."""
    blocks = set_phase2_trainable(classifier, unfreeze=config.unfreeze,
                                  bn_trainable=config.bn_trainable)
    logging.info("Phase 2 trains blocks %s..%s", blocks[0], blocks[-1])
    total = max(1, config.phase2.epochs * steps_per_epoch)
    warmup = min(config.phase2.warmup_epochs * steps_per_epoch, total - 1)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.phase2.learning_rate,
        decay_steps=total - warmup,
        warmup_target=config.phase2.learning_rate if warmup else None,
        warmup_steps=warmup,
        alpha=0.01,
    )
    model = classifier.model
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=_metrics(classifier.num_classes),
    )
    return model


class _EpochEnd(keras.callbacks.Callback):
    """Records history, tracks the best epoch, stops early and checkpoints every epoch."""

    def __init__(self, *, out: pathlib.Path, classifier: Classifier, fitted: keras.Model,
                 state: checkpoint.RunState, phase: int, patience: int, has_val: bool):
        super().__init__()
        self._out, self._classifier, self._fitted = out, classifier, fitted
        self._state, self._phase, self._patience = state, phase, patience
        self._has_val = has_val

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        state = self._state
        state.history.append({"phase": self._phase, "epoch": epoch + 1, **logs})
        state.epochs_done = epoch + 1
        score = logs.get("val_accuracy" if self._has_val else "accuracy", 0.0)
        if score > state.best_val_accuracy:
            state.best_val_accuracy, state.best_epoch, state.wait = score, epoch + 1, 0
            self._classifier.model.save_weights(self._out / BEST_WEIGHTS)
        else:
            state.wait += 1
            if self._patience and state.wait >= self._patience:
                logging.info("Early stopping: no improvement for %d epochs", state.wait)
                self._fitted.stop_training = True
        checkpoint.save(self._out / CHECKPOINT_DIR, self._classifier.model,
                        self._fitted.optimizer, state)


def _features(feature_model: keras.Model, ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    # Compiled once: eager calls per batch would be several times slower.
    extract = tf.function(lambda images: feature_model(images, training=False))
    feats, labels = [], []
    for images, y in ds:  # Labels travel with their images, so dropped files cannot misalign.
        feats.append(extract(images).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def _feature_dataset(x: np.ndarray, y: np.ndarray, batch: int, *, shuffle: bool, seed: int):
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _check_resumable(out: pathlib.Path, config: TrainConfig) -> None:
    """A run in out must have been made with the same config, or we refuse to mix them."""
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    saved, _ = load_config(path)
    if to_dict(saved) != to_dict(config):
        differing = sorted(k for k, v in to_dict(config).items() if to_dict(saved).get(k) != v)
        raise ValueError(
            f"{out} holds a run with a different configuration (differs in {differing}); "
            "use a new --output_dir to start another run"
        )


def train(config: TrainConfig) -> TrainResult:
    """Runs (or resumes) both phases and writes every output to config.output_dir.

    Outputs: checkpoints/, logs/ (TensorBoard), training_curves.png, metrics.json,
    labels.txt, config.json (with resolved values such as the batch size) and model.keras.
    """
    config.validated()
    started = time.monotonic()
    out = pathlib.Path(config.output_dir)
    (out / CHECKPOINT_DIR).parent.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, config)
    distribute.set_precision(mixed=config.mixed_precision)
    strategy = distribute.make_strategy(
        distribute.choose_strategy_kind(os.environ.get("TF_CONFIG"), distribute.num_gpus()))

    info = backbones.get_info(config.backbone)
    image_size = config.image_size or info.input_size
    data_config = _data_config(config)
    with strategy.scope():
        backbone = backbones.build_backbone(config.backbone, weights=config.weights,
                                            input_size=image_size)
        listing = data_lib.list_class_folders(config.data_dir, data_config)
        classifier = build_classifier(backbone, num_classes=len(listing.class_names),
                                      dropout=config.dropout)
    batch = config.batch_size
    if batch == AUTO:
        set_phase2_trainable(classifier, unfreeze=config.unfreeze)  # The larger footprint.
        batch = batch_size_lib.auto_batch_size(
            classifier.model, replicas=strategy.num_replicas_in_sync,
            mixed_precision=config.mixed_precision)
    data = data_lib.ClassFolderData(listing, image_size, batch, data_config)
    logging.info("Data: %s; batch size %d", data.summary(), batch)
    data_lib.write_labels(data.class_names, out / LABELS_FILE)
    save_config(config, out / CONFIG_FILE, batch_size=batch, image_size=image_size,
                class_count=len(data.class_names), skipped_files=len(data.skipped))

    state = checkpoint.read_state(out / CHECKPOINT_DIR) or checkpoint.RunState()
    has_val = data.count("val") > 0
    in_phase2 = state.phase == 2 and not state.phase_done  # _run_phase2 restores it all.
    with strategy.scope():
        if state.phase == 1 and not state.phase_done and config.phase1.epochs:
            _run_phase1(config, classifier, data, state, out, has_val)
        elif (state.epochs_done or state.phase == 2) and not in_phase2:
            checkpoint.load(out / CHECKPOINT_DIR, classifier.model, None)
        if not (state.phase == 2 and state.phase_done) and config.phase2.epochs:
            _run_phase2(config, classifier, data, state, out, has_val)

    metrics = _finish(config, classifier, data, state, out, time.monotonic() - started)
    return TrainResult(str(out), metrics, str(out / MODEL_FILE))


def _data_config(config: TrainConfig) -> data_lib.DataConfig:
    return data_lib.DataConfig(
        val_fraction=config.val_fraction, seed=config.seed,
        augment=data_lib.AugmentConfig() if config.augment else None,
    )


def _fit(model, train_ds, val_ds, *, state, epochs, callbacks, out, phase):
    tensorboard = keras.callbacks.TensorBoard(log_dir=str(out / LOG_DIR / f"phase{phase}"))
    model.fit(train_ds, validation_data=val_ds, initial_epoch=state.epochs_done, epochs=epochs,
              callbacks=[*callbacks, tensorboard], verbose=2,
              shuffle=False)  # Our pipelines shuffle; Keras cannot shuffle a tf.data input.


def _reseeded(data: data_lib.ClassFolderData, phase: int, first_epoch: int):
    """The data with a seed of its own per phase and starting epoch.

    A pipeline's shuffling and augmentation restart from its seed whenever it is built, so
    phase 2 (or a resumed run) would otherwise replay the batches phase 1 already saw.
    """
    seed = data.config.seed + 1000 * phase + first_epoch
    return dataclasses.replace(data, config=dataclasses.replace(data.config, seed=seed))


def _run_phase1(config, classifier, data, state, out, has_val):
    cached = config.uses_feature_cache
    model = compile_phase1(classifier, config, on_features=cached)
    if state.epochs_done:  # Resuming inside phase 1.
        model.optimizer.build(model.trainable_variables)
        checkpoint.load(out / CHECKPOINT_DIR, classifier.model, model.optimizer)
    if cached:
        t0 = time.monotonic()
        feature_model = classifier.feature_model()
        x, y = _features(feature_model, data.dataset("train", training=False))
        train_ds = _feature_dataset(x, y, data.batch_size, shuffle=True, seed=config.seed)
        val_ds = None
        if has_val:
            vx, vy = _features(feature_model, data.val)
            val_ds = _feature_dataset(vx, vy, data.batch_size, shuffle=False, seed=0)
        logging.info("Phase 1: backbone features computed once in %.1fs (%d train images)",
                     time.monotonic() - t0, len(x))
    else:
        train_ds, val_ds = _reseeded(data, 1, state.epochs_done).train, data.val
    callback = _EpochEnd(out=out, classifier=classifier, fitted=model, state=state, phase=1,
                         patience=config.phase1.early_stopping_patience, has_val=has_val)
    _fit(model, train_ds, val_ds, state=state, epochs=config.phase1.epochs,
         callbacks=[callback], out=out, phase=1)
    _end_phase(classifier, state, out, phase=1)


def _run_phase2(config, classifier, data, state, out, has_val):
    steps = math.ceil(data.count("train") / data.batch_size)
    model = compile_phase2(classifier, config, steps_per_epoch=steps)
    if state.phase == 2:  # Resuming inside phase 2: optimizer state and schedule position too.
        model.optimizer.build(model.trainable_variables)
        checkpoint.load(out / CHECKPOINT_DIR, classifier.model, model.optimizer)
    else:
        state.start_phase(2)
    callback = _EpochEnd(out=out, classifier=classifier, fitted=model, state=state, phase=2,
                         patience=config.phase2.early_stopping_patience, has_val=has_val)
    train_ds = _reseeded(data, 2, state.epochs_done).train
    _fit(model, train_ds, data.val, state=state, epochs=config.phase2.epochs,
         callbacks=[callback], out=out, phase=2)
    _end_phase(classifier, state, out, phase=2)


def _end_phase(classifier, state, out, *, phase):
    """Restores the phase's best weights, records its best score and checkpoints the end."""
    best = out / BEST_WEIGHTS
    if best.is_file():
        classifier.model.load_weights(best)
    state.phase_done = True
    state.phase_best[str(phase)] = state.best_val_accuracy
    logging.info("Phase %d done: best %s %.4f at epoch %d", phase,
                 "val_accuracy", state.best_val_accuracy, state.best_epoch)
    print(f"phase {phase}: {state.epochs_done} epochs, best val accuracy "
          f"{state.best_val_accuracy:.4f} (epoch {state.best_epoch})", flush=True)
    checkpoint.save(out / CHECKPOINT_DIR, classifier.model, None, state)
    if phase == 1:
        best.unlink(missing_ok=True)  # Phase 2 tracks its own best.


def _finish(config, classifier, data, state, out, seconds) -> dict:
    eval_split = "test" if data.count("test") else "val"
    evaluation = {}
    if data.count(eval_split):
        classifier.model.compile(loss=keras.losses.SparseCategoricalCrossentropy(),
                                 metrics=_metrics(classifier.num_classes))
        results = classifier.model.evaluate(data.dataset(eval_split), return_dict=True, verbose=0)
        evaluation = {"split": eval_split, "top1": float(results["accuracy"]),
                      "top5": float(results["top5"]), "loss": float(results["loss"]),
                      "examples": data.count(eval_split)}
    metrics = {
        "phase1": {"best_val_accuracy": state.phase_best.get("1")},
        "phase2": {"best_val_accuracy": state.phase_best.get("2")},
        "evaluation": evaluation,
        "epochs": {"phase1": sum(h["phase"] == 1 for h in state.history),
                   "phase2": sum(h["phase"] == 2 for h in state.history)},
        "counts": {split: data.count(split) for split in data_lib.SPLITS},
        "skipped_files": len(data.skipped),
        "batch_size": data.batch_size,
        "image_size": data.image_size,
        "seconds_this_invocation": round(seconds, 1),
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    if state.history:
        report.plot_training_curves(state.history, out / CURVES_FILE)
    classifier.model.save(out / MODEL_FILE)
    print(f"done: {eval_split} top-1 {evaluation.get('top1', float('nan')):.4f}, "
          f"top-5 {evaluation.get('top5', float('nan')):.4f}; outputs in {out}", flush=True)
    return metrics
