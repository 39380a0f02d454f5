"""The extractor gives the same descriptors on every Keras 3 backend that is installed (issue 17, part 2).

Each backend runs in a process of its own (Keras fixes its backend when first imported), loading one
weights file written here by the TensorFlow model, and its vectors are compared with TensorFlow's:
to float tolerance in float32, within cosine 0.999 in mixed precision.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shared.images import decode_image
from tests.conftest import REPO, natural_images
from worker.extractor import FeatureExtractor
from worker.weights import resolve_weights

# Prints, as JSON: the backend's name, the label its seeded random weights get, and the vectors of the
# test photographs -- all in one batch, then the first photograph alone (another batch shape).
EXTRACT = """
import json, sys
from shared.images import decode_image
from tests.conftest import natural_images
from worker.extractor import FeatureExtractor
from worker.weights import resolve_weights

weights_file, mixed = sys.argv[1], sys.argv[2] == "mixed"
extractor = FeatureExtractor(resolve_weights(weights_file, 0), mixed_precision=mixed)
images = [decode_image(data) for data in natural_images().values()]
print(json.dumps({"backend": extractor.backend, "random_label": resolve_weights("random", 7).label,
                  "vectors": extractor.extract(images).tolist(), "alone": extractor.extract(images[:1]).tolist()}))
"""


def installed(backend: str) -> bool:
    return importlib.util.find_spec(backend) is not None


def extract_on(backend: str, weights_file, mixed: bool = False) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", EXTRACT, str(weights_file), "mixed" if mixed else "float32"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tensorflow_vectors(tmp_path_factory):
    """A weights file written by the TensorFlow model (seeded random weights), and its vectors."""
    extractor = FeatureExtractor(resolve_weights("random", 5), seed=5)
    assert extractor.backend == "tensorflow"  # the tests' own process: the default backend
    weights_file = tmp_path_factory.mktemp("weights") / "vgg16.weights.h5"
    extractor.model.save_weights(str(weights_file))
    images = [decode_image(data) for data in natural_images().values()]
    return weights_file, extractor.extract(images)


def backend_params():
    """TensorFlow and JAX are dev dependencies and must run; PyTorch's PyPI wheel brings CUDA (gigabytes),
    so it is not one: its case runs where it is installed (the GPU machines) and says so where not."""
    params = [pytest.param("tensorflow"), pytest.param("jax")]
    params.append(pytest.param("torch", marks=pytest.mark.skipif(
        not installed("torch"), reason="PyTorch is not installed here (not a dev dependency: its wheel is CUDA's)")))
    return params


@pytest.mark.parametrize("backend", backend_params())
def test_same_descriptors_on_each_backend(backend, tensorflow_vectors):
    weights_file, expected = tensorflow_vectors
    result = extract_on(backend, weights_file)
    assert result["backend"] == backend
    vectors, alone = np.array(result["vectors"], np.float32), np.array(result["alone"], np.float32)
    assert vectors.shape == expected.shape
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(alone[0], vectors[0], atol=1e-5)  # a batch of one: another compiled shape
    # Seeded random weights are not the same numbers on two backends: their label says which, so a
    # collection never mixes them (the descriptor check refuses vectors of another label).
    # (PyTorch's generators differ between CPU and CUDA too: the device is named; CUDA is hidden here.)
    expected_label = {"tensorflow": "random(seed=7)", "jax": "random(seed=7,backend=jax)",
                      "torch": "random(seed=7,backend=torch:cpu)"}[backend]
    assert result["random_label"] == expected_label


@pytest.mark.parametrize("backend", backend_params()[1:])
def test_mixed_precision_on_other_backends(backend, tensorflow_vectors):
    weights_file, expected = tensorflow_vectors
    vectors = np.array(extract_on(backend, weights_file, mixed=True)["vectors"], np.float32)
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.min() >= 0.999, cosines


def test_unknown_backend_is_refused_by_name(monkeypatch):
    from worker import keras_backend

    monkeypatch.setattr(keras_backend, "backend", lambda: "numpy")  # Keras 3 has one; the worker cannot run on it
    with pytest.raises(RuntimeError, match="KERAS_BACKEND='numpy'"):
        keras_backend.compiled_forward(object(), (224, 224, 3))


def test_warm_up_runs_each_batch_size_the_batcher_sends_once():
    extractor = FeatureExtractor(resolve_weights("random", 5), seed=5, max_batch=3)
    shapes = []
    forward = extractor.feature_maps
    extractor.feature_maps = lambda batch: shapes.append(batch.shape) or forward(batch)
    seconds = extractor.warm_up()
    assert [shape[0] for shape in shapes] == [1, 2, 3] == list(seconds)  # worker.batcher.fixed_sizes(3)
    assert all(shape[1:] == (224, 224, 3) for shape in shapes)
    assert extractor.batcher.batch_sizes() == {}  # not counted as forward passes served


def test_warm_up_by_default_only_with_a_gpu(monkeypatch):
    from worker import runtime

    monkeypatch.setattr(runtime, "accelerators", lambda: ["/physical_device:GPU:0"])
    assert runtime.warm_up_wanted(None) is True and runtime.warm_up_wanted(False) is False
    monkeypatch.setattr(runtime, "accelerators", lambda: [])
    assert runtime.warm_up_wanted(None) is False and runtime.warm_up_wanted(True) is True


def test_a_failed_warm_up_stops_the_worker_and_keeps_no_cold_model(monkeypatch):
    from worker import runtime

    settings = runtime.get_settings().model_copy(update={"weights": "random", "warm_up": True, "max_batch": 2})
    monkeypatch.setattr(runtime, "get_settings", lambda: settings)
    monkeypatch.setattr(runtime, "_extractor", None)

    def out_of_memory(self):
        raise MemoryError("out of memory at batch 2")

    monkeypatch.setattr(FeatureExtractor, "warm_up", out_of_memory)
    with pytest.raises(runtime.WarmUpFailed, match="LOOKALIKE_MAX_BATCH=2 failed: out of memory at batch 2"):
        runtime.get_extractor()
    assert runtime._extractor is None
