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
