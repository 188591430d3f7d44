"""ReLUs and residual sums written into their input's memory while training (a speed lever).

Keras computes every layer out of place, so each ReLU and each residual `Add` of a ResNet
asks for a new activation-sized buffer. In eager torch a buffer of that size comes from
fresh pages that the kernel zero-fills on first touch, and in a ResNet those buffers are a large
share of what the forward allocates. torchvision and timm write both in place
(`nn.ReLU(inplace=True)`, `out += identity`). What the lever gives is measured by
benchmarks/compare_training.py (docs/performance.md).

`plan(function)` finds the nodes of a functional model where that is safe:

- a ReLU whose input comes from a BatchNormalization or an Add and is read by nothing else;
- an Add of two different tensors, one of which comes from a BatchNormalization and is read
  by nothing else: the other is added into it.

Neither producer keeps its output for its backward pass (batch norm's backward reads its
input and statistics; a sum's reads nothing), and a ReLU's backward reads its own result, as
it does out of place, so outputs and gradients are the same bit for bit. Were a producer's
output needed after all, autograd would raise at `backward()` rather than compute something
else. At run time `run` also checks what the plan cannot know: torch tensors in the layer's
compute dtype, no Keras mask, no broadcasting; otherwise the layer runs as Keras runs it.

`kclip.train` turns it on around `fit` (`trainer.inplace_activations`, default true). Like
the pooling fold, it needs the graph runner of `kclip.backends.torch.graph_memory` (which
knows each tensor's readers), so it is off when `trainer.release_intermediates` is off.
"""

import keras

from kclip.backends.torch.graph_rewrites import Switch, is_relu, producer, readers

# [minimum, below): the releases this patch was read against and tested with.
TESTED_KERAS = ("3.15", "3.16")
TESTED_TORCH = ("2.11", "2.16")
PATCH_NAME = "in-place ReLU and residual sums (kclip.backends.torch.inplace_ops)"

_switch = Switch(PATCH_NAME, TESTED_KERAS, TESTED_TORCH)
# `with enabled():` functional models run by kclip's graph runner compute the planned ReLUs and sums in place inside the block.
enabled = _switch.enabled


def active():
    return _switch.on


def _writable(tensor, readers, outputs, producers):
    # Only this node reads it, the model does not return it, and its producer's backward
    # does not read it.
    return (len(readers.get(id(tensor), ())) == 1 and id(tensor) not in outputs
            and type(producer(tensor)) in producers)


def plan(function):
    """{id(node): ("relu", None) or ("add", index of the input written into)} for a functional model (cached)."""
    cached = function.__dict__.get("_kclip_inplace_ops")
    if cached is not None:
        return cached
    tensor_readers = readers(function)
    outputs = {id(x) for x in function.outputs}
    batch_norm, add = keras.layers.BatchNormalization, keras.layers.Add
    steps = {}
    for nodes in function._nodes_by_depth.values():
        for node in nodes:
            if node.is_input or len(node.outputs) != 1:
                continue
            tensors = node.input_tensors
            if is_relu(node.operation) and len(tensors) == 1:
                if _writable(tensors[0], tensor_readers, outputs, (batch_norm, add)):
                    steps[id(node)] = ("relu", None)
            elif type(node.operation) is add and len(tensors) == 2 and id(tensors[0]) != id(tensors[1]):
                for index in (1, 0):  # KerasHub's blocks add ([shortcut, residual]): the residual first
                    if _writable(tensors[index], tensor_readers, outputs, (batch_norm,)):
                        steps[id(node)] = ("add", index)
                        break
    object.__setattr__(function, "_kclip_inplace_ops", steps)
    return steps


def run(layer, step, inputs):
    """The node's output computed in place per `step` (from `plan`), or None where Keras must run it."""
    import torch

    from keras.src.backend.torch.core import to_torch_dtype

    dtype = to_torch_dtype(layer.compute_dtype)
    if not all(isinstance(x, torch.Tensor) and x.dtype == dtype and getattr(x, "_keras_mask", None) is None
               for x in inputs):
        return None
    kind, index = step
    if kind == "relu":
        return torch.relu_(inputs[0])
    target, other = inputs[index], inputs[1 - index]
    if target.shape != other.shape:
        return None
    return target.add_(other)

