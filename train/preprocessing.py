"""The one image preprocessing function shared by training and the exported serving graph.

Training (train.data) and serving (export/) both call `decode_and_resize`, so the pixels a
model sees in production are computed exactly as in training. It is pure TensorFlow ops,
usable in tf.data, tf.function and SavedModel signatures.

Usage:
    pixels = decode_and_resize(tf.io.read_file("cat.jpg"), 224)  # [224, 224, 3] float32
"""

from __future__ import annotations

import tensorflow as tf


def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image and resizes it to a square model input.

    JPEG (including CMYK, which TensorFlow converts to RGB), PNG, GIF (first frame) and BMP
    are accepted; grey images are replicated to RGB and an alpha channel is dropped. The
    image is resized to image_size x image_size without keeping the aspect ratio (as
    keras.utils.image_dataset_from_directory does), bilinearly with antialiasing, so
    downscaling large photos does not alias.

    Args:
      image_bytes: scalar tf.string holding the encoded file.
      image_size: output height and width in pixels.

    Returns:
      float32 [image_size, image_size, 3] RGB in 0..255, not normalised: every backbone
      normalises inside its own graph.

    Raises:
      tf.errors.InvalidArgumentError: the bytes are not a decodable image.
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)  # Antialiasing kernels can overshoot.
