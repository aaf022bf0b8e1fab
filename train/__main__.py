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

import sys

from absl import app, flags

from serving import tf_noise

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Class-per-folder dataset root.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where checkpoints and results go.")
_BACKBONE = flags.DEFINE_string("backbone", "lite0", "See `python -m train.backbones list`.")
_WEIGHTS = flags.DEFINE_string("weights", "imagenet", '"imagenet", "none" or a weights file.')
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 0, "Input size; 0 = the backbone's native.")
_BATCH_SIZE = flags.DEFINE_string("batch_size", "32", 'Batch size, or "auto" to fit memory.')
_DROPOUT = flags.DEFINE_float("dropout", 0.2, "Head dropout rate.")
_PHASE1_EPOCHS = flags.DEFINE_integer("phase1_epochs", 5, "Head-only epochs (0 skips).")
_PHASE1_LR = flags.DEFINE_float("phase1_lr", 1e-3, "Phase-1 learning rate.")
_PHASE2_EPOCHS = flags.DEFINE_integer("phase2_epochs", 10, "Fine-tuning epochs (0 skips).")
_PHASE2_LR = flags.DEFINE_float("phase2_lr", 1e-4, "Phase-2 peak learning rate.")
_WARMUP = flags.DEFINE_integer("phase2_warmup_epochs", 1, "Phase-2 linear warm-up epochs.")
_PATIENCE = flags.DEFINE_integer("patience", 3, "Phase-2 early stopping patience (0 = off).")
_UNFREEZE = flags.DEFINE_string("unfreeze", "all", 'Phase 2 unfreezes "all" or the top N blocks.')
_BN_TRAINABLE = flags.DEFINE_boolean("bn_trainable", False, "Train BatchNorm layers too.")
_AUGMENT = flags.DEFINE_boolean("augment", True, "Random flip/rotation/zoom/contrast.")
_CACHE_FEATURES = flags.DEFINE_boolean(
    "cache_features", True, "Phase 1 on precomputed features when exact (no augmentation).")
_MIXED = flags.DEFINE_boolean("mixed_precision", False, "mixed_float16 (GPUs).")
_VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.1, "Val split when DATA/val is absent.")
_SEED = flags.DEFINE_integer("seed", 42, "Seed for splits, shuffling and initialisation.")
_CPU_REPLICAS = flags.DEFINE_integer(
    "cpu_replicas", 1, "Split the CPU into N devices and mirror over them: runs the "
    "multi-replica path without GPUs (for testing; no speed-up).", lower_bound=1)

flags.mark_flags_as_required(["data_dir", "output_dir"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import keras

    from train import backbones, distribute, trainer
    from train import config as config_lib

    if _CPU_REPLICAS.value > 1:
        distribute.split_cpu(_CPU_REPLICAS.value)

    try:
        config = config_lib.TrainConfig(
            data_dir=_DATA_DIR.value, output_dir=_OUTPUT_DIR.value, backbone=_BACKBONE.value,
            weights=_WEIGHTS.value, image_size=_IMAGE_SIZE.value,
            batch_size=config_lib.parse_batch_size(_BATCH_SIZE.value), dropout=_DROPOUT.value,
            phase1=config_lib.PhaseConfig(_PHASE1_EPOCHS.value, _PHASE1_LR.value),
            phase2=config_lib.PhaseConfig(_PHASE2_EPOCHS.value, _PHASE2_LR.value,
                                          _WARMUP.value, _PATIENCE.value),
            unfreeze=config_lib.parse_unfreeze(_UNFREEZE.value), bn_trainable=_BN_TRAINABLE.value,
            augment=_AUGMENT.value, cache_features=_CACHE_FEATURES.value,
            mixed_precision=_MIXED.value, val_fraction=_VAL_FRACTION.value, seed=_SEED.value,
        ).validated()
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
