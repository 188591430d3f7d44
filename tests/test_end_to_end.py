"""Train, save, index and search with real (tiny) models, offline."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import kclip
from helpers import tiny_config, tiny_model

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (240, 230, 30)}


def test_training_run_writes_a_reloadable_model_and_test_recall(tmp_path):
    config = tiny_config(tmp_path / "run", tmp_path / "data", max_epochs=2)
    model, history, test_metrics = kclip.train(config, verbose=0)
    assert len(history.history["loss"]) == 2
    assert {"t2i_accuracy", "i2t_accuracy", "val_loss"} <= set(history.history)
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved["t2i_r@5"] == pytest.approx(test_metrics["t2i_r@5"])
    assert 0.0 <= saved["t2i_r@5"] <= 1.0 and saved["num_images"] > 0
    reloaded = kclip.load_model(tmp_path / "run" / "model.keras")
    captions = ["a red circle", "two shapes"]
    assert np.array_equal(reloaded.encode_text(captions), model.encode_text(captions))
    # The generated set went through the Kaggle Flickr8k layout on disk.
    assert (tmp_path / "data" / "captions.txt").read_text().startswith("image,caption")


@pytest.fixture(scope="module")
def colour_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, rgb in COLOURS.items():
        Image.new("RGB", (40, 30), rgb).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def colour_model():
    """A tiny model trained on four solid colours until it tells them apart."""
    keras.utils.set_random_seed(3)
    captions = [f"a {name} photo" for name in COLOURS]
    model = tiny_model(captions=captions)
    images = np.stack([np.full((32, 32, 3), rgb, dtype="uint8") for rgb in COLOURS.values()])
    for _ in range(40):
        model.train_on_batch({"images": images, "captions": np.array(captions)}, np.arange(4))
    return model


def test_search_finds_the_right_photo(colour_model, colour_photos, tmp_path):
    index = kclip.build_index(colour_model, colour_photos, tmp_path / "index", progress=False)
    assert len(index) == 4
    for name in COLOURS:
        results = kclip.search(f"a {name} photo", model=colour_model, index=index, top_k=2)
        assert results[0].path.name == f"{name}.png", (name, results)
        assert results[0].score >= results[1].score
    by_example = kclip.search(colour_photos / "blue.png", model=colour_model, index=index, top_k=1)
    assert by_example[0].path.name == "blue.png"


def test_index_of_another_model_is_refused(colour_model, colour_photos, tmp_path):
    index = kclip.build_index(colour_model, colour_photos, tmp_path / "index", progress=False)
    other = tiny_model(captions=["a red photo"])
    with pytest.raises(ValueError) as error:
        kclip.search("a red photo", model=other, index=index)
    assert colour_model.fingerprint() in str(error.value)
    assert other.fingerprint() in str(error.value)


def test_empty_query_is_refused(colour_model, colour_photos, tmp_path):
    index = kclip.build_index(colour_model, colour_photos, tmp_path / "index", progress=False)
    with pytest.raises(ValueError):
        kclip.search("  ", model=colour_model, index=index)
