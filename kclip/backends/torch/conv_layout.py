"""Conv kernels handed to torch in the layout its kernels want (a speed lever).

Keras stores a 2-D conv kernel as (height, width, in, out); torch's convolution
wants (out, in, height, width). Keras' torch backend passes a permuted view, and
torch then copies it element by element into its own layout, forward and
backward, at every step.
Here the same kernel is produced by one 2-D transpose, (height*width*in, out) ->
(out, height*width*in), which is a fast copy, viewed as (out, in, height, width)
in channels-last memory order: the order torch uses for kclip's image tower, whose
activations are channels-last in memory (see benchmarks/RESULTS-training.md).
Values, shapes and gradients are the same tensors; only memory order changes.

`kclip.train` turns it on around `fit` (`trainer.fast_conv_kernels`, default true).
It replaces the private `keras.src.backend.torch.nn._transpose_conv_kernel`, so it is used only
with the Keras and torch releases it was tested on (TESTED_KERAS, TESTED_TORCH); with any other,
Keras' own conv path runs and a warning says so once.
"""

import contextlib
import functools


from kclip.utils.versions import torch_patch_applies, warn_once

# [minimum, below): the releases this patch was read against and tested with.
TESTED_KERAS = ("3.15", "3.16")
TESTED_TORCH = ("2.13", "2.14")
PATCH_NAME = "fast conv kernels (kclip.backends.torch.conv_layout)"


def _transpose_conv_kernel(kernel, keras_transpose):
    import torch

    # bf16 kernels (mixed precision on a CPU) gained too when measured in one process: small size
    # 0.960x and 0.975x the step, full size 0.992x (benchmarks/results/levers-paired-2026-11-30.jsonl);
    # an earlier loss, measured across processes, was within their drift. float16, and bf16 on a
    # GPU, keep Keras' path: not measured there.
    bf16_on_cpu = kernel.dtype == torch.bfloat16 and kernel.device.type == "cpu"
    if kernel.ndim != 4 or not (kernel.dtype == torch.float32 or bf16_on_cpu):
        return keras_transpose(kernel)
    height, width, in_channels, out_channels = kernel.shape
    by_output = kernel.reshape(height * width * in_channels, out_channels).t().contiguous()
    return by_output.view(out_channels, height, width, in_channels).permute(0, 3, 1, 2)


@contextlib.contextmanager
def enabled(active=True):
    """Convolutions inside the block take their kernels in torch's layout (torch backend only)."""
    if not torch_patch_applies(PATCH_NAME, active, TESTED_KERAS, TESTED_TORCH):
        yield
        return
    from keras.src.backend.torch import nn

    keras_transpose = getattr(nn, "_transpose_conv_kernel", None)
    if keras_transpose is None:
        warn_once((PATCH_NAME, "missing"), f"kclip: this Keras has no torch `_transpose_conv_kernel`, so the "
                  f"{PATCH_NAME} patch is off and Keras' own conv path runs.")
        yield
        return
    nn._transpose_conv_kernel = functools.partial(_transpose_conv_kernel, keras_transpose=keras_transpose)
    try:
        yield
    finally:
        nn._transpose_conv_kernel = keras_transpose
