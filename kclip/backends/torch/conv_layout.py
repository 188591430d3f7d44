"""Conv kernels handed to torch in the layout its kernels want (a speed lever).

Keras stores a 2-D conv kernel as (height, width, in, out); torch's convolution
wants (out, in, height, width). Keras' torch backend passes a permuted view, and
torch then copies it element by element into its own layout, forward and
backward, at every step (about 3 ms for one 3x3x512x512 kernel on a 2-core CPU).
Here the same kernel is produced by one 2-D transpose, (height*width*in, out) ->
(out, height*width*in), which is a fast copy, viewed as (out, in, height, width)
in channels-last memory order: the order torch uses for kclip's image tower, whose
activations are channels-last in memory (see benchmarks/RESULTS-training.md).
Values, shapes and gradients are the same tensors; only memory order changes.

`kclip.train` turns it on around `fit` (`trainer.fast_conv_kernels`, default true).
"""

import contextlib
import functools
import warnings

import keras


def _transpose_conv_kernel(kernel, keras_transpose):
    import torch

    # Under mixed precision the kernel arrives as a fresh half-precision copy, and a
    # second copy here cost more than it saved (full bf16: 3% slower, about 200 MB more).
    if kernel.ndim != 4 or kernel.dtype != torch.float32:
        return keras_transpose(kernel)
    height, width, in_channels, out_channels = kernel.shape
    by_output = kernel.reshape(height * width * in_channels, out_channels).t().contiguous()
    return by_output.view(out_channels, height, width, in_channels).permute(0, 3, 1, 2)


@contextlib.contextmanager
def enabled(active=True):
    """Convolutions inside the block take their kernels in torch's layout (torch backend only)."""
    if not active or keras.config.backend() != "torch":
        yield
        return
    from keras.src.backend.torch import nn

    keras_transpose = getattr(nn, "_transpose_conv_kernel", None)
    if keras_transpose is None:
        # A Keras that renamed this private helper keeps its own conv path.
        warnings.warn("This Keras has no torch `_transpose_conv_kernel`; set trainer.fast_conv_kernels=false.")
        yield
        return
    nn._transpose_conv_kernel = functools.partial(_transpose_conv_kernel, keras_transpose=keras_transpose)
    try:
        yield
    finally:
        nn._transpose_conv_kernel = keras_transpose
