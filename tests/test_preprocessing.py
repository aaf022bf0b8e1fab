"""decode_and_resize: every accepted format, colour handling, graph mode, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image

from train import preprocessing

SIZE = 24
RED = (220, 30, 40)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def decode(data: bytes, size: int = SIZE) -> np.ndarray:
    return preprocessing.decode_and_resize(tf.constant(data), size).numpy()


def solid(mode: str, colour, size=(40, 30)) -> Image.Image:
    return Image.new(mode, size, colour)


def animated_gif() -> bytes:
    frames = [solid("RGB", RED), solid("RGB", (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


# name -> (encoded bytes, expected RGB of every pixel, tolerance)
CASES = {
    "rgb_jpeg": (encode(solid("RGB", RED), "JPEG", quality=95), RED, 4),
    "grey_jpeg": (encode(solid("L", 90), "JPEG", quality=95), (90, 90, 90), 2),
    # PIL writes Adobe (inverted) CMYK; C=0 M=255 Y=255 K=0 is pure red.
    "cmyk_jpeg": (encode(solid("CMYK", (0, 255, 255, 0)), "JPEG", quality=95), (255, 0, 0), 2),
    "rgb_png": (encode(solid("RGB", RED), "PNG"), RED, 0),
    "grey_png": (encode(solid("L", 90), "PNG"), (90, 90, 90), 0),
    "rgba_png": (encode(solid("RGBA", (*RED, 10)), "PNG"), RED, 0),  # Alpha dropped.
    "grey_alpha_png": (encode(solid("LA", (90, 200)), "PNG"), (90, 90, 90), 0),
    "palette_png": (encode(solid("RGB", RED).quantize(4), "PNG"), RED, 0),
    "gif": (encode(solid("RGB", RED), "GIF"), None, 0),
    "animated_gif": (animated_gif(), None, 0),
    "rgb_bmp": (encode(solid("RGB", RED), "BMP"), RED, 0),
    "rgba_bmp": (encode(solid("RGBA", (*RED, 10)), "BMP"), RED, 0),
    "grey_bmp": (encode(solid("L", 90), "BMP"), (90, 90, 90), 0),
    "palette_bmp": (encode(solid("RGB", RED).quantize(4), "BMP"), RED, 0),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_format_decodes_to_the_right_solid_colour(name):
    data, colour, tolerance = CASES[name]
    if colour is None:  # Palette formats may quantise: compare with PIL's reading.
        colour = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
    pixels = decode(data)
    assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 255
    np.testing.assert_allclose(pixels, np.broadcast_to(colour, pixels.shape),
                               atol=max(tolerance, 1e-3))


def test_cmyk_jpeg_midtones_match_pil():
    data = encode(solid("CMYK", (40, 120, 200, 60)), "JPEG", quality=100)
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float32)
    got = tf.io.decode_jpeg(data, channels=3).numpy()
    np.testing.assert_allclose(got, expected, atol=1)
    np.testing.assert_allclose(decode(data, 8), np.broadcast_to(expected[0, 0], (8, 8, 3)), atol=1)


def test_ycck_jpeg_matches_pil():
    data = bytearray(encode(solid("CMYK", (40, 120, 200, 60)), "JPEG", quality=100))
    # Adobe APP14 transform flag 2 marks YCCK, the layout Photoshop writes for CMYK; setting
    # it sends both decoders down their YCCK path on the same data.
    flag = data.index(b"Adobe") + 11
    assert data[flag] == 0
    data[flag] = 2
    expected = np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"), np.float32)
    np.testing.assert_allclose(decode(bytes(data), 8),
                               np.broadcast_to(expected[0, 0], (8, 8, 3)), atol=1.5)


def test_16_bit_png_is_reduced_to_8_bits():
    array = np.zeros((6, 6, 3), np.uint16)
    array[..., 0], array[..., 2] = 65535, 30000
    pixels = decode(tf.io.encode_png(array).numpy(), 6)
    np.testing.assert_allclose(pixels, np.broadcast_to([255, 0, 30000 >> 8], (6, 6, 3)),
                               atol=1e-3)


def test_animated_gif_uses_the_first_frame():
    np.testing.assert_allclose(decode(animated_gif())[0, 0], RED, atol=8)


def test_palette_bmp_colours_are_looked_up_not_read_as_grey():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)).quantize(32)
    data = encode(image, "BMP")
    expected = np.asarray(image.convert("RGB"), np.float32)
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    np.testing.assert_array_equal(
        preprocessing._apply_bmp_palette(tf.constant(data), decoded).numpy(), expected)


def test_jpeg_pixels_equal_pil_decode_of_a_real_photo():
    data = encode(Image.fromarray(skimage.data.coffee()), "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)), np.float32)
    height, width = expected.shape[:2]
    # Resizing to the same size with a square image would be the identity; compare the
    # decode itself through the same code path instead.
    decoded = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(decoded, expected)
    assert decode(data, 64).shape == (64, 64, 3)
    assert (height, width) != (64, 64)


def test_squash_resize_keeps_left_and_right_halves():
    array = np.zeros((20, 60, 3), np.uint8)
    array[:, 30:] = 255  # Left half black, right half white, 3:1 aspect ratio.
    pixels = decode(encode(Image.fromarray(array), "PNG"), 10)
    assert pixels.shape == (10, 10, 3)
    assert pixels[:, :4].max() < 1 and pixels[:, 6:].min() > 254  # Squashed, not cropped.


def test_upscale_and_downscale_of_a_real_photo_stay_in_range():
    data = encode(Image.fromarray(skimage.data.astronaut()), "PNG")
    for size in (7, 224, 600):
        pixels = decode(data, size)
        assert pixels.shape == (size, size, 3)
        assert 0 <= pixels.min() and pixels.max() <= 255


def test_eager_and_tf_function_give_identical_results():
    data = CASES["rgb_jpeg"][0]
    photo = encode(Image.fromarray(skimage.data.chelsea()), "JPEG")

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def graph(image_bytes):
        return preprocessing.decode_and_resize(image_bytes, SIZE)

    for blob in (data, photo, CASES["palette_bmp"][0], CASES["grey_png"][0]):
        np.testing.assert_array_equal(graph(tf.constant(blob)).numpy(), decode(blob))
    assert graph.get_concrete_function().structured_outputs.shape == (SIZE, SIZE, 3)


def test_works_in_tf_data_map_and_map_fn_without_static_shapes():
    blobs = [CASES[name][0] for name in ("rgb_jpeg", "grey_png", "gif", "rgb_bmp")]
    ds = tf.data.Dataset.from_tensor_slices(blobs).map(
        lambda b: preprocessing.decode_and_resize(b, SIZE))
    batch = np.stack(list(ds.as_numpy_iterator()))
    mapped = tf.map_fn(lambda b: preprocessing.decode_and_resize(b, SIZE), tf.constant(blobs),
                       fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))
    np.testing.assert_array_equal(mapped.numpy(), batch)


def test_deterministic():
    data = encode(Image.fromarray(skimage.data.chelsea()), "JPEG")
    np.testing.assert_array_equal(decode(data, 50), decode(data, 50))


@pytest.mark.parametrize("garbage", [b"", b"not an image at all", b"\xff\xd8\xff\xe0trunc",
                                     b"\x89PNG\r\n\x1a\n", b"BM", b"GIF89a"])
def test_garbage_bytes_raise_invalid_argument(garbage):
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode(garbage)


def test_truncated_jpeg_raises_invalid_argument():
    data = encode(Image.fromarray(skimage.data.chelsea()), "JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode(data[: len(data) // 2])


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "224"])
def test_bad_image_size_is_a_value_error(size):
    with pytest.raises(ValueError, match="image_size"):
        preprocessing.decode_and_resize(tf.constant(CASES["rgb_png"][0]), size)


def test_numpy_int_image_size_is_accepted():
    assert decode(CASES["rgb_png"][0], np.int64(5)).shape == (5, 5, 3)
