"""Image checks and decoding.

The API calls :func:`inspect_image`, which reads only the header (format and dimensions),
so a decompression bomb is refused before any decoder allocates its pixels. The worker
calls :func:`decode_image`, which decodes with OpenCV into BGR ``uint8`` pixels of at most
:data:`DECODED_MAX_SIDE` a side -- all that the model, PDQ and thumbnails use -- so what a
worker keeps per image is small whatever was uploaded. Decoding itself costs the full image
(JPEGs are decoded already scaled down by the decoder, other formats are not), so a
:class:`PixelBudget` bounds the pixels being decoded at once in a process.
"""

import io
import sys
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from shared.errors import LookalikeError

# Formats both the header reader (Pillow) and the decoder (OpenCV) handle.
ACCEPTED_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp",
                    "TIFF": "image/tiff"}
# Longest side of a decoded image as the worker keeps it: VGG16 sees at most 224 px, PDQ hashes a
# 512 px copy (worker.pdq) and thumbnails are at most 512 px (LOOKALIKE_THUMBNAIL_SIZE).
DECODED_MAX_SIDE = 512
# libjpeg's DCT scaling: decode at 1/2, 1/4 or 1/8 of the size directly, for a fraction of the memory and time.
_JPEG_REDUCED = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


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
            "image_too_many_pixels", "The image header claims more pixels than are accepted.",
            {"max_pixels": max_pixels}
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        claimed = _format_of_unreadable(data)
        if claimed is not None:  # an accepted format by its magic bytes, but not readable: damaged, not foreign
            raise LookalikeError("image_undecodable", "The image is truncated or corrupt.",
                                 {"format": claimed}) from None
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


def _format_of_unreadable(data: bytes) -> str | None:
    """The accepted format ``data`` claims by its magic bytes, for formats Pillow cannot even identify
    once cut short: its WebP reader needs the whole file, its TIFF reader the directory at the end."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # TIFF and BigTIFF, either byte order
        return "TIFF"
    return None


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


class PixelBudget:
    """How many pixels may be being decoded at once in a process; a decode waits until its pixels fit.

    An image larger than the whole budget decodes alone. (A flat 7000x7000 PNG is 155 KB to
    upload and about 275 MB while decoded: 32 at once would be 9 GB.)
    """

    def __init__(self, pixels: int):
        self.capacity = pixels
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        pixels = min(pixels, self.capacity)
        with self._changed:
            self._changed.wait_for(lambda: self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


def decode_image(data: bytes, budget: PixelBudget | None = None, max_side: int = DECODED_MAX_SIDE) -> np.ndarray:
    """Decode to an (H, W, 3) BGR uint8 array of at most ``max_side`` a side, applying EXIF orientation; fail
    clearly. The decode holds its pixels in ``budget`` while it runs."""
    try:
        with Image.open(io.BytesIO(data)) as header:  # lazy: the header only
            fmt, (width, height) = header.format, header.size
            # A progressive JPEG's decoder holds coefficients for the whole image at any output scale.
            scalable = fmt == "JPEG" and not header.info.get("progressive")
    except Exception:  # noqa: BLE001 - OpenCV below gives the verdict on what Pillow cannot read
        fmt, width, height, scalable = None, 0, 0, False
    reduction = next((factor for factor in _JPEG_REDUCED
                      if fmt == "JPEG" and max(width, height) >= factor * max_side), 1)
    budgeted = reduction if scalable else 1
    # Size unknown (no header Pillow reads): the whole budget, so it decodes alone.
    decoded_pixels = -(-width // budgeted) * -(-height // budgeted) if fmt else sys.maxsize
    with budget.hold(decoded_pixels) if budget is not None else nullcontext():
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _JPEG_REDUCED.get(reduction, cv2.IMREAD_COLOR))
        if pixels is None or pixels.size == 0:
            raise LookalikeError("image_undecodable", "The image could not be decoded; it may be truncated or corrupt.")
        return shrink(pixels, max_side)  # the full-size decode is freed when the budget is given back


# Below half size, area interpolation averages every source pixel (no aliasing); between half and full size,
# where the JPEG decoder's own scaling leaves a decoded image, OpenCV's area resize takes its slow general path
# (3.6 ms vs 0.4 ms bilinear for 816x612 -> 512x384, bench/pipeline.py) for a result bilinear matches closely.
AREA_BELOW_SCALE = 0.5


def shrink(pixels_bgr: np.ndarray, max_side: int) -> np.ndarray:
    """The image scaled down to at most ``max_side`` a side (area interpolation below half size, bilinear above);
    as it is when it fits."""
    height, width = pixels_bgr.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return pixels_bgr
    interpolation = cv2.INTER_AREA if scale < AREA_BELOW_SCALE else cv2.INTER_LINEAR
    return cv2.resize(pixels_bgr, (max(1, round(width * scale)), max(1, round(height * scale))),
                      interpolation=interpolation)


def make_thumbnail(pixels_bgr: np.ndarray, max_side: int, quality: int = 75) -> bytes:
    """A JPEG of at most ``max_side`` pixels a side, for showing matches (about 2-4 KB at 96-128 px)."""
    return cv2.imencode(".jpg", shrink(pixels_bgr, max_side), [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
