"""The one image preprocessing function shared by training and the exported serving graph.

Training (train.data) and serving (export/) both call `decode_and_resize`, so the pixels a
model sees in production are computed exactly as in training. It is pure TensorFlow ops
(no py_function), usable in tf.data, tf.function and SavedModel signatures, on inputs
without a static shape.

Usage:
    pixels = decode_and_resize(tf.io.read_file("cat.jpg"), 224)  # [224, 224, 3] float32
"""

from __future__ import annotations

import numbers

import tensorflow as tf

# Bytes of a BMP file header plus BITMAPINFOHEADER: enough to read the pixel format.
_BMP_HEADER_BYTES = 54


# Plain TensorFlow ops with no Python control flow: nothing for AutoGraph to convert.
@tf.autograph.experimental.do_not_convert
def decode_and_resize(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one encoded image and resizes it to a square model input.

    Formats: JPEG (baseline, progressive, grey and CMYK), PNG (any bit depth, grey, palette,
    alpha), GIF (the first frame) and BMP (24/32-bit, and 8-bit with its palette applied).
    Grey becomes RGB by replication and an alpha channel is dropped (not composited), as
    TensorFlow's decoders do. CMYK (and YCCK) JPEGs are converted to RGB by TensorFlow's
    own JPEG decoder, matching PIL within 1 level (Adobe inverted CMYK, as PIL and Photoshop
    write it; checked in tests/test_preprocessing.py), so no conversion code is needed here.
    16-bit PNGs are reduced to 8 bits by truncation (tf.io.decode_image's conversion).
    JPEGs use the accurate integer IDCT, so pixels equal PIL's decode of the same file
    (the default fast IDCT differs by up to ~4 levels) at ~4% extra decode time. EXIF
    orientation is not applied, as in keras.utils.image_dataset_from_directory.

    The image is resized to image_size x image_size without keeping the aspect ratio (as
    image_dataset_from_directory does), bilinearly with antialiasing so that downscaling
    large photos does not alias. The result is deterministic.

    Args:
      image_bytes: scalar tf.string holding the encoded file.
      image_size: output height and width in pixels (a Python or numpy int).

    Returns:
      float32 [image_size, image_size, 3] RGB in 0..255, not normalised: every backbone
      normalises inside its own graph.

    Raises:
      ValueError: image_size is not a positive int (raised while building the graph).
      tf.errors.InvalidArgumentError: the bytes are not a decodable image (at run time).
    """
    if (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
            or image_size < 1):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    image_size = int(image_size)  # numpy ints too, but a plain int in the graph.
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: _apply_bmp_palette(
            image_bytes, tf.io.decode_image(image_bytes, channels=3, expand_animations=False)),
    )
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)  # Antialiasing kernels can overshoot.


def _apply_bmp_palette(image_bytes: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
    """Maps the colour indices of an 8-bit BMP through its palette; other images pass through.

    TensorFlow's BMP decoder returns the raw palette index of 8-bit BMPs as a grey level, so
    a palette image (PIL mode "P" saved as BMP) would silently decode to the wrong colours.
    Grey 8-bit BMPs carry an identity palette, so they are unchanged by the lookup.
    """
    # Padding makes the fixed-offset reads below valid for inputs of any length.
    head = tf.io.decode_raw(
        tf.strings.substr(tf.strings.join([tf.strings.substr(image_bytes, 0, _BMP_HEADER_BYTES),
                                           "\0" * _BMP_HEADER_BYTES]), 0, _BMP_HEADER_BYTES),
        tf.uint8)
    head = tf.cast(head, tf.int32)

    def u32(offset: int) -> tf.Tensor:
        return (head[offset] + head[offset + 1] * 256 + head[offset + 2] * 65536
                + head[offset + 3] * 16777216)

    is_8bit_bmp = tf.logical_and(
        tf.logical_and(tf.equal(head[0], ord("B")), tf.equal(head[1], ord("M"))),
        tf.equal(head[28] + head[29] * 256, 8))

    def lookup() -> tf.Tensor:
        colours = u32(46)
        colours = tf.where(tf.logical_or(colours <= 0, colours > 256), 256, colours)
        start = 14 + u32(14)  # The palette follows the DIB header, 4 bytes (B, G, R, 0) each.
        raw = tf.io.decode_raw(tf.strings.substr(image_bytes, start, 4 * colours), tf.uint8)
        palette = tf.reverse(tf.reshape(raw, [-1, 4])[:, :3], axis=[1])  # BGR -> RGB.
        # A palette shorter than the indices used (a malformed file) must not fail the gather.
        palette = tf.pad(palette, [[0, 256 - tf.shape(palette)[0]], [0, 0]])
        return tf.gather(palette, tf.cast(image[:, :, 0], tf.int32))

    return tf.cond(is_8bit_bmp, lookup, lambda: image)
