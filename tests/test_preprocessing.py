"""decode_and_resize: every accepted format, colour handling, EXIF, DCT scaling, graph mode.

Rejected inputs and their messages are in test_preprocessing_guards.py.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image, ImageOps
from support import encode

from train import preprocessing

SIZE = 24
RED = (220, 30, 40)


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
        preprocessing.apply_bmp_palette(tf.constant(data), decoded).numpy(), expected)


def pil_reference(data: bytes, size: int, dct_ratio: int = 1) -> np.ndarray:
    """decode_and_resize computed by PIL alone: its libjpeg decode (at 1/dct_ratio scale
    through draft(), libjpeg's scaled IDCT) and its own bilinear resampling, which widens
    the filter when shrinking as TF's antialias=True does, on float channels."""
    with Image.open(io.BytesIO(data)) as image:
        if dct_ratio > 1:
            image.draft("RGB", (image.width // dct_ratio, image.height // dct_ratio))
        image = image.convert("RGB")
        channels = [np.asarray(image.getchannel(c).convert("F").resize(
            (size, size), Image.Resampling.BILINEAR), np.float32) for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255)


# PIL's and TF's bilinear filters agree to ~5e-3 levels (float rounding, measured max 4.3e-3).
PIL_RESIZE_ATOL = 0.02


def test_jpeg_pixels_equal_pil_decode_of_a_real_photo():
    data = encode(Image.fromarray(skimage.data.coffee()), "JPEG", quality=90)
    expected = np.asarray(Image.open(io.BytesIO(data)), np.float32)
    decoded = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(decoded, expected)
    # The project's decoder end to end: 400x600 to 64 px decodes at 1/4 scale (the largest
    # that still covers 64), equal to PIL's 1/4 draft; without DCT scaling, to PIL's full
    # decode; either way resized as PIL resizes.
    assert expected.shape[:2] == (400, 600)
    np.testing.assert_allclose(decode(data, 64), pil_reference(data, 64, dct_ratio=4),
                               atol=PIL_RESIZE_ATOL)
    full = preprocessing.decode_and_resize(tf.constant(data), 64, jpeg_dct_scaling=False)
    np.testing.assert_allclose(full.numpy(), pil_reference(data, 64), atol=PIL_RESIZE_ATOL)
    assert np.abs(decode(data, 64) - full.numpy()).max() > 1  # The two paths do differ.


def test_squash_resize_keeps_left_and_right_halves():
    array = np.zeros((20, 60, 3), np.uint8)
    array[:, 30:] = 255  # Left half black, right half white, 3:1 aspect ratio.
    pixels = decode(encode(Image.fromarray(array), "PNG"), 10)
    assert pixels.shape == (10, 10, 3)
    assert pixels[:, :4].max() < 1 and pixels[:, 6:].min() > 254  # Squashed, not cropped.


def test_upscale_and_downscale_of_a_real_photo_match_pil_and_stay_in_range():
    data = encode(Image.fromarray(skimage.data.astronaut()), "PNG")  # 512 x 512.
    for size in (7, 224, 600):
        pixels = decode(data, size)
        assert pixels.shape == (size, size, 3)
        assert 0 <= pixels.min() and pixels.max() <= 255
        np.testing.assert_allclose(pixels, pil_reference(data, size), atol=PIL_RESIZE_ATOL)


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


def test_deterministic_and_equal_to_an_independent_decode():
    data = encode(Image.fromarray(skimage.data.chelsea()), "JPEG")  # 451 x 300: 1/4 scale.
    first = decode(data, 50)
    np.testing.assert_allclose(first, pil_reference(data, 50, dct_ratio=4),
                               atol=PIL_RESIZE_ATOL)
    graph = tf.function(lambda b: preprocessing.decode_and_resize(b, 50))
    for again in (decode(data, 50), graph(tf.constant(data)).numpy()):
        np.testing.assert_array_equal(again, first)  # Bit for bit, eager or in a graph.


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


# --- Header -----------------------------------------------------------------------------

JPEG, PNG, GIF, BMP = (preprocessing.ImageFormat[name] for name in ("JPEG", "PNG", "GIF", "BMP"))
ODD_SIZE = (37, 23)  # Width, height: odd, and different, so a swap or an off-by-one shows.


def photo(size=ODD_SIZE) -> Image.Image:
    """A real, non-symmetric picture: any flip or rotation changes it."""
    return Image.fromarray(skimage.data.astronaut()[40:360, 100:500]).resize(size)


def header_of(data: bytes) -> tuple:
    header = preprocessing.read_image_header(tf.constant(data))
    return (int(header.format), int(header.height), int(header.width), int(header.orientation),
            header.problem.numpy().decode())


def top_down_bmp(image: Image.Image) -> bytes:
    """A BMP with a negative height (rows stored top first), which PIL does not write."""
    data = encode(image.convert("RGB"), "BMP")
    offset, height = struct.unpack_from("<I", data, 10)[0], image.height
    row_bytes = (image.width * 3 + 3) // 4 * 4
    rows = [data[offset + i * row_bytes:offset + (i + 1) * row_bytes] for i in range(height)]
    return data[:22] + struct.pack("<i", -height) + data[26:offset] + b"".join(reversed(rows))


HEADER_CASES = {
    "baseline_jpeg": (lambda: encode(photo(), "JPEG", quality=90), JPEG),
    "progressive_jpeg": (lambda: encode(photo(), "JPEG", quality=90, progressive=True), JPEG),
    "grey_jpeg": (lambda: encode(photo().convert("L"), "JPEG"), JPEG),
    "cmyk_jpeg": (lambda: encode(photo().convert("CMYK"), "JPEG"), JPEG),
    "png": (lambda: encode(photo(), "PNG"), PNG),
    "palette_png": (lambda: encode(photo().quantize(16), "PNG"), PNG),
    "16_bit_png": (lambda: tf.io.encode_png(np.zeros((23, 37, 1), np.uint16)).numpy(), PNG),
    "gif": (lambda: encode(photo(), "GIF"), GIF),
    "bmp": (lambda: encode(photo(), "BMP"), BMP),
    "top_down_bmp": (lambda: top_down_bmp(photo()), BMP),
}


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_header_gives_format_and_size_without_decoding(case):
    make, image_format = HEADER_CASES[case]
    assert header_of(make()) == (image_format, 23, 37, 1, "")


def test_top_down_bmp_decodes_upright():
    np.testing.assert_array_equal(decode(top_down_bmp(photo())),
                                  decode(encode(photo(), "BMP")))


def test_header_of_a_real_photo_with_a_16_bit_size():
    data = encode(Image.fromarray(skimage.data.retina()), "JPEG", quality=80)
    assert header_of(data) == (JPEG, 1411, 1411, 1, "")


def insert_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """`jpeg` with a marker segment added right after its SOI marker."""
    length = struct.pack(">H", len(payload) + 2)
    return jpeg[:2] + bytes([0xFF, marker]) + length + payload + jpeg[2:]


def test_fill_and_stray_bytes_between_jpeg_segments_are_skipped_as_libjpeg_does():
    data = encode(photo(), "JPEG", quality=90)
    tables = data.index(b"\xff\xdb")  # The first DQT segment.
    # FF fill bytes before a marker are legal; stray bytes are a libjpeg warning only.
    padded = data[:tables] + b"\xff\xff\xff" + data[tables:]
    stray = data[:tables] + b"\x00\x12\x34" + data[tables:]
    for variant in (padded, stray):
        assert header_of(variant) == (JPEG, 23, 37, 1, "")
        np.testing.assert_array_equal(decode(variant), decode(data))


# --- EXIF orientation ---------------------------------------------------------------------


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif.tobytes(), quality=95)


def upright_reference(data: bytes, size: int = SIZE) -> np.ndarray:
    """PIL's exif_transpose of the decoded JPEG, through the same resize (losslessly)."""
    with Image.open(io.BytesIO(data)) as stored:
        upright = ImageOps.exif_transpose(stored).convert("RGB")
    return decode(encode(upright, "PNG"), size)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_pixels_of_pil_exif_transpose(orientation):
    data = with_orientation(photo((48, 30)), orientation)
    assert header_of(data) == (JPEG, 30, 48, orientation, "")
    expected = upright_reference(data)
    # Orienting the resized square equals resizing the oriented image up to float rounding
    # (measured max 5e-4).
    np.testing.assert_allclose(decode(data), expected, atol=2e-3)
    with Image.open(io.BytesIO(data)) as stored:
        as_stored = decode(encode(stored.convert("RGB"), "PNG"))
    assert (np.abs(as_stored - expected).max() > 50) == (orientation != 1)


def tiff(order: bytes, entries, ifd_offset: int = 8) -> bytes:
    """A TIFF header and IFD0 in byte order b"II" or b"MM"; entries (tag, type, count, value)."""
    e = "<" if order == b"II" else ">"
    data = order + struct.pack(e + "HI", 42, ifd_offset) + b"\0" * (ifd_offset - 8)
    data += struct.pack(e + "H", len(entries))
    for tag, kind, count, value in entries:
        # A SHORT value is left-justified in the 4-byte field, whatever the byte order.
        packed = struct.pack(e + "HH", value, 0) if kind == 3 else struct.pack(e + "I", value)
        data += struct.pack(e + "HHI", tag, kind, count) + packed
    return data + struct.pack(e + "I", 0)


# Ordinary IFD0 tags around the orientation: ImageWidth, ImageLength, ResolutionUnit.
OTHER_TAGS = [(0x0100, 3, 1, 48), (0x0101, 4, 1, 30), (0x0128, 3, 1, 2)]


@pytest.mark.parametrize("order", [b"II", b"MM"])
@pytest.mark.parametrize("ifd_offset", [8, 26])
def test_exif_orientation_in_either_byte_order_among_other_tags(order, ifd_offset):
    entries = OTHER_TAGS[:2] + [(0x0112, 3, 1, 6)] + OTHER_TAGS[2:]
    data = insert_segment(encode(photo((48, 30)), "JPEG", quality=95), 0xE1,
                          b"Exif\0\0" + tiff(order, entries, ifd_offset))
    with Image.open(io.BytesIO(data)) as stored:  # PIL reads the hand-made segment too.
        assert stored.getexif()[0x0112] == 6
    assert header_of(data) == (JPEG, 30, 48, 6, "")
    np.testing.assert_allclose(decode(data), upright_reference(data), atol=2e-3)


def test_exif_is_found_after_an_xmp_app1_segment():
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x='adobe:ns:meta/'/>"
    data = insert_segment(with_orientation(photo(), 8), 0xE1, xmp)
    assert header_of(data)[3] == 8


@pytest.mark.parametrize("tiff_data", [
    tiff(b"MM", OTHER_TAGS),  # No orientation tag.
    tiff(b"II", [(0x0112, 3, 1, 9)]),  # Out of range.
    tiff(b"II", [(0x0112, 4, 1, 6)]),  # A LONG, not the SHORT the standard prescribes.
    tiff(b"II", [(0x0112, 3, 1, 6)])[:20],  # The entry is cut off by the segment's end.
    b"MM\0*\0\0\x0f\xa0" + tiff(b"MM", [(0x0112, 3, 1, 6)])[8:],  # IFD0 at 4000: outside.
    tiff(b"XX", [(0x0112, 3, 1, 6)]),  # Neither byte order.
    b"",
])
def test_broken_exif_means_as_stored_and_never_an_error(tiff_data):
    data = insert_segment(encode(photo(), "JPEG", quality=95), 0xE1, b"Exif\0\0" + tiff_data)
    assert header_of(data) == (JPEG, 23, 37, 1, "")
    np.testing.assert_array_equal(decode(data), decode(encode(photo(), "JPEG", quality=95)))


# --- DCT-domain downscaling ---------------------------------------------------------------


@pytest.mark.parametrize("height, width, image_size, ratio", [
    (3000, 4000, 224, 8), (4000, 3000, 224, 8),
    (1785, 4000, 224, 8), (1784, 4000, 224, 4),  # ceil(1785 / 8) = 224, ceil(1784 / 8) = 223.
    (3000, 4000, 600, 4), (480, 640, 224, 2), (447, 640, 224, 2), (446, 640, 224, 1),
    (224, 224, 224, 1), (10, 10, 1, 8),
])
def test_dct_ratio_is_the_largest_that_still_covers_the_output(height, width, image_size,
                                                                ratio):
    header = preprocessing.ImageHeader(
        format=tf.constant(JPEG), height=tf.constant(height, tf.int64),
        width=tf.constant(width, tf.int64), orientation=tf.constant(1), problem=tf.constant(""))
    index = int(preprocessing.dct_ratio_index(header, image_size))
    assert preprocessing.DCT_RATIOS[index] == ratio


def big_photo() -> bytes:
    """A 2048 x 2048 JPEG of a real photo (astronaut, upscaled 4x)."""
    image = Image.fromarray(skimage.data.astronaut()).resize((2048, 2048), Image.BICUBIC)
    return encode(image, "JPEG", quality=90)


@pytest.mark.parametrize("make, ratio", [
    (big_photo, 8),
    (lambda: encode(Image.fromarray(skimage.data.retina()), "JPEG", quality=90), 4),
    (lambda: encode(Image.fromarray(skimage.data.hubble_deep_field()), "JPEG", quality=90), 2),
])
def test_dct_scaled_decode_of_a_big_photo_stays_close_to_the_full_decode(make, ratio):
    data = tf.constant(make())
    header = preprocessing.read_image_header(data)
    assert preprocessing.DCT_RATIOS[int(preprocessing.dct_ratio_index(header, 224))] == ratio
    scaled = preprocessing.decode_and_resize(data, 224).numpy()
    full = preprocessing.decode_and_resize(data, 224, jpeg_dct_scaling=False).numpy()
    difference = np.abs(scaled - full)
    # Measured: mean 1.04 / 0.45 / 0.37 levels, 99th percentile 8.8 / 4.8 / 2.7, max 27 / 35 /
    # 17 (single pixels on sharp edges: 1/r block averaging vs the antialiasing filter).
    assert difference.mean() < 1.5
    assert np.percentile(difference, 99) < 12
    assert difference.max() < 48


def test_jpegs_too_small_to_scale_decode_identically_either_way():
    for data, size in [(encode(Image.fromarray(skimage.data.coffee()), "JPEG"), 224),
                       (encode(Image.fromarray(skimage.data.astronaut()), "JPEG"), 300),
                       (CASES["cmyk_jpeg"][0], SIZE)]:
        np.testing.assert_array_equal(
            decode(data, size),
            preprocessing.decode_and_resize(tf.constant(data), size,
                                            jpeg_dct_scaling=False).numpy())
