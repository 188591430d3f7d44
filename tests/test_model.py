import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from helpers import CAPTIONS, fixed_batch, tiny_model, tiny_model_config

# Also run on JAX and TensorFlow by .ci/run (KCLIP_TEST_BACKEND).
pytestmark = pytest.mark.backend_neutral

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_losses(model, steps=25):
    inputs, image_ids = fixed_batch()
    return [float(model.train_on_batch(inputs, image_ids, return_dict=True)["loss"]) for _ in range(steps)]


def test_train_step_lowers_the_loss_on_a_fixed_batch():
    keras.utils.set_random_seed(0)
    losses = train_losses(tiny_model())
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


@pytest.mark.cross_backend  # starts TensorFlow itself; the TensorFlow run of the suite covers it
def test_train_step_lowers_the_loss_on_the_tensorflow_backend():
    script = textwrap.dedent(
        """
        import keras, numpy as np
        from test_model import train_losses
        from helpers import tiny_model
        assert keras.config.backend() == "tensorflow"
        keras.utils.set_random_seed(0)
        losses = train_losses(tiny_model())
        print("LOSSES", np.mean(losses[:3]), np.mean(losses[-3:]))
        """
    )
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": os.path.join(REPO, "tests")}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    first, last = map(float, result.stdout.split("LOSSES")[1].split())
    assert last < 0.5 * first


def test_tower_learning_rates_and_freezing():
    keras.utils.set_random_seed(0)
    model = tiny_model()
    model.compile(learning_rate=1e-2, image_learning_rate=1e-3, text_learning_rate=1e-4)
    backbone = model.backbone
    groups = {
        "image": backbone.image_encoder.trainable_variables,
        "text": backbone.text_encoder.trainable_variables,
        "head": backbone.image_head.trainable_variables,
    }
    before = {name: [v.numpy().copy() for v in variables] for name, variables in groups.items()}
    inputs, image_ids = fixed_batch()
    model.train_on_batch(inputs, image_ids)
    # Adam's first step moves each weight by about the learning rate.
    for name, rate in (("image", 1e-3), ("text", 1e-4), ("head", 1e-2)):
        step = max(np.abs(v.numpy() - b).max() for v, b in zip(groups[name], before[name]))
        assert rate * 0.5 < step < rate * 1.5, (name, step)

    frozen = tiny_model(image_encoder_trainable=False)
    weights = [w.numpy().copy() for w in frozen.backbone.image_encoder.weights]
    frozen.train_on_batch(inputs, image_ids)
    assert all(np.array_equal(w.numpy(), b) for w, b in zip(frozen.backbone.image_encoder.weights, weights))


