"""Each patch of a private internal runs only on the versions it was tested on; elsewhere Keras' own path runs.

Also: the fused batch norm is a training-mode kernel only, so validation inside `fit` and any
inference compute exactly what Keras computes.
"""
import warnings

import keras
import numpy as np
import pytest

from helpers import fixed_batch, seeded_model_and_batch, tiny_model
from kclip.backends.torch import conv_layout, fused_batch_norm, graph_memory, inplace_ops
from kclip.backends.torch.levers import training_levers
from kclip.utils import versions

pytestmark = pytest.mark.skipif(keras.config.backend() != "torch", reason="torch-only patches")


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(versions, "_warned", set())


def pretend(monkeypatch, package, version):
    real = versions.installed_version
    monkeypatch.setattr(versions, "installed_version",
                        lambda name: versions.Version(version) if name == package else real(name))


def test_installed_versions_are_inside_every_tested_range(fresh_warnings):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fused_batch_norm.supported() and graph_memory.supported()
        with conv_layout.enabled():
            from keras.src.backend.torch import nn
            assert isinstance(nn._transpose_conv_kernel, conv_layout.functools.partial)
        with inplace_ops.enabled():
            assert inplace_ops.active()
        assert not inplace_ops.active()


@pytest.mark.parametrize("package, version", [("keras", "3.16.0"), ("torch", "2.17.0")])
def test_fused_batch_norm_falls_back_and_warns_once(monkeypatch, fresh_warnings, package, version):
    pretend(monkeypatch, package, version)
    original = keras.layers.BatchNormalization.call
    with pytest.warns(RuntimeWarning, match=rf"fused batch norm.*{package} {version}"):
        with fused_batch_norm.enabled():
            assert keras.layers.BatchNormalization.call is original
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: still Keras' path, no second warning
        with fused_batch_norm.enabled():
            assert keras.layers.BatchNormalization.call is original


def test_graph_memory_falls_back_and_warns_once(monkeypatch, fresh_warnings):
    pretend(monkeypatch, "keras", "3.14.2")
    with pytest.warns(RuntimeWarning, match=r"release-intermediates.*keras 3.14.2"):
        with graph_memory.enabled():
            assert graph_memory.Function._run_through_graph is graph_memory._original_run_through_graph
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with graph_memory.enabled():
            assert graph_memory.Function._run_through_graph is graph_memory._original_run_through_graph


@pytest.mark.parametrize("package, version", [("keras", "3.16.0"), ("torch", "2.10.0")])
def test_conv_layout_falls_back_and_warns_once(monkeypatch, fresh_warnings, package, version):
    from keras.src.backend.torch import nn

    pretend(monkeypatch, package, version)
    original = nn._transpose_conv_kernel
    with pytest.warns(RuntimeWarning, match=rf"fast conv kernels.*{package} {version}"):
        with conv_layout.enabled():
            assert nn._transpose_conv_kernel is original
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with conv_layout.enabled():
            assert nn._transpose_conv_kernel is original


@pytest.mark.parametrize("package, version", [("keras", "3.16.0"), ("torch", "2.17.0")])
def test_inplace_ops_fall_back_and_warn_once(monkeypatch, fresh_warnings, package, version):
    pretend(monkeypatch, package, version)
    with pytest.warns(RuntimeWarning, match=rf"in-place ReLU.*{package} {version}"):
        with inplace_ops.enabled():
            assert not inplace_ops.active()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with inplace_ops.enabled():
            assert not inplace_ops.active()


def test_a_training_step_outside_the_range_is_plain_keras(monkeypatch, fresh_warnings):
    """With every patch refused, the levers' step equals a step without them, bit for bit."""
    pretend(monkeypatch, "keras", "3.16.0")

    def one_step(levers):
        model, inputs, image_ids = seeded_model_and_batch(seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with training_levers(levers, levers, levers):
                loss = float(model.train_step((inputs, image_ids))["loss"])
        return loss, [weight.numpy() for weight in model.trainable_weights]

    loss_plain, weights_plain = one_step(False)
    loss_levers, weights_levers = one_step(True)
    assert loss_levers == loss_plain
    for plain, levered in zip(weights_plain, weights_levers):
        np.testing.assert_array_equal(levered, plain)


def test_fused_batch_norm_is_a_training_kernel_only(monkeypatch):
    """Inference (validation inside fit, evaluate, encode_image) runs Keras' own kernel."""
    import torch.nn.functional as F

    calls = []
    real_batch_norm = F.batch_norm

    def counting(*args, **kwargs):
        calls.append(args[5] if len(args) > 5 else kwargs.get("training"))
        return real_batch_norm(*args, **kwargs)

    monkeypatch.setattr(F, "batch_norm", counting)
    keras.utils.set_random_seed(1)
    model = tiny_model()
    raw, _ = fixed_batch()
    _, inputs, image_ids = seeded_model_and_batch(seed=1)
    outside = model.encode_image(list(raw["images"]))
    with fused_batch_norm.enabled():
        inside = model.encode_image(list(raw["images"]))
        model.preprocessor, preprocessor = None, model.preprocessor
        model.test_step((inputs, image_ids))  # what validation inside fit runs on each batch
        assert calls == []  # no inference call reached torch's kernel
        model.train_step((inputs, image_ids))
        assert calls and all(calls)  # the training step did, in training mode
        model.preprocessor = preprocessor
    np.testing.assert_array_equal(inside, outside)
