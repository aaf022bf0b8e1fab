"""keras.applications EfficientNet B0..B7 and EfficientNetV2, under one weights contract.

Both families normalise inside the model. B0..B7: Rescaling(1/255) then a Normalization
layer whose mean/variance come with the weights (ImageNet mean and std). V2: built with
include_preprocessing=True (B variants: ImageNet mean/std; S/M/L: x / 128 - 1).

Keras 3 quirk handled here: B0..B7's ImageNet weight files store the std where the
Normalization layer expects a variance, and Keras compensates with an extra Rescaling
layer only when weights="imagenet" is passed by name. Loading the same file from a path
would silently mis-normalise, so after loading a file we turn such a stored std into a
variance (std**2); both paths then compute the same thing.

Usage:
    model = build(weights="none", input_size=224, include_top=False, spec=SPECS["b0"])
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np

from train.backbones import common

_B_URL = "https://storage.googleapis.com/keras-applications/"
_V2_URL = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

_B_NORM = "x / 255, then (x - ImageNet mean) / ImageNet std, inside the model"
_V2_S_NORM = "x / 128 - 1, inside the model"


@dataclasses.dataclass(frozen=True)
class KerasSpec:
    name: str
    constructor: str  # keras.applications attribute
    keras_name: str  # the model name Keras uses for weight files
    input_size: int
    url: str
    normalization: str


SPECS = {
    s.name: s
    for s in (
        *(KerasSpec(f"b{i}", f"EfficientNetB{i}", f"efficientnetb{i}", size, _B_URL, _B_NORM)
          for i, size in enumerate((224, 240, 260, 300, 380, 456, 528, 600))),
        *(KerasSpec(f"v2-{v}", f"EfficientNetV2{v.upper()}", f"efficientnetv2-{v}", size, _V2_URL,
                    _B_NORM if v.startswith("b") else _V2_S_NORM)
          for v, size in (("b0", 224), ("b1", 240), ("b2", 260), ("b3", 300), ("s", 384),
                          ("m", 480), ("l", 480))),
    )
}


def _fix_stored_std(model: keras.Model) -> None:
    """Turns a Normalization variance that holds the ImageNet std into std**2."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization) and hasattr(layer, "variance"):
            variance = np.asarray(layer.variance).reshape(-1)
            if variance.shape == (3,) and np.allclose(variance, _IMAGENET_STD, atol=1e-4):
                layer.variance.assign(np.reshape(_IMAGENET_STD**2, layer.variance.shape))


def build(*, weights: common.WeightsSpec, input_size: int, include_top: bool = False,
          spec: KerasSpec) -> keras.Model:
    """Builds a keras.applications EfficientNet taking 0..255 RGB pixels."""
    if include_top and input_size != spec.input_size and weights == common.IMAGENET:
        raise ValueError(
            f"{spec.name} with its ImageNet head needs its native {spec.input_size}px input"
        )
    constructor = getattr(keras.applications, spec.constructor)

    def make(keras_weights):
        return constructor(include_top=include_top, weights=keras_weights,
                           input_shape=(input_size, input_size, 3))

    if weights == common.IMAGENET:
        file_name = spec.keras_name + (".h5" if include_top else "_notop.h5")
        return common.build_with_keras_download(
            lambda: make("imagenet"), name=spec.name, file_name=file_name,
            url=spec.url + file_name)
    model = make(None)
    if weights != common.NO_WEIGHTS:
        model.load_weights(weights)
        _fix_stored_std(model)
    return model


BACKBONES = tuple(
    common.BackboneInfo(
        name=spec.name, family="keras", input_size=spec.input_size,
        normalization=spec.normalization, build=functools.partial(build, spec=spec),
    )
    for spec in SPECS.values()
)
