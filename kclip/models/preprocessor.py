"""Turns raw images and caption strings into the backbone's inputs.

It runs outside the model graph: inside `tf.data` during `fit` (KerasHub's
`Task.fit` maps it over the batches) and in plain Python for `encode_*`.
"""

import keras
import keras_hub
import numpy as np
from keras_hub.src.layers.preprocessing.start_end_packer import StartEndPacker
from keras_hub.src.utils.tensor_utils import preprocessing_function


def _trim_to_longest(token_ids, padding_mask, multiple=8):
    # Multiples of 8 keep the number of distinct shapes small (one trace each where
    # the backend compiles) and suit tensor-core tile sizes on a GPU.
    if not type(token_ids).__module__.startswith("tensorflow"):
        # Without TensorFlow, keras-hub runs preprocessing eagerly on arrays or backend
        # tensors (and this is never traced), so the length can be read on the host.
        mask = np.asarray(keras.ops.convert_to_numpy(padding_mask))
        longest = int(mask.sum(axis=-1).max()) if mask.size else 0
        length = min((longest + multiple - 1) // multiple * multiple, int(token_ids.shape[-1]))
        return token_ids[..., :length], padding_mask[..., :length]
    import tensorflow as tf

    longest = tf.reduce_max(tf.reduce_sum(tf.cast(padding_mask, "int32"), axis=-1))
    length = tf.minimum((longest + multiple - 1) // multiple * multiple, tf.shape(token_ids)[-1])
    return token_ids[..., :length], padding_mask[..., :length]


def _special_token_id(tokenizer, *names, default=None):
    for name in names:
        value = getattr(tokenizer, name, None)
        if value is not None:
            return value
    return default


@keras.saving.register_keras_serializable(package="kclip")
class DualEncoderPreprocessor(keras_hub.models.Preprocessor):
    """Image converter (resize + normalize) and tokenizer + packer.

    Call it with a dict holding `"images"` (uint8 or float, channels-last), or
    `"captions"` (strings), or both. It returns the matching backbone inputs:
    `"images"`, and `"token_ids"` + `"padding_mask"` packed as
    `[CLS] caption [SEP] [PAD]...` to `sequence_length` (longer captions are
    truncated). With `dynamic_padding` (the default) a batch is then cut back to
    its longest caption, rounded up to a multiple of 8: the text tower's cost grows
    with the padded length, and most captions are far shorter than
    `sequence_length`. Attention ignores padding, so the embeddings do not change.
    """

    def __init__(self, tokenizer, image_converter, sequence_length=64, dynamic_padding=True, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.image_converter = image_converter
        self.sequence_length = sequence_length
        self.dynamic_padding = dynamic_padding
        self.packer = None

    def build(self, input_shape):
        self.packer = StartEndPacker(
            start_value=_special_token_id(self.tokenizer, "cls_token_id", "start_token_id"),
            end_value=_special_token_id(self.tokenizer, "sep_token_id", "end_token_id"),
            pad_value=_special_token_id(self.tokenizer, "pad_token_id", default=0),
            sequence_length=self.sequence_length,
            return_padding_mask=True,
        )
        self.built = True

    @preprocessing_function
    def call(self, x, y=None, sample_weight=None):
        outputs = {}
        if "images" in x:
            outputs["images"] = self.image_converter(x["images"])
        if "captions" in x:
            token_ids, padding_mask = self.packer(self.tokenizer(x["captions"]))
            if self.dynamic_padding:
                token_ids, padding_mask = _trim_to_longest(token_ids, padding_mask)
            outputs["token_ids"] = token_ids
            outputs["padding_mask"] = padding_mask
        return keras.utils.pack_x_y_sample_weight(outputs, y, sample_weight)

    @property
    def image_size(self):
        return self.image_converter.image_size

    def get_config(self):
        config = super().get_config()
        config["sequence_length"] = self.sequence_length
        config["dynamic_padding"] = self.dynamic_padding
        return config
