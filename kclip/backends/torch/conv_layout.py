"""Conv kernels handed to torch in the layout its kernels want (a speed lever).

Keras stores a 2-D conv kernel as (height, width, in, out); torch's convolution
wants (out, in, height, width). Keras' torch backend passes a permuted view, and
torch then copies it element by element into its own layout, forward and
backward, at every step.
Two steps remove that copy. `keep_kernels_in_torch_order` stores each conv kernel
variable's values in memory as (out, height, width, in): the variable keeps its
Keras shape and values, and Keras' permuted view of it is then exactly the
channels-last kernel torch wants, which `_transpose_conv_kernel` hands over
without copying. A kernel still stored in Keras' order (a cast copy, a model the
lever was not given) is produced by one 2-D transpose, (height*width*in, out) ->
(out, height*width*in), which is a fast copy. Channels-last is the order torch
uses for kclip's image tower, whose activations are channels-last in memory (see
benchmarks/RESULTS-training.md). Values, shapes and gradients are the same; only
memory order changes, and the optimizer follows it (kclip/backends/torch/fused_adam.py).

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
TESTED_TORCH = ("2.11", "2.16")
PATCH_NAME = "fast conv kernels (kclip.backends.torch.conv_layout)"


def _in_torch_order(kernel):
    """True when a (height, width, in, out) kernel lies in memory as (out, height, width, in)."""
    return kernel.ndim == 4 and kernel.permute(3, 0, 1, 2).is_contiguous()


def _transpose_conv_kernel(kernel, keras_transpose):
    import torch

    # bf16 kernels (mixed precision on a CPU) gained too when measured in one process: small size
    # 0.960x and 0.975x the step, full size 0.992x (benchmarks/results/levers-paired-2026-11-30.jsonl).
    # The bf16 cast keeps a kernel's strides, so a kernel kept in torch's order stays a free view.
    # float16, and bf16 on a GPU, keep Keras' path: not measured there.
    bf16_on_cpu = kernel.dtype == torch.bfloat16 and kernel.device.type == "cpu"
    if kernel.ndim != 4 or not (kernel.dtype == torch.float32 or bf16_on_cpu):
        return keras_transpose(kernel)
    if _in_torch_order(kernel):
        return kernel.permute(3, 2, 0, 1)  # already channels-last (out, in, height, width): a view
    height, width, in_channels, out_channels = kernel.shape
    by_output = kernel.reshape(height * width * in_channels, out_channels).t().contiguous()
    return by_output.view(out_channels, height, width, in_channels).permute(0, 3, 1, 2)


def _relayout(parameter, values):
    import torch

    with torch.no_grad():
        parameter.data = values
    parameter.grad = None  # a gradient left from an earlier step has the old strides


def keep_kernels_in_torch_order(model):
    """Stores `model`'s float32 conv kernels in torch's memory order, in place; returns the
    parameters moved, for `back_in_keras_order`.

    The variables keep their shapes, values and identities: only the strides of the torch
    parameters behind them change (`Parameter.data`), and `assign`, saving and loading work
    as before.
    """
    import torch

    moved = []
    for variable in model.weights:
        parameter = variable.value
        if parameter.ndim != 4 or parameter.dtype != torch.float32 or _in_torch_order(parameter):
            continue
        _relayout(parameter, parameter.detach().permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0))
        moved.append(parameter)
    return moved


def back_in_keras_order(parameters):
    """Stores `parameters` contiguous again, as Keras created them."""
    for parameter in parameters:
        _relayout(parameter, parameter.detach().contiguous())


@contextlib.contextmanager
def enabled(active=True, model=None):
    """Convolutions inside the block take their kernels in torch's layout (torch backend only);
    `model`'s conv kernels are stored in that order while the block runs."""
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
    moved = keep_kernels_in_torch_order(model) if model is not None else []
    nn._transpose_conv_kernel = functools.partial(_transpose_conv_kernel, keras_transpose=keras_transpose)
    try:
        yield
    finally:
        nn._transpose_conv_kernel = keras_transpose
        # Outside the block the model is as Keras made it, so that a lever switched off measures Keras' path.
        back_in_keras_order(moved)
