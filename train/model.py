"""The classifier (backbone + new head) and which of its layers train in each phase.

The head is global average pooling -> dropout -> dense softmax. Its layers are kept as
separate objects (`Head`) so phase 1 can also train them on cached backbone features:
the cached and uncached paths update the very same weights.

BatchNormalization and Keras 3: a BN layer whose `trainable` is False runs in inference
mode (moving statistics used and never updated), which is what fine-tuning wants, so by
default BN layers stay frozen in both phases. `bn_trainable=True` reproduces the other
variant: BN layers train (gamma/beta learn, moving statistics follow the new data's batch
statistics) even while the rest of the backbone is frozen.

Usage:
    classifier = build_classifier(backbone, num_classes=196, dropout=0.2)
    set_phase1_trainable(classifier)
    set_phase2_trainable(classifier, unfreeze="all")
"""

from __future__ import annotations

import dataclasses
import re

import keras

from train.backbones import Backbone

BACKBONE_LAYER = "backbone"
_BLOCK = re.compile(r"block(\d+)([a-z]+)_")


@dataclasses.dataclass(frozen=True)
class Head:
    """The new classification head's layers, shared by the full and the cached-feature model."""

    pool: keras.layers.Layer
    dropout: keras.layers.Layer
    dense: keras.layers.Layer

    def __call__(self, features, training=None):
        return self.dense(self.dropout(features, training=training))


@dataclasses.dataclass(frozen=True)
class Classifier:
    """The full model (pixels -> class probabilities) and its parts."""

    model: keras.Model
    backbone: keras.Model
    head: Head
    input_size: int
    num_classes: int
    # The backbone's own dropout (stochastic depth) rates, restored when it trains again.
    backbone_dropout: dict[str, float] = dataclasses.field(default_factory=dict)

    def feature_model(self) -> keras.Model:
        """Pixels -> pooled backbone features, for computing phase-1 features once."""
        return keras.Model(self.backbone.input, self.head.pool(self.backbone.output),
                           name="features")

    def head_model(self) -> keras.Model:
        """Pooled features -> class probabilities, through the same head layers."""
        features = keras.Input(shape=(int(self.backbone.output.shape[-1]),), name="features")
        return keras.Model(features, self.head(features), name="head")


def build_classifier(backbone: Backbone, *, num_classes: int, dropout: float = 0.2) -> Classifier:
    """Puts a new softmax head over a backbone's feature map.

    Args:
      backbone: from `train.backbones.build_backbone` (include_top=False).
      num_classes: number of output classes (>= 2).
      dropout: dropout rate before the dense layer, in [0, 1).

    Returns:
      A Classifier whose model maps [batch, size, size, 3] pixels in 0..255 to float32
      class probabilities (float32 even under a mixed-precision policy).
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    body = backbone.model
    # Flatten the backbone into our graph under one name so checkpoints stay stable.
    body.name = BACKBONE_LAYER
    head = Head(
        pool=keras.layers.GlobalAveragePooling2D(name="head_pool"),
        dropout=keras.layers.Dropout(dropout, name="head_dropout"),
        # float32 softmax: under mixed_float16 a half-precision softmax loses accuracy.
        dense=keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="head_dense"),
    )
    size = backbone.input_size
    pixels = keras.Input(shape=(size, size, 3), name="pixels")
    probabilities = head(head.pool(body(pixels)))
    model = keras.Model(pixels, probabilities, name=f"{backbone.name}_classifier")
    dropout_rates = {layer.name: layer.rate for layer in flat_layers(body)
                     if isinstance(layer, keras.layers.Dropout)}
    return Classifier(model=model, backbone=body, head=head, input_size=size,
                      num_classes=num_classes, backbone_dropout=dropout_rates)


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer in graph order, looking inside nested models (e.g. the efn family)."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(flat_layers(layer))
        else:
            layers.append(layer)
    return layers


def block_ids(backbone: keras.Model) -> list[str]:
    """The backbone's blocks in order, e.g. ["1a", "2a", "2b", ...], from layer names."""
    seen: dict[str, None] = {}
    for layer in flat_layers(backbone):
        match = _BLOCK.match(layer.name)
        if match:
            seen.setdefault(match.group(1) + match.group(2), None)
    return list(seen)


def _is_bn(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def _set_backbone_dropout(classifier: Classifier, *, enabled: bool) -> None:
    # Dropout ignores `trainable`; the rate is read when the train step is traced, so this
    # takes effect at the next compile.
    for layer in flat_layers(classifier.backbone):
        if layer.name in classifier.backbone_dropout:
            layer.rate = classifier.backbone_dropout[layer.name] if enabled else 0.0


def set_phase1_trainable(classifier: Classifier, *, bn_trainable: bool = False) -> None:
    """Phase 1: the backbone is frozen (optionally except its BN layers), the head trains.

    The frozen backbone is a fixed feature extractor: its stochastic-depth dropout is off,
    so training on pixels and on cached features computes the same thing.
    """
    classifier.backbone.trainable = True  # Reset, then freeze layer by layer.
    for layer in flat_layers(classifier.backbone):
        layer.trainable = bn_trainable and _is_bn(layer)
    _set_backbone_dropout(classifier, enabled=False)
    for layer in (classifier.head.pool, classifier.head.dropout, classifier.head.dense):
        layer.trainable = True


def set_phase2_trainable(classifier: Classifier, *, unfreeze: str | int = "all",
                         bn_trainable: bool = False) -> list[str]:
    """Phase 2: unfreezes the whole backbone or its top N blocks, at block boundaries.

    With a number N, the last N blocks train, plus everything after them (the head
    convolution); the stem and earlier blocks stay frozen. BN layers stay frozen (inference
    mode) unless bn_trainable.

    Returns:
      The ids of the blocks that train, e.g. ["6d", "7a"].

    Raises:
      ValueError: unfreeze is neither "all" nor a count in 1..number of blocks.
    """
    blocks = block_ids(classifier.backbone)
    if unfreeze == "all":
        first_trainable = 0
    else:
        try:
            n = int(unfreeze)
        except (TypeError, ValueError):
            raise ValueError(f'unfreeze must be "all" or a block count, got {unfreeze!r}') from None
        if not 1 <= n <= len(blocks):
            raise ValueError(
                f"unfreeze={n} is outside 1..{len(blocks)} (this backbone has {len(blocks)} blocks)"
            )
        first_trainable = len(blocks) - n
    trainable_blocks = set(blocks[first_trainable:])
    _set_backbone_dropout(classifier, enabled=True)
    classifier.backbone.trainable = True
    reached = first_trainable == 0
    for layer in flat_layers(classifier.backbone):
        match = _BLOCK.match(layer.name)
        if match and match.group(1) + match.group(2) in trainable_blocks:
            reached = True
        train = reached and (bn_trainable or not _is_bn(layer))
        layer.trainable = train
    return sorted(trainable_blocks, key=blocks.index)
