"""Train, save, index and search with real (tiny) models, offline."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

import kclip
import recall_reference
from data_fixtures import write_karpathy_json
from helpers import tiny_config, tiny_model
from kclip.data.sources import load_records

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral

COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 230), "yellow": (240, 230, 30)}


def test_training_run_writes_a_reloadable_model_and_test_recall(tmp_path):
    config = tiny_config(tmp_path / "run", tmp_path / "data", max_epochs=2)
    model, history, test_metrics = kclip.train(config, verbose=0)
    assert len(history.history["loss"]) == 2
    assert {"t2i_accuracy", "i2t_accuracy", "val_loss"} <= set(history.history)
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    reloaded = kclip.load_model(tmp_path / "run" / "model.keras")
    captions = ["a red circle", "two shapes"]
    reloaded_text, trained_text = reloaded.encode_text(captions), model.encode_text(captions)
    if keras.config.backend() == "tensorflow":
        # On TensorFlow without oneDNN (an AVX2-only CPU) the two differed by about 1e-7, float32
        # rounding; torch and JAX give the same bits.
        np.testing.assert_allclose(reloaded_text, trained_text, rtol=0, atol=1e-6)
    else:
        assert np.array_equal(reloaded_text, trained_text)
    # test_metrics.json holds the test split's recall of the saved model, recomputed here independently.
    test_images = load_records(config.data, config.output_dir, seed=config.trainer.seed).for_split("test")
    owners = [number for number, image in enumerate(test_images) for _ in image.captions]
    expected = recall_reference.recall(
        reloaded.encode_image([image.image_path for image in test_images], batch_size=config.data.val_batch_size),
        reloaded.encode_text([caption for image in test_images for caption in image.captions]), owners)
    assert saved["num_images"] == len(test_images) > 0 and saved["num_captions"] == len(owners)
    for key, value in expected.items():
        assert saved[key] == pytest.approx(value, abs=1e-9) == test_metrics[key], key
    # The generated set went through the Kaggle Flickr8k layout on disk.
    assert (tmp_path / "data" / "captions.txt").read_text().startswith("image,caption")


LEARNABLE = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220), "yellow": (230, 220, 40),
             "cyan": (40, 210, 220), "magenta": (210, 40, 210), "white": (235, 235, 235), "black": (20, 20, 20)}


TRAIN_TEMPLATES = ["a picture in", "all", "plain", "only", "a square of", "flat", "simply", "mostly", "just",
                   "a patch of", "a field of", "pure", "coloured"]


def write_learnable_set(data_dir, train_per_colour=1, seed=0):
    """A Karpathy-layout set that a tiny model can learn in a few epochs: the caption names the colour.

    Every image is its colour plus noise, so no two files are alike. Each split holds one image per
    colour: a training batch of 8 then holds every colour once (no same-colour false negatives), and
    text->image retrieval over the test split has exactly one right answer among 8.
    """
    rng = np.random.default_rng(seed)
    (data_dir / "Images").mkdir(parents=True)
    entries = []
    for name, rgb in LEARNABLE.items():
        for number, split in enumerate(["train"] * train_per_colour + ["val", "test"]):
            pixels = np.clip(np.asarray(rgb) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype("uint8")
            file_name = f"{name}-{number}.png"
            Image.fromarray(pixels).save(data_dir / "Images" / file_name)
            captions = [f"a {name} photo", f"something {name}", f"the colour {name}"]
            if split == "train":  # more rows per epoch: more steps for the same per-epoch overhead
                captions += [f"{template} {name}" for template in TRAIN_TEMPLATES]
            entries.append((file_name, split, captions))
    write_karpathy_json(data_dir / "dataset_flickr8k.json", entries)


def test_a_short_training_run_learns(tmp_path):
    """Recall after a short run, far above chance.

    Test split: 8 images, one per colour, 3 captions each (24 queries). Chance text->image R@1 is
    1/8 per query. We ask for R@1 >= 0.75 (18 of 24). With an untrained model the three captions of
    a colour share their words, so hits come in groups; even counting the 8 colours as independent
    trials at p = 1/8, P(at least 6 of 8) = 8.5e-5, so a pass is not luck. A model that did not learn
    (e.g. a broken loss sign or frozen towers) fails it. This run reached R@1 = 1.0 both ways on the
    2-core AMD EPYC (4 epochs gave 0.875 / 0.75), so the bound leaves two misses of margin.
    """
    data_dir = tmp_path / "colours"
    write_learnable_set(data_dir)
    # Every caption is a row (8 images x 16 captions: 16 steps of 8 per epoch), so that few epochs
    # (little per-epoch overhead: backups, logs) give enough steps.
    config = tiny_config(tmp_path / "run", data_dir, max_epochs=6, seed=0, eval_every_n_epochs=6,
                         lr_schedule="none")
    config.data.dataset_name = "flickr8k"
    config.data.train_batch_size = 8
    config.data.captions = "all"
    config.data.tfds = False
    _, _, test_metrics = kclip.train(config, verbose=0)
    assert test_metrics["num_images"] == 8 and test_metrics["num_captions"] == 24
    assert test_metrics["t2i_r@1"] >= 0.75, test_metrics
    assert test_metrics["i2t_r@1"] >= 0.75, test_metrics


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
