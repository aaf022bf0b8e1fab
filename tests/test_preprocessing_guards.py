"""decode_and_resize rejects bad inputs before decoding, with messages naming the input.

Every case is real encoded data, cut or patched the way uploads and hostile clients do it,
and is checked alone (eagerly) and inside tf.map_fn in a tf.function, as the serving
signature runs it, where the message must name the right index of the batch.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import skimage.data
import tensorflow as tf
from PIL import Image
from support import encode

from train import preprocessing

SIZE = 16
REPO = pathlib.Path(__file__).resolve().parents[1]


def decode(data: bytes, **kwargs) -> np.ndarray:
    return preprocessing.decode_and_resize(tf.constant(data), SIZE, **kwargs).numpy()


def photo_jpeg(**kwargs) -> bytes:
    return encode(Image.fromarray(skimage.data.chelsea()), "JPEG", quality=90, **kwargs)


def photo_png() -> bytes:
    return encode(Image.fromarray(skimage.data.chelsea()), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 8000) -> bytes:
    """A valid 8000 x 8000 grey PNG of 62 KB: 64 MP, 768 MB as float RGB once decoded."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (side + 1)  # The filter type byte, then the pixels.
    pixels = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b""))


def with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with the size in its header replaced (checksums left stale), as a bomb does."""
    data = bytearray(data)
    if data[:2] == b"\xff\xd8":
        sof = data.index(b"\xff\xc0")  # PIL writes baseline JPEGs.
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    elif data[:4] == b"\x89PNG":
        data[16:24] = struct.pack(">II", width, height)
    elif data[:3] == b"GIF":
        data[6:10] = struct.pack("<HH", width, height)
    else:
        data[18:26] = struct.pack("<ii", width, -height)
    return bytes(data)


def with_thumbnail_then_cut() -> bytes:
    """A JPEG carrying a complete JPEG (with its FF D9) in APP1, cut in its own image data."""
    thumbnail = encode(Image.new("RGB", (8, 8), "red"), "JPEG")
    payload = b"Exif\0\0II*\0\x08\0\0\0\0\0" + thumbnail
    data = photo_jpeg()
    data = data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]
    return data[:len(data) * 2 // 3]


def cut_in_header() -> bytes:
    data = photo_jpeg()
    return data[:data.index(b"\xff\xc0") + 6]  # Inside the frame header.


def gif_blocks(data: bytes) -> tuple[int, int, int]:
    """(first image descriptor, its data's first sub-block, its terminator) of a GIF, found
    by walking its blocks here in Python, independently of the graph's walk."""
    pos = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[pos] == 0x21:  # Extensions: introducer, label, sub-blocks.
        pos += 2
        while data[pos]:
            pos += 1 + data[pos]
        pos += 1
    descriptor = pos
    flags = data[descriptor + 9]
    start = descriptor + 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    end = start
    while data[end]:
        end += 1 + data[end]
    return descriptor, start, end


def noise_gif(side: int = 64, frames: int = 1) -> bytes:
    rng = np.random.default_rng(side)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).convert("P")
              for _ in range(frames)]
    return encode(images[0], "GIF", save_all=frames > 1, append_images=images[1:])


