"""clip-lightning checkpoints -> kclip: embeddings equal to the PyTorch model's.

The checkpoint is built here with clip-lightning's module structure and key names
(tests/torch_references.py), random weights, and saved the way Lightning saves one.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import keras  # noqa: E402

from kclip.models.convert import convert_lightning_checkpoint, read_lightning_checkpoint  # noqa: E402
from tests.torch_references import (  # noqa: E402
    ClipLightningModel,
    TimmLayoutResNet,
    randomize_batch_norm,
    write_hf_distilbert,
)

CAPTIONS = ["a red circle", "the dog runs on the beach", "blue squares", "a café"]
HYPER_PARAMETERS = {
    "image_encoder_alias": "resnet18", "text_encoder_alias": "distilbert-base-uncased",
    "image_encoder_pretrained": True, "image_encoder_trainable": True, "text_encoder_trainable": True,
    "image_embedding_dims": 512, "text_embedding_dims": 32, "projection_dims": 16, "dropout": 0.1,
    "temperature": 1.0, "weight_decay": 0.0, "head_lr": 1e-3, "image_encoder_lr": 1e-4,
    "text_encoder_lr": 1e-5, "lr_scheduler_patience": 1.0, "lr_scheduler_factor": 0.8,
}


def lightning_checkpoint(tmp_path):
    """(path, PyTorch model, tokenizer folder, HF tokenizer): a clip-lightning run's files."""
    text_model, hf_tokenizer = write_hf_distilbert(tmp_path / "tokenizer", dropout=0.1, initializer_range=0.5)
    torch.manual_seed(1)
    model = ClipLightningModel(randomize_batch_norm(TimmLayoutResNet("resnet18")), text_model,
                               image_dims=512, text_dims=32, projection_dims=16, dropout=0.1).eval()
    path = tmp_path / "epoch=3-step=100.ckpt"
    # What Lightning's checkpoint connector writes (hyper_parameters as a plain dict).
    torch.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "1.6.3",
                "state_dict": model.state_dict(), "loops": {}, "callbacks": {},
                "optimizer_states": [], "lr_schedulers": [], "hparams_name": "kwargs",
                "hyper_parameters": dict(HYPER_PARAMETERS)}, path)
    return path, model, tmp_path / "tokenizer", hf_tokenizer


def torch_embeddings(model, hf_tokenizer, images):
    mean, std = np.array([0.485, 0.456, 0.406], "float32"), np.array([0.229, 0.224, 0.225], "float32")
    pixels = torch.from_numpy(((images / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype("float32").copy())
    batch = hf_tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        image, text = model({"image": pixels, "input_ids": batch["input_ids"],
                             "attention_mask": batch["attention_mask"]})
    normalize = torch.nn.functional.normalize
    return normalize(image, dim=-1).numpy(), normalize(text, dim=-1).numpy()


def test_converted_checkpoint_embeds_like_the_pytorch_model(tmp_path):
    path, reference, tokenizer_dir, hf_tokenizer = lightning_checkpoint(tmp_path)
    model = convert_lightning_checkpoint(path, tokenizer_dir, output=tmp_path / "model.keras", image_size=64)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3)).astype("uint8")
    expected_image, expected_text = torch_embeddings(reference, hf_tokenizer, images.astype("float32"))

    np.testing.assert_allclose(model.encode_image(list(images)), expected_image, atol=1e-4, rtol=0)
    np.testing.assert_allclose(model.encode_text(CAPTIONS), expected_text, atol=1e-4, rtol=0)
    # Different captions and images really differ, by far more than the tolerance.
    assert np.abs(expected_text[0] - expected_text[1]).max() > 0.05
    assert np.abs(expected_image[0] - expected_image[1]).max() > 1e-2

    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.encode_text(CAPTIONS), expected_text, atol=1e-4, rtol=0)


def test_checkpoint_that_needs_unpickling_is_refused(tmp_path):
    path, _, tokenizer_dir, _ = lightning_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["hyper_parameters"] = CustomHyperParameters(HYPER_PARAMETERS)
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(checkpoint, unsafe)
    with pytest.raises(ValueError, match="refuses"):
        read_lightning_checkpoint(unsafe)


class CustomHyperParameters(dict):
    """A dict subclass: unpickling it needs this module's code."""


def test_checkpoint_without_encoder_names_is_explained(tmp_path):
    path, _, _, _ = lightning_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["hyper_parameters"]["text_encoder_alias"]
    torch.save(checkpoint, tmp_path / "anonymous.ckpt")
    with pytest.raises(ValueError, match="text_encoder_alias"):
        read_lightning_checkpoint(tmp_path / "anonymous.ckpt")


def test_convert_checkpoint_script(tmp_path):
    import importlib.util
    from pathlib import Path

    path, _, tokenizer_dir, _ = lightning_checkpoint(tmp_path)
    script = Path(__file__).resolve().parent.parent / "scripts" / "convert_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_checkpoint", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([str(path), "--tokenizer", str(tokenizer_dir), "--output", str(tmp_path / "out.keras"),
                 "--image-size", "64"])
    model = keras.saving.load_model(tmp_path / "out.keras")
    assert model.backbone.projection_dim == 16
    with pytest.raises(SystemExit, match="no vocab.txt"):
        module.main([str(path), "--tokenizer", str(tmp_path), "--output", str(tmp_path / "x.keras")])
