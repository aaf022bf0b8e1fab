"""Types shared by every backbone family: what a backbone is, and how weights are named.

Every backbone model takes raw RGB pixels in 0..255 (float32, NHWC) and does its own input
normalisation inside the graph, so data loading, export and serving never re-implement it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Annotations only: `python -m train.backbones --help` loads no TensorFlow.
    import keras

IMAGENET = "imagenet"
NO_WEIGHTS = "none"

# "imagenet" | "none" | a local weights file path (already validated to exist).
WeightsSpec = str


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (offline, missing package or bad file)."""


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
    """Static description of a registered backbone.

    Attributes:
      name: registry name, e.g. "lite0", "b3", "v2-s", "efn-b0".
      family: "lite", "keras" (keras.applications) or "efn" (the `efficientnet` package).
      input_size: native square input resolution in pixels.
      normalization: what the model does to its 0..255 input, as a human-readable formula.
      build: callable(weights=, input_size=, include_top=) -> keras.Model. With include_top=False
        the model returns the last feature map [B, h, w, C]; with include_top=True it returns
        1000 ImageNet class probabilities.
    """

    name: str
    family: str
    input_size: int
    normalization: str
    build: Callable[..., keras.Model]


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A built backbone: the model plus what later stages need to know about it."""

    info: BackboneInfo
    model: keras.Model
    input_size: int

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def normalization(self) -> str:
        return self.info.normalization

    @property
    def num_features(self) -> int:
        return int(self.model.output.shape[-1])


def parse_weights(weights: str | os.PathLike | None) -> WeightsSpec:
    """Normalises a `weights` argument to "imagenet", "none" or an existing file path.

    Raises:
      ValueError: for an empty value or a path that does not exist.
    """
    if weights is None:
        return NO_WEIGHTS
    text = os.fspath(weights).strip()
    if text.lower() in (IMAGENET, NO_WEIGHTS):
        return text.lower()
    if not text:
        raise ValueError('weights must be "imagenet", "none" or a path to a weights file')
    if not os.path.isfile(text):
        raise ValueError(
            f'weights={text!r} is neither "imagenet" nor "none", and no such file exists'
        )
    return text


def keras_home() -> str:
    """Keras's cache root: $KERAS_HOME, else ~/.keras (where get_file stores downloads)."""
    return os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")

