"""ImageNet classification with a backbone's own head: the check that weights loaded right.

Images go through the same decode + resize function as training and serving.

Usage:
    classify_files(["cat.jpg"], backbone="lite0")  # [[(285, "Egyptian cat", 0.61), ...]]
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from train import backbones, preprocessing
from train.backbones import imagenet


def load_pixels(paths: list[str | os.PathLike], image_size: int) -> np.ndarray:
    """Decodes and resizes image files to a [N, size, size, 3] float32 batch in 0..255.

    Raises:
      ValueError: a file is missing or is not a decodable image (the message names it).
    """
    batch = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e.strerror}") from e
        try:
            batch.append(preprocessing.decode_and_resize(tf.constant(data), image_size).numpy())
        except tf.errors.InvalidArgumentError as e:
            reason = e.message.splitlines()[0]
            raise ValueError(f"{path} is not a decodable image ({reason})") from e
    return np.stack(batch)


def classify_files(
    paths: list[str | os.PathLike], *, backbone: str = backbones.DEFAULT_BACKBONE,
    weights: str = backbones.IMAGENET, k: int = 5,
) -> list[list[tuple[int, str, float]]]:
    """Top-k ImageNet classes (index, name, probability) for each image file, in order."""
    built = backbones.build_backbone(backbone, weights=weights, include_top=True)
    pixels = load_pixels(paths, built.input_size)
    probabilities = built.model.predict(pixels, batch_size=16, verbose=0)
    return imagenet.top_k(probabilities, k)
