"""Loss scaling (what mixed_float16 turns on) through every backend's train step.

On the CPU, JAX cannot run float16 matmuls (tests/test_precision.py runs them on torch and
TensorFlow), so here the scaling is checked in float32, where a power-of-two scale is exact:
the scaled run must follow the plain run, and overflowing steps must be skipped while the
scale comes down, which needs the scale variable threaded through JAX's stateless step.
"""

import keras
import numpy as np
import pytest

from helpers import fixed_batch, tiny_model
from kclip.models.optimizers import MultiRateAdamW

pytestmark = pytest.mark.backend_neutral


def run(initial_scale=None, steps=8):
    keras.utils.set_random_seed(0)
    model = tiny_model()
    if initial_scale is not None:
        optimizer = keras.optimizers.LossScaleOptimizer(
            MultiRateAdamW(learning_rate=1e-3), initial_scale=initial_scale
        )
        model.compile(optimizer=optimizer, learning_rate=1e-3, image_learning_rate=1e-4,
                      text_learning_rate=1e-4)
    else:
        model.compile(learning_rate=1e-3, image_learning_rate=1e-4, text_learning_rate=1e-4)
    inputs, image_ids = fixed_batch()
    losses = [float(model.train_on_batch(inputs, image_ids, return_dict=True)["loss"]) for _ in range(steps)]
    return model, np.array(losses)


def test_a_power_of_two_loss_scale_changes_nothing_in_float32():
    _, plain = run()
    model, scaled = run(initial_scale=2.0**12)
    np.testing.assert_allclose(scaled, plain, rtol=1e-5)
    assert float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale)) == 2.0**12
    assert scaled[-1] < scaled[0]


def test_overflowing_steps_are_skipped_and_halve_the_scale():
    keras.utils.set_random_seed(0)
    untouched = [w.numpy().copy() for w in tiny_model().trainable_weights]
    # 2^127 times the gradients overflows float32: the first steps must change no weight.
    model, losses = run(initial_scale=2.0**127, steps=1)
    assert all(np.array_equal(w.numpy(), u) for w, u in zip(model.trainable_weights, untouched))
    assert float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale)) == 2.0**126
    model, losses = run(initial_scale=2.0**127, steps=12)
    scale = float(keras.ops.convert_to_numpy(model.optimizer.dynamic_scale))
    # It came down (one halving per skipped step) to where gradients are finite, and stayed.
    assert scale < 2.0**126 and np.log2(scale) == int(np.log2(scale)), scale
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
