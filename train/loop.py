"""Training and evaluation loops that run the same under every tf.distribute strategy.

Keras 3's Model.fit cannot train under MultiWorkerMirroredStrategy (keras-team/keras#20585:
its symbolic build reduces a PerReplica batch in eager mode, and it reduces scalar
metrics along axis 0), so both phases run this loop under every strategy, one replica or
many: the path a laptop run tests is the path a cluster runs.

- Data: `strategy.distribute_datasets_from_function` calls the caller's factory once per
  input pipeline (one per worker) with a tf.distribute.InputContext; the factory shards the
  files by `input_pipeline_id` and batches at `get_per_replica_batch_size(global_batch)`.
  Datasets repeat and every epoch is a fixed number of full global batches, so all
  replicas run the same number of steps (a collective waits forever for a replica that
  ran out of data).
- Step: each replica's loss is its batch mean divided by the replica count and the
  optimizer sums the gradients over replicas: the gradient of the global batch's mean.
- Metrics: per-step sums (loss, correct, top-k correct, examples) are all-reduced, so every
  task sees the same numbers and takes the same early-stopping decision.
- Evaluation: each worker evaluates its own shard (shards may differ by an image, so no
  per-step collectives), then one all-reduce of the sums: every example counted once.

Usage:
    loop = Loop(strategy, model, num_classes=10, workers=task.workers)  # model compiled
    loop.fit(make_train, steps_per_epoch=..., val=val_ds, epochs=5, callbacks=[...])
    print(loop.evaluate(test_ds))   # {"loss": ..., "accuracy": ..., "top5": ...}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

# A per-input-pipeline dataset of per-replica batches, for distribute_datasets_from_function.
DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]

_LOSS, _CORRECT, _TOP_K, _COUNT = range(4)


def _logs(totals: np.ndarray) -> dict[str, float]:
    count = max(float(totals[_COUNT]), 1.0)
    return {"loss": totals[_LOSS] / count, "accuracy": totals[_CORRECT] / count,
            "top5": totals[_TOP_K] / count}


class Loop:
    """Fits and evaluates a Keras classifier (softmax outputs, integer labels).

    fit() needs the model compiled with its optimizer (compile wraps it in a
    LossScaleOptimizer under mixed_float16); evaluate() needs neither.
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, *,
                 num_classes: int, workers: int = 1, label_smoothing: float = 0.0):
        """label_smoothing: of the training targets only (the reported losses stay plain)."""
        self._strategy, self._model, self._workers = strategy, model, workers
        self._num_classes, self._label_smoothing = num_classes, label_smoothing
        self._top_k = min(5, num_classes)
        self._train_step = tf.function(self._distributed_train_step)
        self._eval_batch = {}  # Compiled per element_spec, for any batch size.

    def _batch_sums(self, images, labels, probabilities=None):
        if probabilities is None:
            probabilities = self._model(images, training=False)
        labels = tf.cast(labels, tf.int32)
        probabilities = tf.cast(probabilities, tf.float32)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, probabilities)
        predicted = tf.cast(tf.argmax(probabilities, axis=-1), tf.int32)
        in_top_k = tf.math.in_top_k(labels, probabilities, k=self._top_k)
        return tf.stack([tf.reduce_sum(per_example),
                         tf.reduce_sum(tf.cast(predicted == labels, tf.float32)),
                         tf.reduce_sum(tf.cast(in_top_k, tf.float32)),
                         tf.cast(tf.size(labels), tf.float32)]), per_example

    def _replica_step(self, images, labels):
        model, optimizer = self._model, self._model.optimizer
        with tf.GradientTape() as tape:
            probabilities = model(images, training=True)
            sums, per_example = self._batch_sums(images, labels, probabilities)
            if self._label_smoothing:
                per_example = keras.losses.categorical_crossentropy(
                    tf.one_hot(tf.cast(labels, tf.int32), self._num_classes),
                    tf.cast(probabilities, tf.float32), label_smoothing=self._label_smoothing)
            loss = tf.reduce_mean(per_example)
            if model.losses:
                loss += tf.add_n(model.losses)
            loss = optimizer.scale_loss(loss / self._strategy.num_replicas_in_sync)
        variables = model.trainable_variables
        gradients = tape.gradient(loss, variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            gradients = self._overflow_everywhere_if_anywhere(gradients)
        optimizer.apply_gradients(zip(gradients, variables))
        return sums

    def _overflow_everywhere_if_anywhere(self, gradients):
        # LossScaleOptimizer checks each replica's own gradients for inf/NaN before the
        # all-reduce (keras loss_scale_optimizer.py, _tf_apply), so replicas can disagree: one
        # skips the step while the others wait for it in the all-reduce, forever. Make one
        # replica's overflow every replica's, so all of them skip and halve the loss scale.
        optimizer = self._model.optimizer
        overflow = tf.cast(tf.logical_not(optimizer.check_finite(gradients)), tf.float32)
        anywhere = tf.distribute.get_replica_context().all_reduce("SUM", overflow) > 0
        return [None if g is None else g + tf.cast(tf.where(anywhere, np.nan, 0.0), g.dtype)
                for g in gradients]

    def _distributed_train_step(self, iterator):
        images, labels = next(iterator)
        sums = self._strategy.run(self._replica_step, args=(images, labels))
        return self._strategy.reduce("SUM", sums, axis=None)

    def fit(self, make_train: DatasetFn, *, steps_per_epoch: int,
            val: tf.data.Dataset | None = None, initial_epoch: int = 0, epochs: int,
            callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 2) -> None:
        """Trains epochs initial_epoch..epochs-1 of steps_per_epoch global batches each.

        Args:
          make_train: this worker's repeating training pipeline (see DatasetFn).
          val: this worker's shard of the validation data, evaluated after every epoch.
          callbacks: Keras callbacks; on_epoch_end sees loss/accuracy/top5 and val_*. Any
            may set model.stop_training, which every task must do alike.
          verbose: Keras progress output: 0 none, 1 a bar, 2 a line per epoch.
        """
        model = self._model
        if not model.optimizer.built:
            raise ValueError("build the optimizer in the strategy's scope before fit: its "
                             "variables cannot be created inside a replica")
        iterator = iter(self._strategy.distribute_datasets_from_function(make_train))
        callback_list = keras.callbacks.CallbackList(
            list(callbacks), add_history=False, add_progbar=verbose > 0, model=model,
            verbose=verbose, epochs=epochs, steps=steps_per_epoch)
        model.stop_training = False
        callback_list.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            totals = np.zeros(4)
            for step in range(steps_per_epoch):
                callback_list.on_train_batch_begin(step)
                totals += self._train_step(iterator).numpy()
                callback_list.on_train_batch_end(step, _logs(totals))
            logs = _logs(totals)
            if val is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
            callback_list.on_epoch_end(epoch, logs)
            if model.stop_training:
                break
        callback_list.on_train_end(logs)

    def evaluate(self, dataset: tf.data.Dataset) -> dict[str, float]:
        """Loss, accuracy and top5 over every worker's shard; `dataset` is this worker's."""
        images_spec, labels_spec = dataset.element_spec
        signature = (tf.TensorSpec((None, *images_spec.shape[1:]), images_spec.dtype),
                     tf.TensorSpec((None,), labels_spec.dtype))
        if signature not in self._eval_batch:  # One trace: the last batch is smaller.
            self._eval_batch[signature] = tf.function(
                lambda images, labels: self._batch_sums(images, labels)[0],
                input_signature=signature)
        totals = np.zeros(4)
        for images, labels in dataset:
            totals += self._eval_batch[signature](images, labels).numpy()
        return _logs(self.sum_over_workers(totals))

    def sum_over_workers(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of every worker's `values` (a collective: all must call it)."""
        if self._workers > 1:
            local = tf.constant(values, tf.float64)
            first = []

            def one_copy_per_worker(_):  # Called once per local replica: count values once.
                first.append(not first)
                return local if first[-1] else tf.zeros_like(local)

            per_replica = self._strategy.experimental_distribute_values_from_function(
                one_copy_per_worker)
            return self._strategy.reduce("SUM", per_replica, axis=None).numpy()
        return values
