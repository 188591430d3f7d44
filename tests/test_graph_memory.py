"""Releasing functional-graph intermediates must free memory and change nothing that is computed."""

import weakref

import keras
import numpy as np
import pytest

from helpers import seeded_model_and_batch
from kclip.backends.torch import graph_memory

pytestmark = pytest.mark.torch_only  # eager tensors that Python can free are torch's


class Probe(keras.layers.Layer):
    """Identity that remembers a weak reference to what passed through it."""

    def call(self, inputs):
        self.seen = weakref.ref(inputs)
        return inputs + 0.0


class AliveCheck(keras.layers.Layer):
    """Identity that records whether the probe's tensor is still alive when it runs."""

    def __init__(self, probe, **kwargs):
        super().__init__(**kwargs)
        self.probe = probe

    def call(self, inputs):
        self.probe_alive = self.probe.seen() is not None
        return inputs


def probe_model():
    inputs = keras.Input((8,))
    probe = Probe()
    hidden = keras.layers.Dense(8)(probe(keras.layers.Dense(8)(inputs)))
    check = AliveCheck(probe)
    residual = keras.layers.Add()([hidden, hidden])  # one tensor read twice by one node
    return keras.Model(inputs, check(keras.layers.Dense(4)(residual))), check


@pytest.mark.parametrize("release, alive", [(False, True), (True, False)])
def test_a_tensor_is_freed_after_its_last_reader(release, alive):
    import torch

    model, check = probe_model()
    with torch.no_grad(), graph_memory.enabled(release):
        outputs = model(np.ones((2, 8), "float32"))
    assert tuple(outputs.shape) == (2, 4)
    assert check.probe_alive is alive


def test_outputs_stay_available_and_nested_models_still_run():
    import torch

    inner, _ = probe_model()
    inputs = keras.Input((8,))
    outer = keras.Model(inputs, {"a": inner(inputs), "b": keras.layers.Dense(3)(inputs)})
    x = np.random.default_rng(0).normal(size=(2, 8)).astype("float32")
    with torch.no_grad():
        expected = outer(x)
        with graph_memory.enabled():
            actual = outer(x)
    for key in ("a", "b"):
        np.testing.assert_array_equal(actual[key].numpy(), expected[key].numpy())


def one_training_step(release):
    model, inputs, image_ids = seeded_model_and_batch()
    with graph_memory.enabled(release):
        logs = model.train_step((inputs, image_ids))
    return float(logs["loss"]), [weight.numpy() for weight in model.trainable_weights]


def test_a_training_step_is_unchanged():
    loss_keras, weights_keras = one_training_step(release=False)
    loss_released, weights_released = one_training_step(release=True)
    assert loss_released == loss_keras
    for expected, actual in zip(weights_keras, weights_released):
        np.testing.assert_array_equal(actual, expected)
    assert graph_memory.Function._run_through_graph is graph_memory._original_run_through_graph


def stem_output_and_gradients(model, images, fold):
    import torch

    from kclip.backends.torch import padded_pooling

    from unittest import mock

    tensor = torch.tensor(images, requires_grad=True)
    with graph_memory.enabled(True), padded_pooling.enabled(fold), mock.patch.object(
            padded_pooling, "pool", wraps=padded_pooling.pool) as pool:
        outputs = model(tensor)
    assert pool.call_count == int(fold)
    gradients = torch.autograd.grad((outputs**2).sum(), [tensor, *[w.value for w in model.trainable_weights]])
    return [outputs.detach().numpy(), *[g.numpy() for g in gradients]]


def test_a_resnet_stem_padding_folds_into_its_pooling_exactly():
    import keras_hub

    from kclip.backends.torch import padded_pooling

    keras.utils.set_random_seed(0)
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(3, None, None), data_format="channels_first",
    )
    folds = padded_pooling.plan(resnet)
    # One pair, the stem's pool1_pad -> pool1_pool; the paddings before strided convs are left alone.
    layers = sorted(node.operation.name for nodes in resnet._nodes_by_depth.values() for node in nodes
                    if id(node) in folds)
    assert layers == ["pool1_pad", "pool1_pool"]
    images = np.random.default_rng(5).normal(size=(2, 3, 20, 20)).astype("float32")
    for want, got in zip(stem_output_and_gradients(resnet, images, False),
                         stem_output_and_gradients(resnet, images, True)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_padding_before_pooling_is_kept_when_values_can_be_negative():
    from kclip.backends.torch import padded_pooling

    inputs = keras.Input((2, 6, 6))
    hidden = keras.layers.Conv2D(2, 1, data_format="channels_first")(inputs)  # no ReLU: values can be < 0
    padded = keras.layers.ZeroPadding2D(1, data_format="channels_first")(hidden)
    model = keras.Model(inputs, keras.layers.MaxPooling2D(3, 2, data_format="channels_first")(padded))
    assert padded_pooling.plan(model) == {}
    relu = keras.layers.Activation("relu")(hidden)
    folded = keras.layers.MaxPooling2D(3, 2, data_format="channels_first")(
        keras.layers.ZeroPadding2D(1, data_format="channels_first")(relu))
    assert sorted(padded_pooling.plan(keras.Model(inputs, folded)).values(), key=str) == [1, None]
