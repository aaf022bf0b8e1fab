"""EfficientNet B0..B7 from the `efficientnet` package (qubvel), the classic recipe's choice.

Checked under Keras 3 (TensorFlow 2.21's tf.keras): the models build, train, save to
`.keras` and reload. The package's FixedDropout (stochastic depth) subclasses Keras's
Dropout and only overrides `_get_noise_shape`, which Keras 3 never calls; Keras 3's own
Dropout already resolves the None in noise_shape=(None, 1, 1, 1) per batch, so it still
drops whole residual branches per example. Reloading a saved model needs
`import efficientnet.tfkeras` first (it registers FixedDropout and swish). Its
`input_tensor` argument does not accept Keras 3 tensors, hence the nesting below.

The models expect torch-style input (x / 255 - ImageNet mean) / ImageNet std; that is
prepended inside the model, so callers feed 0..255 pixels like every other backbone.

Usage:
    model = build(weights="none", input_size=224, include_top=False, index=0)
"""

from __future__ import annotations

import functools

import keras
import numpy as np

from train.backbones import common

_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
_STD = np.array([0.229, 0.224, 0.225]) * 255.0
NORMALIZATION = "(x - 255 * ImageNet mean) / (255 * ImageNet std), inside the model"


def build(*, weights: common.WeightsSpec, input_size: int, include_top: bool = False,
          index: int) -> keras.Model:
    """Builds efficientnet.tfkeras.EfficientNetB{index} taking 0..255 RGB pixels."""
    import efficientnet.tfkeras as efn  # Registers the package's custom objects.
    from efficientnet import weights as efn_weights

    if include_top and input_size != _SIZES[index] and weights == common.IMAGENET:
        raise ValueError(f"efn-b{index} with its ImageNet head needs {_SIZES[index]}px input")
    constructor = getattr(efn, f"EfficientNetB{index}")

    def make(package_weights):
        return constructor(include_top=include_top, weights=package_weights,
                           input_shape=(input_size, input_size, 3))

    if weights == common.IMAGENET:
        suffix = "_autoaugment.h5" if include_top else "_autoaugment_notop.h5"
        file_name = f"efficientnet-b{index}_weights_tf_dim_ordering_tf_kernels{suffix}"
        inner = common.build_with_keras_download(
            lambda: make("imagenet"), name=f"efn-b{index}", file_name=file_name,
            url=efn_weights.IMAGENET_WEIGHTS_PATH + file_name)
    else:
        inner = make(None)
        if weights != common.NO_WEIGHTS and not weights.endswith(".weights.h5"):
            inner.load_weights(weights)  # The package's own (legacy h5) weight files.
    # The package's `input_tensor` argument cannot take a Keras 3 tensor (it checks with
    # the legacy tf.keras backend), so the package's model is nested after the
    # normalisation; train.model walks nested models to find the blockNx_ layers.
    pixels = keras.Input(shape=(input_size, input_size, 3), name="pixels")
    normalised = keras.layers.Normalization(
        mean=_MEAN, variance=_STD**2, axis=-1, name="normalization")(pixels)
    model = keras.Model(pixels, inner(normalised), name=f"efn-b{index}")
    if weights not in (common.IMAGENET, common.NO_WEIGHTS) and weights.endswith(".weights.h5"):
        model.load_weights(weights)  # Saved from a model built here (Keras 3 format).
    return model


BACKBONES = tuple(
    common.BackboneInfo(
        name=f"efn-b{i}", family="efn", input_size=size, normalization=NORMALIZATION,
        build=functools.partial(build, index=i),
    )
    for i, size in enumerate(_SIZES)
)
