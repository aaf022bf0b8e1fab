"""The one image preprocessing function shared by training and the exported serving graph.

Training (train.data) and serving (export/) both call `decode_and_resize`, so the pixels a
model sees in production are computed exactly as in training. It is pure TensorFlow ops
(no py_function), usable in tf.data, tf.function and SavedModel signatures, on inputs
without a static shape.

Before any decoder runs, `read_image_header` reads the format, the size and the EXIF
orientation from the first bytes (and, for JPEG, the marker segments up to the image data),
so that empty, unknown, corrupt, truncated and oversized inputs (decompression bombs) fail
with a message naming the input, and big JPEGs can be decoded at a reduced DCT scale.

Usage:
    pixels = decode_and_resize(tf.io.read_file("cat.jpg"), 224)  # [224, 224, 3] float32
    header = read_image_header(tf.io.read_file("cat.jpg"))
    print(header.width.numpy(), header.height.numpy(), header.orientation.numpy())
"""

from __future__ import annotations

import enum
import numbers
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from train.config import DEFAULT_MAX_JPEG_SCANS, DEFAULT_MAX_PIXELS  # The input limits.


class ImageFormat(enum.IntEnum):
    """Format codes of `ImageHeader.format`, from the file's magic bytes."""

    UNKNOWN = 0
    JPEG = 1
    PNG = 2
    GIF = 3
    BMP = 4


class ImageHeader(NamedTuple):
    """What `read_image_header` finds in an encoded image; every field is a scalar tensor.

    Attributes:
      format: int32 `ImageFormat` code (UNKNOWN for empty or unrecognised data).
      height: int64 height in pixels as stored (before EXIF orientation); 0 if unknown.
      width: int64 width in pixels as stored; 0 if unknown.
      orientation: int32 EXIF orientation 1..8 of a JPEG; 1 when absent or invalid and for
        the other formats.
      problem: string, "" when the data looks decodable, else why not (without a name
        prefix), e.g. "empty input (0 bytes)" or "truncated JPEG (no end-of-image marker;
        1234 bytes)".
      scans: int64 number of scans (SOS markers) of a JPEG, each a full pass of the decoder
        over the image; 0 for the other formats.
      decode_end: int64 how many leading bytes the decoder needs: for a GIF, up to the end
        of its first image (later frames are never decoded); the data's size otherwise.
    """

    format: tf.Tensor
    height: tf.Tensor
    width: tf.Tensor
    orientation: tf.Tensor
    problem: tf.Tensor
    scans: tf.Tensor | None = None
    decode_end: tf.Tensor | None = None


# Bytes of a BMP file header plus BITMAPINFOHEADER: enough to read the pixel format.
_BMP_HEADER_BYTES = 54
# The fixed-offset fields of every format lie in the first 26 bytes (BMP height at 22..25).
_HEAD_BYTES = 32
# Marker segments walked at most. A JPEG has ~10 before its image data (APPn, DQT, SOF, DHT)
# and each fill or stray byte costs one step (~25 us): the bound keeps garbage cheap.
_JPEG_MAX_STEPS = 1024
# Extension blocks and their sub-blocks walked at most before a GIF's first image (a GIF
# has a handful: loop count, frame control, comments; XMP data takes about one per 100 bytes).
_GIF_MAX_BLOCK_STEPS = 4096
# A GIF's first image may take one walk step (~10 us) per this many bytes of the file when its
# sub-blocks are not the encoders' 255 bytes: only a file made of tiny ones is refused.
_GIF_MIN_SUB_BLOCK_BYTES = 64
# A PNG's IEND chunk is its last 12 bytes unless data was appended; this much of the tail is
# searched for it then. A chance "IEND" in compressed data is a 2^-32 event per offset.
_PNG_TAIL_SEARCH_BYTES = 64 * 1024

# SOF0-3, 5-7, 9-11, 13-15: every frame header. C4 (DHT), C8 (JPG) and CC (DAC) are not.
_SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
# Markers without a length field: TEM, RST0-7 and SOI.
_STANDALONE_MARKERS = (0x01, *range(0xD0, 0xD9))
# Where the marker walk stopped.
_RUNNING, _AT_SOS, _BAD_MARKER, _PAST_END = range(4)
_SOF_SEGMENT, _APP1_SEGMENT = 1, 2
# Problem codes, in the order they are checked.
_OK, _EMPTY, _NOT_AN_IMAGE, _CORRUPT_HEADER, _TRUNCATED = range(5)
# The reduced scales libjpeg can decode at (its 4x4, 2x2 and 1x1 IDCTs), largest first.
DCT_RATIOS = (8, 4, 2, 1)
_EXIF_ORIENTATION_TAG = 0x0112
_TIFF_SHORT = 3


