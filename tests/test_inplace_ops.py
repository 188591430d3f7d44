"""ReLUs and residual sums written in place must compute exactly what Keras computes, and only where it is safe."""

from unittest import mock

import keras
import numpy as np
import pytest

from helpers import seeded_model_and_batch
from kclip.backends.torch import graph_memory, inplace_ops

pytestmark = pytest.mark.torch_only  # in-place torch tensor ops


def planned_layers(model):
    steps = inplace_ops.plan(model)
    return sorted(node.operation.name for nodes in model._nodes_by_depth.values() for node in nodes
                  if id(node) in steps)


def test_every_relu_and_residual_sum_of_a_bottleneck_resnet_is_planned():
    import keras_hub

    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        image_shape=(3, None, None), data_format="channels_first",
    )
    names = planned_layers(resnet)
    relus = [layer.name for layer in resnet.layers if layer.name.endswith(("_relu", "_out"))
             and isinstance(layer, keras.layers.Activation)]
    adds = [layer.name for layer in resnet.layers if isinstance(layer, keras.layers.Add)]
    # Stem ReLU plus 3 per block, and one sum per block.
    assert (len(relus), len(adds)) == (7, 2)
    assert names == sorted(relus + adds)


def test_inputs_that_another_layer_reads_or_the_model_returns_stay_out_of_place():
    inputs = keras.Input((4,))
    shared = keras.layers.BatchNormalization(name="shared_bn")(inputs)
    read_twice = keras.layers.Activation("relu", name="relu_of_shared")(shared)
    also_reads = keras.layers.Dense(4, name="dense_of_shared")(shared)
    returned = keras.layers.BatchNormalization(name="returned_bn")(inputs)
    relu_of_returned = keras.layers.Activation("relu", name="relu_of_returned")(returned)
    after_dense = keras.layers.Activation("relu", name="relu_of_dense")(keras.layers.Dense(4)(inputs))
    sum_of_denses = keras.layers.Add(name="sum_of_denses")([also_reads, after_dense])
    private = keras.layers.BatchNormalization(name="private_bn")(inputs)
    relu_of_private = keras.layers.Activation("relu", name="relu_of_private")(private)
    model = keras.Model(inputs, [read_twice, returned, relu_of_returned, sum_of_denses, relu_of_private])
    # Only the ReLU whose batch norm nobody else reads; a Dense's output is not a producer it trusts.
    assert planned_layers(model) == ["relu_of_private"]


def test_run_falls_back_to_keras_where_dtype_or_shape_do_not_fit():
    import torch

    relu = keras.layers.Activation("relu", dtype="mixed_bfloat16")
    assert inplace_ops.run(relu, ("relu", None), [torch.ones(2, 3)]) is None  # float32 into a bf16 layer
    add = keras.layers.Add()
    assert inplace_ops.run(add, ("add", 1), [torch.ones(2, 3), torch.ones(1, 3)]) is None  # would broadcast
    target = torch.full((2, 3), -1.0)
    assert inplace_ops.run(relu.__class__("relu"), ("relu", None), [target]).data_ptr() == target.data_ptr()
    assert float(target.max()) == 0.0


def training_steps(inplace, policy):
    from kclip.backends.torch.levers import training_levers

    keras.config.set_dtype_policy(policy)
    try:
        model, inputs, image_ids = seeded_model_and_batch()
    finally:
        keras.config.set_dtype_policy("float32")
    written, run = [], inplace_ops.run

    def recording_run(*args):
        result = run(*args)
        written.append(result is not None)
        return result

    with mock.patch.object(inplace_ops, "run", recording_run), \
            training_levers(inplace_activations=inplace, model=model):
        losses = [float(model.train_step((inputs, image_ids))["loss"]) for _ in range(3)]
    return losses, [weight.numpy() for weight in model.weights], sum(written)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_training_steps_are_the_same_bit_for_bit(policy):
    keras_losses, keras_weights, keras_written = training_steps(False, policy)
    losses, weights, written = training_steps(True, policy)
    assert keras_written == 0
    # The tiny ResNet (stem + two basic blocks) has 5 ReLUs and 2 sums, all planned: 7 per step.
    assert written == 7 * 3
    assert losses == keras_losses
    for want, got in zip(keras_weights, weights):  # every weight, moving statistics included
        np.testing.assert_array_equal(got, want)
    assert graph_memory.Function._run_through_graph is graph_memory._original_run_through_graph
