"""The trainable task: a dual encoder with its preprocessor and contrastive `fit`."""

import hashlib

import keras
import keras_hub
import numpy as np
from keras import ops

from kclip.models import grad_cache, losses, train_steps
from kclip.models.backbone import DualEncoderBackbone
from kclip.models.layers import SigmoidLogits
from kclip.data.image_io import load_model_image
from kclip.models.optimizers import MultiRateAdamW
from kclip.models.preprocessor import DualEncoderPreprocessor
from kclip.backends.jax.distribution import undistributed


FLOAT_POLICIES = ("float32", "float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


def _preprocessed(data):
    """True for the TF-free loader's batches (kclip/data/pydataset.py), which its workers have
    already preprocessed: KerasHub's fit would map the preprocessor again inside tf.data."""
    if isinstance(data, keras.utils.PyDataset):
        return True
    return type(data).__module__.startswith("torch.utils.data") and type(data).__name__ == "DataLoader"


def _replace_policies(config, policy):
    """A layer config with every floating-point dtype policy in it set to `policy`.

    Integer inputs (token ids, masks) keep their dtype; kclip's float32-only layers
    (normalization, logits) set float32 themselves whatever their config says.
    """
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") in FLOAT_POLICIES:
            return {**config, "config": {**config["config"], "name": policy}}
        return {key: _replace_policies(value, policy) for key, value in config.items()}
    if isinstance(config, list):
        return [_replace_policies(value, policy) for value in config]
    return config


@keras.saving.register_keras_serializable(package="kclip")
class DualEncoder(keras_hub.models.Task):
    """Contrastive image-text model: `fit` trains it, `encode_*` embeds with it.

    Training data are batches of `({"images", "captions"}, image_ids)`, where
    `image_ids[i]` names the image of row i so that two captions of one image in a
    batch count as positives. KerasHub's `Task.fit` runs the preprocessor over the
    raw batches inside `tf.data`, off the training thread.

    Args:
        backbone: a `DualEncoderBackbone`.
        preprocessor: a `DualEncoderPreprocessor`.
        contrastive_loss: `"clip"` (learnable temperature), `"siglip"` (pairwise
            sigmoid, learnable temperature and bias: the `sigmoid_logits` output) or
            `"soft_targets"` (the seed's loss, at a fixed `temperature`).
        temperature: only for `"soft_targets"`.
    """

    backbone_cls = DualEncoderBackbone
    preprocessor_cls = DualEncoderPreprocessor

    def __init__(
        self, backbone, preprocessor=None, contrastive_loss="clip", temperature=1.0, **kwargs
    ):
        if contrastive_loss not in losses.LOSS_NAMES:
            raise ValueError(
                f"Unknown contrastive_loss {contrastive_loss!r}; "
                f"choose one of {losses.LOSS_NAMES}."
            )
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor

        # === Functional model ===
        inputs = backbone.input
        outputs = backbone(inputs)
        if contrastive_loss == "siglip":
            # SigLIP's scale and bias live in the task's graph, so a clip model's file is unchanged.
            self.sigmoid_logits = SigmoidLogits(name="sigmoid_logits")
            outputs = {**outputs, "sigmoid_logits": self.sigmoid_logits(
                outputs["image_embeddings"], outputs["text_embeddings"])}
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.contrastive_loss = contrastive_loss
        self.temperature = temperature
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.text_to_image_accuracy = keras.metrics.Mean(name="t2i_accuracy")
        self.image_to_text_accuracy = keras.metrics.Mean(name="i2t_accuracy")
        # Training-only settings and caches, kept out of Keras' layer tracking.
        object.__setattr__(self, "contrastive_chunk_size", None)
        object.__setattr__(self, "_replicas_synced", False)
        object.__setattr__(self, "_encoders", {})
        object.__setattr__(self, "_fingerprint", None)

    def call(self, inputs, training=None, mask=None):
        # Batches of cached frozen-tower features (kclip/training/feature_cache.py) run the heads only.
        if isinstance(inputs, dict) and ("image_features" in inputs or "text_features" in inputs):
            outputs = self.backbone.outputs_from_features(inputs, training=training)
            if self.contrastive_loss == "siglip":
                outputs["sigmoid_logits"] = self.sigmoid_logits(
                    outputs["image_embeddings"], outputs["text_embeddings"])
            return outputs
        return super().call(inputs, training=training, mask=mask)

    def _assert_input_compatibility(self, *args):
        # Feature batches do not match the functional inputs (images, token ids) by design.
        if args and isinstance(args[0], dict) and ("image_features" in args[0] or "text_features" in args[0]):
            return None
        return super()._assert_input_compatibility(*args)

    # --- Training -------------------------------------------------------------

    def compile(
        self,
        optimizer="auto",
        learning_rate=1e-3,
        image_learning_rate=1e-4,
        text_learning_rate=1e-5,
        weight_decay=0.0,
        contrastive_chunk_size=None,
        **kwargs,
    ):
        """Compiles with per-tower learning rates.

        `contrastive_chunk_size`: run the towers on chunks of this many rows of each batch, with
        gradient caching (kclip/models/grad_cache.py); the loss still sees the whole batch.

        `learning_rate` is the heads' rate and the one schedules act on; the towers
        step at `image_learning_rate` and `text_learning_rate`, scaled in
        proportion when a schedule changes the heads' rate. A frozen tower
        (`trainable = False`) is skipped.
        """
        if optimizer == "auto":
            optimizer = MultiRateAdamW(learning_rate=learning_rate, weight_decay=weight_decay)
            # Norms, biases and the temperature are not decayed, as in CLIP.
            optimizer.exclude_from_weight_decay(
                var_names=["bias", "gamma", "beta", "log_logit_scale"]
            )
        object.__setattr__(self, "contrastive_chunk_size", grad_cache.checked_chunk_size(contrastive_chunk_size))
        super().compile(optimizer=optimizer, **kwargs)
        inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
        if isinstance(inner, MultiRateAdamW):
            base_rate = float(ops.convert_to_numpy(inner.learning_rate))
            inner.set_variable_multipliers(
                [
                    (image_learning_rate / base_rate, self.backbone.image_encoder.trainable_variables),
                    (text_learning_rate / base_rate, self.backbone.text_encoder.trainable_variables),
                ]
            )

    @property
    def metrics(self):
        return [self.loss_tracker, self.text_to_image_accuracy, self.image_to_text_accuracy]

    def _loss_and_metrics(self, outputs, image_ids):
        loss = losses.contrastive_loss(
            self.contrastive_loss, outputs, image_ids, self.temperature
        )
        text_to_image, image_to_text = losses.in_batch_accuracy(outputs["logits"], image_ids)
        return loss, text_to_image, image_to_text

    def _update_metrics(self, loss, text_to_image, image_to_text):
        self.loss_tracker.update_state(loss)
        self.text_to_image_accuracy.update_state(text_to_image)
        self.image_to_text_accuracy.update_state(image_to_text)
        return {metric.name: metric.result() for metric in self.metrics}

    def train_step(self, *args):
        # Only the gradient computation differs between backends; the loss does not.
        backend = keras.config.backend()
        if backend == "jax":
            return self._jax_train_step(*args)
        (data,) = args
        inputs, image_ids, _ = keras.utils.unpack_x_y_sample_weight(data)
        if backend == "torch":
            loss, text_to_image, image_to_text = train_steps.torch_step(self, inputs, image_ids)
        elif backend == "tensorflow":
            loss, text_to_image, image_to_text = train_steps.tensorflow_step(self, inputs, image_ids)
        else:
            raise NotImplementedError(
                f"DualEncoder.train_step supports the torch, jax and tensorflow backends, "
                f"not {backend!r}."
            )
        return self._update_metrics(loss, text_to_image, image_to_text)

    def embedding_loss(self, image_embeddings, text_embeddings, image_ids):
        """Loss and accuracies of these rows' embeddings against the whole batch (every rank's rows,
        gathered with their gradient, under torch data parallel)."""
        return train_steps.embedding_loss(self, image_embeddings, text_embeddings, image_ids)

    def _stateless_loss(self, trainable, non_trainable, optimizer_variables, inputs, image_ids):
        """JAX: the scaled loss as a pure function of the variables, for `jax.value_and_grad`."""
        if self.contrastive_chunk_size:
            loss, text_to_image, image_to_text, non_trainable = grad_cache.jax_loss(
                self, trainable, non_trainable, inputs, image_ids)
        else:
            outputs, non_trainable = self.stateless_call(trainable, non_trainable, inputs, training=True)
            loss, text_to_image, image_to_text = self._loss_and_metrics(outputs, image_ids)
        # The loss scale (mixed_float16) is an optimizer variable: read it from this step's state.
        with keras.StatelessScope(state_mapping=list(zip(self.optimizer.variables, optimizer_variables))):
            scaled_loss = self.optimizer.scale_loss(loss)
        return scaled_loss, (loss, text_to_image, image_to_text, non_trainable)

    def _jax_train_step(self, state, data):
        """JAX's stateless step: every variable comes in with `state` and goes out with the result."""
        import jax

        trainable, non_trainable, optimizer_variables, metrics_variables = state
        inputs, image_ids, _ = keras.utils.unpack_x_y_sample_weight(data)
        gradient_fn = jax.value_and_grad(self._stateless_loss, has_aux=True)
        (_, (loss, text_to_image, image_to_text, non_trainable)), gradients = gradient_fn(
            trainable, non_trainable, optimizer_variables, inputs, image_ids
        )
        trainable, optimizer_variables = self.optimizer.stateless_apply(
            optimizer_variables, gradients, trainable
        )
        logs, metrics_variables = self._stateless_update_metrics(
            metrics_variables, loss, text_to_image, image_to_text
        )
        return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)

    def _stateless_update_metrics(self, metrics_variables, *values):
        with keras.StatelessScope(
            state_mapping=list(zip(self.metrics_variables, metrics_variables))
        ) as scope:
            logs = self._update_metrics(*values)
        updated = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, [new if new is not None else old for new, old in zip(updated, metrics_variables)]

    def test_step(self, *args):
        if keras.config.backend() == "jax":
            state, data = args
            trainable, non_trainable, metrics_variables = state
            inputs, image_ids, _ = keras.utils.unpack_x_y_sample_weight(data)
            outputs, non_trainable = self.stateless_call(trainable, non_trainable, inputs, training=False)
            logs, metrics_variables = self._stateless_update_metrics(
                metrics_variables, *self._loss_and_metrics(outputs, image_ids)
            )
            return logs, (trainable, non_trainable, metrics_variables)
        (data,) = args
        inputs, image_ids, _ = keras.utils.unpack_x_y_sample_weight(data)
        outputs = self(inputs, training=False)
        return self._update_metrics(*self._loss_and_metrics(outputs, image_ids))

    # Under trainer.distribution=data_parallel only training splits batches over devices.
    def evaluate(self, *args, **kwargs):
        with undistributed():
            if _preprocessed(args[0] if args else kwargs.get("x")):
                return keras.Model.evaluate(self, *args, **kwargs)
            return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        with undistributed():
            return super().predict(*args, **kwargs)

    def fit(self, *args, **kwargs):
        object.__setattr__(self, "_fingerprint", None)
        try:
            if _preprocessed(args[0] if args else kwargs.get("x")):
                return keras.Model.fit(self, *args, **kwargs)
            return super().fit(*args, **kwargs)
        finally:
            object.__setattr__(self, "_fingerprint", None)

    # --- Inference ------------------------------------------------------------

    @property
    def image_size(self):
        """Side of the square images the image tower was trained on."""
        return int(self.preprocessor.image_size[0])

    def _encoder(self, modality):
        # Sub-graphs of the backbone, built once; `predict_on_batch` keeps autograd out.
        if modality not in self._encoders:
            inputs = self.backbone.input
            if modality == "image":
                encoder = keras.Model(inputs["images"], self.backbone.output["image_embeddings"])
            else:
                encoder = keras.Model(
                    {"token_ids": inputs["token_ids"], "padding_mask": inputs["padding_mask"]},
                    self.backbone.output["text_embeddings"],
                )
            object.__setattr__(self, "_encoders", {**self._encoders, modality: encoder})
        return self._encoders[modality]

    def encode_text(self, texts, batch_size=256):
        """List of strings -> (N, projection_dim) float32 unit vectors."""
        return self.encode_tokenized(self.tokenize(texts, batch_size))

    def tokenize(self, texts, batch_size=256):
        """List of strings -> the text tower's packed inputs, one dict per batch, for `encode_tokenized`.

        Tokenizing and packing cost more than the demo's text tower itself (0.49 s against about
        0.1 s for its 1,185 validation captions), so a split embedded again and again, as the
        validation split is during training, keeps its batches.
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        empty = [i for i, text in enumerate(texts) if not str(text).strip()]
        if empty:
            raise ValueError(
                f"Empty caption at position(s) {empty[:10]}: give each query some words."
            )
        return [self.preprocessor({"captions": texts[start : start + batch_size]})
                for start in range(0, len(texts), batch_size)]

    def encode_tokenized(self, batches):
        """Batches from `tokenize` -> (N, projection_dim) float32 unit vectors."""
        encoder = self._encoder("text")
        vectors = [np.asarray(encoder.predict_on_batch(packed), dtype="float32") for packed in batches]
        return np.concatenate(vectors) if vectors else np.zeros((0, self.backbone.projection_dim), "float32")

    def resize_image(self, image):
        """One image (any size, channels-last uint8) -> the model's square size."""
        return np.asarray(ops.convert_to_numpy(self.preprocessor.image_converter.resizing(image)))

    def encode_image(self, images, batch_size=64):
        """Images (paths, PIL images or HxWx3 arrays) -> (N, projection_dim) float32 unit vectors."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        encoder = self._encoder("image")
        batches = []
        for start in range(0, len(images), batch_size):
            chunk = [
                self.resize_image(load_model_image(image, self.image_size))
                for image in images[start : start + batch_size]
            ]
            converted = self.preprocessor({"images": np.stack(chunk)})["images"]
            batches.append(np.asarray(encoder.predict_on_batch(converted), dtype="float32"))
        return np.concatenate(batches) if batches else np.zeros((0, self.backbone.projection_dim), "float32")

    @property
    def compute_policy(self):
        """The dtype policy the towers compute in (a mixed policy keeps float32 weights)."""
        return self.backbone.dtype_policy.name

    def with_precision(self, policy):
        """A copy of this model whose layers compute under `policy`.

        Mixed policies keep float32 variables, so the weights carry over exactly (copied, so
        the fingerprint and any index built with this model stay valid); only the arithmetic
        changes. The preprocessor (float32 image converter, tokenizer) is shared.
        """
        if policy not in FLOAT_POLICIES:
            raise ValueError(f"Unknown precision {policy!r}: choose one of {FLOAT_POLICIES}.")
        if policy == self.compute_policy:
            return self
        return self.rebuilt(policy)

    def rebuilt(self, policy=None):
        """A fresh, uncompiled copy with the same weights and no optimizer state.

        `policy` (default: keep each layer's own) sets the compute policy of every layer.
        The preprocessor is shared, not rebuilt: its vocabulary lives in assets, not config.
        """
        config = self.backbone.get_config()
        if policy is not None:
            config = _replace_policies(config, policy)
        backbone = self.backbone.__class__.from_config(config)
        backbone.set_weights(self.backbone.get_weights())
        clone = self.__class__(
            backbone,
            self.preprocessor,
            contrastive_loss=self.contrastive_loss,
            temperature=self.temperature,
            compile=False,
        )
        if self.contrastive_loss == "siglip":
            clone.sigmoid_logits.set_weights(self.sigmoid_logits.get_weights())
        return clone

    def fingerprint(self):
        """A hash of the weights: an index built by other weights is refused."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            # The backbone's weights only: SigLIP's scale and bias do not change an embedding.
            for weight in self.backbone.weights:
                digest.update(weight.path.encode())
                digest.update(np.ascontiguousarray(ops.convert_to_numpy(weight)).tobytes())
            object.__setattr__(self, "_fingerprint", digest.hexdigest()[:16])
        return self._fingerprint

    def get_config(self):
        config = super().get_config()
        config.update({"contrastive_loss": self.contrastive_loss, "temperature": self.temperature})
        return config

    @classmethod
    def from_config(cls, config):
        # A loaded model is for search and evaluation; `compile()` again to train on.
        return super().from_config({"compile": False, **config})
