"""Image inputs for the clients: file paths, bytes, PIL images or numpy arrays -> JPEG/PNG bytes.

The served signature decodes JPEG/PNG in the graph, so encoded bytes go over the wire
unchanged: files and bytes are sent as they are, without decoding. PIL and numpy are
imported only when an input needs them (a PIL image, an array, or downscaling).

    from clients import images

    data = images.encode("cat.jpg")                                  # The file's bytes.
    small = images.encode("phone.jpg", max_size=1024, quality=90)  # Downscaled JPEG.
"""

from __future__ import annotations

import io
import os
from typing import Any

DEFAULT_QUALITY = 90


def _is_pil(image: Any) -> bool:
    # Checked by module name so that plain bytes and paths never import PIL.
    return type(image).__module__.startswith("PIL.") and hasattr(image, "save")


def _is_numpy(image: Any) -> bool:
    return type(image).__module__ == "numpy" and hasattr(image, "dtype")


def _pil():
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("PIL images, numpy arrays and downscaling need Pillow: "
                          "pip install pillow") from error
    return Image


def _to_jpeg(image, quality: int) -> bytes:
    if image.mode not in ("RGB", "L"):
        # JPEG has no alpha; the model takes 3 channels anyway.
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _array_to_pil(array):
    Image = _pil()
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"numpy images must be HxW, HxWx1, HxWx3 or HxWx4, got shape "
                         f"{array.shape}")
    if array.dtype.kind == "f":
        # Floats are taken as 0..255 pixel values (the model's own input range), not 0..1.
        array = array.clip(0, 255).round()
    if array.dtype.name != "uint8":
        if array.dtype.kind not in "fiu":
            raise ValueError(f"numpy images must be numeric, got dtype {array.dtype}")
        array = array.clip(0, 255).astype("uint8")
    return Image.fromarray(array)


def downscale(data: bytes, max_size: int, quality: int = DEFAULT_QUALITY) -> bytes:
    """Shrinks an encoded image so its longer side is at most max_size, as JPEG.

    Keeps the aspect ratio. Returns data unchanged when it is already small enough, so
    small images are never re-encoded (no extra JPEG loss). Phone photos (12 MP, 3-5 MB)
    become a few hundred kB, which cuts upload time and the server's decode time.

    Raises:
        ValueError: max_size or quality out of range, or data is not a decodable image.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be positive, got {max_size}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    Image = _pil()
    try:
        image = Image.open(io.BytesIO(data))
        if max(image.size) <= max_size:
            return data
        # For JPEGs, decode at a reduced DCT scale (1/2, 1/4, 1/8) no smaller than the
        # target: several times faster than decoding all 12 MP and then resizing.
        image.draft("RGB", (max_size, max_size))
        image = image.convert("RGB")
        # EXIF orientation is deliberately not applied: the server decodes the original
        # bytes without it, so a downscaled image must look like the original to the model.
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image to downscale it: {error}") from error
    return _to_jpeg(image, quality)


def encode(image: Any, *, max_size: int | None = None, quality: int = DEFAULT_QUALITY) -> bytes:
    """Encoded image bytes for one input.

    Args:
        image: a file path (str or os.PathLike), encoded bytes (JPEG, PNG, ... as the served
            model decodes them), a PIL image, or a numpy uint8 array HxW[xC] (floats are
            taken as 0..255 pixel values).
        max_size: if set, downscale so the longer side is at most this many pixels.
        quality: JPEG quality for images this function encodes.

    Returns:
        The bytes to send.

    Raises:
        ValueError: an unsupported input type or array shape.
        OSError: a path that cannot be read.
    """
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as file:
            data = file.read()
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    elif _is_pil(image):
        data = _to_jpeg(image, quality)
    elif _is_numpy(image):
        data = _to_jpeg(_array_to_pil(image), quality)
    else:
        raise ValueError(f"unsupported image type {type(image).__name__}: pass a path, bytes, "
                         "a PIL image or a numpy array")
    if not data:
        raise ValueError("empty image")
    if max_size is not None:
        data = downscale(data, max_size, quality)
    return data


def encode_all(images: Any, *, max_size: int | None = None,
               quality: int = DEFAULT_QUALITY) -> list[bytes]:
    """encode() for each image; a single image (not a list) is accepted too."""
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil(images) \
            or (_is_numpy(images) and images.ndim <= 3 and images.dtype.kind != "O"):
        images = [images]
    encoded = [encode(image, max_size=max_size, quality=quality) for image in images]
    if not encoded:
        raise ValueError("no images given")
    return encoded
