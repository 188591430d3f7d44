"""Towers from the formats users hold: Hugging Face and timm folders, through kclip's builders.

Each folder is written by the library that owns the format (transformers' save_pretrained,
timm's save_for_hf) with random weights, and kclip's features are checked against that
library's own PyTorch forward. timm imports torchvision, which fails where its wheel was
built for another torch (a CUDA torchvision beside a CPU torch); the timm-format folder is
then written from `TimmLayoutResNet`, timm's ResNet module for module.
"""

import os

import numpy as np
import pytest
from keras import ops

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from kclip.models.towers import (  # noqa: E402
    build_dual_encoder,
    build_image_converter,
    build_image_encoder,
    build_text_encoder_and_tokenizer,
    resolve_alias,
    resolve_preset,
)
from tests.helpers import tiny_model_config  # noqa: E402
from tests.torch_references import (  # noqa: E402
    TimmLayoutResNet,
    import_transformers,
    randomize_batch_norm,
    save_timm_folder,
    write_hf_distilbert,
)

transformers = import_transformers()


def import_timm():
    """timm, or a skip saying why it does not import; KCLIP_REQUIRE_TIMM=1 (scripts/test_timm.sh) fails instead."""
    try:
        import timm
    except Exception as error:  # RuntimeError when torchvision's C++ ops do not load
        message = f"timm cannot be imported here ({type(error).__name__}: {error}); see scripts/test_timm.sh"
        if os.environ.get("KCLIP_REQUIRE_TIMM") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return timm

CAPTIONS = ["a red circle", "the dog runs on the beach", "blue squares", "a café"]


def write_timm_resnet(folder, architecture="resnet50", seed=0, writer="reference"):
    """A random-init ResNet saved in timm's Hugging Face Hub layout (config.json + safetensors).

    Returns a callable: NCHW float tensor -> globally average-pooled features.
    """
    torch.manual_seed(seed)
    if writer == "timm":
        timm = import_timm()
        model = randomize_batch_norm(timm.create_model(architecture, pretrained=False, num_classes=0)).eval()
        timm.models.save_for_hf(model, str(folder), safe_serialization=True)
        return model
    model = randomize_batch_norm(TimmLayoutResNet(architecture), seed).eval()
    save_timm_folder(model, folder)
    return model


def test_hf_distilbert_folder_gives_transformers_cls_features(tmp_path):
    folder = tmp_path / "distilbert"
    reference, hf_tokenizer = write_hf_distilbert(folder)
    encoder, tokenizer = build_text_encoder_and_tokenizer(str(folder), dtype="float32")

    hf_batch = hf_tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    token_ids = np.asarray(hf_batch["input_ids"])
    for caption, row, mask in zip(CAPTIONS, token_ids, np.asarray(hf_batch["attention_mask"])):
        ids = np.asarray(tokenizer(caption))
        np.testing.assert_array_equal(ids, row[mask == 1][1:-1])  # same tokens, no [CLS]/[SEP]
    padding_mask = np.asarray(hf_batch["attention_mask"])
    features = encoder({"token_ids": token_ids, "padding_mask": padding_mask})
    kclip_cls = ops.convert_to_numpy(features)[:, 0]
    with torch.no_grad():
        expected = reference(**hf_batch).last_hidden_state[:, 0].numpy()
    assert np.abs(expected).max() > 0.1  # a real signal, not all zeros
    np.testing.assert_allclose(kclip_cls, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("writer", ["timm", "reference"])
def test_timm_resnet50_folder_gives_timm_pooled_features(tmp_path, writer):
    folder = tmp_path / "resnet50"
    reference = write_timm_resnet(folder, writer=writer)
    encoder = build_image_encoder(str(folder), dtype="float32")
    converter = build_image_converter(str(folder), from_config=False, image_size=64)

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 64, 64, 3)).astype("float32")
    pixels = ops.convert_to_numpy(converter(images))  # same size: resizing leaves pixels as they are
    if encoder.data_format == "channels_first":
        pixels = pixels.transpose(0, 3, 1, 2)
    features = ops.convert_to_numpy(encoder(pixels))
    axes = (2, 3) if encoder.data_format == "channels_first" else (1, 2)
    kclip_pooled = features.mean(axis=axes)

    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
    torch_input = torch.from_numpy(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        expected = reference(torch_input).numpy()
    assert expected.shape == (2, 2048)
    # Pooled values reach ~250 in float32: different conv kernels (real timm's torch release) round
    # apart by up to ~2e-4 relative.
    np.testing.assert_allclose(kclip_pooled, expected, atol=1e-4, rtol=1e-3)


def test_dual_encoder_from_hf_and_timm_folders_checks_embedding_dims(tmp_path):
    write_hf_distilbert(tmp_path / "text")
    write_timm_resnet(tmp_path / "image", architecture="resnet18")
    config = tiny_model_config(
        image_encoder=str(tmp_path / "image"), image_encoder_config=None,
        text_encoder=str(tmp_path / "text"), text_encoder_config=None,
        image_embedding_dims=512, text_embedding_dims=32,
    )
    model = build_dual_encoder(config, sequence_length=16)
    embeddings = model.encode_text(CAPTIONS)
    assert ops.convert_to_numpy(embeddings).shape == (4, config.projection_dims)

    config.image_embedding_dims = 2048
    with pytest.raises(ValueError, match=r"image_embedding_dims is 2048.*gives 512-wide"):
        build_dual_encoder(config, sequence_length=16)
    config.image_embedding_dims, config.text_embedding_dims = None, 768
    with pytest.raises(ValueError, match=r"text_embedding_dims is 768.*gives 32-wide"):
        build_dual_encoder(config, sequence_length=16)


def test_lightning_aliases_map_to_keras_hub_presets():
    assert resolve_alias("resnet50", "image") == "resnet_50_imagenet"
    assert resolve_alias("distilbert-base-uncased", "text") == "distil_bert_base_en_uncased"
    with pytest.raises(ValueError, match=r"'vit_base_patch16_224' has no matching KerasHub preset"):
        resolve_alias("vit_base_patch16_224", "image")


def test_preset_dir_override_and_folder_checks(tmp_path, monkeypatch):
    (tmp_path / "resnet_50_imagenet").mkdir()
    monkeypatch.setenv("KCLIP_PRESET_DIR", str(tmp_path))
    assert resolve_preset("resnet_50_imagenet") == str(tmp_path / "resnet_50_imagenet")
    assert resolve_preset("distil_bert_base_en_uncased") == "distil_bert_base_en_uncased"
    assert resolve_preset("hf://owner/name") == "hf://owner/name"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="without config.json"):
        resolve_preset(str(empty))