@tf.autograph.experimental.do_not_convert
def read_image_header(image_bytes: tf.Tensor) -> ImageHeader:
    """Reads format, size and EXIF orientation of an encoded image without decoding it.

    Formats are told by their magic bytes: JPEG (FF D8 FF), PNG, GIF ("GIF8") and BMP ("BM").
    PNG, GIF and BMP sizes sit at fixed offsets (IHDR; the logical screen; the DIB header,
    whose negative height means top-down rows). A JPEG's marker segments are walked up to the
    image data (SOS), reading 16 bytes per segment: the first frame header (SOFn) gives the
    size and the first "Exif" APP1 segment the orientation (IFD0 tag 0x0112, either byte
    order); fill and stray bytes between segments are skipped, as libjpeg skips them. Only
    PNG trailers and JPEG ends are searched, and only when the data does not end as
    expected, so on the common path the cost does not grow with the file.

    `problem` is checked in this order: empty input; unknown format; corrupt or truncated
    header (no size found, a size of 0, a broken marker segment or a header running past the
    end); truncated data (a JPEG without FF D9 after its first scan, a PNG without IEND in
    its last 64 KiB). A GIF's blocks are walked to the end of its first image, whose size
    counts when it is larger than the logical screen (the decoder allocates both); a GIF
    whose blocks do not lead there is a corrupt header. BMP bodies are left to the decoder.
    A JPEG's scans (FF DA markers, which cannot occur inside entropy-coded data) are
    counted over the whole file.

    Args:
      image_bytes: scalar tf.string holding the encoded file.

    Returns:
      An `ImageHeader` of scalar tensors.

    Raises:
      ValueError: image_bytes is statically known not to be a scalar.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)
    if image_bytes.shape.rank not in (None, 0):
        raise ValueError(f"image_bytes must be a scalar string, got shape {image_bytes.shape}")
    size = tf.strings.length(image_bytes, unit="BYTE")
    size = tf.cast(size, tf.int64)
    head = _read_bytes(image_bytes, size, tf.constant(0, tf.int64), _HEAD_BYTES)
    image_format = tf.where(
        _starts_with(head, b"\xff\xd8\xff"), int(ImageFormat.JPEG), tf.where(
            _starts_with(head, b"\x89PNG\r\n\x1a\n"), int(ImageFormat.PNG), tf.where(
                _starts_with(head, b"GIF8"), int(ImageFormat.GIF), tf.where(
                    _starts_with(head, b"BM"), int(ImageFormat.BMP),
                    int(ImageFormat.UNKNOWN)))))
    image_format = tf.cast(image_format, tf.int32)

    no_scans = tf.constant(0, tf.int64)

    def unknown():
        zero = tf.constant(0, tf.int64)
        return (zero, zero, tf.constant(1, tf.int32), tf.constant(False), tf.constant(True),
                no_scans, size)

    def jpeg():
        return (*_read_jpeg_header(image_bytes, size), _count_jpeg_scans(image_bytes), size)

    def png():
        ok = tf.logical_and(size >= 24, _starts_with(head[12:], b"IHDR"))
        width = head[16] * 16777216 + head[17] * 65536 + head[18] * 256 + head[19]
        height = head[20] * 16777216 + head[21] * 65536 + head[22] * 256 + head[23]
        return (height, width, tf.constant(1, tf.int32), ok, _png_complete(image_bytes, size),
                no_scans, size)

    def gif():
        height, width, ok, end = _read_gif_header(image_bytes, size)
        return height, width, tf.constant(1, tf.int32), ok, tf.constant(True), no_scans, end

    def bmp():
        def int32(offset):
            value = (head[offset] + head[offset + 1] * 256 + head[offset + 2] * 65536
                     + head[offset + 3] * 16777216)
            return tf.where(value >= 2**31, value - 2**32, value)

        return (tf.abs(int32(22)), int32(18), tf.constant(1, tf.int32), size >= 26,
                tf.constant(True), no_scans, size)

    height, width, orientation, header_ok, complete, scans, decode_end = tf.switch_case(
        image_format, [unknown, jpeg, png, gif, bmp])
    header_ok = tf.logical_and(header_ok, tf.logical_and(height >= 1, width >= 1))
    code = tf.where(
        tf.equal(size, 0), _EMPTY, tf.where(
            tf.equal(image_format, int(ImageFormat.UNKNOWN)), _NOT_AN_IMAGE, tf.where(
                tf.logical_not(header_ok), _CORRUPT_HEADER, tf.where(
                    tf.logical_not(complete), _TRUNCATED, _OK))))
    problem = tf.cond(tf.equal(code, _OK), lambda: tf.constant(""),
                      lambda: _describe_problem(code, image_format, size))
    return ImageHeader(format=image_format, height=tf.where(header_ok, height, 0),
                       width=tf.where(header_ok, width, 0), orientation=orientation,
                       problem=problem, scans=scans, decode_end=decode_end)


# Plain TensorFlow ops; Python branches only on Python arguments: nothing for AutoGraph.
@tf.autograph.experimental.do_not_convert
def decode_and_resize(image_bytes: tf.Tensor, image_size: int, *,
                      max_pixels: int | None = DEFAULT_MAX_PIXELS, jpeg_dct_scaling: bool = True,
                      max_jpeg_scans: int | None = DEFAULT_MAX_JPEG_SCANS,
                      name: str | tf.Tensor = "image") -> tf.Tensor:
    """Checks, decodes, orients and resizes one encoded image to a square model input.

    Formats: JPEG (baseline, progressive, grey and CMYK), PNG (any bit depth, grey, palette,
    alpha), GIF (the first frame; later frames are cut off before the decoder sees them) and
    BMP (24/32-bit, and 8-bit with its palette applied).
    Grey becomes RGB by replication and an alpha channel is dropped (not composited), as
    TensorFlow's decoders do. CMYK (and YCCK) JPEGs are converted to RGB by TensorFlow's
    own JPEG decoder, matching PIL within 1 level (Adobe inverted CMYK, as PIL and Photoshop
    write it; checked in tests/test_preprocessing.py), so no conversion code is needed here.
    16-bit PNGs are reduced to 8 bits by truncation (tf.io.decode_image's conversion).
    JPEGs use the accurate integer IDCT, so pixels equal PIL's decode of the same file
    (the default fast IDCT differs by up to ~4 levels) at ~4% extra decode time.

    A JPEG's EXIF orientation is applied, as PIL's ImageOps.exif_transpose does, so a phone
    photo taken sideways comes out upright, in training and in serving alike. (Keras'
    image_dataset_from_directory ignores it.) It is applied to the resized square, which
    gives the same pixels as orienting first, since the resize treats rows and columns
    alike, at a fraction of the cost.

    With jpeg_dct_scaling, a JPEG at least twice image_size on its shorter side is decoded at
    1/2, 1/4 or 1/8 scale by libjpeg's scaled IDCT (the largest ratio that still leaves at
    least image_size pixels each way), which skips much of the decode's work and memory: a
    4000x3000 photo goes to 224 px 2-2.5x faster (measured on 2 CPU cores), at a mean
    difference of 0.3-1 level from the full decode after the resize (single pixels on sharp
    edges differ by up to ~35, box versus triangle filtering). Smaller JPEGs and other
    formats decode at full size either way, to identical pixels.

    The image is resized to image_size x image_size without keeping the aspect ratio (as
    image_dataset_from_directory does), bilinearly with antialiasing so that downscaling
    large photos does not alias. The result is deterministic.

    Before any decoder runs, the header is checked (`read_image_header`), and a bad input
    fails with a tf.errors.InvalidArgumentError whose message holds "{name}: {problem}"
    (in a graph: "assertion failed: [{name}: {problem}]"), the problem being one of:
      "empty input (0 bytes)";
      "data is not a JPEG, PNG, GIF or BMP image (...; N bytes)";
      "corrupt or truncated header (JPEG, N bytes)" (or PNG, GIF, BMP);
      "truncated JPEG (no end-of-image marker; N bytes)", "truncated PNG (no IEND chunk; ...)";
      "20000x20000 pixels (400.0 MP) exceeds the limit of 50.0 MP" (for a GIF, the larger
      of its logical screen and its first frame);
      "JPEG with 2001 scans exceeds the limit of 64 (a progressive JPEG has about 10)".
    Data that passes these checks but is still broken fails in the decoder, with its message.

    Args:
      image_bytes: scalar tf.string holding the encoded file.
      image_size: output height and width in pixels (a Python or numpy int).
      max_pixels: images whose header declares more pixels (width * height) are rejected
        before decoding; None for no limit.
      jpeg_dct_scaling: decode big JPEGs at a reduced DCT scale; False always decodes at full
        size (for comparisons).
      max_jpeg_scans: JPEGs with more scans are rejected before decoding: each scan is a
        pass of the decoder over the whole image, so a small file repeating one scan
        thousands of times would cost seconds of CPU; None for no limit.
      name: what error messages call the input: a str, or a scalar tf.string tensor such as
        tf.strings.format("image {}", index) inside tf.map_fn.

    Returns:
      float32 [image_size, image_size, 3] RGB in 0..255, not normalised: every backbone
      normalises inside its own graph.

    Raises:
      ValueError: a bad argument (raised while building the graph).
      tf.errors.InvalidArgumentError: the bytes are not a decodable image (at run time).
    """
    _check_args(image_size, max_pixels, jpeg_dct_scaling, name)
    _check_limit("max_jpeg_scans", max_jpeg_scans)
    image_size = int(image_size)  # numpy ints too, but a plain int in the graph.
    image_bytes = tf.convert_to_tensor(image_bytes, dtype=tf.string)
    header = read_image_header(image_bytes)
    header_ok = tf.equal(header.problem, "")
    pixels_ok = scans_ok = tf.constant(True)
    if max_pixels is not None:
        max_pixels = int(max_pixels)
        pixels_ok = header.height * header.width <= max_pixels
    if max_jpeg_scans is not None:
        max_jpeg_scans = int(max_jpeg_scans)
        scans_ok = header.scans <= max_jpeg_scans
    ok = tf.reduce_all(tf.stack([header_ok, pixels_ok, scans_ok]))

    def problem() -> tf.Tensor:
        rules = [(tf.logical_not(header_ok), lambda: header.problem)]
        if max_pixels is not None:
            rules.append((tf.logical_not(pixels_ok), lambda: _too_many_pixels(header, max_pixels)))
        if max_jpeg_scans is not None:
            rules.append((tf.logical_not(scans_ok),
                          lambda: _too_many_scans(header, max_jpeg_scans)))
        return tf.case(rules, default=lambda: header.problem, exclusive=False)

    message = tf.cond(ok, lambda: tf.constant(""),
                      lambda: tf.strings.join([name, ": ", problem()]))
    if tf.executing_eagerly():
        # The same error, without the op and device names eager ops put before the message.
        if not bool(ok):
            raise tf.errors.InvalidArgumentError(None, None,
                                                 message.numpy().decode(errors="replace"))
    else:
        # "assertion failed: [image 3: empty input (0 bytes)]". The raw op: tf.debugging.Assert
        # would add a cond around it, to build a message that is only built on failure anyway.
        check = tf.raw_ops.Assert(condition=ok, data=[message])
        # Every decoder below takes its bytes from here, so none runs (however big the image
        # claims to be) before the check has passed.
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)

    def decode_jpeg(ratio: int):
        return lambda: tf.io.decode_jpeg(image_bytes, channels=3, ratio=ratio,
                                         dct_method="INTEGER_ACCURATE")

    def decode_other():
        # A GIF ends after its first image: the trailer (3B) is put where the walk stopped.
        data = tf.cond(tf.equal(header.format, int(ImageFormat.GIF)),
                       lambda: tf.strings.join([tf.strings.substr(
                           image_bytes, tf.constant(0, tf.int64), header.decode_end), ";"]),
                       lambda: image_bytes)
        return apply_bmp_palette(
            data, tf.io.decode_image(data, channels=3, expand_animations=False))

    # The ratio is a static attribute of the decoder: one branch per ratio, then the rest.
    if jpeg_dct_scaling:
        ratios, ratio_index = DCT_RATIOS, dct_ratio_index(header, image_size)
    else:
        ratios, ratio_index = (1,), tf.constant(0)
    branch = tf.where(tf.equal(header.format, int(ImageFormat.JPEG)), ratio_index, len(ratios))
    image = tf.switch_case(branch, [decode_jpeg(r) for r in ratios] + [decode_other])
    image.set_shape([None, None, 3])
    resized = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    resized = _orient(resized, header.orientation)
    return tf.clip_by_value(resized, 0.0, 255.0)  # Antialiasing kernels can overshoot.


def _read_bytes(image_bytes: tf.Tensor, size: tf.Tensor, pos: tf.Tensor, length: int
                ) -> tf.Tensor:
    """`length` bytes from `pos` as int64, zeros past the end: reads never fail on short data.

    Only `length` bytes are copied, so the cost does not depend on the size of the file.
    """
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, size)  # substr fails past the end.
    raw = tf.io.decode_raw(tf.strings.substr(image_bytes, pos, tf.constant(length, tf.int64)),
                           tf.uint8, fixed_length=length)
    return tf.cast(raw, tf.int64)


def _read_words(image_bytes: tf.Tensor, size: tf.Tensor, pos: tf.Tensor, count,
                *, big_endian: bool) -> tf.Tensor:
    """`count` 16-bit unsigned words from `pos` as int64, zeros past the end."""
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, size)
    num_bytes = tf.cast(2 * count, tf.int64)
    raw = tf.io.decode_raw(tf.strings.substr(image_bytes, pos, num_bytes), tf.uint16,
                           little_endian=not big_endian,
                           fixed_length=tf.cast(num_bytes, tf.int32))
    return tf.cast(raw, tf.int64)


def _starts_with(head: tf.Tensor, signature: bytes) -> tf.Tensor:
    return tf.reduce_all(tf.equal(head[:len(signature)], list(signature)))


def _contains(haystack: tf.Tensor, needle: bytes) -> tf.Tensor:
    # A split that stops at the first match is a byte-exact substring search; regexes are not
    # (RE2 reads its input as UTF-8).
    return tf.size(tf.strings.split(haystack, sep=needle, maxsplit=1)) > 1


def _jpeg_step_table() -> np.ndarray:
    """What the marker walk does at a position, by the 16-bit word there minus 0xFEFF.

    Row 0 is any word below FF00 (no marker), row 1 + m the marker FF m. Columns: the fixed
    advance, 1 if the segment's length field is added to it, the state after the step, and
    _SOF_SEGMENT or _APP1_SEGMENT for the segments the header is read from. Stray bytes
    between segments are skipped, as libjpeg does (with a "Corrupt JPEG data: extraneous
    bytes" warning, still decoding the image).
    """
    table = np.zeros((257, 4), np.int64)
    table[1:] = (2, 1, _RUNNING, 0)  # A marker segment: FF m, a length, that many bytes - 2.
    table[0] = (1, 0, _RUNNING, 0)  # A stray byte.
    table[1 + 0x00] = (2, 0, _RUNNING, 0)  # FF 00 is stray too: it is no marker.
    table[1 + 0xFF] = (1, 0, _RUNNING, 0)  # A fill byte before a marker.
    table[1 + 0xDA] = (0, 0, _AT_SOS, 0)
    table[1 + 0xD9] = (0, 0, _BAD_MARKER, 0)  # The end of the image, before any image data.
    table[[1 + m for m in _STANDALONE_MARKERS]] = (2, 0, _RUNNING, 0)
    table[[1 + m for m in _SOF_MARKERS], 3] = _SOF_SEGMENT
    table[1 + 0xE1, 3] = _APP1_SEGMENT
    return table


def _read_jpeg_header(image_bytes: tf.Tensor, size: tf.Tensor):
    """Walks the marker segments to the first SOS: size, orientation, header ok, complete."""
    table = tf.constant(_jpeg_step_table())

    # Every op in the loop runs once per segment, so it only decides the next position, from
    # 8 big-endian 16-bit words read there (FF marker, length, 12 bytes of the segment), and
    # keeps them for a vectorised look at all the segments afterwards.
    def step(pos, state, segments):
        words = _read_words(image_bytes, size, pos, 8, big_endian=True)
        marker, length, *_ = tf.unstack(words)
        advance, has_length, state, _ = tf.unstack(
            tf.gather(table, tf.maximum(marker - 0xFEFF, 0)))
        return pos + advance + has_length * length, state, segments.write(segments.size(), words)

    def more(pos, state, segments):
        return tf.logical_and(tf.equal(state, _RUNNING), pos + 2 <= size)

    pos, state, segments = tf.while_loop(
        more, step,
        (tf.constant(2, tf.int64), tf.constant(_RUNNING, tf.int64),
         tf.TensorArray(tf.int64, size=0, dynamic_size=True, element_shape=[8])),
        maximum_iterations=_JPEG_MAX_STEPS)
    words = segments.stack()  # [steps, 8]
    rows = tf.gather(table, tf.maximum(words[:, 0] - 0xFEFF, 0))
    length = words[:, 1]
    starts = 2 + tf.cumsum(rows[:, 0] + rows[:, 1] * length, exclusive=True)
    bad_length = tf.reduce_any(tf.logical_and(tf.equal(rows[:, 1], 1), length < 2))
    state = tf.where(bad_length, tf.constant(_BAD_MARKER, tf.int64), state)
    state = tf.where(pos + 2 > size, tf.constant(_PAST_END, tf.int64), state)
    # Only the first frame header counts; a second one is the decoder's problem. Its height
    # and width are the 16-bit words at offset 5.
    sof = tf.equal(rows[:, 3], _SOF_SEGMENT)
    dimensions = _read_words(image_bytes, size, starts[tf.argmax(tf.cast(sof, tf.int32))] + 5,
                             2, big_endian=True)
    found = tf.reduce_any(sof)
    height = tf.where(found, dimensions[0], 0)
    width = tf.where(found, dimensions[1], 0)
    exif = tf.logical_and(tf.equal(rows[:, 3], _APP1_SEGMENT),  # "Exif\0\0" follows the length.
                          tf.reduce_all(tf.equal(words[:, 2:5], [0x4578, 0x6966, 0]), axis=1))
    exif_row = tf.argmax(tf.cast(exif, tf.int32))
    has_exif = tf.reduce_any(exif)
    orientation = _exif_orientation(image_bytes, size,
                                    tf.where(has_exif, starts[exif_row] + 10, -1),
                                    tf.where(has_exif, length[exif_row] - 8, 0))
    # Running out of steps is no error in itself: the decoder has the last word.
    header_ok = tf.logical_and(tf.not_equal(state, _BAD_MARKER), tf.not_equal(state, _PAST_END))
    # FF D9 cannot occur inside entropy-coded data (FF is stuffed as FF 00 there), so any
    # FF D9 after the first scan is the end of the image; data may follow it (motion photos
    # append a video), so the slow search only runs when the file does not end with it.
    complete = tf.cond(
        tf.equal(tf.strings.substr(image_bytes, size - 2, 2), b"\xff\xd9"),
        lambda: tf.constant(True),
        lambda: _contains(tf.strings.substr(image_bytes, tf.minimum(pos, size), size),
                          b"\xff\xd9"))
    return height, width, orientation, header_ok, complete


def _exif_orientation(image_bytes: tf.Tensor, size: tf.Tensor, tiff_pos: tf.Tensor,
                      tiff_len: tf.Tensor) -> tf.Tensor:
    """Tag 0x0112 of IFD0 in the TIFF structure of an Exif APP1 segment, or 1.

    Everything is bounded by the segment (tiff_pos, tiff_len), and a broken or absent tag
    means "as stored": bad metadata never rejects an image.
    """
    order = _read_words(image_bytes, size, tiff_pos, 1, big_endian=True)[0]
    big_endian = tf.equal(order, 0x4D4D)  # "MM"; "II" is little-endian.

    def words(pos, count):  # In the TIFF's byte order.
        return tf.where(big_endian, _read_words(image_bytes, size, pos, count, big_endian=True),
                        _read_words(image_bytes, size, pos, count, big_endian=False))

    header = words(tiff_pos, 4)  # Byte order, 42, offset of IFD0 from the TIFF header.
    ifd_offset = tf.where(big_endian, header[2] * 65536 + header[3],
                          header[3] * 65536 + header[2])
    valid = tf.reduce_all(tf.stack([
        tiff_pos >= 0, tf.logical_or(big_endian, tf.equal(order, 0x4949)),
        tf.equal(header[1], 42), ifd_offset >= 8, ifd_offset + 2 <= tiff_len]))
    ifd_pos = tiff_pos + ifd_offset
    # Entries beyond the segment are not IFD0's, whatever the count says.
    count = tf.minimum(words(ifd_pos, 1)[0], (tiff_len - ifd_offset - 2) // 12)
    count = tf.where(valid, tf.maximum(count, 0), 0)
    # All entries at once, 6 words each: tag, type, count (2), value (2). One more entry is
    # read than needed, as an empty read is not allowed, and sliced off again.
    entries = tf.reshape(words(ifd_pos + 2, (count + 1) * 6)[:count * 6], [-1, 6])
    match = tf.logical_and(tf.equal(entries[:, 0], _EXIF_ORIENTATION_TAG),
                           tf.equal(entries[:, 1], _TIFF_SHORT))
    first = tf.logical_and(match, tf.equal(tf.cumsum(tf.cast(match, tf.int64)), 1))
    value = tf.reduce_sum(tf.where(first, entries[:, 4], 0))  # A SHORT is left-justified.
    known = tf.logical_and(tf.reduce_any(match), tf.logical_and(value >= 1, value <= 8))
    return tf.cast(tf.where(known, value, 1), tf.int32)


def _png_complete(image_bytes: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    return tf.cond(
        tf.equal(tf.strings.substr(image_bytes, size - 8, 4), b"IEND"),
        lambda: tf.constant(True),
        lambda: _contains(tf.strings.substr(
            image_bytes, tf.maximum(size - _PNG_TAIL_SEARCH_BYTES, 0), size), b"IEND"))


def _count_jpeg_scans(image_bytes: tf.Tensor) -> tf.Tensor:
    """The number of SOS markers: FF is stuffed as FF 00 in entropy-coded data, so every FF DA
    in the file starts a scan. libjpeg runs a full pass over the image for each (a
    progressive encoder writes about 10), so their number is the decode's cost factor."""
    return tf.cast(tf.size(tf.strings.split(image_bytes, sep=b"\xff\xda")), tf.int64) - 1


def _read_gif_header(image_bytes: tf.Tensor, size: tf.Tensor):
    """Walks a GIF to the end of its first image: (height, width, header ok, decode end).

    TensorFlow's GIF decoder (giflib's DGifSlurp) decodes every frame, allocating each frame
    at the size its image descriptor declares, and the output at the logical screen's size
    per frame; the screen alone says nothing about either. So the extension blocks are
    walked to the first image descriptor, whose size is reported when it covers more pixels
    than the screen, and then its image data sub-blocks to their terminator: decoding stops
    there (the caller appends the trailer), so later frames cost nothing. Both walks are
    bounded: _GIF_MAX_BLOCK_STEPS for the extensions, and for image data in sub-blocks of
    other sizes than the encoders' 255, one step per _GIF_MIN_SUB_BLOCK_BYTES of the file,
    so a file of tiny sub-blocks is refused after a walk costing about as much as decoding
    a GIF of its size.
    """
    data = tf.io.decode_raw(image_bytes, tf.uint8)  # One copy of the file, not 8 (int64).

    def byte(pos):  # -1 past the end.
        pos = tf.cast(pos, tf.int64)
        value = tf.gather(data, tf.clip_by_value(pos, 0, size - 1))
        return tf.where(tf.logical_and(pos >= 0, pos < size), tf.cast(value, tf.int64), -1)

    def colour_table_bytes(flags):  # Packed flags: table present (0x80), 3 * 2^(n + 1) bytes.
        return tf.where(flags >= 0x80, 3 * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7)), 0)

    screen_width, screen_height = byte(6) + 256 * byte(7), byte(8) + 256 * byte(9)

    # Blocks before the first image: extensions (21 label, sub-blocks), or it (2C).
    def block_step(pos, in_extension):
        value = byte(pos)
        sub_block = pos + 1 + value
        next_pos = tf.where(in_extension, tf.where(value > 0, sub_block, pos + 1),
                            tf.where(tf.equal(value, 0x21), pos + 2, pos))
        # Outside an extension the loop only runs on its introducer (21), which opens one.
        return next_pos, tf.logical_or(tf.logical_not(in_extension), value > 0)

    def more_blocks(pos, in_extension):
        value = byte(pos)
        return tf.logical_and(value >= 0, tf.logical_or(in_extension, tf.equal(value, 0x21)))

    start = tf.constant(13, tf.int64) + colour_table_bytes(byte(10))
    descriptor, in_extension = tf.while_loop(
        more_blocks, block_step, (start, tf.constant(False)),
        maximum_iterations=_GIF_MAX_BLOCK_STEPS)
    found = tf.logical_and(tf.logical_not(in_extension), tf.equal(byte(descriptor), 0x2C))
    frame_width = byte(descriptor + 5) + 256 * byte(descriptor + 6)
    frame_height = byte(descriptor + 7) + 256 * byte(descriptor + 8)

    # The first image's data: a code size byte, then sub-blocks up to an empty one. Encoders
    # write 255-byte sub-blocks but the last; while that holds, every 256th byte is a length
    # of 255, so one strided read finds the last sub-block (exactly: each length read that
    # way is a true one) and only other layouts are walked one sub-block per step.
    data_start = descriptor + 11 + colour_table_bytes(byte(descriptor + 9))
    lengths = tf.strided_slice(data, [tf.minimum(data_start, size)], [size], [256])
    # A last "length" past the end (-1 there) stops the search if all are 255.
    short = tf.concat([tf.not_equal(lengths, 255), [True]], axis=0)
    last = data_start + 256 * tf.argmax(tf.cast(short, tf.int32), output_type=tf.int64)
    resume = tf.where(byte(last) > 0, last + 1 + byte(last), last)

    def data_step(pos):
        return (pos + 1 + byte(pos),)

    def more_data(pos):
        return byte(pos) > 0

    terminator = tf.while_loop(more_data, data_step, (resume,),
                               maximum_iterations=tf.cast(
                                   64 + size // _GIF_MIN_SUB_BLOCK_BYTES, tf.int32))[0]
    ok = tf.reduce_all(tf.stack([size >= 13, found, tf.equal(byte(terminator), 0)]))
    frame_larger = frame_width * frame_height > screen_width * screen_height
    return (tf.where(frame_larger, frame_height, screen_height),
            tf.where(frame_larger, frame_width, screen_width), ok,
            tf.where(ok, terminator + 1, size))


def _describe_problem(code: tf.Tensor, image_format: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    # Joined rather than tf.strings.format, which would put the format names in quotes.
    kind = tf.gather(["unknown", "JPEG", "PNG", "GIF", "BMP"], image_format)
    missing = tf.gather(["", "no end-of-image marker", "no IEND chunk", "", ""], image_format)
    num_bytes = tf.strings.as_string(size)
    return tf.switch_case(code - 1, [
        lambda: tf.constant("empty input (0 bytes)"),
        lambda: tf.strings.join([
            "data is not a JPEG, PNG, GIF or BMP image (its first bytes match none of their "
            "signatures; ", num_bytes, " bytes)"]),
        lambda: tf.strings.join(["corrupt or truncated header (", kind, ", ", num_bytes,
                                 " bytes)"]),
        lambda: tf.strings.join(["truncated ", kind, " (", missing, "; ", num_bytes, " bytes)"]),
    ])


def _check_args(image_size, max_pixels, jpeg_dct_scaling, name) -> None:
    if (isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral)
            or image_size < 1):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    _check_limit("max_pixels", max_pixels)
    if not isinstance(jpeg_dct_scaling, (bool, np.bool_)):
        raise ValueError(f"jpeg_dct_scaling must be a bool, got {jpeg_dct_scaling!r}")
    if not isinstance(name, str) and not (
            tf.is_tensor(name) and name.dtype == tf.string and name.shape.rank in (None, 0)):
        raise ValueError(f"name must be a str or a scalar tf.string tensor, got {name!r}")


def _check_limit(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)
                              or value < 1):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _too_many_scans(header: ImageHeader, max_jpeg_scans: int) -> tf.Tensor:
    return tf.strings.join(["JPEG with ", tf.strings.as_string(header.scans),
                            f" scans exceeds the limit of {max_jpeg_scans} (a progressive JPEG "
                            "has about 10)"])


def _megapixels(pixels: int) -> str:
    # Rounded down, while an image's size is rounded up: the two never print equal.
    return f"{pixels // 100_000 / 10:.1f} MP" if pixels >= 100_000 else f"{pixels} pixels"


def _too_many_pixels(header: ImageHeader, max_pixels: int) -> tf.Tensor:
    pixels = header.height * header.width
    tenths = (pixels + 99_999) // 100_000  # Megapixels to one decimal, rounded up.
    return tf.strings.join([
        tf.strings.as_string(header.width), "x", tf.strings.as_string(header.height),
        " pixels (", tf.strings.as_string(tenths // 10), ".", tf.strings.as_string(tenths % 10),
        " MP) exceeds the limit of ", _megapixels(max_pixels)])


def dct_ratio_index(header: ImageHeader, image_size: int) -> tf.Tensor:
    """Index in DCT_RATIOS of the largest ratio that still leaves image_size pixels each way.

    libjpeg sizes a scaled output ceil(side / ratio); ratio 1 (the last) when none does.
    """
    shorter = tf.minimum(header.height, header.width)
    index = tf.constant(len(DCT_RATIOS) - 1)
    for i in reversed(range(len(DCT_RATIOS) - 1)):
        ratio = DCT_RATIOS[i]
        index = tf.where((shorter + ratio - 1) // ratio >= image_size, i, index)
    return index


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Applies EXIF orientation 1..8 to a [H, W, C] image, as PIL's ImageOps.exif_transpose."""

    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    return tf.switch_case(orientation - 1, [
        lambda: image,
        lambda: tf.reverse(image, [1]),  # 2: FLIP_LEFT_RIGHT.
        lambda: tf.reverse(image, [0, 1]),  # 3: ROTATE_180.
        lambda: tf.reverse(image, [0]),  # 4: FLIP_TOP_BOTTOM.
        lambda: transpose(image),  # 5: TRANSPOSE.
        lambda: tf.reverse(transpose(image), [1]),  # 6: ROTATE_270 (90 degrees clockwise).
        lambda: tf.reverse(transpose(image), [0, 1]),  # 7: TRANSVERSE.
        lambda: tf.reverse(transpose(image), [0]),  # 8: ROTATE_90 (counter-clockwise).
    ])


def apply_bmp_palette(image_bytes: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
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
