"""A `.keras` file written before the package move (commit c98c23d) still loads and embeds the same."""

from pathlib import Path

import keras
import numpy as np
import pytest

import kclip

# The file was saved on torch, with a channels-first image tower. TensorFlow's CPU convolutions refuse
# channels-first input without oneDNN (AVX2-only CPUs), so on TensorFlow without a GPU the tower is
# rebuilt channels-last and must still embed as torch did. .ci/run runs this on JAX and TensorFlow too.
pytestmark = pytest.mark.backend_neutral

FIXTURES = Path(__file__).parent / "fixtures"


def tf_gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def test_model_saved_by_the_flat_layout_loads_and_embeds_identically():
    expected = np.load(FIXTURES / "legacy_demo_model_expected.npz")
    model = kclip.load_model(FIXTURES / "legacy_demo_model.keras")
    assert isinstance(model, kclip.DualEncoder)
    runs_channels_first = keras.config.backend() != "tensorflow" or bool(tf_gpus())
    assert model.backbone.image_data_format == ("channels_first" if runs_channels_first else "channels_last")
    text = np.asarray(model.encode_text([str(caption) for caption in expected["captions"]]))
    images = np.asarray(model.encode_image(list(expected["images"])))
    # Same weights, same float32 graph: only summation order may differ.
    np.testing.assert_allclose(text, expected["text"], atol=1e-5)
    np.testing.assert_allclose(images, expected["image"], atol=1e-5)
