"""The dual-encoder backbone: an image tower and a text tower meeting in one space."""

import keras
import keras_hub
from keras import ops

from kclip.models.layers import ContrastiveLogits, L2Normalize, ProjectionHead


def runnable_data_format(data_format):
    """The image layout this backend can run here: `data_format`, except on TensorFlow without a GPU.

    TensorFlow's CPU Conv2D takes channels-first input only through oneDNN, which TensorFlow
    switches on by itself only on CPUs with AVX-512 VNNI/bf16 or AMX; on an AVX2-only CPU it
    refuses NCHW. A channels-first tower (the torch default, so any file saved there) is therefore
    built channels-last on TensorFlow without a GPU. The weights do not depend on the layout, and
    images enter channels-last either way.
    """
    if data_format == "channels_first" and keras.config.backend() == "tensorflow":
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return "channels_last"
    return data_format


def _text_features(sequence_output):
    """Some KerasHub text backbones return a tensor, others a dict of outputs."""
    if isinstance(sequence_output, dict):
        return sequence_output["sequence_output"]
    return sequence_output


@keras.saving.register_keras_serializable(package="kclip")
class DualEncoderBackbone(keras_hub.models.Backbone):
    """CLIP-style dual encoder over any KerasHub image and text backbones.

    Image tower: image backbone -> global average pooling -> projection head.
    Text tower: text backbone -> first token's vector (or the mean over real
    tokens) -> projection head.
    Both end L2-normalized in float32, and `logits` are the scaled cosine
    similarities of every caption (rows) with every image (columns).

    Images enter channels-last (batch, height, width, 3) whatever the image
    backbone's own `data_format`; on the torch backend channels-first is the
    faster layout (see benchmarks/), and one transpose at the entry is cheap.

    Args:
        image_encoder: a KerasHub image backbone (e.g. `ResNetBackbone`).
        text_encoder: a KerasHub text backbone (e.g. `DistilBertBackbone`).
        projection_dim: size of the shared embedding space.
        dropout: dropout rate inside the projection heads.
        initial_logit_scale: CLIP's starting inverse temperature.
        text_pooling: "first" takes the first ([CLS]) token's vector, as
            clip-lightning does with DistilBERT; "mean" averages the non-padding
            tokens, which a small from-scratch text tower learns from far sooner
            (configs/demo.yaml).
        image_head, text_head: layers to use in place of the `ProjectionHead`s, such as
            the zero-shot model's class-probability map (kclip/models/zero_shot.py).
    """

    def __init__(
        self,
        image_encoder,
        text_encoder,
        projection_dim=256,
        dropout=0.1,
        initial_logit_scale=1 / 0.07,
        text_pooling="first",
        image_head=None,
        text_head=None,
        dtype=None,
        **kwargs,
    ):
        if text_pooling not in ("first", "mean"):
            raise ValueError(f"text_pooling must be 'first' or 'mean', not {text_pooling!r}.")
        self.text_pooling = text_pooling
        # === Layers ===
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_data_format = getattr(image_encoder, "data_format", None) or (
            keras.config.image_data_format()
        )
        self.image_pooling = keras.layers.GlobalAveragePooling2D(
            data_format=self.image_data_format, dtype=dtype, name="image_pooling"
        )
        self.custom_heads = {"image_head": image_head is not None, "text_head": text_head is not None}
        self.image_head = image_head or ProjectionHead(projection_dim, dropout, dtype=dtype, name="image_head")
        self.text_head = text_head or ProjectionHead(projection_dim, dropout, dtype=dtype, name="text_head")
        self.image_normalize = L2Normalize(name="image_normalize")
        self.text_normalize = L2Normalize(name="text_normalize")
        self.contrastive_logits = ContrastiveLogits(initial_logit_scale, name="contrastive_logits")

        # === Functional model ===
        images = keras.Input(shape=(None, None, 3), name="images")
        token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
        padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
        image_embeddings = self.embed_images(images)
        text_embeddings = self.embed_text(token_ids, padding_mask)
        logits = self.contrastive_logits(image_embeddings, text_embeddings)
        super().__init__(
            inputs={"images": images, "token_ids": token_ids, "padding_mask": padding_mask},
            outputs={
                "image_embeddings": image_embeddings,
                "text_embeddings": text_embeddings,
                "logits": logits,
            },
            dtype=dtype,
            **kwargs,
        )

        # === Config ===
        self.projection_dim = projection_dim
        self.dropout = dropout
        self.initial_logit_scale = initial_logit_scale

    def embed_images(self, images, training=None):
        """Channels-last images -> unit-length embeddings (symbolic or eager)."""
        pooled = self.pool_images(images, training=training)
        return self.image_normalize(self.image_head(pooled, training=training))

    def embed_text(self, token_ids, padding_mask, training=None):
        """Packed token ids -> unit-length embeddings (symbolic or eager)."""
        pooled = self.pool_text(token_ids, padding_mask, training=training)
        return self.text_normalize(self.text_head(pooled, training=training))

    def pool_images(self, images, training=None):
        """Channels-last images -> the image tower's pooled features (what the image head reads)."""
        if self.image_data_format == "channels_first":
            images = ops.transpose(images, (0, 3, 1, 2))
        return self.image_pooling(self.image_encoder(images, training=training))

    def pool_text(self, token_ids, padding_mask, training=None):
        """Packed token ids -> the text tower's pooled features (what the text head reads)."""
        encoder_inputs = {"token_ids": token_ids, "padding_mask": padding_mask}
        if "segment_ids" in self.text_encoder.input:
            encoder_inputs["segment_ids"] = ops.zeros_like(token_ids)
        sequence = _text_features(self.text_encoder(encoder_inputs, training=training))
        if self.text_pooling == "mean":
            mask = ops.expand_dims(ops.cast(padding_mask, sequence.dtype), -1)
            return ops.sum(sequence * mask, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1)
        return sequence[:, 0, :]

    def outputs_from_features(self, inputs, training=None):
        """The backbone's outputs from a batch whose frozen towers' work is already done.

        `inputs` holds `image_features` (pooled, as `pool_images` gives) or `images`, and
        `text_features` (as `pool_text` gives) or `token_ids` + `padding_mask`
        (kclip/training/feature_cache.py).
        """
        if "image_features" in inputs:
            pooled_images = inputs["image_features"]
        else:
            pooled_images = self.pool_images(inputs["images"], training=training)
        if "text_features" in inputs:
            pooled_text = inputs["text_features"]
        else:
            pooled_text = self.pool_text(inputs["token_ids"], inputs["padding_mask"], training=training)
        image_embeddings = self.image_normalize(self.image_head(pooled_images, training=training))
        text_embeddings = self.text_normalize(self.text_head(pooled_text, training=training))
        return {
            "image_embeddings": image_embeddings,
            "text_embeddings": text_embeddings,
            "logits": self.contrastive_logits(image_embeddings, text_embeddings),
        }

    @property
    def logit_scale(self):
        return self.contrastive_logits.logit_scale

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_encoder": keras.layers.serialize(self.image_encoder),
                "image_data_format": self.image_data_format,
                "text_encoder": keras.layers.serialize(self.text_encoder),
                "projection_dim": self.projection_dim,
                "dropout": self.dropout,
                "initial_logit_scale": self.initial_logit_scale,
                "text_pooling": self.text_pooling,
            }
        )
        for key, custom in self.custom_heads.items():
            if custom:
                config[key] = keras.layers.serialize(getattr(self, key))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        data_format = config.pop("image_data_format", None)
        image_encoder = config["image_encoder"]
        if isinstance(image_encoder, dict) and data_format:
            # KerasHub's ResNetBackbone.get_config() drops `data_format`; without it a
            # channels-first tower is rebuilt channels-last and fails to load.
            encoder_config = image_encoder.setdefault("config", {})
            # ResNet names its shape `image_shape`, EfficientNet(-Lite) `input_shape`.
            shape_key = next((key for key in ("image_shape", "input_shape") if key in encoder_config), None)
            if shape_key is not None:
                runnable = runnable_data_format(data_format)
                if runnable != data_format:
                    # Same sizes, channels moved last: (3, H, W) -> (H, W, 3).
                    channels, *spatial = encoder_config[shape_key]
                    encoder_config[shape_key] = (*spatial, channels)
                    encoder_config["data_format"] = runnable
                encoder_config.setdefault("data_format", data_format)
        for key in ("image_encoder", "text_encoder", "image_head", "text_head"):
            if isinstance(config.get(key), dict):
                config[key] = keras.layers.deserialize(config[key])
        return cls(**config)
