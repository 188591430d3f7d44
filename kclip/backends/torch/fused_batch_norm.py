"""A faster BatchNormalization for the torch backend (a measured performance lever).

Keras computes batch normalization from separate ops (moments, then normalize),
which on torch means about ten elementwise kernels forward and more backward, and
keeps their intermediates for autograd. torch's own `batch_norm` does the same
math in one fused kernel each way. `enable()` makes every Keras
`BatchNormalization` on the torch backend use it, with Keras' semantics kept:
float32 statistics and arithmetic under mixed precision (torch's kernel accumulates
half-precision input in float32), biased batch variance, and Keras'
momentum convention for the moving statistics. Masks, renorm, synchronized BN and
channels-last 4-D inputs fall back to Keras' own implementation.

benchmarks/RESULTS-training.md records the effect. `kclip.train` turns it on
around `fit` (`trainer.fused_batch_norm`, default true). Only training-mode calls
(`training=True` on a trainable layer) take the fused kernel. Every inference-mode
call keeps Keras' own kernel, including validation and the evaluation callbacks
inside `fit`: validation numbers are then exactly what a later `evaluate` of the
same weights gives, and embeddings never depend on whether training ran in the
same process. Inference is a small part of a training run, so little speed is lost.

It replaces `BatchNormalization.call` and relies on torch's batch-norm kernel
writing batch statistics into its buffers at momentum 1: it is used only with the
Keras and torch versions it was tested on (TESTED_KERAS, TESTED_TORCH); with any
other, `enable()` keeps Keras' own path and warns once.
"""

import contextlib

import keras

from kclip.utils.versions import torch_patch_applies

# [minimum, below): the releases this patch was read against and tested with.
TESTED_KERAS = ("3.15", "3.16")
TESTED_TORCH = ("2.11", "2.16")
PATCH_NAME = "fused batch norm (kclip.backends.torch.fused_batch_norm)"

_original_call = keras.layers.BatchNormalization.call


def _fused_call(self, inputs, training=None, mask=None):
    import torch
    import torch.nn.functional as F

    rank = len(inputs.shape)
    axis = self.axis if self.axis >= 0 else rank + self.axis
    # torch's kernel normalizes over dimension 1: channels-first images, or (batch, features).
    # Inference keeps Keras' kernel (see the module docstring), so only training calls go on.
    if (not (training and self.trainable) or mask is not None or self.renorm
            or getattr(self, "synchronized", False) or axis != 1):
        return _original_call(self, inputs, training=training, mask=mask)

    # Keras upcasts float16/bfloat16 activations to float32 here, because BN overflows easily
    # in half precision. torch's kernel takes half-precision input with float32 parameters
    # and accumulates in float32 itself, so the two activation-sized copies can be skipped.
    if inputs.dtype not in (torch.float16, torch.bfloat16):
        inputs = inputs.float()
    gamma = self.gamma.value.float() if self.scale else None
    beta = self.beta.value.float() if self.center else None
    channels = inputs.shape[1]
    # momentum=1 makes torch write the batch statistics into these buffers; it
    # writes the unbiased variance, Keras keeps the biased one.
    batch_mean = torch.zeros(channels, dtype=torch.float32, device=inputs.device)
    batch_variance = torch.ones(channels, dtype=torch.float32, device=inputs.device)
    outputs = F.batch_norm(inputs, batch_mean, batch_variance, gamma, beta, True, 1.0, self.epsilon)
    count = inputs.numel() // channels
    with torch.no_grad():
        batch_variance = batch_variance * ((count - 1) / count)
        self.moving_mean.assign(self.moving_mean.value * self.momentum + batch_mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance.value * self.momentum + batch_variance * (1.0 - self.momentum)
        )
    return keras.ops.cast(outputs, self.compute_dtype)


def supported():
    """True on the torch backend with tested Keras and torch versions (warns once otherwise)."""
    return torch_patch_applies(PATCH_NAME, True, TESTED_KERAS, TESTED_TORCH)


def enable():
    """Use the fused kernel for every Keras BatchNormalization in training mode, where supported()."""
    if supported():
        keras.layers.BatchNormalization.call = _fused_call


def disable():
    keras.layers.BatchNormalization.call = _original_call


@contextlib.contextmanager
def enabled(active=True):
    """Fused batch normalization inside the block, Keras' own again after it."""
    previous = keras.layers.BatchNormalization.call
    if active:
        enable()
    try:
        yield
    finally:
        keras.layers.BatchNormalization.call = previous
