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
    """Identify an upload by its magic bytes, read its dimensions from the header, and check it is whole.

    No pixel is decoded: completeness is judged from the container (a JPEG's end marker,
    PNG chunk checksums, the size a WebP or BMP header declares).
    """
    if not data:
        raise LookalikeError("image_empty", "The uploaded image is empty (0 bytes).")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past 2x its own limit raises) about huge images; our own
            # max_pixels check below is the one that decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: parses the header only
                fmt, (width, height) = image.format, image.size
                frames = getattr(image, "n_frames", 1) if fmt in ACCEPTED_FORMATS else 1
    except Image.DecompressionBombError:
        raise LookalikeError(
            "image_too_many_pixels", "The image header claims more pixels than are accepted.", {"max_pixels": max_pixels}
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        fmt, width, height, frames = None, 0, 0, 1
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
    if frames > 1:
        raise LookalikeError("multi_frame_image", "Animated and multi-page images are not accepted; send one frame.",
                             {"frames": frames})
    if not _container_is_whole(fmt, data):
        raise LookalikeError("image_undecodable", "The image is truncated or corrupt.", {"format": fmt})
    return ImageHeader(fmt, width, height)


def _container_is_whole(fmt: str, data: bytes) -> bool:
    if fmt == "JPEG":  # the end-of-image marker must follow the last scan (trailing bytes after it are fine)
        return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0
    if fmt == "PNG":  # every chunk present with a good checksum, up to IEND
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
            return True
        except Exception:  # Pillow raises several types for bad chunks  # noqa: BLE001
            return False
    if fmt == "WEBP":  # RIFF size field: bytes after the first 8
        return int.from_bytes(data[4:8], "little") + 8 <= len(data)
    if fmt == "BMP":  # file size field
        return int.from_bytes(data[2:6], "little") <= len(data)
    return True


def decode_image(data: bytes) -> np.ndarray:
    """Decode to an (H, W, 3) BGR uint8 array, applying EXIF orientation; fail clearly."""
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if pixels is None or pixels.size == 0:
        raise LookalikeError("image_undecodable", "The image could not be decoded; it may be truncated or corrupt.")
    return pixels


def make_thumbnail(pixels_bgr: np.ndarray, max_side: int, quality: int = 75) -> bytes:
    """A JPEG of at most ``max_side`` pixels a side, for showing matches (about 2-4 KB at 96-128 px)."""
    height, width = pixels_bgr.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    small = cv2.resize(pixels_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
