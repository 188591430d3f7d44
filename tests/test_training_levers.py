"""The torch speed levers (fused Adam, conv kernel layout, fused attention) must compute what Keras computes."""

import keras
import numpy as np
import pytest

from helpers import seeded_model_and_batch
from kclip.backends.torch import conv_layout
from kclip.backends.torch import fused_adam, fused_attention
from kclip.models import optimizers

pytestmark = pytest.mark.torch_only  # torch kernels


class Weights:
    """What `keep_kernels_in_torch_order` reads from a model: its `weights`."""

    def __init__(self, weights):
        self.weights = weights


def adam_steps(fused, weight_decay, torch_order=False):
    import torch

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype("float32")) for shape in [(3, 3, 4, 5), (7,), (10, 6)]]
    if torch_order:  # the conv kernel as `fit` holds it with fast conv kernels: not contiguous
        assert len(conv_layout.keep_kernels_in_torch_order(Weights(variables))) == 1
    optimizer = optimizers.MultiRateAdamW(learning_rate=1e-2, weight_decay=weight_decay, fused=fused)
    optimizer.set_variable_multipliers([(0.1, variables[:1])])
    for _ in range(5):
        # Conv kernel gradients reach the optimizer as permuted, non-contiguous views.
        gradients = [torch.tensor(rng.normal(size=v.shape[::-1]).astype("float32")).permute(
            *reversed(range(len(v.shape)))) for v in variables]
        with torch.no_grad():
            optimizer.apply(gradients, variables)
    if torch_order:
        # The moments follow the kernel's memory order, and the kernel keeps it.
        kernel = variables[0].value
        momentum = optimizer._momentums[optimizer._get_variable_index(variables[0])].value
        assert conv_layout._in_torch_order(kernel) and momentum.stride() == kernel.stride()
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_adam_matches_keras_adam_with_learning_rate_groups(weight_decay):
    assert fused_adam.kernel() is not None
    expected = adam_steps(fused=False, weight_decay=weight_decay)
    actual = adam_steps(fused=True, weight_decay=weight_decay)
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fused_adam_updates_kernels_kept_in_torch_order_as_keras_adam_does():
    expected = adam_steps(fused=False, weight_decay=0.1)
    actual = adam_steps(fused=True, weight_decay=0.1, torch_order=True)
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def conv_output_and_gradient(inputs, fast, dtype="float32"):
    import torch

    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(6, 3, padding="same", data_format="channels_first", dtype=dtype)
    layer.build((None, inputs.shape[3], *inputs.shape[1:3]))
    images = torch.tensor(inputs).permute(0, 3, 1, 2).requires_grad_()  # channels-last memory, as in kclip
    with conv_layout.enabled(fast):
        outputs = layer(images)
    (kernel_gradient, image_gradient) = torch.autograd.grad((outputs.float()**2).sum(), [layer.kernel.value, images])
    return outputs.detach().float().numpy(), kernel_gradient.numpy(), image_gradient.numpy()


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 1e-2)])
def test_fast_conv_kernels_give_the_same_outputs_and_gradients(dtype, tolerance):
    inputs = np.random.default_rng(1).normal(size=(2, 7, 7, 4)).astype("float32")
    # Only memory order changes, so even in bf16 the two paths round alike; the tolerance is bf16's.
    for want, got in zip(conv_output_and_gradient(inputs, False, dtype), conv_output_and_gradient(inputs, True, dtype)):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype, fast", [("float32", True), ("bfloat16", True), ("float16", False)])
def test_fast_conv_kernels_take_float32_and_cpu_bf16_kernels(dtype, fast):
    import torch

    kernel = torch.randn(3, 3, 4, 5).to(getattr(torch, dtype))
    keras_path = []

    def keras_transpose(k):
        keras_path.append(k)
        return k.permute(3, 2, 0, 1)

    result = conv_layout._transpose_conv_kernel(kernel, keras_transpose=keras_transpose)
    assert (not keras_path) == fast
    assert torch.equal(result, kernel.permute(3, 2, 0, 1))