def test_saved_model_round_trips_exactly_in_a_fresh_process(tmp_path):
    from kclip.training.export import export_model

    keras.utils.set_random_seed(1)
    model = tiny_model()
    inputs, image_ids = fixed_batch()
    model.train_on_batch(inputs, image_ids)
    path = export_model(model, tmp_path / "model.keras")
    image_path = tmp_path / "image.npy"
    np.save(image_path, inputs["images"][0])
    expected_text = model.encode_text(CAPTIONS)
    expected_image = model.encode_image([inputs["images"][0]])

    script = textwrap.dedent(
        f"""
        import numpy as np, keras
        import kclip
        model = keras.saving.load_model({str(path)!r})
        assert type(model).__name__ == "DualEncoder", type(model)
        np.save({str(tmp_path / 'text.npy')!r}, model.encode_text({CAPTIONS!r}))
        np.save({str(tmp_path / 'image_out.npy')!r}, model.encode_image([np.load({str(image_path)!r})]))
        print("FINGERPRINT", model.fingerprint())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "text.npy"), expected_text)
    assert np.array_equal(np.load(tmp_path / "image_out.npy"), expected_image)
    assert result.stdout.split("FINGERPRINT")[1].strip() == model.fingerprint()


def test_exported_file_holds_no_optimizer_state(tmp_path):
    import zipfile

    from kclip.training.export import export_model

    model = tiny_model()
    inputs, image_ids = fixed_batch()
    model.train_on_batch(inputs, image_ids)
    model.save(tmp_path / "with_optimizer.keras")
    export_model(model, tmp_path / "model.keras")
    sizes = {}
    for name in ("with_optimizer", "model"):
        with zipfile.ZipFile(tmp_path / f"{name}.keras") as archive:
            sizes[name] = archive.getinfo("model.weights.h5").file_size
    # Adam keeps two moments per weight: without them the weights file is about a third.
    assert sizes["model"] < 0.5 * sizes["with_optimizer"]
    assert not list(tmp_path.glob(".*partial*"))


def test_towers_load_from_local_preset_folders(tmp_path):
    import keras_hub

    from helpers import TINY_DISTILBERT, TINY_RESNET
    from kclip.models.towers import build_dual_encoder, build_word_vocabulary

    image_dir, text_dir = tmp_path / "tiny_resnet", tmp_path / "tiny_distilbert"
    resnet = keras_hub.models.ResNetBackbone(**TINY_RESNET)
    resnet.save_to_preset(image_dir)
    keras_hub.layers.ImageConverter(image_size=(48, 48), scale=1 / 255.0).save_to_preset(image_dir)
    tokenizer = keras_hub.tokenizers.DistilBertTokenizer(vocabulary=build_word_vocabulary(CAPTIONS))
    distilbert = keras_hub.models.DistilBertBackbone(
        **{**TINY_DISTILBERT, "vocabulary_size": tokenizer.vocabulary_size()}
    )
    distilbert.save_to_preset(text_dir)
    tokenizer.save_to_preset(text_dir)

    config = tiny_model_config(
        image_encoder=str(image_dir),
        image_encoder_config=None,
        text_encoder=str(text_dir),
        text_encoder_config=None,
        image_size=32,
    )
    model = build_dual_encoder(config, sequence_length=8)
    for loaded, saved in zip(model.backbone.image_encoder.weights, resnet.weights):
        assert np.array_equal(loaded.numpy(), saved.numpy())
    for loaded, saved in zip(model.backbone.text_encoder.weights, distilbert.weights):
        assert np.array_equal(loaded.numpy(), saved.numpy())
    # channels_first is the torch default, channels_last the others'; the weights are the same.
    expected_format = "channels_first" if keras.config.backend() == "torch" else "channels_last"
    assert model.backbone.image_data_format == expected_format
    assert model.image_size == 32
    assert model.preprocessor.image_converter.scale == pytest.approx(1 / 255.0)
    embeddings = model.encode_text(["a red circle"])
    assert embeddings.shape == (1, 16)


def test_encode_rejects_an_empty_query():
    model = tiny_model()
    with pytest.raises(ValueError, match="Empty caption"):
        model.encode_text(["a red circle", "   "])


def test_embeddings_are_unit_length_and_float32():
    model = tiny_model()
    inputs, _ = fixed_batch()
    for embeddings in (model.encode_text(CAPTIONS), model.encode_image(list(inputs["images"]))):
        assert embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)


def test_dynamic_padding_cuts_a_batch_to_its_longest_caption_and_keeps_the_embeddings():
    model = tiny_model(sequence_length=32)
    captions = ["a red circle", " ".join(["a red circle"] * 3)]  # 5 and 11 tokens with [CLS] and [SEP]
    packed = model.preprocessor({"captions": captions})
    assert tuple(packed["token_ids"].shape) == (2, 16)  # 11, rounded up to a multiple of 8
    np.testing.assert_array_equal(np.asarray(packed["padding_mask"]).sum(axis=1), [5, 11])

    dynamic = model.encode_text(captions)
    model.preprocessor.dynamic_padding = False
    assert tuple(model.preprocessor({"captions": captions})["token_ids"].shape) == (2, 32)
    np.testing.assert_allclose(dynamic, model.encode_text(captions), atol=1e-5)


def test_mean_text_pooling_averages_the_real_tokens_only():
    keras.utils.set_random_seed(3)
    model = tiny_model(text_pooling="mean")
    backbone = model.backbone
    packed = model.preprocessor({"captions": ["a red circle", "a blue square a green triangle"]})
    token_ids, padding_mask = np.asarray(packed["token_ids"]), np.asarray(packed["padding_mask"])
    assert padding_mask.sum(axis=1).tolist() == [5, 8]  # the short caption has padding to ignore

    sequence = keras.ops.convert_to_numpy(
        backbone.text_encoder({"token_ids": token_ids, "padding_mask": padding_mask})
    )
    mask = padding_mask[:, :, None].astype("float32")
    expected = keras.ops.convert_to_numpy(backbone.text_head((sequence * mask).sum(1) / mask.sum(1)))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    got = keras.ops.convert_to_numpy(backbone.embed_text(token_ids, padding_mask))
    np.testing.assert_allclose(got, expected, atol=1e-5)

    keras.utils.set_random_seed(3)  # the same weights, pooled from the first token
    first = tiny_model(text_pooling="first").backbone
    for a, b in zip(first.text_encoder.get_weights() + first.text_head.get_weights(),
                    backbone.text_encoder.get_weights() + backbone.text_head.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(keras.ops.convert_to_numpy(first.embed_text(token_ids, padding_mask)), got, atol=1e-3)


def test_text_pooling_is_saved_with_the_model_and_checked(tmp_path):
    model = tiny_model(text_pooling="mean")
    path = tmp_path / "mean.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.backbone.text_pooling == "mean"
    np.testing.assert_allclose(loaded.encode_text(CAPTIONS), model.encode_text(CAPTIONS), atol=1e-6)
    with pytest.raises(ValueError, match="text_pooling"):
        tiny_model(text_pooling="max")
