"""Release each intermediate tensor of a functional model after its last use (a memory lever).

Keras 3 runs a functional model node by node and keeps every node's output in one
dictionary until the whole graph has run. In eager execution (the torch backend)
that holds every intermediate activation of ResNet50 at once, including the many
that autograd does not need for the backward pass (batch-norm outputs before
their ReLU, residual sums, padded copies). At full size (ResNet50 + DistilBERT, batch 32,
bf16) the training process peaked at 4,583 and 4,595 MB with it and at 5,342 and 5,339 MB without
(benchmarks/results/release-intermediates-2026-11-27.jsonl, `release_intermediates` on/off). tf.keras 2 counted tensor
uses and dropped each one after its last consumer; `enabled()` does the same for
Keras 3's `Function._run_through_graph`. The computation, and so every output and
gradient, is unchanged: only when Python lets go of the tensors changes.

`kclip.train` turns it on around `fit` (`trainer.release_intermediates`, default
true), with `kclip.backends.torch.fused_batch_norm`.

The replacement mirrors the private method of the Keras releases in TESTED_KERAS; with
any other Keras (or one whose method has another signature) `enabled()` keeps Keras'
own method and warns once.
"""

import collections
import contextlib
import inspect

from keras.src import tree
from keras.src.ops.function import Function

from kclip.backends.torch import inplace_ops, padded_pooling
from kclip.utils.versions import patch_supported, warn_once

# [minimum, below): the Keras releases this patch was read against and tested with.
TESTED_KERAS = ("3.15", "3.16")
PATCH_NAME = "release-intermediates (kclip.backends.torch.graph_memory)"

_original_run_through_graph = Function._run_through_graph


def supported():
    if not patch_supported(PATCH_NAME, "keras", *TESTED_KERAS):
        return False
    same_shape = (
        list(inspect.signature(_original_run_through_graph).parameters)
        == ["self", "inputs", "operation_fn", "call_fn"]
        and hasattr(Function, "_get_operation_for_node")
    )
    if not same_shape:
        warn_once((PATCH_NAME, "signature"), f"kclip: this Keras changed Function._run_through_graph, so the "
                  f"{PATCH_NAME} patch is off and Keras' own method runs (more memory while training).")
    return same_shape


def _tensor_uses(function):
    # How many nodes read each symbolic tensor; cached because the graph never changes.
    uses = function.__dict__.get("_kclip_tensor_uses")
    if uses is None:
        uses = collections.Counter()
        for nodes in function._nodes_by_depth.values():
            for node in nodes:
                if node.operation and not node.is_input:
                    uses.update(id(tensor) for tensor in node.input_tensors)
        object.__setattr__(function, "_kclip_tensor_uses", uses)
    return uses


def _run_through_graph(self, inputs, operation_fn=lambda op: op, call_fn=None):
    """Keras' `Function._run_through_graph`, dropping tensors nobody will read again."""
    if call_fn is not None:
        return _original_run_through_graph(self, inputs, operation_fn, call_fn)
    tensor_dict = {id(x): y for x, y in zip(self.inputs, tree.flatten(inputs))}
    remaining = dict(_tensor_uses(self))
    folds = padded_pooling.plan(self) if padded_pooling.active() else {}
    in_place = inplace_ops.plan(self) if inplace_ops.active() else {}
    kept = {id(x) for x in self.outputs}

    for depth in sorted(self._nodes_by_depth, reverse=True):
        for node in self._nodes_by_depth[depth]:
            if not node.operation or node.is_input:
                continue
            if any(id(x) not in tensor_dict for x in node.input_tensors):
                continue  # Not computable from these inputs, as in Keras.
            outputs = None
            if id(node) in folds:
                outputs = _folded(self, node, folds[id(node)], tensor_dict)
            elif id(node) in in_place:
                outputs = inplace_ops.run(self._get_operation_for_node(node), in_place[id(node)],
                                          [tensor_dict[id(x)] for x in node.input_tensors])
            if outputs is None:
                args, kwargs = node.arguments.fill_in(tensor_dict)
                operation = operation_fn(self._get_operation_for_node(node))
                outputs = operation(*args, **kwargs)
                del args, kwargs
            for x, y in zip(node.outputs, tree.flatten(outputs)):
                tensor_dict[id(x)] = y
            for x in node.input_tensors:
                key = id(x)
                remaining[key] -= 1
                if remaining[key] == 0 and key not in kept:
                    del tensor_dict[key]

    output_tensors = []
    for index, x in enumerate(self.outputs):
        if id(x) not in tensor_dict:
            path = ".".join(str(p) for p in tree.flatten_with_path(self._outputs_struct)[index][0])
            raise ValueError(f"Output with path `{path}` is not connected to `inputs`")
        output_tensors.append(tensor_dict[id(x)])
    return tree.pack_sequence_as(self._outputs_struct, output_tensors)


def _folded(function, node, padding, tensor_dict):
    # A folded padding hands its input through unpadded; its pooling pads inside the kernel.
    unpadded = tensor_dict[id(node.input_tensors[0])]
    if padding is None:
        return unpadded
    return padded_pooling.pool(function._get_operation_for_node(node), unpadded, padding)


@contextlib.contextmanager
def enabled(active=True):
    """Functional models release intermediates after their last use inside the block."""
    previous = Function._run_through_graph
    if active and supported():
        Function._run_through_graph = _run_through_graph
    try:
        yield
    finally:
        Function._run_through_graph = previous
