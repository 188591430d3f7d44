"""Builds the towers, their preprocessing and the whole `DualEncoder` from a config.

A tower comes from a KerasHub preset (a built-in name, `hf://...`, `kaggle://...`
or a local folder saved with `save_to_preset`), or is built from constructor
arguments for a small from-scratch model. Either way the same KerasHub classes
are used, so a real preset and a tiny test tower take the same code path.
"""

import collections
import re

import keras
import keras_hub

from kclip.models.backbone import DualEncoderBackbone
from kclip.models.preprocessor import DualEncoderPreprocessor
from kclip.models.task import DualEncoder

# ImageNet statistics, as KerasHub's ResNet presets use them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def resolve_data_format(data_format="auto"):
    """On torch, convolutions run natively channels-first; elsewhere channels-last."""
    if data_format != "auto":
        return data_format
    return "channels_first" if keras.config.backend() == "torch" else "channels_last"


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
    layout = {
        "data_format": data_format,
        "image_shape": (3, None, None) if data_format == "channels_first" else (None, None, 3),
    }
    if config is not None:
        cls = _keras_hub_class(name, "backbone")
        return cls(**{**config, **layout}, dtype=dtype)
    return keras_hub.models.Backbone.from_preset(name, **layout, dtype=dtype)


def build_image_converter(name, from_config, image_size):
    """Resize + normalize exactly as the preset expects, in float32 always."""
    size = (image_size, image_size)
    if not from_config:
        return keras_hub.layers.ImageConverter.from_preset(
            name, image_size=size, dtype="float32"
        )
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
        encoder = keras_hub.models.Backbone.from_preset(name, dtype=dtype)
        tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(name)
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
    backbone = DualEncoderBackbone(
        image_encoder,
        text_encoder,
        projection_dim=model_config.projection_dims,
        dropout=model_config.dropout,
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
