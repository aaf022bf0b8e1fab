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
import math
import os
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from train import backbones, checkpoint, distribute, progress, report, rundir
from train import batch_size as batch_size_lib
from train import data as data_lib
from train import loop as loop_lib
from train.config import AUTO, TrainConfig, to_dict
from train.model import Classifier, build_classifier, set_phase1_trainable, set_phase2_trainable


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


@dataclasses.dataclass
class _Run:
    """One invocation's shared state: what every phase reads and updates.

    Every task of a multi-worker job holds the same weights and takes the same decisions
    (metrics are all-reduced), but only the chief writes to output_dir: the others would
    write the same bytes to the same shared volume.
    """

    config: TrainConfig
    strategy: tf.distribute.Strategy
    task: distribute.Task
    classifier: Classifier
    data: data_lib.ClassFolderData
    state: checkpoint.RunState
    out: pathlib.Path
    best_weights: list | None = None  # The phase's best so far, kept by every task.

    @property
    def has_val(self) -> bool:
        return self.data.count("val") > 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.data.count("train") / self.data.batch_size)

    def shard(self, split: str, **kwargs) -> tf.data.Dataset | None:
        """This task's share of a split, in global-batch-sized batches (for evaluation)."""
        return self.data.dataset(split, shard=(self.task.workers, self.task.index), **kwargs)

    def loop(self, model: keras.Model) -> loop_lib.Loop:
        return loop_lib.Loop(self.strategy, model, num_classes=self.classifier.num_classes,
                             workers=self.task.workers,
                             label_smoothing=self.config.label_smoothing)

    def check_input_context(self, context: tf.distribute.InputContext) -> int:
        """The per-replica batch size, after checking the strategy shards as we do."""
        if (context.num_input_pipelines, context.input_pipeline_id) != (
                self.task.workers, self.task.index):
            raise RuntimeError(
                f"the strategy reads input pipeline {context.input_pipeline_id} of "
                f"{context.num_input_pipelines}, TF_CONFIG says task {self.task}")
        return context.get_per_replica_batch_size(self.data.batch_size)


class EpochEnd(keras.callbacks.Callback):
    """Records history, tracks the best epoch, stops early and checkpoints every epoch."""

    def __init__(self, run: _Run, *, fitted: keras.Model, phase: int, patience: int):
        super().__init__()
        self._run, self._fitted, self._patience = run, fitted, patience
        self.phase = phase
        self._started = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        run, state = self._run, self._run.state
        logs = {k: float(v) for k, v in (logs or {}).items()}
        seconds = round(time.monotonic() - self._started, 3)  # Training and validation.
        state.history.append({"phase": self.phase, "epoch": epoch + 1, **logs,
                              "seconds": seconds})
        state.epochs_done = epoch + 1
        model = run.classifier.model
        score = logs.get("val_accuracy" if run.has_val else "accuracy", 0.0)
        if score > state.best_val_accuracy:
            state.best_val_accuracy, state.best_epoch, state.wait = score, epoch + 1, 0
            run.best_weights = model.get_weights()
            if run.task.is_chief:  # For a resumed run; this one restores from memory.
                model.save_weights(run.out / rundir.BEST_WEIGHTS)
        else:
            state.wait += 1
            if self._patience and state.wait >= self._patience:
                logging.info("Early stopping: no improvement for %d epochs", state.wait)
                self._fitted.stop_training = True
        if run.task.is_chief:
            checkpoint.save(run.out / rundir.CHECKPOINT_DIR, model, self._fitted.optimizer, state)


