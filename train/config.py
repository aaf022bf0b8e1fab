"""Typed, validated training configuration; the resolved copy is written next to every run.

Usage:
    config = TrainConfig(data_dir="car_data", output_dir="runs/cars").validated()
    rundir.save_config(config, "runs/cars/config.json")  # train/rundir.py reads and writes it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

AUTO = "auto"

# Input limits of the decoding graph (train.preprocessing), for training and serving alike;
# declared here, with no TensorFlow import, so entry points can show them as flag defaults.
# Images whose header declares more pixels are rejected before decoding (max_pixels). 50 MP
# covers what phones and most cameras write by default; decoded, it is 150 MB of RGB bytes.
DEFAULT_MAX_PIXELS = 50_000_000
# JPEGs with more scans are rejected before decoding. Baseline JPEGs have 1 (or one per
# colour component), progressive encoders write about 10 (libjpeg's default script; mozjpeg
# up to ~20); each scan is a full pass of the decoder, so this bounds the decode's cost.
DEFAULT_MAX_JPEG_SCANS = 64


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """One training phase.

    Attributes:
      epochs: maximum epochs (early stopping may end phase 2 sooner); 0 skips the phase.
      learning_rate: peak learning rate (phase 2 decays it with a cosine schedule).
      warmup_epochs: linear warm-up before the decay (phase 2 only).
      early_stopping_patience: epochs without validation improvement before stopping
        (best weights are restored); 0 disables.
    """

    epochs: int
    learning_rate: float
    warmup_epochs: int = 0
    early_stopping_patience: int = 0

    def validate(self, name: str) -> None:
        if self.epochs < 0:
            raise ValueError(f"{name}.epochs must be >= 0, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"{name}.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.warmup_epochs < 0 or self.early_stopping_patience < 0:
            raise ValueError(f"{name}: warmup_epochs and early_stopping_patience must be >= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
      data_dir: class-per-folder dataset root (see train.data).
      output_dir: where checkpoints, logs, curves, metrics and the final model go.
      backbone: registry name (see `python -m train.backbones list`).
      weights: "imagenet", "none" or a Keras weights file for the backbone.
      image_size: input size in pixels; 0 means the backbone's native size.
      batch_size: a positive int, or "auto" to pick one that fits memory.
      dropout: head dropout rate.
      phase1 / phase2: the two phases' settings.
      unfreeze: phase 2 unfreezes "all" of the backbone or its top N blocks.
      bn_trainable: train BatchNorm layers (and update their statistics) in both phases.
      augment: random flip/rotation/zoom/contrast on training images.
      phase1_augment: augment in phase 1 too. Off, phase 1 sees the images as they are and
        can train on cached backbone features (many times faster), while phase 2, which
        trains the backbone, still augments.
      cache_features: allow phase-1 feature caching (only applies when it is exact).
      label_smoothing: training targets put this much probability mass evenly over all
        classes (0 = one-hot); validation and test losses stay plain cross-entropy.
      mixed_precision: mixed_float16 compute with a float32 softmax (GPUs).
      val_fraction: validation split from train/ when DATA/val is absent.
      seed: for splits, shuffling and initialisation.
    """

    data_dir: str
    output_dir: str
    backbone: str = "lite0"
    weights: str = "imagenet"
    image_size: int = 0
    batch_size: int | str = 32
    dropout: float = 0.2
    phase1: PhaseConfig = PhaseConfig(epochs=5, learning_rate=1e-3)
    phase2: PhaseConfig = PhaseConfig(epochs=10, learning_rate=1e-4, warmup_epochs=1,
                                      early_stopping_patience=3)
    unfreeze: str | int = "all"
    bn_trainable: bool = False
    augment: bool = True
    phase1_augment: bool = True
    cache_features: bool = True
    label_smoothing: float = 0.0
    mixed_precision: bool = False
    val_fraction: float = 0.1
    seed: int = 42

    def validated(self) -> TrainConfig:
        """Returns self after checking every field; raises ValueError with the reason."""
        if not self.data_dir or not self.output_dir:
            raise ValueError("data_dir and output_dir are required")
        if self.image_size != 0 and self.image_size < 32:
            raise ValueError(f"image_size must be 0 (native) or >= 32, got {self.image_size}")
        batch = self.batch_size
        if batch != AUTO and (not isinstance(batch, int) or batch < 1):
            raise ValueError(f'batch_size must be a positive integer or "auto", got {batch!r}')
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        unfreeze = self.unfreeze
        if unfreeze != "all" and (not isinstance(unfreeze, int) or unfreeze < 1):
            raise ValueError(f'unfreeze must be "all" or a positive block count, got {unfreeze!r}')
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        self.phase1.validate("phase1")
        self.phase2.validate("phase2")
        return self

    @property
    def uses_feature_cache(self) -> bool:
        """Phase-1 features are exact to precompute only with a fixed input and frozen BN."""
        return self.cache_features and not self.phase1_augments and not self.bn_trainable

    @property
    def phase1_augments(self) -> bool:
        """Whether phase 1 trains on augmented images."""
        return self.augment and self.phase1_augment


def parse_batch_size(text: str) -> int | str:
    """"auto" or a positive integer, from a flag value."""
    if text.strip().lower() == AUTO:
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f'batch_size must be a positive integer or "auto", got {text!r}') from None
    return value


def parse_unfreeze(text: str) -> str | int:
    """"all" or a positive block count, from a flag value."""
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f'unfreeze must be "all" or a block count, got {text!r}') from None


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """Rebuilds a config written by `rundir.save_config` (unknown keys are an error)."""
    values = dict(values)
    for phase in ("phase1", "phase2"):
        if isinstance(values.get(phase), dict):
            values[phase] = PhaseConfig(**values[phase])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    return TrainConfig(**values).validated()
