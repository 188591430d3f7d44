"""Mixed precision must not change what is learned."""

import keras
import numpy as np
import pytest

from helpers import CAPTIONS, tiny_model
from kclip.utils.precision import resolve_precision

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral

# The colours of helpers.CAPTIONS: red, blue, green, yellow.
COLOURS = [(230, 30, 30), (30, 30, 230), (30, 200, 30), (240, 230, 30)]


def loss_curve(policy, steps=50):
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(7)
        model = tiny_model(captions=CAPTIONS)
        # A learnable sequence: each batch shows the four colours in a new order, with noise.
        rng = np.random.default_rng(0)
        batches = []
        for _ in range(5):
            order = rng.permutation(4)
            images = np.stack([np.full((32, 32, 3), COLOURS[i], dtype="float32") for i in order])
            images = np.clip(images + rng.normal(0, 20, images.shape), 0, 255).astype("uint8")
            batches.append(({"images": images, "captions": np.array(CAPTIONS)[order]}, np.arange(4)))
        return np.array(
            [float(model.train_on_batch(*batches[step % 5], return_dict=True)["loss"]) for step in range(steps)]
        )
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.xfail(
    keras.config.backend() == "tensorflow", strict=False,
    reason="open: on TensorFlow (XLA, CPU) the bf16 curve's first steps stray further from float32 "
    "(mean gap 0.19 against the 0.1 bound) before both converge; not yet explained",
)
def test_bfloat16_loss_curve_matches_float32_within_bfloat16_tolerance():
    float32 = loss_curve("float32")
    bfloat16 = loss_curve("mixed_bfloat16")
    assert float32[-5:].mean() < 0.5 * float32[:5].mean()  # it does learn
    # bfloat16 keeps 8 bits of mantissa (relative error ~0.4% per op); over 50 steps the curves
    # may drift apart a little but must tell the same story.
    assert np.abs(bfloat16 - float32).mean() < 0.1 * float32.mean()
    assert bfloat16[-5:].mean() == pytest.approx(float32[-5:].mean(), rel=0.25, abs=0.05)


def test_precision_auto_is_bfloat16_on_a_cpu():
    assert resolve_precision("auto") == "mixed_bfloat16"
    assert resolve_precision("float32") == "float32"


@pytest.mark.skipif(
    keras.config.backend() == "jax",
    reason="XLA on the CPU has no float16 matmul with float32 accumulation; "
    "tests/test_loss_scaling.py checks JAX's loss scaling in float32",
)
def test_float16_with_loss_scaling_learns_like_float32():
    # mixed_float16 is the GPU default: Keras wraps the optimizer in LossScaleOptimizer, whose
    # first steps overflow and are skipped while the scale comes down.
    float32 = loss_curve("float32")
    float16 = loss_curve("mixed_float16")
    assert np.isfinite(float16).all()
    assert float16[-5:].mean() < 0.5 * float16[:5].mean()
    assert float16[-5:].mean() == pytest.approx(float32[-5:].mean(), rel=0.25, abs=0.05)
