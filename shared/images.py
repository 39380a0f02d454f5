"""Image checks and decoding.

The API calls :func:`inspect_image`, which reads only the header (format and dimensions),
so a decompression bomb is refused before any decoder allocates its pixels. The worker
calls :func:`decode_image`, which decodes with OpenCV into BGR ``uint8`` pixels.
"""

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import LookalikeError

# Formats both the header reader (Pillow) and the decoder (OpenCV) handle.
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp", "TIFF": "image/tiff"}


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int


def inspect_image(data: bytes, max_pixels: int) -> ImageHeader:
    """Identify an upload by its magic bytes and read its dimensions from the header."""
    if not data:
        raise LookalikeError("image_empty", "The uploaded image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x its own limit raises) about huge images; our own
            # max_pixels check below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header only
                fmt, (width, height) = image.format, image.size
    except Image.DecompressionBombError:
        raise LookalikeError(
            "image_too_many_pixels", "The image header claims more pixels than are accepted.", {"max_pixels": max_pixels}
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        fmt, width, height = None, 0, 0
    if fmt not in ACCEPTED_FORMATS:
        raise LookalikeError(
            "unsupported_media_type",
            "The upload is not an image in an accepted format.",
            {"accepted": sorted(ACCEPTED_FORMATS.values()), "detected": fmt},
        )
    if width * height > max_pixels:
        raise LookalikeError(
            "image_too_many_pixels",
            f"The image is {width}x{height}; at most {max_pixels} pixels are accepted.",
            {"width": width, "height": height, "max_pixels": max_pixels},
        )
    return ImageHeader(fmt, width, height)


def decode_image(data: bytes) -> np.ndarray:
    """Decode to an (H, W, 3) BGR uint8 array, applying EXIF orientation; fail clearly."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.size == 0:
        raise LookalikeError("image_undecodable", "The image could not be decoded; it may be truncated or corrupt.")
    return pixels
