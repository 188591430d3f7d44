"""A `.keras` file written before the package move (commit c98c23d) still loads and embeds the same."""

from pathlib import Path

import numpy as np

import kclip

FIXTURES = Path(__file__).parent / "fixtures"


def test_model_saved_by_the_flat_layout_loads_and_embeds_identically():
    expected = np.load(FIXTURES / "legacy_demo_model_expected.npz")
    model = kclip.load_model(FIXTURES / "legacy_demo_model.keras")
    assert isinstance(model, kclip.DualEncoder)
    text = np.asarray(model.encode_text([str(caption) for caption in expected["captions"]]))
    images = np.asarray(model.encode_image(list(expected["images"])))
    # Same weights, same float32 graph: only summation order may differ.
    np.testing.assert_allclose(text, expected["text"], atol=1e-5)
    np.testing.assert_allclose(images, expected["image"], atol=1e-5)