def test_kernels_kept_in_torch_order_reach_torch_as_views_and_compute_what_the_copy_computes():
    import torch

    inputs = np.random.default_rng(3).normal(size=(2, 7, 7, 4)).astype("float32")
    images = torch.tensor(inputs).permute(0, 3, 1, 2)
    keras.utils.set_random_seed(0)
    layer = keras.layers.Conv2D(6, 3, padding="same", data_format="channels_first")
    layer.build((None, 4, 7, 7))
    kernel = layer.kernel.value
    before = kernel.detach().clone()

    def output_and_gradient():
        outputs = layer(images)
        return outputs.detach().numpy(), torch.autograd.grad((outputs**2).sum(), [kernel])[0].numpy()

    with conv_layout.enabled(True):
        copied = output_and_gradient()  # kernel contiguous: the 2-D transpose copy
    with conv_layout.enabled(True, model=layer):
        assert layer.kernel.value is kernel and conv_layout._in_torch_order(kernel)
        handed = conv_layout._transpose_conv_kernel(kernel, keras_transpose=None)
        assert handed.data_ptr() == kernel.data_ptr()  # no copy
        assert handed.is_contiguous(memory_format=torch.channels_last)
        viewed = output_and_gradient()
    # The same kernel values in the same memory order reach the same torch kernel: equal to the bit.
    for want, got in zip(copied, viewed):
        np.testing.assert_array_equal(got, want)
    assert kernel.is_contiguous() and torch.equal(kernel, before)  # Keras' order again after the block


def test_a_model_saved_with_kernels_in_torch_order_loads_with_the_same_weights(tmp_path):
    from helpers import tiny_model

    model = tiny_model()
    with conv_layout.enabled(True, model=model):
        assert any(conv_layout._in_torch_order(w.value) and w.value.ndim == 4 for w in model.weights)
        model.save(tmp_path / "model.keras")
        saved = [w.numpy() for w in model.weights]
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    for want, got in zip(saved, (w.numpy() for w in reloaded.weights)):
        np.testing.assert_array_equal(got, want)


def test_a_training_step_with_every_lever_matches_plain_keras():
    from kclip.backends.torch.levers import training_levers

    def step(levers):
        model, inputs, image_ids = seeded_model_and_batch()
        model.optimizer.fused = levers
        with training_levers(levers, levers, levers, levers, levers, inplace_activations=levers, model=model):
            losses = [float(model.train_step((inputs, image_ids))["loss"]) for _ in range(3)]
        return losses, [w.numpy() for w in model.trainable_weights]

    keras_losses, keras_weights = step(False)
    lever_losses, lever_weights = step(True)
    np.testing.assert_allclose(lever_losses, keras_losses, rtol=1e-4)
    for want, got in zip(keras_weights, lever_weights):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def attention_output_and_gradients(inputs, mask, fused, training, dropout=0.1):
    from unittest import mock

    import torch
    import torch.nn.functional as F

    keras.utils.set_random_seed(0)
    layer = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=dropout)
    tokens = torch.tensor(inputs, requires_grad=True)
    spy = mock.patch.object(F, "scaled_dot_product_attention", wraps=F.scaled_dot_product_attention)
    with fused_attention.enabled(fused), spy as kernel:
        outputs = layer(tokens, tokens, attention_mask=torch.tensor(mask), training=training)
    # The fused path, and only it, goes through torch's kernel: with dropout Keras never does.
    assert kernel.called == fused
    gradients = torch.autograd.grad((outputs**2).sum(), [tokens, *[w.value for w in layer.trainable_weights]])
    return [outputs.detach().numpy(), *[g.numpy() for g in gradients]]


def test_fused_attention_matches_keras_attention_with_a_padding_mask():
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(3, 5, 8)).astype("float32")
    # Padding: the last keys of some captions are masked for every query, as DistilBERT masks them.
    lengths = np.array([5, 3, 1])
    mask = np.broadcast_to((np.arange(5)[None, :] < lengths[:, None])[:, None, :], (3, 5, 5)).copy()
    # Without dropout noise (training=False) both paths are deterministic and must agree.
    for want, got in zip(attention_output_and_gradients(inputs, mask, False, training=False),
                         attention_output_and_gradients(inputs, mask, True, training=False)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fused_attention_applies_the_layers_dropout_while_training():
    import torch

    rng = np.random.default_rng(3)
    inputs = rng.normal(size=(64, 6, 8)).astype("float32")
    mask = np.ones((64, 6, 6), dtype=bool)
    torch.manual_seed(0)
    clean = attention_output_and_gradients(inputs, mask, True, training=False, dropout=0.5)[0]
    noisy = attention_output_and_gradients(inputs, mask, True, training=True, dropout=0.5)[0]
    # Same weights (same seed), so only dropout tells the two apart: at rate 0.5 the outputs move,
    # and with inverted dropout their mean stays about the same.
    assert np.abs(noisy - clean).mean() > 0.1 * np.abs(clean).mean()
    assert abs(noisy.mean() - clean.mean()) < 0.1 * np.abs(clean).mean()
    with fused_attention.enabled(True):  # the patch is undone when the block ends
        pass
    assert keras.layers.MultiHeadAttention._compute_attention.__qualname__.startswith("MultiHeadAttention.")
