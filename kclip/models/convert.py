"""clip-lightning checkpoints (`*.ckpt`) -> kclip `DualEncoder`s with the same embeddings.

clip-lightning's `CLIPDualEncoderModel` holds a timm image model (`image_encoder.model.*`,
`num_classes=0`, global average pooling), a Hugging Face text model
(`text_encoder.model.*`, first-token features) and two residual projection heads
(`image_projection.*`, `text_projection.*`: Linear -> GELU -> Linear -> dropout -> +
residual -> LayerNorm), which is kclip's own `ProjectionHead`. Its checkpoint names both
encoders in `hyper_parameters`.

The towers are converted by KerasHub's own loaders: each tower's weights are written into a
temporary folder in its library's format (timm: config.json with `architecture`; Hugging
Face: config.json with `model_type`) and read back with `from_preset`. The text model's
configuration and tokenizer come from a Hugging Face folder the user gives (the one the
checkpoint was trained with), or, for a text encoder clip-lightning's README names, from
the known configuration.
"""

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np

IMAGE_PREFIX = "image_encoder.model."
TEXT_PREFIX = "text_encoder.model."
HEAD_PREFIXES = {"image_projection.": "image_head", "text_projection.": "text_head"}
# The Hugging Face configs of text encoders clip-lightning's README trains.
KNOWN_TEXT_CONFIGS = {
    "distilbert-base-uncased": {
        "model_type": "distilbert", "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12,
        "hidden_dim": 3072, "max_position_embeddings": 512, "dropout": 0.1, "attention_dropout": 0.1,
        "activation": "gelu", "pad_token_id": 0,
    },
}
TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
# timm's ImageNet preprocessing, which clip-lightning's resnet50 data pipeline also uses.
IMAGENET_CFG = {"input_size": [3, 224, 224], "interpolation": "bicubic",
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def _unsafe_global(error) -> str:
    """The class torch's weights-only unpickler refused ("GLOBAL module.Name"), without torch's advice to
    load the file with weights_only=False, which would run whatever code the file holds."""
    for line in str(error).splitlines():
        if "GLOBAL" in line:
            return line.strip().rstrip(".") + "."
    return ""


def read_lightning_checkpoint(path):
    """(state dict of float32 numpy arrays, hyper_parameters) from a Lightning `.ckpt`.

    Loads with `torch.load(weights_only=True)`: a checkpoint that needs code to unpickle
    is refused, never run. A file that is no PyTorch checkpoint at all (empty, truncated,
    random bytes, text) is named as such before torch reads it.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    with open(path, "rb") as handle:
        start = handle.read(4)
    if not start:
        raise ValueError(f"{path} is empty (0 bytes), not a checkpoint; copy or download it again.")
    # torch.save writes a zip archive; torch before 1.6 wrote a pickle (protocol 2+ starts with 0x80).
    if start != b"PK\x03\x04" and start[:1] != b"\x80":
        raise ValueError(
            f"{path} is not a PyTorch checkpoint: it is neither a zip archive (what torch.save writes) nor a "
            f"pickle (it starts with bytes {start.hex(' ')}). Check that this is the .ckpt file Lightning saved."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        needed = _unsafe_global(error)
        if not needed:
            raise ValueError(f"{path} is damaged or not a PyTorch checkpoint: it cannot be unpickled.") from None
        raise ValueError(
            f"{path} can only be opened by running code stored in it, which kclip refuses "
            f"(torch.load(weights_only=True)): {needed} If you trust the file, "
            f"re-save it with plain types: torch.save({{'state_dict': ckpt['state_dict'], "
            f"'hyper_parameters': dict(ckpt['hyper_parameters'])}}, 'clean.ckpt')."
        ) from None
    except (EOFError, RuntimeError, KeyError, ValueError, OSError, IndexError, TypeError) as error:
        # torch reports a truncated zip or pickle as any of these; none of its own hints apply to such a file.
        raise ValueError(
            f"{path} is truncated or damaged: torch cannot read it as a checkpoint ({type(error).__name__}). "
            "Copy or download it again."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint: it has no 'state_dict'.")
    hyper_parameters = dict(checkpoint.get("hyper_parameters") or {})
    missing = [key for key in ("image_encoder_alias", "text_encoder_alias") if key not in hyper_parameters]
    if missing:
        raise ValueError(
            f"{path} does not name its encoders: hyper_parameters lacks {missing}. It does not look "
            f"like a clip-lightning CLIPDualEncoderModel checkpoint."
        )
    state = {key: value.detach().float().numpy() for key, value in checkpoint["state_dict"].items()}
    for prefix in (IMAGE_PREFIX, TEXT_PREFIX, *HEAD_PREFIXES):
        if not any(key.startswith(prefix) for key in state):
            raise ValueError(f"{path}: no weights start with {prefix!r}; not a clip-lightning checkpoint.")
    return state, hyper_parameters


def _strip(state, prefix):
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def write_timm_folder(folder, architecture, weights):
    """A timm-format folder (config.json + model.safetensors) that KerasHub's timm loader reads."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    config = {"architecture": architecture, "num_classes": 0, "global_pool": "avg", "pretrained_cfg": IMAGENET_CFG}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({key: np.ascontiguousarray(value) for key, value in weights.items()}, str(folder / "model.safetensors"))
    return folder


def _text_config(alias, tokenizer_dir):
    config_path = tokenizer_dir / "config.json"
    if config_path.is_file():
        return json.loads(config_path.read_text())
    if alias in KNOWN_TEXT_CONFIGS:
        return dict(KNOWN_TEXT_CONFIGS[alias])
    raise ValueError(
        f"The text encoder {alias!r} has no built-in configuration and {tokenizer_dir} has no "
        f"config.json. Pass the Hugging Face folder of {alias} (save_pretrained of the model and "
        f"its tokenizer) as the tokenizer folder."
    )


def write_hf_folder(folder, alias, weights, tokenizer_dir):
    """A Hugging Face folder (config, safetensors, tokenizer files) for KerasHub's loader."""
    from safetensors.numpy import save_file

    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "vocab.txt").is_file():
        raise ValueError(
            f"The tokenizer folder {tokenizer_dir} has no vocab.txt. Give the Hugging Face folder the "
            f"checkpoint's text encoder ({alias}) was trained with, e.g. one written by "
            f"AutoTokenizer.from_pretrained({alias!r}).save_pretrained(DIR)."
        )
    config = _text_config(alias, tokenizer_dir)
    folder.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, folder / name)
    if not (folder / "tokenizer_config.json").is_file():
        (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": "uncased" in alias}))
    (folder / "config.json").write_text(json.dumps(config))
    # KerasHub's DistilBERT converter expects the masked-LM checkpoint's names (see hf_folders).
    prefix = "distilbert." if config.get("model_type") == "distilbert" else ""
    save_file({prefix + key: np.ascontiguousarray(value) for key, value in weights.items()},
              str(folder / "model.safetensors"))
    return folder


def _set_head(head, weights):
    head.projection.kernel.assign(weights["projection.weight"].T)
    head.projection.bias.assign(weights["projection.bias"])
    head.fully_connected.kernel.assign(weights["fc.weight"].T)
    head.fully_connected.bias.assign(weights["fc.bias"])
    head.layer_norm.gamma.assign(weights["layer_norm.weight"])
    head.layer_norm.beta.assign(weights["layer_norm.bias"])


def convert_lightning_checkpoint(checkpoint, tokenizer, output=None, image_size=224, sequence_length=200):
    """Turns a clip-lightning `.ckpt` into a kclip `DualEncoder` (and `output`, a `.keras` file).

    Args:
        checkpoint: path of the Lightning checkpoint.
        tokenizer: the Hugging Face folder of the text encoder (vocab.txt, tokenizer_config.json,
            and config.json unless the encoder is one clip-lightning's README names).
        output: where to save the model, or None.
        image_size: the square size images are resized to (clip-lightning: 224).
        sequence_length: tokens per caption (clip-lightning's `data.max_length`, 200).
    """
    from kclip.config import ModelConfig
    from kclip.models.towers import build_dual_encoder

    state, hyper_parameters = read_lightning_checkpoint(checkpoint)
    heads = {name: _strip(state, prefix) for prefix, name in HEAD_PREFIXES.items()}
    with tempfile.TemporaryDirectory(prefix="kclip-convert-") as work:
        image_dir = write_timm_folder(Path(work) / "image", hyper_parameters["image_encoder_alias"],
                                      _strip(state, IMAGE_PREFIX))
        text_dir = write_hf_folder(Path(work) / "text", hyper_parameters["text_encoder_alias"],
                                   _strip(state, TEXT_PREFIX), tokenizer)
        model_config = ModelConfig(
            image_encoder=str(image_dir),
            text_encoder=str(text_dir),
            image_size=image_size,
            projection_dims=int(heads["image_head"]["projection.weight"].shape[0]),
            dropout=float(hyper_parameters.get("dropout", 0.0)),
            loss="soft_targets",
            temperature=float(hyper_parameters.get("temperature", 1.0)),
            image_embedding_dims=hyper_parameters.get("image_embedding_dims"),
            text_embedding_dims=hyper_parameters.get("text_embedding_dims"),
        )
        model = build_dual_encoder(model_config, sequence_length=sequence_length, dtype="float32")
    for name, weights in heads.items():
        _set_head(getattr(model.backbone, name), weights)
    if output is not None:
        from kclip.training.export import export_model

        export_model(model, output)
    return model
