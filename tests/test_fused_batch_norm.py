"""The fused torch BatchNormalization must compute exactly what Keras' own does."""

import keras
import numpy as np
import pytest

from kclip.backends.torch import fused_batch_norm

# The fused kernel is torch's, and every test here takes gradients with torch.autograd.
pytestmark = pytest.mark.torch_only


def run_layer(inputs, training, fused, axis=1, dtype="float32"):
    keras.utils.set_random_seed(0)
    layer = keras.layers.BatchNormalization(axis=axis, momentum=0.9, dtype=dtype)
    layer.build(inputs.shape)
    layer.gamma.assign(np.linspace(0.5, 1.5, inputs.shape[axis]).astype("float32"))
    layer.beta.assign(np.linspace(-1, 1, inputs.shape[axis]).astype("float32"))
    if fused:
        fused_batch_norm.enable()
    try:
        variable = keras.Variable(inputs)
        import torch

        with torch.enable_grad():
            outputs = layer(variable.value, training=training)
            loss = (outputs.float() * torch.arange(outputs.numel()).reshape(outputs.shape).float()).sum()
            (gradient,) = torch.autograd.grad(loss, [layer.gamma.value])
        return (
            keras.ops.convert_to_numpy(outputs).astype("float32"),
            layer.moving_mean.numpy(),
            layer.moving_variance.numpy(),
            gradient.numpy(),
        )
    finally:
        fused_batch_norm.disable()


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 8)])
def test_fused_batch_norm_matches_keras(training, shape):
    inputs = np.random.default_rng(1).normal(2.0, 3.0, shape).astype("float32")
    expected = run_layer(inputs, training, fused=False)
    actual = run_layer(inputs, training, fused=True)
    for name, want, got in zip(("outputs", "moving_mean", "moving_variance", "gamma_gradient"), expected, actual):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5, err_msg=name)


def test_fused_batch_norm_under_bfloat16_policy_matches_keras():
    inputs = np.random.default_rng(2).normal(0.0, 1.0, (4, 3, 6, 6)).astype("float32")
    expected = run_layer(inputs, True, fused=False, dtype="mixed_bfloat16")
    actual = run_layer(inputs, True, fused=True, dtype="mixed_bfloat16")
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-2, atol=1e-2)  # bfloat16 outputs
    np.testing.assert_allclose(actual[1], expected[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(actual[2], expected[2], rtol=1e-5, atol=1e-6)


def test_channels_last_images_fall_back_to_keras():
    inputs = np.random.default_rng(3).normal(size=(2, 4, 4, 3)).astype("float32")
    expected = run_layer(inputs, True, fused=False, axis=-1)
    actual = run_layer(inputs, True, fused=True, axis=-1)
    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(got, want)
