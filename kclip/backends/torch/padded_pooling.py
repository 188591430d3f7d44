"""A ResNet stem's zero padding folded into its max pooling (a speed lever).

KerasHub's ResNet (v1) ends its stem with ReLU -> ZeroPadding2D(1) -> MaxPooling2D(3, 2),
padding by hand because torch and TensorFlow place "same" padding differently. In eager
torch that padding writes a zero-filled copy of the largest activation in the network, and
the pooling's backward zero-fills a gradient of the padded size: at the demo's size
(batch 128, 64×26×26) the two fills took 21 ms per float32 step in one profile, 16% of its op
time (`aten::fill_`, benchmarks/results/profile-demo-fp32-shapes-2026-11-30.txt); touching fresh
memory costs more in some runs than in others here. torch's own max
pooling pads inside the kernel, with -inf. After a ReLU every value is at least 0, and
every 3×3 window still holds a real value when the padding is at most half the window, so
zeros and -inf padding give the same maximum and the same gradient: the fold is exact.

The fold applies only to that pattern: a ZeroPadding2D whose input comes from a ReLU and
whose only reader is a "valid" MaxPooling2D with square windows, channels-first (kclip's
layout on torch), padding at most half the window. Everything else runs as Keras runs it.
`kclip.train` turns it on around `fit` (`trainer.fold_pool_padding`, default true). It needs
the graph runner of `kclip.backends.torch.graph_memory`, so it works together with
`trainer.release_intermediates` and is off when that is off.
"""

from kclip.backends.torch.graph_rewrites import Switch, is_relu, producer, readers

# [minimum, below): the releases this patch was read against and tested with.
TESTED_KERAS = ("3.15", "3.16")
TESTED_TORCH = ("2.11", "2.16")
PATCH_NAME = "padding folded into pooling (kclip.backends.torch.padded_pooling)"

_switch = Switch(PATCH_NAME, TESTED_KERAS, TESTED_TORCH)
# `with enabled():` functional models run by kclip's graph runner fold padding into pooling inside the block.
enabled = _switch.enabled


def active():
    return _switch.on


def _symmetric_padding(layer):
    (top, bottom), (left, right) = layer.padding
    return top if top == bottom == left == right else None


def _foldable(pad_layer, pool_layer, source):
    import keras

    if not (isinstance(pad_layer, keras.layers.ZeroPadding2D) and isinstance(pool_layer, keras.layers.MaxPooling2D)):
        return None
    padding = _symmetric_padding(pad_layer)
    size, strides = tuple(pool_layer.pool_size), tuple(pool_layer.strides)
    if (padding is None or pool_layer.padding != "valid" or size[0] != size[1] or strides[0] != strides[1]
            or padding > size[0] // 2 or not is_relu(source)
            or pad_layer.data_format != "channels_first" or pool_layer.data_format != "channels_first"):
        return None
    return padding


def plan(function):
    """{id(pad node): None, id(pool node): padding} for each foldable pair in a functional model (cached)."""
    cached = function.__dict__.get("_kclip_pool_folds")
    if cached is not None:
        return cached
    tensor_readers = readers(function)
    folds = {}
    for nodes in function._nodes_by_depth.values():
        for node in nodes:
            if node.is_input or len(node.input_tensors) != 1 or len(node.outputs) != 1:
                continue
            consumers = tensor_readers.get(id(node.outputs[0]), [])
            if len(consumers) != 1 or any(id(x) == id(node.outputs[0]) for x in function.outputs):
                continue
            padding = _foldable(node.operation, consumers[0].operation, producer(node.input_tensors[0]))
            if padding is not None:
                folds[id(node)] = None
                folds[id(consumers[0])] = padding
    object.__setattr__(function, "_kclip_pool_folds", folds)
    return folds


def pool(layer, inputs, padding):
    """`layer` (a MaxPooling2D) over `inputs` padded by `padding` on every side, inside torch's kernel."""
    import torch.nn.functional as F
    from keras import ops

    inputs = ops.cast(inputs, layer.compute_dtype)
    return F.max_pool2d(inputs, tuple(layer.pool_size), tuple(layer.strides), padding=padding)

