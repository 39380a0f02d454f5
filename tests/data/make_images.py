"""Regenerate the small natural test images in this folder from scikit-image's bundled data.

One-off provenance script, not run by the tests (scikit-image is not a project dependency):
    .venv/bin/pip install scikit-image && .venv/bin/python tests/data/make_images.py
Each image is scaled so its longer side is 256 px and saved as JPEG quality 90.
"""

from pathlib import Path

import cv2
from skimage import data

NAMES = [
    "astronaut", "brick", "camera", "chelsea", "coffee", "coins", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "horse",
    "retina", "rocket", "page",
]
MAX_SIDE = 256


def main() -> None:
    out = Path(__file__).parent
    for name in NAMES:
        pixels = getattr(data, name)()
        if pixels.dtype == bool:  # horse is a binary silhouette
            pixels = pixels.astype("uint8") * 255
        if pixels.ndim == 2:
            bgr = cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
        else:
            bgr = cv2.cvtColor(pixels[..., :3], cv2.COLOR_RGB2BGR)
        scale = MAX_SIDE / max(bgr.shape[:2])
        size = (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale))
        small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(out / f"{name}.jpg"), small, [cv2.IMWRITE_JPEG_QUALITY, 90])


if __name__ == "__main__":
    main()
