"""Two-phase training: trainable sets per phase, caching equivalence, resume, outputs."""

from __future__ import annotations

import json
import pathlib

import keras
import numpy as np
import pytest
from PIL import Image

from train import backbones, batch_size, checkpoint, data, distribute, rundir, trainer
from train import model as model_lib
from train.config import PhaseConfig, TrainConfig

SIZE = 32
COLOURS = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> pathlib.Path:
    """Noisy solid-colour JPEGs: train/val/test, 3 classes."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        for name, rgb in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 25, (40, 40, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f"{i}.jpg")
    return root


def _classifier(num_classes=3, backbone="lite0", dropout=0.2, weights="none"):
    built = backbones.build_backbone(backbone, weights=weights, input_size=SIZE)
    return model_lib.build_classifier(built, num_classes=num_classes, dropout=dropout)


def _bn_layers(classifier):
    return [layer for layer in model_lib.flat_layers(classifier.backbone)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _trainable_names(classifier):
    return {w.path.split("/")[0] for w in classifier.model.trainable_weights}


def test_phase1_trains_only_the_head_and_bn_stays_in_inference_mode():
    classifier = _classifier()
    model_lib.set_phase1_trainable(classifier)
    assert _trainable_names(classifier) == {"head_dense"}
    assert len(classifier.model.trainable_weights) == 2
    assert not any(layer.trainable for layer in _bn_layers(classifier))

    model_lib.set_phase1_trainable(classifier, bn_trainable=True)
    bns = _bn_layers(classifier)
    assert all(layer.trainable for layer in bns) and len(bns) == 49
    assert len(classifier.model.trainable_weights) == 2 + 2 * len(bns)  # + gamma and beta


def test_phase2_unfreezes_everything_but_bn_by_default():
    classifier = _classifier()
    blocks = model_lib.set_phase2_trainable(classifier, unfreeze="all")
    assert blocks == model_lib.block_ids(classifier.backbone) and len(blocks) == 16
    convs = [layer for layer in model_lib.flat_layers(classifier.backbone) if layer.weights
             and not isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.trainable for layer in convs)
    assert not any(layer.trainable for layer in _bn_layers(classifier))


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_unfreeze_n_unfreezes_exactly_the_top_n_blocks(n):
    classifier = _classifier()
    ids = model_lib.block_ids(classifier.backbone)
    assert model_lib.set_phase2_trainable(classifier, unfreeze=n) == ids[-n:]
    trained = {name[5:7] for name in _trainable_names(classifier) if name.startswith("block")}
    assert trained == set(ids[-n:])
    names = _trainable_names(classifier)
    assert "top_conv" in names and "head_dense" in names
    assert ("stem_conv" in names) == (n == len(ids))


@pytest.mark.parametrize("bad", [0, 17, "some", -1])
def test_unfreeze_rejects_counts_outside_the_backbone(bad):
    with pytest.raises(ValueError, match="unfreeze"):
        model_lib.set_phase2_trainable(_classifier(), unfreeze=bad)


def test_unfreeze_finds_blocks_inside_the_nested_efn_backbone():
    classifier = _classifier(backbone="efn-b0")
    assert model_lib.set_phase2_trainable(classifier, unfreeze=2) == ["6d", "7a"]
    assert {n[5:7] for n in _trainable_names(classifier) if n.startswith("block")} == {"6d", "7a"}


def test_frozen_bn_keeps_its_statistics_while_fine_tuning(colour_data):
    listing = data.list_class_folders(colour_data)
    ds = data.make_dataset(listing.splits["train"], image_size=SIZE, batch_size=8)
    for bn_trainable, should_change in ((False, False), (True, True)):
        classifier = _classifier()
        config = TrainConfig(data_dir=".", output_dir=".", bn_trainable=bn_trainable)
        fitted = trainer.compile_phase2(classifier, config, steps_per_epoch=5)
        bn = classifier.backbone.get_layer("block3a_bn")
        before = np.array(bn.moving_mean)
        fitted.fit(ds, epochs=1, verbose=0)
        assert (not np.allclose(before, np.array(bn.moving_mean))) == should_change


def test_phase1_on_cached_features_gives_the_same_head_as_on_pixels(colour_data):
    keras.utils.set_random_seed(1)
    # Real features (a random backbone's are near zero); no dropout, which is random.
    classifier = _classifier(dropout=0.0, weights="imagenet")
    initial = [np.array(w) for w in classifier.head.dense.weights]
    listing = data.list_class_folders(colour_data)
    pixels = data.make_dataset(listing.splits["train"], image_size=SIZE, batch_size=8,
                               config=data.DataConfig(augment=None))
    config = TrainConfig(data_dir=".", output_dir=".", augment=False)

    on_pixels = trainer.compile_phase1(classifier, config, on_features=False)
    on_pixels.fit(pixels, epochs=3, verbose=0)
    head_from_pixels = [np.array(w) for w in classifier.head.dense.weights]

    for weight, value in zip(classifier.head.dense.weights, initial):
        weight.assign(value)
    x, y = trainer.compute_features(classifier.feature_model(), pixels, "train")
    on_features = trainer.compile_phase1(classifier, config, on_features=True)
    on_features.fit(trainer.feature_dataset(x, y, 8, shuffle=False, seed=0), epochs=3, verbose=0)
    head_from_features = [np.array(w) for w in classifier.head.dense.weights]

    assert not np.allclose(head_from_pixels[0], initial[0])  # It did train.
    for a, b in zip(head_from_pixels, head_from_features):
        np.testing.assert_allclose(a, b, atol=1e-4)  # Adam magnifies float noise a little.


def test_checkpoint_restores_weights_and_optimizer_state(tmp_path, colour_data):
    listing = data.list_class_folders(colour_data)
    ds = data.make_dataset(listing.splits["train"], image_size=SIZE, batch_size=8)
    config = TrainConfig(data_dir=".", output_dir=".")
    classifier = _classifier()
    fitted = trainer.compile_phase2(classifier, config, steps_per_epoch=5)
    fitted.fit(ds, epochs=1, verbose=0)
    state = checkpoint.RunState(phase=2, epochs_done=1)
    checkpoint.save(tmp_path / "ckpt", classifier.model, fitted.optimizer, state)

    fresh = _classifier()
    refitted = trainer.compile_phase2(fresh, config, steps_per_epoch=5)
    refitted.optimizer.build(refitted.trainable_variables)
    restored = checkpoint.load(tmp_path / "ckpt", fresh.model, refitted.optimizer)
    assert restored == state
    steps = int(fitted.optimizer.iterations.numpy())
    assert int(refitted.optimizer.iterations.numpy()) == steps > 0
    for a, b in zip(fitted.optimizer.variables, refitted.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    probe = np.full((1, SIZE, SIZE, 3), 128.0, np.float32)
    np.testing.assert_allclose(fresh.model(probe), classifier.model(probe), atol=1e-6)


def _config(colour_data, out, **overrides):
    values = dict(data_dir=str(colour_data), output_dir=str(out), weights="none",
                  image_size=SIZE, batch_size=8, augment=False,
                  phase1=PhaseConfig(epochs=2, learning_rate=1e-2),
                  phase2=PhaseConfig(epochs=2, learning_rate=1e-3, warmup_epochs=1))
    values.update(overrides)
    return TrainConfig(**values).validated()


def test_end_to_end_run_writes_every_output(colour_data, tmp_path):
    config = _config(colour_data, tmp_path / "run")
    result = trainer.train(config)
    out = pathlib.Path(result.output_dir)
    for name in ("config.json", "labels.txt", "metrics.json", "training_curves.png", "model.keras",
                 "checkpoints/last/state.json", "checkpoints/last/optimizer.npz"):
        assert (out / name).is_file(), name
    assert list((out / "logs" / "phase1").rglob("events.out.tfevents.*"))
    assert list((out / "logs" / "phase2").rglob("events.out.tfevents.*"))
    assert rundir.read_labels(out / "labels.txt") == sorted(COLOURS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == {"phase1": 2, "phase2": 2}
    assert metrics["evaluation"]["split"] == "test" and metrics["evaluation"]["examples"] == 12
    assert 0 <= metrics["evaluation"]["top1"] <= metrics["evaluation"]["top5"] == 1.0  # 3 classes
    assert metrics["phase1"]["best_val_accuracy"] is not None
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["batch_size"] == 8 and resolved["image_size"] == SIZE

    reloaded = keras.models.load_model(out / "model.keras")
    probe = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    assert reloaded(probe).shape == (2, 3)

    from train.evaluate import evaluate_model
    evaluation = evaluate_model(out, colour_data)
    assert evaluation["top1"] == pytest.approx(metrics["evaluation"]["top1"], abs=1e-6)
    assert (out / "confusion_matrix_test.png").is_file()
    assert np.array(evaluation["confusion_matrix"]).sum() == 12


def test_interrupted_run_resumes_instead_of_restarting(colour_data, tmp_path, monkeypatch):
    config = _config(colour_data, tmp_path / "run")
    real_end = trainer.EpochEnd.on_epoch_end

    def crash_after_first_phase2_epoch(self, epoch, logs=None):
        real_end(self, epoch, logs)
        if self.phase == 2:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(trainer.EpochEnd, "on_epoch_end", crash_after_first_phase2_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(config)
    saved = checkpoint.read_state(tmp_path / "run" / rundir.CHECKPOINT_DIR)
    assert (saved.phase, saved.epochs_done) == (2, 1)
    opt = np.load(tmp_path / "run" / rundir.CHECKPOINT_DIR / "optimizer.npz")
    saved_iterations = int(opt["0"])  # Keras keeps the step counter first.
    assert saved_iterations >= 5  # 36 images / batch 8 -> 5 steps in one epoch

    monkeypatch.setattr(trainer.EpochEnd, "on_epoch_end", real_end)
    steps_at_saves, phases_at_saves = [], []
    real_save = checkpoint.save

    def recording_save(directory, model, optimizer, state):
        phases_at_saves.append(state.phase)
        if optimizer is not None:
            steps_at_saves.append(int(optimizer.iterations.numpy()))
        real_save(directory, model, optimizer, state)

    monkeypatch.setattr(checkpoint, "save", recording_save)
    trainer.train(config)
    assert phases_at_saves and set(phases_at_saves) == {2}  # Phase 1 was finished: not redone.
    state = checkpoint.read_state(tmp_path / "run" / rundir.CHECKPOINT_DIR)
    assert [(h["phase"], h["epoch"]) for h in state.history] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert state.phase_done and state.phase == 2
    # The phase-2 optimizer continued from its saved step (its schedule did not restart).
    assert steps_at_saves[0] >= saved_iterations + 5


def test_a_changed_config_is_refused_not_silently_restarted(colour_data, tmp_path):
    out = tmp_path / "run"
    trainer.train(_config(colour_data, out, phase2=PhaseConfig(epochs=0, learning_rate=1e-3)))
    with pytest.raises(ValueError, match="different configuration"):
        trainer.train(_config(colour_data, out, dropout=0.5,
                              phase2=PhaseConfig(epochs=0, learning_rate=1e-3)))


def test_auto_batch_size_fits_the_budget():
    assert batch_size.largest_batch(per_example=10, fixed=100, budget=100 + 10 * 70) == 64
    assert batch_size.largest_batch(per_example=10, fixed=0, budget=10**9) == 256
    with pytest.raises(ValueError, match="budget"):
        batch_size.largest_batch(per_example=10, fixed=100, budget=105)
    classifier = _classifier()
    model_lib.set_phase2_trainable(classifier)
    per_example = batch_size.per_example_bytes(classifier.model)
    fixed = batch_size.fixed_bytes(classifier.model)
    assert fixed == classifier.model.count_params() * 16
    big = batch_size.auto_batch_size(classifier.model, budget_bytes=fixed + 300 * per_example)
    small = batch_size.auto_batch_size(classifier.model, budget_bytes=fixed + 9 * per_example)
    assert (big, small) == (256, 8)
    assert batch_size.auto_batch_size(classifier.model, budget_bytes=fixed + 9 * per_example,
                                      replicas=4) == 32


@pytest.mark.parametrize("tf_config,gpus,kind", [
    (None, 0, distribute.DEFAULT),
    (None, 1, distribute.DEFAULT),
    (None, 4, distribute.MIRRORED),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}', 1,
     distribute.MULTI_WORKER),
    ('{"cluster": {"chief": ["a:1"], "worker": ["b:1"]}, "task": {"type": "chief"}}', 0,
     distribute.MULTI_WORKER),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}', 2,
     distribute.MIRRORED),
])
def test_strategy_selection(tf_config, gpus, kind):
    assert distribute.choose_strategy_kind(tf_config, gpus) == kind


def test_strategy_selection_rejects_a_broken_tf_config():
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.choose_strategy_kind("{not json", 0)


def test_mixed_precision_keeps_a_float32_softmax():
    try:
        assert distribute.set_precision(mixed=True) == "mixed_float16"
        classifier = _classifier()
        probe = np.full((1, SIZE, SIZE, 3), 100.0, np.float32)
        assert classifier.backbone.get_layer("top_conv").compute_dtype == "float16"
        assert classifier.model(probe).dtype == "float32"
    finally:
        distribute.set_precision(mixed=False)


@pytest.mark.parametrize("field,value", [("batch_size", 0), ("batch_size", "big"),
                                         ("dropout", 1.0), ("unfreeze", 0), ("image_size", 8),
                                         ("val_fraction", 0.0), ("label_smoothing", 1.0),
                                         ("label_smoothing", -0.1)])
def test_config_validation_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(data_dir="d", output_dir="o", **{field: value}).validated()


@pytest.mark.parametrize("augment,phase1_augment,bn_trainable,cached", [
    (False, True, False, True), (True, True, False, False), (True, False, False, True),
    (True, False, True, False)])
def test_feature_cache_is_used_whenever_phase1_sees_fixed_inputs(augment, phase1_augment,
                                                                 bn_trainable, cached):
    config = TrainConfig(data_dir="d", output_dir="o", augment=augment,
                         phase1_augment=phase1_augment, bn_trainable=bn_trainable)
    assert config.uses_feature_cache == cached


@pytest.mark.parametrize("phase1_augment,traced", [(True, True), (False, False)])
def test_nophase1_augment_keeps_augmentation_out_of_phase1(colour_data, tmp_path, monkeypatch,
                                                           phase1_augment, traced):
    # Phase 1 on pixels (bn_trainable: no feature cache) and no phase 2: augmentation is
    # built into the training pipeline only if phase 1 augments.
    built = []
    real_augment = data.augment_image

    def recording_augment(*args, **kwargs):
        built.append(1)
        return real_augment(*args, **kwargs)

    monkeypatch.setattr(data, "augment_image", recording_augment)
    config = _config(colour_data, tmp_path / "run", augment=True, bn_trainable=True,
                     phase1_augment=phase1_augment,
                     phase1=PhaseConfig(epochs=1, learning_rate=1e-2),
                     phase2=PhaseConfig(epochs=0, learning_rate=1e-3))
    trainer.train(config)
    assert bool(built) == traced


def _separable_features():
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 2
    features = (rng.normal(0, 0.1, (64, 4)) + labels[:, None] * 2 - 1).astype(np.float32)
    return features, labels.astype(np.int64)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_bounds_the_confidence_the_loop_trains_towards(smoothing):
    # On separable data, one-hot targets push the softmax towards 1; smoothed ones towards
    # 1 - smoothing + smoothing / classes (0.9 here) and no further.
    import tensorflow as tf

    from train import loop as loop_lib

    features, labels = _separable_features()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.1))
    model.optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    loop = loop_lib.Loop(strategy, model, num_classes=2, label_smoothing=smoothing)

    def make_train(context):
        return tf.data.Dataset.from_tensor_slices((features, labels)).repeat().batch(16)

    loop.fit(make_train, steps_per_epoch=50, epochs=4, verbose=0)
    confidence = float(np.max(model.predict(features, verbose=0), axis=-1).mean())
    if smoothing:
        assert confidence == pytest.approx(1 - smoothing + smoothing / 2, abs=0.02)
    else:
        assert confidence > 0.97
