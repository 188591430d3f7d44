"""Attention with dropout through torch's fused kernel (a speed lever).

Keras' MultiHeadAttention sends attention to `ops.dot_product_attention` (torch's
`scaled_dot_product_attention`) only when its dropout rate is 0. With dropout, as in
DistilBERT's 0.1, it runs the unfused path instead: an einsum for the scores, a masked
softmax, a dropout layer and a second einsum, each a separate pass over the (batch, heads,
length, length) scores, forward and backward. torch's fused kernel takes the dropout rate
itself (`dropout_p`), as the plain-PyTorch reference's `nn.TransformerEncoderLayer` uses it.
Same computation: softmax(q·kᵀ·scale, masked) with dropout on the probabilities, then ·v.
The dropout masks come from torch's generator instead of Keras' seed generator, as Keras'
own unseeded `Dropout` on torch already does.

`kclip.train` turns it on around `fit` (`trainer.fused_attention`, default true). It replaces
the private `MultiHeadAttention._compute_attention`, so it is used only with the Keras and torch
releases it was tested on (TESTED_KERAS, TESTED_TORCH); with any other, Keras' own attention
runs and a warning says so once.
"""

import contextlib

import keras

from kclip.utils.versions import torch_patch_applies, warn_once

# [minimum, below): the releases this patch was read against and tested with.
TESTED_KERAS = ("3.15", "3.16")
TESTED_TORCH = ("2.11", "2.16")
PATCH_NAME = "fused attention (kclip.backends.torch.fused_attention)"


def _fused_compute_attention(layer, keras_compute_attention, query, key, value, attention_mask=None,
                             training=None, return_attention_scores=False, use_causal_mask=False):
    import torch.nn.functional as F

    # Anything but the plain encoder case (scores asked for, causal, other ranks) is Keras' own.
    if return_attention_scores or use_causal_mask or len(query.shape) != 4 or layer._dropout <= 0.0:
        return keras_compute_attention(query, key, value, attention_mask=attention_mask, training=training,
                                       return_attention_scores=return_attention_scores,
                                       use_causal_mask=use_causal_mask)
    mask = None
    if attention_mask is not None:
        # Keras' mask is (batch, query length, key length), True where attention is allowed.
        mask = attention_mask.bool()
        while mask.ndim < 4:
            mask = mask.unsqueeze(1)
    # Keras holds (batch, length, heads, depth); torch's kernel wants (batch, heads, length, depth).
    output = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=mask,
        dropout_p=layer._dropout if training else 0.0, scale=float(layer._inverse_sqrt_key_dim),
    )
    return output.transpose(1, 2), None


@contextlib.contextmanager
def enabled(active=True):
    """Attention layers with dropout use torch's fused kernel inside the block (torch backend only)."""
    if not torch_patch_applies(PATCH_NAME, active, TESTED_KERAS, TESTED_TORCH):
        yield
        return
    attention_class = keras.layers.MultiHeadAttention
    keras_compute_attention = attention_class.__dict__.get("_compute_attention")
    if keras_compute_attention is None:
        warn_once((PATCH_NAME, "missing"), f"kclip: this Keras' MultiHeadAttention has no `_compute_attention`, "
                  f"so the {PATCH_NAME} patch is off and Keras' own attention runs.")
        yield
        return

    def compute_attention(self, query, key, value, attention_mask=None, training=None,
                          return_attention_scores=False, use_causal_mask=False):
        def keras_own(*args, **kwargs):
            return keras_compute_attention(self, *args, **kwargs)

        return _fused_compute_attention(self, keras_own, query, key, value, attention_mask, training,
                                        return_attention_scores, use_causal_mask)

    attention_class._compute_attention = compute_attention
    try:
        yield
    finally:
        attention_class._compute_attention = keras_compute_attention