def with_first_frame_size(data: bytes, width: int, height: int) -> bytes:
    """A GIF whose first image descriptor declares another size than its screen's."""
    descriptor, _, _ = gif_blocks(data)
    data = bytearray(data)
    data[descriptor + 5:descriptor + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def in_sub_blocks_of(data: bytes, size: int) -> bytes:
    """The same GIF with its first image's data re-cut into sub-blocks of `size` bytes."""
    _, start, end = gif_blocks(data)
    pixels, pos = b"", start
    while pos < end:
        pixels += data[pos + 1:pos + 1 + data[pos]]
        pos += 1 + data[pos]
    blocks = b"".join(bytes([len(pixels[i:i + size])]) + pixels[i:i + size]
                      for i in range(0, len(pixels), size))
    return data[:start] + blocks + data[end:]


def with_repeated_last_scan(data: bytes, times: int) -> bytes:
    """A progressive JPEG whose last scan is repeated: libjpeg decodes every repetition."""
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * times + data[end:]


BAD = {
    "empty": (lambda: b"", r"empty input \(0 bytes\)"),
    "random_bytes": (
        lambda: bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        r"data is not a JPEG, PNG, GIF or BMP image \([^)]*; 5000 bytes\)"),
    "html": (lambda: b"<!DOCTYPE html><html>Not found</html>",
             r"data is not a JPEG, PNG, GIF or BMP image"),
    "webp": (lambda: encode(Image.new("RGB", (8, 8)), "WEBP"),
             r"data is not a JPEG, PNG, GIF or BMP image"),
    "jpeg_cut_in_header": (cut_in_header, r"corrupt or truncated header \(JPEG, \d+ bytes\)"),
    "jpeg_cut_in_half": (lambda: photo_jpeg()[:len(photo_jpeg()) // 2],
                         r"truncated JPEG \(no end-of-image marker; \d+ bytes\)"),
    "progressive_jpeg_cut": (lambda: photo_jpeg(progressive=True)[:15000],
                             r"truncated JPEG \(no end-of-image marker; 15000 bytes\)"),
    "jpeg_with_thumbnail_cut": (with_thumbnail_then_cut, r"truncated JPEG"),
    "jpeg_without_image_data": (lambda: b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
                                        b"\xff\xd9",
                                r"corrupt or truncated header \(JPEG, 22 bytes\)"),
    "png_cut": (lambda: photo_png()[:len(photo_png()) // 2],
                r"truncated PNG \(no IEND chunk; \d+ bytes\)"),
    "png_cut_in_header": (lambda: photo_png()[:20], r"corrupt or truncated header \(PNG, 20"),
    "png_of_zero_width": (lambda: with_size(photo_png(), 0, 300),
                          r"corrupt or truncated header \(PNG"),
    "gif_signature_only": (lambda: b"GIF89a", r"corrupt or truncated header \(GIF, 6 bytes\)"),
    "bmp_signature_only": (lambda: b"BM\0\0", r"corrupt or truncated header \(BMP, 4 bytes\)"),
    "jpeg_declaring_60000x60000": (
        lambda: with_size(photo_jpeg(), 60000, 60000),
        r"60000x60000 pixels \(3600\.0 MP\) exceeds the limit of 50\.0 MP"),
    "png_declaring_60000x60000": (
        lambda: with_size(photo_png(), 60000, 60000),
        r"60000x60000 pixels \(3600\.0 MP\) exceeds the limit of 50\.0 MP"),
    "gif_declaring_65535x65535": (
        lambda: with_size(encode(Image.new("RGB", (8, 8)), "GIF"), 65535, 65535),
        r"65535x65535 pixels \(4294\.9 MP\) exceeds"),
    "bmp_declaring_10000x10000": (
        lambda: with_size(encode(Image.new("RGB", (8, 8)), "BMP"), 10000, 10000),
        r"10000x10000 pixels \(100\.0 MP\) exceeds"),
    "png_bomb": (png_bomb, r"8000x8000 pixels \(64\.0 MP\) exceeds the limit of 50\.0 MP"),
    # The decoder allocates every frame at the size its descriptor declares.
    "gif_frame_of_12000x12000_on_a_10x10_screen": (
        lambda: with_first_frame_size(encode(Image.new("RGB", (10, 10), "red"), "GIF"),
                                      12000, 12000),
        r"12000x12000 pixels \(144\.0 MP\) exceeds the limit of 50\.0 MP"),
    "gif_in_2_byte_sub_blocks": (lambda: in_sub_blocks_of(noise_gif(), 2),
                                 r"corrupt or truncated header \(GIF, \d+ bytes\)"),
    "gif_without_an_image": (lambda: encode(Image.new("RGB", (8, 8)), "GIF")[:13] + b";",
                             r"corrupt or truncated header \(GIF, 14 bytes\)"),
    "gif_cut_in_its_image": (lambda: noise_gif()[:2000],
                             r"corrupt or truncated header \(GIF, 2000 bytes\)"),
    "progressive_jpeg_with_2000_more_scans": (
        lambda: with_repeated_last_scan(
            encode(Image.new("RGB", (64, 64), "red"), "JPEG", progressive=True), 2000),
        r"JPEG with 20\d\d scans exceeds the limit of 64 \(a progressive JPEG has about 10\)"),
}


@pytest.fixture(scope="module")
def bad_inputs():
    return {case: (make(), problem) for case, (make, problem) in BAD.items()}


def test_the_bad_inputs_are_what_they_claim():
    assert Image.open(io.BytesIO(png_bomb())).size == (8000, 8000)  # Valid, not just a header.
    assert len(png_bomb()) < 100_000
    with Image.open(io.BytesIO(BAD["webp"][0]())) as webp:
        assert webp.format == "WEBP"
    thumbnail_cut = with_thumbnail_then_cut()
    scan = thumbnail_cut.rindex(b"\xff\xda")  # The main image's; the thumbnail has one too.
    assert b"\xff\xd9" in thumbnail_cut[:scan] and b"\xff\xd9" not in thumbnail_cut[scan:]


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_fails_before_decoding_with_its_name_and_problem(bad_inputs, case):
    data, problem = bad_inputs[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"cat\.jpg: {problem}"):
        decode(data, name="cat.jpg")
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image: {problem}"):
        decode(data)  # The default name.
    # No state survives a failure.
    assert decode(photo_jpeg()).shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("case", sorted(BAD))
def test_header_problem_is_reported_without_a_name(bad_inputs, case):
    data, problem = bad_inputs[case]
    header = preprocessing.read_image_header(tf.constant(data))
    if "scans" in problem:  # The limits are decode_and_resize's; the header is fine.
        assert header.problem.numpy() == b""
        assert header.scans.numpy() == data.count(b"\xff\xda") > 2000
    elif "exceeds" in problem:
        assert header.problem.numpy() == b""
        assert header.width.numpy() * header.height.numpy() > preprocessing.DEFAULT_MAX_PIXELS
    else:
        assert header.problem.numpy().decode().startswith(problem.split("\\")[0])


@pytest.fixture(scope="module")
def decode_batch():
    """The serving signature's decode: tf.map_fn in a tf.function, each image named by index."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def decode_images(image_bytes):
        count = tf.shape(image_bytes, out_type=tf.int64)[0]
        return tf.map_fn(
            lambda item: preprocessing.decode_and_resize(
                item[0], SIZE, name=tf.strings.format("image {}", item[1])),
            (image_bytes, tf.range(count)),
            fn_output_signature=tf.TensorSpec([SIZE, SIZE, 3], tf.float32))

    return decode_images


@pytest.mark.parametrize("index, case", [(i % 3 + 1, case) for i, case in enumerate(sorted(BAD))])
def test_in_a_batch_the_error_names_the_bad_image(decode_batch, bad_inputs, index, case):
    data, problem = bad_inputs[case]
    good = [photo_jpeg(), photo_png(), encode(Image.new("L", (30, 20), 90), "GIF")]
    batch = good[:index] + [data] + good[index:]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"image {index}: {problem}"):
        decode_batch(tf.constant(batch))
    # The next request is unaffected, and decodes as the eager function does.
    pixels = decode_batch(tf.constant(good)).numpy()
    np.testing.assert_array_equal(pixels, np.stack([decode(blob) for blob in good]))


def test_tf_data_reports_the_problem_and_can_skip_the_bad_file():
    blobs = [photo_jpeg(), b"", photo_png()]
    ds = tf.data.Dataset.from_tensor_slices(blobs).map(
        lambda blob: preprocessing.decode_and_resize(blob, SIZE))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image: empty input"):
        list(ds)
    assert len(list(ds.ignore_errors())) == 2


# --- Valid inputs the guards must let through -------------------------------------------


def test_a_jpeg_with_data_after_its_end_marker_decodes():
    data = photo_jpeg()
    # As motion photos append their video; nothing in it looks like FF D9.
    trailer = b"\0\0\0\x18ftypmp42" + bytes(range(256)) * 40
    assert b"\xff\xd9" not in trailer
    np.testing.assert_array_equal(decode(data + trailer), decode(data))
    # A second JPEG appended (as MPF files hold a preview), ending in FF D9 itself.
    np.testing.assert_array_equal(decode(data + photo_jpeg(progressive=True)), decode(data))


def test_a_png_with_data_after_its_iend_chunk_decodes():
    data = photo_png()
    np.testing.assert_array_equal(decode(data + b"appended by some tool" * 50), decode(data))


def test_max_pixels_is_inclusive_and_none_disables_it():
    data = encode(Image.new("RGB", (40, 30), (200, 10, 10)), "JPEG")
    assert decode(data, max_pixels=1200).shape == (SIZE, SIZE, 3)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image: 40x30 pixels \(0\.1 MP\) exceeds the limit of 1199 pixels"):
        decode(data, max_pixels=1199)
    assert decode(data, max_pixels=None).shape == (SIZE, SIZE, 3)
    # Above any default-limited size, the limit is honoured as given.
    big = encode(Image.new("RGB", (3000, 2000)), "JPEG")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"3000x2000 pixels \(6\.0 MP\) exceeds the limit of 5\.9 MP"):
        decode(big, max_pixels=5_999_999)
    assert decode(big, max_pixels=None).shape == (SIZE, SIZE, 3)


def test_max_pixels_none_also_works_in_a_graph():
    graph = tf.function(lambda blob: preprocessing.decode_and_resize(blob, SIZE,
                                                                     max_pixels=None))
    np.testing.assert_array_equal(graph(tf.constant(photo_jpeg())).numpy(), decode(photo_jpeg()))


# Run in a fresh interpreter: memory an earlier decode freed stays in the allocator and would
# hide a second one from the peak-RSS measurement.
PEAK_RSS_SCRIPT = """
import json, sys
import tensorflow as tf
sys.path.insert(0, "tests")  # Run from the repository: tests/support.
from support import peak_rss_growth
from train import preprocessing

def peak_growth_mb(call):
    outcome = "decoded"
    with peak_rss_growth() as growth:
        try:
            call()
        except tf.errors.InvalidArgumentError as error:
            outcome = error.message
    return growth["mb"], outcome

mode, size, bomb_path, small_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
bomb, small = (open(path, "rb").read() for path in (bomb_path, small_path))
functions = {limit: (lambda b, limit=limit: preprocessing.decode_and_resize(
    b, size, max_pixels=limit)) for limit in (10_000_000, None)}
if mode == "graph":
    functions = {limit: tf.function(f) for limit, f in functions.items()}
for f in functions.values():  # Traced, kernels loaded: only the decode is left to cost.
    f(tf.constant(small))
refused = peak_growth_mb(lambda: functions[10_000_000](tf.constant(bomb)))
decoded = peak_growth_mb(lambda: functions[None](tf.constant(bomb)))
print(json.dumps({"refused": refused, "decoded": decoded}))
"""


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_a_png_bomb_is_refused_before_its_decoder_allocates(mode, tmp_path):
    """The check runs BEFORE decoding: refusing the bomb costs no memory, while decoding it
    (the control, limit off) takes ~110 MB. Only a check placed after the decode, or a
    decoder not made to wait for it, fails the first bound."""
    if not pathlib.Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to measure peak memory")
    bomb, small = tmp_path / "bomb.png", tmp_path / "small.png"
    bomb.write_bytes(png_bomb(6000))  # 36 MP in 36 KB: 108 MB as decoded RGB.
    small.write_bytes(encode(Image.new("L", (64, 64), 90), "PNG"))
    done = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, mode, str(SIZE), str(bomb),
                           str(small)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    (refused_mb, refusal), (decoded_mb, decoded) = result["refused"], result["decoded"]
    assert re.search(r"6000x6000 pixels \(36\.0 MP\) exceeds the limit of 10\.0 MP", refusal)
    assert decoded == "decoded"
    assert refused_mb < 16, result
    assert decoded_mb > 80, result  # The measurement does see a decode.


# --- GIF frames and JPEG scans: what the decoder would really do -------------------------


def test_an_animated_gif_decodes_its_first_frame_and_never_the_others(decode_batch):
    animation = noise_gif(frames=3)
    first = animation[:gif_blocks(animation)[2] + 1] + b";"
    with Image.open(io.BytesIO(first)) as image:
        assert getattr(image, "n_frames", 1) == 1
    expected = decode(first)
    np.testing.assert_array_equal(decode(animation), expected)
    # A later frame declaring 144 MP with garbage data would fail (or fill memory) in
    # TensorFlow's decoder, which decodes every frame; here it is cut off unread.
    _, _, end = gif_blocks(animation)
    hostile = bytearray(animation)
    second = end + 1 + hostile[end + 1:].index(b"\x2c")  # The next image descriptor.
    hostile[second + 5:second + 9] = struct.pack("<HH", 12000, 12000)
    hostile = bytes(hostile[:second + 11]) + b"\x08" + b"\xff" * 600
    np.testing.assert_array_equal(decode(hostile), expected)
    np.testing.assert_array_equal(decode_batch(tf.constant([hostile, first])).numpy(),
                                  np.stack([expected, expected]))


@pytest.mark.parametrize("size", [100, 254, 255])
def test_gif_sub_blocks_of_other_sizes_decode_identically(size):
    standard = noise_gif(side=200)
    assert in_sub_blocks_of(standard, 255) == standard  # The encoder's own layout.
    np.testing.assert_array_equal(decode(in_sub_blocks_of(standard, size)), decode(standard))


def test_gif_frames_within_the_limit_are_checked_at_their_declared_size():
    small_screen = with_first_frame_size(encode(Image.new("RGB", (10, 10), "red"), "GIF"),
                                         300, 200)
    header = preprocessing.read_image_header(tf.constant(small_screen))
    assert (int(header.width), int(header.height)) == (300, 200)  # Larger than the screen.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"300x200 pixels"):
        decode(small_screen, max_pixels=300 * 200 - 1)


def test_max_jpeg_scans_is_inclusive_and_none_disables_it():
    progressive = encode(Image.fromarray(skimage.data.chelsea()), "JPEG", progressive=True)
    scans = progressive.count(b"\xff\xda")
    assert 5 <= scans <= 12  # What a progressive encoder writes.
    assert int(preprocessing.read_image_header(tf.constant(progressive)).scans) == scans
    assert int(preprocessing.read_image_header(tf.constant(photo_jpeg())).scans) == 1
    assert decode(progressive, max_jpeg_scans=scans).shape == (SIZE, SIZE, 3)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"image: JPEG with {scans} scans exceeds the limit of {scans - 1}"):
        decode(progressive, max_jpeg_scans=scans - 1)
    repeated = with_repeated_last_scan(progressive, 100)
    np.testing.assert_allclose(decode(repeated, max_jpeg_scans=None), decode(progressive),
                               atol=1)  # Repeating a refinement scan changes (almost) nothing.


# --- Bad arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"max_pixels": 0}, "max_pixels"), ({"max_pixels": -5}, "max_pixels"),
    ({"max_pixels": 2.5e6}, "max_pixels"), ({"max_pixels": True}, "max_pixels"),
    ({"jpeg_dct_scaling": "yes"}, "jpeg_dct_scaling"), ({"jpeg_dct_scaling": None},
                                                         "jpeg_dct_scaling"),
    ({"name": None}, "name"), ({"name": 3}, "name"), ({"name": tf.constant(["a", "b"])}, "name"),
    ({"name": tf.constant(3)}, "name"), ({"max_jpeg_scans": 0}, "max_jpeg_scans"),
    ({"max_jpeg_scans": 1.5}, "max_jpeg_scans"),
])
def test_bad_arguments_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        preprocessing.decode_and_resize(tf.constant(photo_jpeg()), SIZE, **kwargs)


def test_a_batch_instead_of_one_image_is_a_value_error():
    with pytest.raises(ValueError, match="scalar"):
        preprocessing.decode_and_resize(tf.constant([photo_jpeg()]), SIZE)
    with pytest.raises(ValueError, match="scalar"):
        preprocessing.read_image_header(tf.constant([photo_jpeg()]))
