"""The torch speed levers switch themselves off on JAX and TensorFlow, without a word."""

import warnings

import keras
import pytest
from keras.src.ops.function import Function

from kclip.backends.torch import fused_adam
from kclip.backends.torch.levers import training_levers

pytestmark = pytest.mark.backend_neutral


def test_torch_levers_are_off_and_silent_on_other_backends():
    if keras.config.backend() == "torch":
        pytest.skip("on torch the levers are on (tests/test_training_levers.py)")
    keras_graph_runner = Function._run_through_graph
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with training_levers(True, True, True):
            assert Function._run_through_graph is keras_graph_runner
            assert fused_adam.kernel() is None


@pytest.mark.torch_only
def test_fused_adam_runs_only_on_its_tested_torch_range(monkeypatch):
    from kclip.utils import versions

    assert fused_adam.kernel() is not None
    monkeypatch.setattr(fused_adam, "TORCH_RANGE", ("1.0", "1.1"))
    monkeypatch.setattr(versions, "_warned", set())
    with pytest.warns(RuntimeWarning, match="fused Adam patch was tested with torch >=1.0,<1.1"):
        assert fused_adam.kernel() is None
