"""Shared builders for tests: tiny towers that build in well under a second."""

from kclip.config import Config, DataConfig, ModelConfig, TrainerConfig

TINY_RESNET = {
    "input_conv_filters": [64],
    "input_conv_kernel_sizes": [3],
    "stackwise_num_filters": [64, 64],
    "stackwise_num_blocks": [1, 1],
    "stackwise_num_strides": [1, 2],
    "block_type": "basic_block",
}
TINY_DISTILBERT = {
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "dropout": 0.0,
    "max_sequence_length": 32,
}
CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow star"]


def tiny_model_config(**overrides):
    values = {
        "image_encoder": "ResNetBackbone",
        "image_encoder_config": dict(TINY_RESNET),
        "text_encoder": "DistilBertBackbone",
        "text_encoder_config": dict(TINY_DISTILBERT),
        "image_size": 32,
        "projection_dims": 16,
        "dropout": 0.0,
        "image_encoder_lr": 1e-3,
        "text_encoder_lr": 1e-3,
        "head_lr": 1e-3,
    }
    values.update(overrides)
    return ModelConfig(**values)


def tiny_config(output_dir, data_dir, **trainer):
    return Config(
        model=tiny_model_config(),
        data=DataConfig(
            dataset_name="embedded",
            dir=str(data_dir),
            num_images=120,
            train_batch_size=16,
            val_batch_size=16,
            max_length=16,
            split_fractions=[0.6, 0.2, 0.2],
            cache=True,
        ),
        trainer=TrainerConfig(
            **{"max_epochs": 1, "precision": "float32", "logger": "none", **trainer}
        ),
        output_dir=str(output_dir),
    )


def tiny_model(captions=CAPTIONS, sequence_length=16, **overrides):
    from kclip.models.towers import build_dual_encoder, build_word_vocabulary

    model = build_dual_encoder(
        tiny_model_config(**overrides),
        sequence_length=sequence_length,
        vocabulary=build_word_vocabulary(captions),
    )
    model.compile(learning_rate=1e-3, image_learning_rate=1e-3, text_learning_rate=1e-3)
    return model


def fixed_batch(size=4, image_size=32, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, image_size, image_size, 3)).astype("uint8")
    captions = np.array((CAPTIONS * size)[:size])
    return {"images": images, "captions": captions}, np.arange(size)


def seeded_model_and_batch(seed=0):
    """A tiny model seeded with `seed` and a fixed batch already through its preprocessor.

    The model's preprocessor is detached, so `model.train_step((inputs, image_ids))` can be
    called directly, as `fit` does after mapping the preprocessor over its data.
    """
    import keras

    keras.utils.set_random_seed(seed)
    model = tiny_model()
    inputs, image_ids = fixed_batch()
    inputs = model.preprocessor(inputs)
    model.preprocessor = None
    return model, inputs, image_ids
