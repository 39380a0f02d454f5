"""The one place that knows which Keras 3 backend runs the model: TensorFlow, JAX or PyTorch.

Keras picks its backend from ``KERAS_BACKEND`` (default ``tensorflow``, as the design says) when it is
first imported; the model itself (``keras.applications.VGG16``) is the same on each. What differs is how
a forward pass is compiled, so this module gives each backend's fastest inference call behind one
signature -- float32 NumPy batch in, float32 NumPy feature maps out:

- tensorflow: the model called inside one ``tf.function`` with a free batch axis (``model.predict``'s
  per-call set-up dominates small batches);
- jax: ``model.stateless_call`` under ``jax.jit`` (XLA compiles once per batch shape; the batcher only
  ever sends a few fixed shapes, worker.batcher.fixed_sizes);
- torch: the model called under ``torch.inference_mode`` (no autograd bookkeeping); Keras places it on
  the GPU when PyTorch sees one.

Everything else in the worker (decoding, pooling, storage) is NumPy and OpenCV, whatever the backend.
"""

from collections.abc import Callable

import numpy as np

BACKENDS = ("tensorflow", "jax", "torch")


def backend() -> str:
    """The backend Keras runs on in this process (importing Keras fixes it)."""
    import keras

    return keras.config.backend()


def random_generator_device() -> str:
    """Where the backend draws seeded random numbers, when that changes them: PyTorch's generators differ
    between CPU and CUDA for one seed ('' for TensorFlow's and JAX's counter-based ones, the same anywhere)."""
    if backend() != "torch":
        return ""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"  # as Keras' torch backend picks its device


def accelerators() -> list[str]:
    """The GPUs the backend sees ([] on a CPU-only host): readiness output and the GPU bench report them."""
    name = backend()
    if name == "tensorflow":
        import tensorflow as tf

        return [device.name for device in tf.config.list_physical_devices("GPU")]
    if name == "jax":
        import jax

        return [str(device) for device in jax.devices() if device.platform != "cpu"]
    import torch

    return [torch.cuda.get_device_name(index) for index in range(torch.cuda.device_count())]


def enable_gpu_memory_growth() -> None:
    """TensorFlow: take GPU memory as it is needed instead of all at once. (JAX's share is set by
    ``XLA_PYTHON_CLIENT_MEM_FRACTION`` and PyTorch's allocator grows by itself.)"""
    if backend() != "tensorflow":
        return
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # the GPU was initialised already (a second extractor in one process)
            pass


def compiled_forward(model, input_shape: tuple[int, int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """``model``'s inference pass for the running backend: (n, *input_shape) float32 -> float32 outputs."""
    name = backend()
    if name == "tensorflow":
        return _tensorflow_forward(model, input_shape)
    if name == "jax":
        return _jax_forward(model)
    if name == "torch":
        return _torch_forward(model)
    raise RuntimeError(f"KERAS_BACKEND={name!r}: the worker runs on {', '.join(BACKENDS)}")


def _tensorflow_forward(model, input_shape):
    import tensorflow as tf

    # One signature with a free batch axis, so a new batch size never retraces.
    traced = tf.function(lambda batch: tf.cast(model(batch, training=False), tf.float32),
                         input_signature=[tf.TensorSpec((None, *input_shape), tf.float32)])
    return lambda batch: traced(batch).numpy()


def _jax_forward(model):
    import jax
    import jax.numpy as jnp

    # The weights are arguments, not closed over: they stay out of the compiled program's constants, and
    # are read at each call (a handful of references), so weights loaded later are the ones used.
    @jax.jit
    def run(trainable, non_trainable, batch):
        outputs, _ = model.stateless_call(trainable, non_trainable, batch, training=False)
        return outputs.astype(jnp.float32)

    return lambda batch: np.asarray(run([variable.value for variable in model.trainable_variables],
                                        [variable.value for variable in model.non_trainable_variables], batch))


def _torch_forward(model):
    import keras
    import torch

    torch.backends.cudnn.benchmark = True  # a few fixed batch shapes: pick each one's fastest kernels once

    def run(batch):
        with torch.inference_mode():
            return keras.ops.convert_to_numpy(keras.ops.cast(model(batch, training=False), "float32"))

    return run
