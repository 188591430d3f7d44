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
around `fit` (`trainer.fused_batch_norm`, default true); inference keeps Keras'
kernel, so embeddings do not depend on whether training ran in the same process.
"""

import contextlib

import keras

_original_call = keras.layers.BatchNormalization.call


def _fused_call(self, inputs, training=None, mask=None):
    import torch
    import torch.nn.functional as F

    rank = len(inputs.shape)
    axis = self.axis if self.axis >= 0 else rank + self.axis
    # torch's kernel normalizes over dimension 1: channels-first images, or (batch, features).
    if mask is not None or self.renorm or getattr(self, "synchronized", False) or axis != 1:
        return _original_call(self, inputs, training=training, mask=mask)

    # Keras upcasts float16/bfloat16 activations to float32 here, because BN overflows easily
    # in half precision. torch's kernel takes half-precision input with float32 parameters
    # and accumulates in float32 itself, so the two activation-sized copies can be skipped.
    if inputs.dtype not in (torch.float16, torch.bfloat16):
        inputs = inputs.float()
    gamma = self.gamma.value.float() if self.scale else None
    beta = self.beta.value.float() if self.center else None
    if training and self.trainable:
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
    else:
        outputs = F.batch_norm(
            inputs, self.moving_mean.value.float(), self.moving_variance.value.float(), gamma, beta,
            False, 0.0, self.epsilon,
        )
    return keras.ops.cast(outputs, self.compute_dtype)


def enable():
    """Use the fused kernel for every Keras BatchNormalization (torch backend only)."""
    if keras.config.backend() == "torch":
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
