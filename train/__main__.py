"""Two-phase fine-tuning of an EfficientNet on a class-per-folder dataset.

Usage:
    python -m train --data_dir=car_data --output_dir=runs/cars --backbone=lite0
    # Fashion-MNIST demo data, small and fast on a CPU:
    python -m train.datasets fashion_mnist --out=data/fashion --per_class=300
    python -m train --data_dir=data/fashion --output_dir=runs/fashion --image_size=96 \\
        --noaugment --phase1_epochs=3 --phase2_epochs=2

Running again with the same --output_dir resumes where the run stopped.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from serving import tf_noise
from train.config import PhaseConfig, TrainConfig, parse_batch_size, parse_unfreeze

# Defaults come from TrainConfig (data_dir and output_dir have none: required flags). A
# TrainConfig field without a phase prefix has a flag of its name; main() builds the config
# from them, the phases from their own flags.
_DEFAULTS = TrainConfig(data_dir="", output_dir="")  # Only its defaults are read.
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Class-per-folder dataset root.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where checkpoints and results go.")
_BACKBONE = flags.DEFINE_string(
    "backbone", _DEFAULTS.backbone, "See `python -m train.backbones list`.")
_WEIGHTS = flags.DEFINE_string(
    "weights", _DEFAULTS.weights, '"imagenet", "none" or a weights file.')
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", _DEFAULTS.image_size, "Input size; 0 = the backbone's native.")
_BATCH_SIZE = flags.DEFINE_string(
    "batch_size", str(_DEFAULTS.batch_size), 'Batch size, or "auto" to fit memory.')
_DROPOUT = flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Head dropout rate.")
_PHASE1_EPOCHS = flags.DEFINE_integer(
    "phase1_epochs", _DEFAULTS.phase1.epochs, "Head-only epochs (0 skips).")
_PHASE1_LR = flags.DEFINE_float(
    "phase1_lr", _DEFAULTS.phase1.learning_rate, "Phase-1 learning rate.")
_PHASE2_EPOCHS = flags.DEFINE_integer(
    "phase2_epochs", _DEFAULTS.phase2.epochs, "Fine-tuning epochs (0 skips).")
_PHASE2_LR = flags.DEFINE_float(
    "phase2_lr", _DEFAULTS.phase2.learning_rate, "Phase-2 peak learning rate.")
_WARMUP = flags.DEFINE_integer(
    "phase2_warmup_epochs", _DEFAULTS.phase2.warmup_epochs, "Phase-2 linear warm-up epochs.")
_PATIENCE = flags.DEFINE_integer(
    "patience", _DEFAULTS.phase2.early_stopping_patience,
    "Phase-2 early stopping patience (0 = off).")
_UNFREEZE = flags.DEFINE_string(
    "unfreeze", str(_DEFAULTS.unfreeze), 'Phase 2 unfreezes "all" or the top N blocks.')
_BN_TRAINABLE = flags.DEFINE_boolean(
    "bn_trainable", _DEFAULTS.bn_trainable, "Train BatchNorm layers too.")
_AUGMENT = flags.DEFINE_boolean("augment", _DEFAULTS.augment, "Random flip/rotation/zoom/contrast.")
_PHASE1_AUGMENT = flags.DEFINE_boolean(
    "phase1_augment", _DEFAULTS.phase1_augment,
    "Augment in phase 1 too (--nophase1_augment: phase 1 on cached features, phase 2 "
    "augmented).")
_CACHE_FEATURES = flags.DEFINE_boolean(
    "cache_features", _DEFAULTS.cache_features,
    "Phase 1 on precomputed features when exact (no phase-1 augmentation).")
_LABEL_SMOOTHING = flags.DEFINE_float(
    "label_smoothing", _DEFAULTS.label_smoothing,
    "Probability mass spread over all classes in the training targets (0 = one-hot).")
_MIXED = flags.DEFINE_boolean("mixed_precision", _DEFAULTS.mixed_precision, "mixed_float16 (GPUs).")
_VAL_FRACTION = flags.DEFINE_float(
    "val_fraction", _DEFAULTS.val_fraction, "Val split when DATA/val is absent.")
_SEED = flags.DEFINE_integer(
    "seed", _DEFAULTS.seed, "Seed for splits, shuffling and initialisation.")
_CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas", 1, "Split the CPU into N devices and mirror over them: runs the "
    "multi-replica path without GPUs (for testing; no speed-up).", lower_bound=1)

flags.mark_flags_as_required(["data_dir", "output_dir"])

# Flags given as text for fields that are not: their one parser each.
_PARSERS = {"batch_size": parse_batch_size, "unfreeze": parse_unfreeze}


def _config_from_flags() -> TrainConfig:
    """The flags as a TrainConfig (not yet validated); ValueError for unparsable text."""
    values = {
        "phase1": PhaseConfig(_PHASE1_EPOCHS.value, _PHASE1_LR.value),
        "phase2": PhaseConfig(_PHASE2_EPOCHS.value, _PHASE2_LR.value, _WARMUP.value,
                              _PATIENCE.value)}
    for field in dataclasses.fields(TrainConfig):
        if field.name not in values:
            value = flags.FLAGS[field.name].value
            values[field.name] = _PARSERS.get(field.name, lambda v: v)(value)
    return TrainConfig(**values)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import keras

    from train import backbones, distribute, trainer

    if _CPU_REPLICAS.value > 1:
        distribute.split_cpu(_CPU_REPLICAS.value)

    try:
        config = _config_from_flags().validated()
        keras.utils.set_random_seed(config.seed)
        trainer.train(config)
    except (ValueError, backbones.WeightsUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    tf_noise.install()  # Before anything imports TensorFlow.
    app.run(main)


if __name__ == "__main__":
    run()