def compute_features(feature_model: keras.Model, ds: tf.data.Dataset, split: str
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The backbone's pooled features of every image in ds, with their labels (in order)."""
    # Compiled once: eager calls per batch would be several times slower.
    extract = tf.function(lambda images: feature_model(images, training=False))
    feats, labels = [], []
    # Labels travel with their images, so a file that fails to decode cannot misalign them.
    for images, y in progress.track(ds, title=f"Phase 1: backbone features of the {split} "
                                              "images, computed once"):
        feats.append(extract(images).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats), np.concatenate(labels)


def feature_dataset(x: np.ndarray, y: np.ndarray, batch: int, *, shuffle: bool, seed: int,
                    repeat: bool = False) -> tf.data.Dataset:
    """Batches of (features, labels) to fit the head on, optionally shuffled and repeated."""
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _check_resumable(out: pathlib.Path, config: TrainConfig) -> None:
    """A run in out must have been made with the same config, or we refuse to mix them."""
    path = out / rundir.CONFIG_FILE
    if not path.is_file():
        return
    saved, _ = rundir.load_config(path)
    if to_dict(saved) != to_dict(config):
        differing = sorted(k for k, v in to_dict(config).items() if to_dict(saved).get(k) != v)
        raise ValueError(
            f"{out} holds a run with a different configuration (differs in {differing}); "
            "use a new --output_dir to start another run"
        )


def train(config: TrainConfig, *, strategy: tf.distribute.Strategy | None = None
          ) -> TrainResult:
    """Runs (or resumes) both phases and writes every output to config.output_dir.

    Outputs: checkpoints/, logs/ (TensorBoard), training_curves.png, metrics.json,
    labels.txt, config.json (with resolved values such as the batch size) and model.keras.

    Under MultiWorkerMirroredStrategy (TF_CONFIG lists several tasks) every task runs this
    with the same config: each trains on its shard of the files, only the chief writes,
    and output_dir must be shared storage, as each task resumes from the chief's checkpoint.
    config.batch_size is the global batch, split evenly over all replicas.

    Args:
      strategy: overrides the strategy chosen from TF_CONFIG and the local GPUs.

    Raises:
      ValueError: a bad configuration, or one that differs from the run in output_dir.
    """
    config.validated()
    started = time.monotonic()
    out = pathlib.Path(config.output_dir)
    task = distribute.task_from_tf_config(os.environ.get("TF_CONFIG"))
    if task.is_chief:
        (out / rundir.CHECKPOINT_DIR).parent.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, config)
    # The strategy first: MultiWorkerMirroredStrategy must configure TensorFlow before
    # anything (a dtype policy included) initialises it.
    strategy = strategy or distribute.make_strategy(
        distribute.choose_strategy_kind(os.environ.get("TF_CONFIG"),
                                        distribute.local_device_count()))
    distribute.set_precision(mixed=config.mixed_precision)

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
    replicas = strategy.num_replicas_in_sync
    if batch == AUTO:
        set_phase2_trainable(classifier, unfreeze=config.unfreeze)  # The larger footprint.
        batch = batch_size_lib.auto_batch_size(
            classifier.model, replicas=replicas, mixed_precision=config.mixed_precision)
    if batch % replicas:
        raise ValueError(f"batch_size {batch} is the global batch: it must be a multiple of "
                         f"the {replicas} replicas")
    data = data_lib.ClassFolderData(listing, image_size, batch, data_config)
    logging.info("Data: %s; global batch size %d over %d replicas (%d tasks)",
                 data.summary(), batch, replicas, task.workers)
    if task.is_chief:
        rundir.write_labels(data.class_names, out / rundir.LABELS_FILE)
        rundir.save_config(config, out / rundir.CONFIG_FILE, batch_size=batch,
                           image_size=image_size, class_count=len(data.class_names),
                           skipped_files=len(data.skipped))

    state = checkpoint.read_state(out / rundir.CHECKPOINT_DIR) or checkpoint.RunState()
    run = _Run(config, strategy, task, classifier, data, state, out)
    in_phase2 = state.phase == 2 and not state.phase_done  # _run_phase2 restores it all.
    # Outside the strategy's scope from here on (but where an optimizer is made): Keras
    # creates throwaway variables while saving, which in the scope would be collective
    # broadcasts that only the chief, the one task that saves, takes part in.
    if state.phase == 1 and not state.phase_done and config.phase1.epochs:
        _run_phase1(run)
    elif (state.epochs_done or state.phase == 2) and not in_phase2:
        checkpoint.load(out / rundir.CHECKPOINT_DIR, classifier.model, None)
    if not (state.phase == 2 and state.phase_done) and config.phase2.epochs:
        _run_phase2(run)
    metrics = _finish(run, time.monotonic() - started)
    return TrainResult(str(out), metrics, str(out / rundir.MODEL_FILE))


def _data_config(config: TrainConfig) -> data_lib.DataConfig:
    return data_lib.DataConfig(
        val_fraction=config.val_fraction, seed=config.seed,
        augment=data_lib.AugmentConfig() if config.augment else None,
    )


def _fit(run: _Run, model, make_train, val_ds, *, epochs, patience, phase):
    callbacks = [EpochEnd(run, fitted=model, phase=phase, patience=patience)]
    verbose = 0
    if run.task.is_chief:
        log_dir = run.out / rundir.LOG_DIR / f"phase{phase}"
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(log_dir)))
        verbose = 1 if progress.on_terminal() else 2  # Else a line per epoch (logs).
    run.loop(model).fit(make_train, steps_per_epoch=run.steps_per_epoch, val=val_ds,
                        initial_epoch=run.state.epochs_done, epochs=epochs,
                        callbacks=callbacks, verbose=verbose)


def _reseeded(data: data_lib.ClassFolderData, phase: int, first_epoch: int):
    """The data with a seed of its own per phase and starting epoch.

    A pipeline's shuffling and augmentation restart from its seed whenever it is built, so
    phase 2 (or a resumed run) would otherwise replay the batches phase 1 already saw.
    """
    seed = data.config.seed + 1000 * phase + first_epoch
    return dataclasses.replace(data, config=dataclasses.replace(data.config, seed=seed))


