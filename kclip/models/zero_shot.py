"""Zero-shot search before any training: ConSE (Norouzi et al. 2014) over two pretrained towers.

The ImageNet classifier of the image tower gives each image class probabilities; the text
tower embeds the 1,000 class names. An image's embedding is the mix of its top classes' name
embeddings, weighted by their probabilities, so images land in the sentence model's space with
no paired data at all, and a caption is embedded by the sentence model as it is. The result is
an ordinary `DualEncoder`: `build_index`, `search`, `classify`, the page and `fit` take it.
"""

import functools

import keras
import keras_hub
import numpy as np
from keras import ops

from kclip.models import efficientnet_lite
from kclip.models.backbone import DualEncoderBackbone
from kclip.models.preprocessor import DualEncoderPreprocessor
from kclip.models.task import DualEncoder

DEFAULT_TEMPLATE = "a photo of a {}"


def imagenet_class_names():
    """The 1,000 ImageNet-1k class names in class-id order, as words ("tiger cat", "espresso")."""
    from keras_hub.utils import imagenet_id_to_name

    return [imagenet_id_to_name(index).replace("_", " ") for index in range(1000)]


@keras.saving.register_keras_serializable(package="kclip")
class ClassMixHead(keras.layers.Layer):
    """Pooled image features -> ImageNet class probabilities -> their mix of class-name embeddings.

    Only the `top_k` most probable classes take part, renormalized (ConSE's T). The classifier
    and the class embeddings are weights, trainable, so that fine-tuning can start from this map.
    """

    def __init__(self, num_classes=1000, embedding_dim=384, top_k=10, **kwargs):
        super().__init__(**kwargs)
        if not 1 <= top_k <= num_classes:
            raise ValueError(f"top_k must be between 1 and num_classes ({num_classes}), not {top_k}.")
        self.num_classes, self.embedding_dim, self.top_k = num_classes, embedding_dim, top_k

    def build(self, input_shape):
        features = tuple(input_shape)[-1]
        self.kernel = self.add_weight(name="kernel", shape=(features, self.num_classes), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")
        self.class_embeddings = self.add_weight(name="class_embeddings", shape=(self.num_classes, self.embedding_dim),
                                                initializer="zeros")
        self.built = True

    def call(self, features):
        probabilities = ops.softmax(ops.matmul(features, self.kernel) + self.bias, axis=-1)
        kth = ops.top_k(probabilities, self.top_k)[0][:, -1:]
        kept = ops.where(probabilities >= kth, probabilities, ops.zeros_like(probabilities))
        kept = kept / ops.sum(kept, axis=-1, keepdims=True)
        return ops.matmul(kept, self.class_embeddings)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.embedding_dim,)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "embedding_dim": self.embedding_dim,
                "top_k": self.top_k}


@keras.saving.register_keras_serializable(package="kclip")
class IdentityHead(keras.layers.Layer):
    """The text tower's pooled vector as it is: the sentence model's own space."""

    def call(self, features):
        return features

    def compute_output_shape(self, input_shape):
        return input_shape


@functools.lru_cache(maxsize=4)
def _class_name_embeddings(text_encoder_name, template, sequence_length):
    """(1000, width) L2-normalized sentence embeddings of the class names (10-30 s on a CPU: kept)."""
    from kclip.models.towers import build_text_encoder_and_tokenizer
    from kclip.training.feature_cache import no_grad

    text_encoder, tokenizer = build_text_encoder_and_tokenizer(text_encoder_name)
    preprocessor = DualEncoderPreprocessor(tokenizer=tokenizer, image_converter=None, sequence_length=sequence_length)
    names = [template.format(name) for name in imagenet_class_names()]
    chunks = []
    with no_grad():
        for start in range(0, len(names), 250):
            packed = preprocessor({"captions": names[start:start + 250]})
            inputs = {"token_ids": packed["token_ids"], "padding_mask": packed["padding_mask"]}
            if "segment_ids" in text_encoder.input:
                inputs["segment_ids"] = ops.zeros_like(packed["token_ids"])
            sequence = text_encoder(inputs)
            sequence = sequence["sequence_output"] if isinstance(sequence, dict) else sequence
            mask = ops.expand_dims(ops.cast(packed["padding_mask"], sequence.dtype), -1)
            chunks.append(ops.convert_to_numpy(ops.sum(sequence * mask, axis=1) / ops.sum(mask, axis=1)))
    embeddings = np.concatenate(chunks).astype("float32")
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def zero_shot_model(image_encoder="efficientnet_lite0_imagenet", text_encoder="all_minilm_l6_v2_en", image_size=224,
                    top_k=10, template=DEFAULT_TEMPLATE, sequence_length=64, data_format="auto"):
    """A `DualEncoder` that searches photos with no training: ConSE over an ImageNet classifier.

    `image_encoder` is an EfficientNet-Lite preset (it carries its ImageNet classifier);
    `text_encoder` a sentence model read as the mean over its tokens; `template` wraps each
    class name before it is embedded.
    """
    from kclip.models.towers import build_image_converter, build_image_encoder, build_text_encoder_and_tokenizer

    if image_encoder not in efficientnet_lite.PRESETS:
        raise ValueError(f"zero_shot_model needs an image tower with its ImageNet classifier: one of "
                         f"{', '.join(efficientnet_lite.PRESETS)}, not {image_encoder!r}.")
    if "{}" not in template:
        raise ValueError(f"template must hold '{{}}' where the class name goes, e.g. {DEFAULT_TEMPLATE!r}.")
    kernel, bias = efficientnet_lite.imagenet_classifier(efficientnet_lite.preset_folder(image_encoder))
    names = _class_name_embeddings(text_encoder, template, sequence_length)
    image_tower = build_image_encoder(image_encoder, data_format=data_format)
    text_tower, tokenizer = build_text_encoder_and_tokenizer(text_encoder)
    image_tower.trainable = text_tower.trainable = False
    head = ClassMixHead(num_classes=kernel.shape[1], embedding_dim=names.shape[1], top_k=top_k, name="image_head")
    backbone = DualEncoderBackbone(image_tower, text_tower, projection_dim=names.shape[1], dropout=0.0,
                                   text_pooling="mean", image_head=head, text_head=IdentityHead(name="text_head"))
    head.set_weights([kernel, bias, names])
    preprocessor = DualEncoderPreprocessor(tokenizer=tokenizer,
                                           image_converter=build_image_converter(image_encoder, False, image_size),
                                           sequence_length=sequence_length)
    return DualEncoder(backbone, preprocessor, compile=False)
