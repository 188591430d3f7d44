"""Layers of the dual encoder that KerasHub does not already provide."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kclip")
class ProjectionHead(keras.layers.Layer):
    """Maps a tower's feature vector into the shared embedding space.

    The seed's head: Dense -> GELU -> Dense -> Dropout -> residual add -> LayerNorm.
    The residual keeps the linear projection as an easy path early in training.
    """

    def __init__(self, projection_dim=256, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.projection_dim = projection_dim
        self.dropout = dropout
        self.projection = keras.layers.Dense(
            projection_dim, dtype=self.dtype_policy, name="projection"
        )
        self.fully_connected = keras.layers.Dense(
            projection_dim, dtype=self.dtype_policy, name="fully_connected"
        )
        self.dropout_layer = keras.layers.Dropout(
            dropout, dtype=self.dtype_policy, name="dropout"
        )
        self.layer_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=self.dtype_policy, name="layer_norm"
        )

    def build(self, input_shape):
        # On reload Keras passes a list, not a tuple.
        input_shape = tuple(input_shape)
        self.projection.build(input_shape)
        projected_shape = input_shape[:-1] + (self.projection_dim,)
        self.fully_connected.build(projected_shape)
        self.layer_norm.build(projected_shape)
        self.built = True

    def call(self, features, training=None):
        projected = self.projection(features)
        hidden = ops.gelu(projected, approximate=False)
        hidden = self.fully_connected(hidden)
        hidden = self.dropout_layer(hidden, training=training)
        return self.layer_norm(hidden + projected)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.projection_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({"projection_dim": self.projection_dim, "dropout": self.dropout})
        return config


@keras.saving.register_keras_serializable(package="kclip")
class L2Normalize(keras.layers.Layer):
    """Unit-length embeddings, so that a dot product is a cosine similarity.

    Runs in float32 whatever the global policy: the contrastive logits downstream
    must be float32 under mixed precision.
    """

    def __init__(self, epsilon=1e-12, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        inputs = ops.cast(inputs, "float32")
        squared_norm = ops.sum(ops.square(inputs), axis=-1, keepdims=True)
        return inputs * ops.rsqrt(ops.maximum(squared_norm, self.epsilon))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config["epsilon"] = self.epsilon
        return config


@keras.saving.register_keras_serializable(package="kclip")
class ContrastiveLogits(keras.layers.Layer):
    """Similarity logits between every caption and every image in a batch.

    Holds CLIP's learnable temperature as a log-scale weight (initial scale 1/0.07).
    The scale is clamped at `max_logit_scale` (100) so that it cannot grow until
    the softmax saturates. Always float32.
    """

    def __init__(self, initial_logit_scale=1 / 0.07, max_logit_scale=100.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.initial_logit_scale = initial_logit_scale
        self.max_logit_scale = max_logit_scale

    def build(self, input_shape=None):
        self.log_logit_scale = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(math.log(self.initial_logit_scale)),
            name="log_logit_scale",
        )
        self.built = True

    @property
    def logit_scale(self):
        return ops.minimum(ops.exp(self.log_logit_scale), self.max_logit_scale)

    def call(self, image_embeddings, text_embeddings):
        image_embeddings = ops.cast(image_embeddings, "float32")
        text_embeddings = ops.cast(text_embeddings, "float32")
        return self.logit_scale * ops.matmul(text_embeddings, ops.transpose(image_embeddings))

    def compute_output_shape(self, image_embeddings_shape, text_embeddings_shape):
        return (text_embeddings_shape[0], image_embeddings_shape[0])

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            {
                "initial_logit_scale": self.initial_logit_scale,
                "max_logit_scale": self.max_logit_scale,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="kclip")
class SigmoidLogits(ContrastiveLogits):
    """SigLIP's pair logits: exp(log_logit_scale) * cosine similarity + logit_bias, both learnable.

    Initialized as in the paper (scale 10, bias -10): the bias starts every pair near "not a
    match", which is what almost every pair of a batch is. The scale is clamped at
    `max_logit_scale` like CLIP's. Always float32.
    """

    def __init__(self, initial_logit_scale=10.0, initial_logit_bias=-10.0, max_logit_scale=100.0, **kwargs):
        super().__init__(initial_logit_scale=initial_logit_scale, max_logit_scale=max_logit_scale, **kwargs)
        self.initial_logit_bias = initial_logit_bias

    def build(self, input_shape=None, *args):
        super().build(input_shape)
        self.logit_bias = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_logit_bias), name="logit_bias"
        )

    def call(self, image_embeddings, text_embeddings):
        return super().call(image_embeddings, text_embeddings) + self.logit_bias

    def get_config(self):
        return {**super().get_config(), "initial_logit_bias": self.initial_logit_bias}
