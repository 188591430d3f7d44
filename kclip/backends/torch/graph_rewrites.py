"""What the graph runner's rewrites share (kclip.backends.torch.padded_pooling, .inplace_ops).

kclip's runner for functional models (kclip.backends.torch.graph_memory) can run a node
differently from Keras where a rewrite has planned it. Each rewrite reads the graph the same way:
who made a tensor, who reads it, whether a layer is a plain ReLU. And each is switched on for
the length of a block, only on the Keras and torch versions it was tested on.
"""

import contextlib

from kclip.utils.versions import torch_patch_applies


def producer(tensor):
    """The layer whose call made this symbolic tensor, or None for a model input."""
    history = getattr(tensor, "_keras_history", None)
    return history.operation if history is not None else None


def is_relu(layer):
    """True for `Activation("relu")` and a `ReLU` layer with its default arguments."""
    import keras

    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") == "relu"
    if isinstance(layer, keras.layers.ReLU):
        return layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0
    return False


def readers(function):
    """{id(symbolic tensor): [nodes that read it]} for a functional model."""
    found = {}
    for nodes in function._nodes_by_depth.values():
        for node in nodes:
            if node.operation and not node.is_input:
                for tensor in node.input_tensors:
                    found.setdefault(id(tensor), []).append(node)
    return found


class Switch:
    """On inside `enabled()` blocks, where the installed Keras and torch are in the tested ranges."""

    def __init__(self, patch_name, tested_keras, tested_torch):
        self.patch_name, self.tested_keras, self.tested_torch = patch_name, tested_keras, tested_torch
        self.on = False

    @contextlib.contextmanager
    def enabled(self, active=True):
        if not torch_patch_applies(self.patch_name, active, self.tested_keras, self.tested_torch):
            yield
            return
        previous, self.on = self.on, True
        try:
            yield
        finally:
            self.on = previous
