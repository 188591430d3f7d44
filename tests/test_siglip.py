"""model.loss=siglip: the pairwise sigmoid loss, its learnable scale and bias, and a model trained with it."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import kclip
from helpers import tiny_config, tiny_model
from kclip.data.sources import load_records
from kclip.models import losses
from kclip.models.layers import SigmoidLogits

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral

RNG = np.random.default_rng(5)
IMAGES = RNG.normal(size=(6, 4))
TEXTS = RNG.normal(size=(6, 4))
IMAGES /= np.linalg.norm(IMAGES, axis=1, keepdims=True)
TEXTS /= np.linalg.norm(TEXTS, axis=1, keepdims=True)
IDS = np.array([3, 8, 3, 5, 9, 8])  # rows 0 and 2, 1 and 5 show the same image


def numpy_sigmoid_loss(images, texts, ids, scale, bias):
    """Zhai et al. 2023, eq. 1: -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i . y_j + b)), z = +-1."""
    logits = scale * texts @ images.T + bias
    labels = np.where(ids[:, None] == ids[None, :], 1.0, -1.0)
    return np.sum(np.logaddexp(0.0, -labels * logits)) / len(texts)


def layer_with(scale, bias):
    layer = SigmoidLogits()
    layer.build()
    layer.log_logit_scale.assign(math.log(scale))
    layer.logit_bias.assign(bias)
    return layer


def test_sigmoid_loss_matches_numpy_at_a_learnt_temperature_and_bias():
    layer = layer_with(scale=3.5, bias=-1.25)
    logits = layer(IMAGES.astype("float32"), TEXTS.astype("float32"))
    loss = float(ops.convert_to_numpy(losses.sigmoid_loss(logits, IDS)))
    assert loss == pytest.approx(numpy_sigmoid_loss(IMAGES, TEXTS, IDS, 3.5, -1.25), rel=1e-5)
    # Captions of one image are positives: with distinct ids the same logits give another loss.
    distinct = float(ops.convert_to_numpy(losses.sigmoid_loss(logits, np.arange(6))))
    assert distinct == pytest.approx(numpy_sigmoid_loss(IMAGES, TEXTS, np.arange(6), 3.5, -1.25), rel=1e-5)
    assert abs(distinct - loss) > 0.1


def test_sigmoid_logits_start_as_in_the_paper():
    layer = SigmoidLogits()
    layer.build()
    assert float(ops.convert_to_numpy(layer.log_logit_scale)) == pytest.approx(math.log(10.0))
    assert float(ops.convert_to_numpy(layer.logit_bias)) == pytest.approx(-10.0)


def test_row_blocks_average_to_the_whole_batch_loss():
    """What each data-parallel rank computes (its rows against every column), averaged over two
    ranks, is the loss of the whole batch, for both losses."""
    images, texts = IMAGES.astype("float32"), TEXTS.astype("float32")
    layer = layer_with(scale=2.0, bias=0.5)
    halves = [slice(0, 3), slice(3, 6)]
    sigmoid = np.mean([float(ops.convert_to_numpy(losses.sigmoid_loss(layer(images, texts[rows]), IDS[rows], IDS)))
                       for rows in halves])
    assert sigmoid == pytest.approx(numpy_sigmoid_loss(IMAGES, TEXTS, IDS, 2.0, 0.5), rel=1e-5)
    scale = 7.0
    clip = np.mean([float(ops.convert_to_numpy(losses.clip_loss_of_rows(
        scale * texts[rows] @ images.T, scale * images[rows] @ texts.T, IDS[rows], IDS))) for rows in halves])
    whole = float(ops.convert_to_numpy(losses.clip_loss(scale * texts @ images.T, IDS)))
    assert clip == pytest.approx(whole, rel=1e-5)


def test_scale_and_bias_are_saved_and_exported(tmp_path):
    keras.utils.set_random_seed(0)
    model = tiny_model(loss="siglip")
    model.sigmoid_logits.log_logit_scale.assign(math.log(4.0))
    model.sigmoid_logits.logit_bias.assign(-3.0)
    model.save(tmp_path / "model.keras")
    kclip.export_model(model, tmp_path / "exported.keras")
    for name in ("model.keras", "exported.keras"):
        loaded = kclip.load_model(tmp_path / name)
        assert loaded.contrastive_loss == "siglip"
        assert float(ops.convert_to_numpy(loaded.sigmoid_logits.logit_scale)) == pytest.approx(4.0, rel=1e-6)
        assert float(ops.convert_to_numpy(loaded.sigmoid_logits.logit_bias)) == pytest.approx(-3.0)
        assert loaded.fingerprint() == model.fingerprint()


def test_a_siglip_run_trains_evaluates_indexes_and_searches(tmp_path):
    config = tiny_config(tmp_path / "run", tmp_path / "data", max_epochs=2)
    config.model.loss = "siglip"
    _, history, test_metrics = kclip.train(config, verbose=0)
    # The loss fell, and the learnable bias moved away from its start.
    assert history.history["loss"][-1] < history.history["loss"][0]
    model = kclip.load_model(tmp_path / "run" / "model.keras")
    assert float(ops.convert_to_numpy(model.sigmoid_logits.logit_bias)) != pytest.approx(-10.0, abs=1e-4)
    test_images = load_records(config.data, config.output_dir, seed=config.trainer.seed).for_split("test")
    metrics = kclip.evaluate(model, test_images, batch_size=16)
    for key in ("t2i_r@1", "t2i_r@5", "i2t_r@1", "rsum"):
        assert metrics[key] == pytest.approx(test_metrics[key], abs=1e-9), key
    folder = tmp_path / "photos"
    folder.mkdir()
    for image in test_images[:6]:
        (folder / image.image_path.name).write_bytes(image.image_path.read_bytes())
    index = kclip.build_index(model, folder, tmp_path / "index", progress=False)
    assert len(index) == 6
    query = test_images[0].captions[0]
    paths = sorted(folder.iterdir())
    scores = model.encode_image([str(path) for path in paths]) @ model.encode_text([query])[0]
    results = kclip.search(query, model=model, index=index, top_k=3)
    assert results[0].path.name == paths[int(np.argmax(scores))].name
    # The index keeps float16 vectors by default: scores agree to float16's rounding.
    assert results[0].score == pytest.approx(float(scores.max()), abs=2e-3)
