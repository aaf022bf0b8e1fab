"""Training benchmarks, measured side by side in one run on the same data and settings.

    python -m bench.training cache      # phase-1 epoch: cached features vs pixels
    python -m bench.training pipeline   # input pipeline throughput vs training-step throughput
    python -m bench.training pretrained # lite0 ImageNet weights vs random init, both phases
    python -m bench.training distributed  # phase-2 throughput, 1 vs 2 worker processes
    python -m bench.training recipe     # the fine-tuning recipe's ingredients, each on/off

Data: Fashion-MNIST demo folders (made with `python -m train.datasets fashion_mnist`).
Results and the exact commands are recorded in BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

from absl import app, flags

_DATA_DIR = flags.DEFINE_string("data_dir", "runs/bench/data", "Class-per-folder data.")
_PER_CLASS = flags.DEFINE_integer("per_class", 200, "Images per class (materialised if absent).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 96, "Input size.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Batch size.")
_EPOCHS = flags.DEFINE_integer("epochs", 3, "Epochs per measured phase.")


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"


def _prepare():
    from train import datasets

    if not os.path.isdir(os.path.join(_DATA_DIR.value, "train")):
        datasets.materialise("fashion_mnist", _DATA_DIR.value, per_class=_PER_CLASS.value)
    return _DATA_DIR.value


def _classifier(weights="imagenet", num_classes=10):
    from train import backbones, model

    built = backbones.build_backbone("lite0", weights=weights, input_size=_IMAGE_SIZE.value)
    return model.build_classifier(built, num_classes=num_classes)


def _timed_epochs(model, ds, epochs):
    """Seconds per epoch after one untimed warm-up epoch (tracing, cache fill)."""
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(ds, epochs=epochs, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / epochs


def bench_cache() -> dict:
    """Phase-1 epoch time on pixels (frozen backbone in the step) vs on cached features."""
    from train import data, trainer
    from train.config import TrainConfig

    listing = data.list_class_folders(_prepare())
    config = TrainConfig(data_dir=".", output_dir=".", augment=False)
    pixels = data.make_dataset(listing.splits["train"], image_size=_IMAGE_SIZE.value,
                               batch_size=_BATCH_SIZE.value,
                               config=data.DataConfig(augment=None, cache="memory"))
    classifier = _classifier()
    on_pixels = trainer.compile_phase1(classifier, config, on_features=False)
    pixel_epoch = _timed_epochs(on_pixels, pixels, _EPOCHS.value)

    start = time.perf_counter()
    x, y = trainer.compute_features(classifier.feature_model(), pixels, "train")
    extract = time.perf_counter() - start
    on_features = trainer.compile_phase1(classifier, config, on_features=True)
    feature_ds = trainer.feature_dataset(x, y, _BATCH_SIZE.value, shuffle=True, seed=0)
    feature_epoch = _timed_epochs(on_features, feature_ds, _EPOCHS.value)
    n = 10  # A typical phase-1 length, to show the one-off extraction amortised.
    return {
        "train_images": len(listing.splits["train"]),
        "epoch_on_pixels_s": round(pixel_epoch, 3),
        "epoch_on_features_s": round(feature_epoch, 3),
        "one_off_feature_extraction_s": round(extract, 2),
        "per_epoch_speedup": round(pixel_epoch / feature_epoch, 1),
        f"speedup_over_{n}_epochs_incl_extraction": round(
            n * pixel_epoch / (extract + n * feature_epoch), 1),
    }


def bench_pipeline() -> dict:
    """Images/s the input pipeline delivers vs images/s a phase-2 training step consumes."""
    import tensorflow as tf

    from train import data, trainer
    from train.config import TrainConfig

    listing = data.list_class_folders(_prepare())
    split = listing.splits["train"]
    rates = {}
    for name, config in (("pipeline_cold_decode", data.DataConfig(cache="none")),
                         ("pipeline_cached_augmented", data.DataConfig(cache="memory"))):
        ds = data.make_dataset(split, image_size=_IMAGE_SIZE.value, batch_size=_BATCH_SIZE.value,
                               training=True, config=config)
        for _ in ds:  # Warm-up pass (fills the cache where there is one).
            pass
        start = time.perf_counter()
        count = sum(int(images.shape[0]) for images, _ in ds)
        rates[name] = count / (time.perf_counter() - start)

    classifier = _classifier()
    fitted = trainer.compile_phase2(classifier, TrainConfig(data_dir=".", output_dir="."),
                                    steps_per_epoch=20)
    batch = next(iter(data.make_dataset(split, image_size=_IMAGE_SIZE.value,
                                        batch_size=_BATCH_SIZE.value)))
    in_memory = tf.data.Dataset.from_tensors(batch).repeat(20)  # No input cost at all.
    epoch = _timed_epochs(fitted, in_memory, 1)
    rates["training_step"] = 20 * _BATCH_SIZE.value / epoch
    result = {k + "_images_per_s": round(v, 1) for k, v in rates.items()}
    for name in ("pipeline_cold_decode", "pipeline_cached_augmented"):
        result[f"{name}_over_training"] = round(rates[name] / rates["training_step"], 1)
    return result


def bench_pretrained() -> dict:
    """Same two-phase run from ImageNet weights and from random init.

    From random init, BatchNorm's statistics are meaningless, so the default frozen-BN
    setting cripples that run; the scratch run is also measured with --bn_trainable, the
    fair baseline.
    """
    from train import trainer
    from train.config import PhaseConfig, TrainConfig

    data_dir = _prepare()
    results = {}
    variants = {"imagenet": ("imagenet", False), "scratch": ("none", False),
                "scratch_bn_trainable": ("none", True)}
    for name, (weights, bn_trainable) in variants.items():
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                data_dir=data_dir, output_dir=out, weights=weights, image_size=_IMAGE_SIZE.value,
                bn_trainable=bn_trainable,
                batch_size=_BATCH_SIZE.value, augment=False,
                phase1=PhaseConfig(epochs=5, learning_rate=1e-3),
                phase2=PhaseConfig(epochs=_EPOCHS.value, learning_rate=1e-4,
                                   early_stopping_patience=0)).validated()
            start = time.perf_counter()
            metrics = trainer.train(config).metrics
            results[name] = {
                "phase1_best_val": round(metrics["phase1"]["best_val_accuracy"], 4),
                "phase2_best_val": round(metrics["phase2"]["best_val_accuracy"], 4),
                "test_top1": round(metrics["evaluation"]["top1"], 4),
                "wall_s": round(time.perf_counter() - start, 1),
            }
    best_scratch = max(results[k]["test_top1"] for k in ("scratch", "scratch_bn_trainable"))
    results["test_top1_pretrained_minus_best_scratch"] = round(
        results["imagenet"]["test_top1"] - best_scratch, 4)
    return results


def bench_distributed() -> dict:
    """Phase 2 (whole backbone trained, pixels) under `python -m train`, as 1 process and as
    2 MultiWorkerMirroredStrategy workers on loopback, same global batch and data.

    Per-epoch wall time comes from the run's own history (training plus validation); the
    first epoch (tracing, cache fill) is left out.
    """
    import math
    import subprocess
    import sys

    from train import checkpoint, data, distribute, rundir

    data_dir = _prepare()
    train_images = len(data.list_class_folders(data_dir).splits["train"])
    batch, epochs = _BATCH_SIZE.value, _EPOCHS.value + 1
    steps = math.ceil(train_images / batch)
    results = {"train_images": train_images, "global_batch": batch, "steps_per_epoch": steps,
               "timed_epochs": epochs - 1}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, "-m", "train", f"--data_dir={data_dir}",
                       f"--output_dir={tmp}/run", f"--image_size={_IMAGE_SIZE.value}",
                       f"--batch_size={batch}", "--phase1_epochs=0",
                       f"--phase2_epochs={epochs}", "--phase2_warmup_epochs=0", "--patience=0",
                       "--noaugment"]
            tf_configs = distribute.loopback_tf_configs(distribute.free_loopback_ports(workers))
            started = time.perf_counter()
            processes = [subprocess.Popen(
                command, env={**os.environ, **({"TF_CONFIG": c} if workers > 1 else {})},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in tf_configs]
            codes = [p.wait() for p in processes]
            if codes != [0] * workers:
                raise RuntimeError(f"{workers}-worker run failed: exit codes {codes}")
            history = checkpoint.read_state(f"{tmp}/run/{rundir.CHECKPOINT_DIR}").history
            test_top1 = rundir.read_metrics(f"{tmp}/run")["evaluation"]["top1"]
        seconds = sum(h["seconds"] for h in history[1:]) / (epochs - 1)
        results[f"workers_{workers}"] = {
            "epoch_s": round(seconds, 2), "steps_per_s": round(steps / seconds, 3),
            "images_per_s": round(steps * batch / seconds, 1),
            "run_wall_s": round(time.perf_counter() - started, 1),
            "test_top1": round(test_top1, 4),
        }
    results["images_per_s_2_over_1"] = round(
        results["workers_2"]["images_per_s"] / results["workers_1"]["images_per_s"], 3)
    return results


# The recipe's ingredients (README "Fine-tuning recipe"): what each changes from the
# baseline, the demo's settings (no augmentation, one-hot targets, 2 phase-2 epochs).
_RECIPE_BASELINE = {"augment": False, "phase1_augment": False, "label_smoothing": 0.0,
                    "phase2_epochs": 2, "image_size": 96}
_RECIPE_INGREDIENTS = {
    "phase2_augment": {"augment": True},
    "label_smoothing_0.1": {"label_smoothing": 0.1},
    "phase2_epochs_8": {"phase2_epochs": 8},
    "image_size_112": {"image_size": 112},
}


def bench_recipe() -> dict:
    """The baseline, each ingredient alone on top of it, and all of them together.

    Every run is `trainer.train` with the same data, seed and phase 1 (3 epochs on cached
    features: none of the ingredients changes what phase 1 sees); test top-1 is on the
    test split, wall time covers the whole run (feature extraction, both phases, test).
    """
    from train import trainer
    from train.config import PhaseConfig, TrainConfig

    data_dir = _prepare()
    variants = {"baseline": {}, **_RECIPE_INGREDIENTS,
                "all": {k: v for change in _RECIPE_INGREDIENTS.values()
                        for k, v in change.items()}}
    results = {}
    for name, change in variants.items():
        settings = {**_RECIPE_BASELINE, **change}
        with tempfile.TemporaryDirectory() as out:
            config = TrainConfig(
                data_dir=data_dir, output_dir=out, image_size=settings["image_size"],
                batch_size=_BATCH_SIZE.value, augment=settings["augment"],
                phase1_augment=settings["phase1_augment"],
                label_smoothing=settings["label_smoothing"], seed=0,
                phase1=PhaseConfig(epochs=3, learning_rate=1e-3),
                phase2=PhaseConfig(epochs=settings["phase2_epochs"], learning_rate=1e-4,
                                   early_stopping_patience=0)).validated()
            start = time.perf_counter()
            metrics = trainer.train(config).metrics
            results[name] = {"test_top1": round(metrics["evaluation"]["top1"], 4),
                             "wall_s": round(time.perf_counter() - start, 1)}
    base = results["baseline"]
    for result in results.values():
        result["top1_gain"] = round(result["test_top1"] - base["test_top1"], 4)
        result["wall_ratio"] = round(result["wall_s"] / base["wall_s"], 2)
    return results


_BENCHES = {"cache": bench_cache, "pipeline": bench_pipeline, "pretrained": bench_pretrained,
            "distributed": bench_distributed, "recipe": bench_recipe}


def main(argv):
    if len(argv) != 2 or argv[1] not in _BENCHES:
        raise app.UsageError(f"usage: python -m bench.training {{{'|'.join(_BENCHES)}}}")
    import keras

    keras.utils.set_random_seed(0)
    result = {"bench": argv[1], "machine": _machine(), "image_size": _IMAGE_SIZE.value,
              "batch_size": _BATCH_SIZE.value, **_BENCHES[argv[1]]()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    app.run(main)
