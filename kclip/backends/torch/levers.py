"""The torch-only training levers, switched on together while `fit` runs."""

import contextlib

import keras

from kclip.backends.torch import conv_layout, fused_batch_norm, graph_memory


@contextlib.contextmanager
def training_levers(fused_batch_norm_kernel=True, release_intermediates=True, fast_conv_kernels=True):
    """The measured speed and memory levers that apply while `fit` runs (all on by default).

    Each changes how the step runs, not what it computes; benchmarks/RESULTS-training.md
    records what each one gives. On JAX and TensorFlow the step is traced and compiled, and
    the compiler already fuses and frees what these levers handle, so they switch off,
    silently: the config is the same on every backend.
    """
    if keras.config.backend() != "torch":
        yield
        return
    with fused_batch_norm.enabled(fused_batch_norm_kernel), graph_memory.enabled(
        release_intermediates
    ), conv_layout.enabled(fast_conv_kernels):
        yield