def _pixels_fn(run: _Run, phase: int):
    """This task's repeating, shuffled and augmented share of the training images."""
    data = _reseeded(run.data, phase, run.state.epochs_done)
    if phase == 1 and not run.config.phase1_augments:
        data = dataclasses.replace(data, config=dataclasses.replace(data.config, augment=None))

    def make_train(context):
        return data.dataset("train", training=True, repeat=True,
                            batch_size=run.check_input_context(context),
                            shard=(context.num_input_pipelines, context.input_pipeline_id))
    return make_train


def _cached_features(run: _Run):
    """Phase 1 on features: this task's share computed once; (train fn, val dataset)."""
    t0 = time.monotonic()
    feature_model = run.classifier.feature_model()
    x, y = compute_features(feature_model, run.shard("train"), "train")
    seed = run.config.seed + run.state.epochs_done

    def make_train(context):
        return feature_dataset(x, y, run.check_input_context(context), shuffle=True,
                               seed=seed, repeat=True)

    val_ds = None
    if run.has_val:
        vx, vy = compute_features(feature_model, run.shard("val"), "val")
        val_ds = feature_dataset(vx, vy, run.data.batch_size, shuffle=False, seed=0)
    logging.info("Phase 1: backbone features computed once in %.1fs (%d train images)",
                 time.monotonic() - t0, len(x))
    return make_train, val_ds


def _run_phase1(run: _Run):
    config, state = run.config, run.state
    cached = config.uses_feature_cache
    with run.strategy.scope():
        model = compile_phase1(run.classifier, config, on_features=cached)
        model.optimizer.build(model.trainable_variables)
    if state.epochs_done:  # Resuming inside phase 1.
        checkpoint.load(run.out / rundir.CHECKPOINT_DIR, run.classifier.model, model.optimizer)
    if cached:
        make_train, val_ds = _cached_features(run)
    else:
        make_train, val_ds = _pixels_fn(run, 1), run.shard("val")
    _fit(run, model, make_train, val_ds, epochs=config.phase1.epochs,
         patience=config.phase1.early_stopping_patience, phase=1)
    _end_phase(run, phase=1)


def _run_phase2(run: _Run):
    config, state = run.config, run.state
    with run.strategy.scope():
        model = compile_phase2(run.classifier, config, steps_per_epoch=run.steps_per_epoch)
        model.optimizer.build(model.trainable_variables)
    if state.phase == 2:  # Resuming inside phase 2: optimizer state and schedule position too.
        checkpoint.load(run.out / rundir.CHECKPOINT_DIR, run.classifier.model, model.optimizer)
    else:
        state.start_phase(2)
    _fit(run, model, _pixels_fn(run, 2), run.shard("val"), epochs=config.phase2.epochs,
         patience=config.phase2.early_stopping_patience, phase=2)
    _end_phase(run, phase=2)


def _end_phase(run: _Run, *, phase):
    """Restores the phase's best weights, records its best score and checkpoints the end."""
    state, model, best = run.state, run.classifier.model, run.out / rundir.BEST_WEIGHTS
    if run.best_weights is not None:
        model.set_weights(run.best_weights)
    elif best.is_file():  # Resumed after the best epoch: the chief's file from before.
        model.load_weights(best)
    run.best_weights = None
    state.phase_done = True
    state.phase_best[str(phase)] = state.best_val_accuracy
    if run.task.is_chief:
        print(f"phase {phase}: {state.epochs_done} epochs, best "
              f"{'val accuracy' if run.has_val else 'accuracy'} {state.best_val_accuracy:.4f} "
              f"(epoch {state.best_epoch})", flush=True)
        checkpoint.save(run.out / rundir.CHECKPOINT_DIR, model, None, state)
        if phase == 1:
            best.unlink(missing_ok=True)  # Phase 2 tracks its own best.


def _finish(run: _Run, seconds) -> dict:
    data, state, out = run.data, run.state, run.out
    eval_split = "test" if data.count("test") else "val"
    evaluation = {}
    if data.count(eval_split):
        results = run.loop(run.classifier.model).evaluate(run.shard(eval_split))
        evaluation = {"split": eval_split, "top1": results["accuracy"],
                      "top5": results["top5"], "loss": results["loss"],
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
        "replicas": run.strategy.num_replicas_in_sync,
        "workers": run.task.workers,
        "seconds_this_invocation": round(seconds, 1),
    }
    if not run.task.is_chief:
        return metrics
    rundir.write_metrics(metrics, out)
    if state.history:
        report.plot_training_curves(state.history, out / rundir.CURVES_FILE)
    rundir.save_model(run.classifier.model, out)
    print(f"done: {eval_split} top-1 {evaluation.get('top1', float('nan')):.4f}, "
          f"top-5 {evaluation.get('top5', float('nan')):.4f}; outputs in {out}", flush=True)
    return metrics
