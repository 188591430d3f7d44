"""One epoch of training on tiny towers, started from every supported data layout."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import kclip
from data_fixtures import make_custom, make_flickr8k_original, make_kaggle_flickr8k, make_kaggle_flickr30k, make_karpathy
from helpers import CAPTIONS, TINY_DISTILBERT, TINY_RESNET, tiny_config

REPO = Path(__file__).resolve().parent.parent
SOURCES = {
    "kaggle_flickr8k": ("flickr8k", make_kaggle_flickr8k, {}),
    "flickr8k_original": ("flickr8k", make_flickr8k_original, {}),
    "kaggle_flickr30k": ("flickr30k", make_kaggle_flickr30k, {}),
    "karpathy": ("flickr8k", make_karpathy, {}),
    "custom_csv": ("custom", make_custom, {"image_column": "file", "caption_column": "text"}),
}


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_one_epoch_from_each_source(source, tmp_path):
    dataset_name, make_fixture, columns = SOURCES[source]
    fixture = make_fixture(tmp_path)
    config = tiny_config(tmp_path / "run", fixture.data_dir)
    # The fixtures are deliberately dirty and tiny: allow their bad lines, batch one image.
    config = replace(
        config,
        data=replace(config.data, dataset_name=dataset_name, train_batch_size=1, val_batch_size=1,
                     max_bad_fraction=1.0, cache=False, **columns),
    )
    model, history, _ = kclip.train(config, verbose=0)
    assert len(history.history["loss"]) == 1
    assert (tmp_path / "run" / "model.keras").exists()
    if source == "kaggle_flickr8k":
        report = (tmp_path / "run" / "skipped_items.txt").read_text(encoding="utf-8")
        assert all(name in report for name in fixture.bad_files + fixture.missing_images)


@pytest.mark.parametrize("make_fixture", [make_flickr8k_original, make_kaggle_flickr8k], ids=["original", "kaggle"])
def test_flickr8k_config_trains_from_local_presets(make_fixture, tmp_path):
    """scripts/train.py with configs/flickr8k.yaml on either Flickr8k layout, presets in local folders."""
    import keras_hub

    from kclip.models.towers import build_word_vocabulary

    fixture = make_fixture(tmp_path)
    image_preset, text_preset = tmp_path / "resnet_preset", tmp_path / "distilbert_preset"
    keras_hub.models.ResNetBackbone(**TINY_RESNET).save_to_preset(image_preset)
    keras_hub.layers.ImageConverter(image_size=(32, 32), scale=1 / 255.0).save_to_preset(image_preset)
    tokenizer = keras_hub.tokenizers.DistilBertTokenizer(vocabulary=build_word_vocabulary(CAPTIONS))
    keras_hub.models.DistilBertBackbone(**TINY_DISTILBERT, vocabulary_size=tokenizer.vocabulary_size()).save_to_preset(
        text_preset
    )
    tokenizer.save_to_preset(text_preset)
    command = [
        sys.executable, str(REPO / "scripts" / "train.py"),
        "--config", str(REPO / "configs" / "flickr8k.yaml"),
        "--data.dir", str(fixture.data_dir),
        "--model.image_encoder", str(image_preset),
        "--model.text_encoder", str(text_preset),
        "--model.image_size", "32",
        "--data.train_batch_size", "2",
        "--data.max_length", "16",
        "--data.max_bad_fraction", "0.5",  # the fixtures are deliberately dirty
        "--trainer.max_epochs", "1",
        "--trainer.precision", "float32",
        "--trainer.logger", "none",
        "--output_dir", str(tmp_path / "run"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "KERAS_BACKEND": "torch"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    if make_fixture is make_flickr8k_original:
        assert "split by official lists" in result.stdout
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["image_encoder"] == str(image_preset)
    assert (tmp_path / "run" / "model.keras").exists()
