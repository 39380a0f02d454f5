"""Where the worker's VGG16 weights come from, checked before the worker takes any task.

``LOOKALIKE_WEIGHTS`` is ``imagenet`` (Keras' file, downloaded once into Keras' cache),
a path to a weights file (Keras' official ``..._notop.h5`` or a Keras 3 ``.weights.h5``),
or ``random`` (seeded, for tests and offline smoke runs only).
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

# Keras' own file and checksum for VGG16 without its classifier (keras.applications.vgg16).
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
IMAGENET_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"

HOW_TO_SUPPLY = (
    "Download {file} on a machine that can reach {url} and either set LOOKALIKE_WEIGHTS to its path, "
    "or place it in Keras' cache ($KERAS_HOME/models/, default ~/.keras/models/). "
    "For tests and offline smoke runs only, LOOKALIKE_WEIGHTS=random uses seeded random weights."
).format(file=IMAGENET_NOTOP_FILE, url=IMAGENET_NOTOP_URL)


class WeightsUnavailable(RuntimeError):
    """The weights the worker was told to use cannot be had; the message says what to do."""


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "imagenet" | "file" | "random"
    path: Path | None  # the file to load; None for random weights
    label: str  # what readiness output, collections and results show

    @property
    def is_random(self) -> bool:
        return self.kind == "random"


def resolve_weights(setting: str, seed: int) -> WeightsSource:
    """Turn ``LOOKALIKE_WEIGHTS`` into a file on disk (downloading ImageNet weights once)."""
    if setting == "random":
        return WeightsSource("random", None, random_weights_label(seed))
    if setting == "imagenet":
        return WeightsSource("imagenet", ensure_imagenet_weights(), "imagenet")
    path = Path(setting).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(
            f"LOOKALIKE_WEIGHTS={setting!r} is neither 'imagenet', 'random' nor an existing file. {HOW_TO_SUPPLY}"
        )
    return WeightsSource("file", path.resolve(), f"file:{path.name}#sha256:{_sha256(path)[:12]}")


def random_weights_label(seed: int) -> str:
    """Seeded random weights differ by backend (each has its own random number generator), and PyTorch's by
    device too, so a backend other than TensorFlow is part of their label: vectors of different ones never mix."""
    from worker.keras_backend import backend, random_generator_device

    name, device = backend(), random_generator_device()
    if name == "tensorflow":
        return f"random(seed={seed})"
    return f"random(seed={seed},backend={name}{':' + device if device else ''})"


def ensure_imagenet_weights(url: str = IMAGENET_NOTOP_URL, cache_dir: Path | None = None) -> Path:
    """The cached ImageNet file, fetched with Keras' own downloader (checksum verified) if absent.

    ``cache_dir`` defaults to Keras' own ($KERAS_HOME, else ~/.keras).
    """
    import keras  # deferred: only the worker needs Keras, and only here and in the extractor

    try:
        return Path(
            keras.utils.get_file(
                IMAGENET_NOTOP_FILE, url, cache_dir=cache_dir, cache_subdir="models", file_hash=IMAGENET_NOTOP_MD5
            )
        )
    except Exception as exc:  # get_file raises several types for network, HTTP and checksum failures
        raise WeightsUnavailable(f"Cannot fetch the ImageNet weights ({exc}). {HOW_TO_SUPPLY}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
