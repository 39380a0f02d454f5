"""The weights options: files in both Keras formats load exactly; missing weights fail fast and say why."""

import subprocess
import sys

import h5py
import numpy as np
import pytest

from shared.embedded_redis import free_port
from shared.images import decode_image
from tests.conftest import REPO, natural_images
from worker.extractor import FeatureExtractor
from worker.weights import WeightsUnavailable, ensure_imagenet_weights, resolve_weights


def write_legacy_keras_h5(model, path) -> None:
    """Write weights in the layout of Keras' official ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``.

    That file predates Keras 3: root attribute ``layer_names`` (input and pooling layers
    included), and per layer a group whose ``weight_names`` attribute lists datasets named
    ``<layer>_W_1:0`` (kernel) and ``<layer>_b_1:0`` (bias).
    """
    layers = [layer for layer in model.layers if not layer.name.startswith("global_")]  # the file has no pooling head
    names = ["input_1" if index == 0 else layer.name for index, layer in enumerate(layers)]
    with h5py.File(path, "w") as root:
        root.attrs["layer_names"] = np.array([name.encode() for name in names])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.0.6"
        for name, layer in zip(names, layers):
            group = root.create_group(name)
            values = layer.get_weights()
            weight_names = [f"{name}_W_1:0", f"{name}_b_1:0"][: len(values)]
            group.attrs["weight_names"] = np.array([w.encode() for w in weight_names], dtype="S")
            for weight_name, value in zip(weight_names, values):
                group.create_dataset(weight_name, data=value)


@pytest.fixture(scope="module")
def images():
    return [decode_image(natural_images()[name]) for name in ("moon", "rocket", "chelsea")]


@pytest.fixture(scope="module")
def reference(images):
    extractor = FeatureExtractor(resolve_weights("random", seed=7), seed=7)
    return extractor, extractor.extract(images)


@pytest.mark.parametrize("file_name", ["vgg16.weights.h5", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"])
def test_weights_file_loads_and_gives_the_same_vectors(tmp_path, images, reference, file_name):
    extractor, expected = reference
    path = tmp_path / file_name
    if file_name.endswith(".weights.h5"):
        extractor.model.save_weights(str(path))  # Keras 3 format
    else:
        write_legacy_keras_h5(extractor.model, path)

    source = resolve_weights(str(path), seed=0)
    assert source.kind == "file"
    assert source.label.startswith(f"file:{file_name}#sha256:")
    loaded = FeatureExtractor(source)
    np.testing.assert_allclose(loaded.extract(images), expected, atol=1e-5)


def test_vectors_are_unit_length_and_depend_on_the_weights(images, reference):
    _, expected = reference
    assert expected.shape == (3, 512) and expected.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
    other_seed = FeatureExtractor(resolve_weights("random", seed=8), seed=8).extract(images)
    assert not np.allclose(other_seed, expected, atol=1e-3)


def test_unreachable_imagenet_weights_fail_with_instructions(tmp_path):
    unreachable = f"http://127.0.0.1:{free_port()}/vgg16_notop.h5"  # nothing listens there
    with pytest.raises(WeightsUnavailable) as failure:
        ensure_imagenet_weights(unreachable, cache_dir=tmp_path)
    message = str(failure.value)
    assert "LOOKALIKE_WEIGHTS" in message and "random" in message and "KERAS_HOME" in message


def test_missing_weights_path_is_refused():
    with pytest.raises(WeightsUnavailable, match="neither 'imagenet', 'random' nor an existing file"):
        resolve_weights("/nonexistent/vgg16.h5", seed=0)


@pytest.mark.parametrize(
    "weights, expected",
    [("/nonexistent/vgg16.h5", "nor an existing file"), ("CORRUPT", "cannot load weights")],
)
def test_worker_stops_at_start_with_a_message(tmp_path, service_env, weights, expected):
    if weights == "CORRUPT":
        weights = str(tmp_path / "not-really.weights.h5")
        (tmp_path / "not-really.weights.h5").write_bytes(b"this is not an HDF5 file")
    env = service_env | {"LOOKALIKE_WEIGHTS": weights, "LOOKALIKE_WORKER_METRICS_PORT": "0"}
    finished = subprocess.run([sys.executable, "-m", "worker"], env=env, cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert finished.returncode == 2
    assert expected in finished.stderr
