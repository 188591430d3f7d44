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

import keras

_original = None


def _transpose_conv_kernel(kernel):
    import torch

    # Under mixed precision the kernel arrives as a fresh half-precision copy, and a
    # second copy here cost more than it saved (full bf16: 3% slower, about 200 MB more).
    if kernel.ndim != 4 or kernel.dtype != torch.float32:
        return _original(kernel)
    height, width, in_channels, out_channels = kernel.shape
    by_output = kernel.reshape(height * width * in_channels, out_channels).t().contiguous()
    return by_output.view(out_channels, height, width, in_channels).permute(0, 3, 1, 2)


@contextlib.contextmanager
def enabled(active=True):
    """Convolutions inside the block take their kernels in torch's layout (torch backend only)."""
    global _original
    if not active or keras.config.backend() != "torch":
        yield
        return
    from keras.src.backend.torch import nn

    previous = nn._transpose_conv_kernel
    _original = _original or previous
    nn._transpose_conv_kernel = _transpose_conv_kernel
    try:
        yield
    finally:
        nn._transpose_conv_kernel = previous
