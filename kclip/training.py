"""One training run, from a `Config` to `OUTPUT_DIR/model.keras` and test recall."""

import contextlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import keras

from kclip import conv_layout, fused_batch_norm, graph_memory
from kclip.data.pipeline import datasets_for_training
from kclip.data.sources import load_records
from kclip.evaluation import embed_split, evaluate, format_metrics_table, write_grid
from kclip.towers import build_dual_encoder, build_word_vocabulary

GRID_MAX_ROWS = 12


def resolve_precision(precision="auto"):
    """auto: float16 mixed precision on a GPU, bfloat16 on a CPU.

    On a CPU float16 is 6-20x slower than float32 while bfloat16 is faster.
    """
    if precision != "auto":
        return precision
    return "mixed_float16" if _gpu_available() else "mixed_bfloat16"


@contextlib.contextmanager
def training_levers(fused_batch_norm_kernel=True, release_intermediates=True, fast_conv_kernels=True):
    """The measured speed and memory levers that apply while `fit` runs (all on by default).

    Each changes how the step runs, not what it computes; benchmarks/RESULTS-training.md
    records what each one gives.
    """
    with fused_batch_norm.enabled(fused_batch_norm_kernel), graph_memory.enabled(
        release_intermediates
    ), conv_layout.enabled(fast_conv_kernels):
        yield


def _gpu_available():
    if keras.config.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False


def export_model(model, path):
    """Saves a `.keras` file without optimizer state, atomically.

    `include_optimizer=False` is ignored for `.keras`, so the model is rebuilt from
    its config and weights first. The file is written under a temporary name and
    renamed, so a crash never leaves a truncated model behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone.__class__.from_config(model.backbone.get_config())
    backbone.set_weights(model.backbone.get_weights())
    # The preprocessor is shared, not rebuilt: its vocabulary lives in assets, not config.
    clone = model.__class__(
        backbone,
        model.preprocessor,
        contrastive_loss=model.contrastive_loss,
        temperature=model.temperature,
        compile=False,
    )
    temporary = path.with_name(f".{path.stem}.partial-{os.getpid()}.keras")
    try:
        clone.save(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def build_model_for_data(config, train_images):
    """Builds the configured model; a from-scratch text tower gets a vocabulary of the training captions."""
    vocabulary = None
    if config.model.text_encoder_config is not None and config.model.vocabulary is None:
        vocabulary = build_word_vocabulary(
            [caption for image in train_images for caption in image.captions],
            max_size=config.model.vocabulary_size,
        )
    model = build_dual_encoder(
        config.model,
        sequence_length=config.data.max_length,
        vocabulary=vocabulary,
        dynamic_padding=config.data.dynamic_padding,
    )
    model.compile(
        learning_rate=config.model.head_lr,
        image_learning_rate=config.model.image_encoder_lr,
        text_learning_rate=config.model.text_encoder_lr,
        weight_decay=config.model.weight_decay,
    )
    return model


def train(config, callbacks=(), verbose="auto"):
    """Trains, saves `model.keras` and `test_metrics.json` in `config.output_dir`.

    Returns (model, history, test_metrics).
    """
    from kclip.tracking import finish_tracking, training_callbacks

    keras.utils.set_random_seed(config.trainer.seed)
    policy = resolve_precision(config.trainer.precision)
    keras.config.set_dtype_policy(policy)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))

    records = load_records(config.data, output_dir, seed=config.trainer.seed)
    print(records.summary())
    train_images = records.for_split("train")
    validation_images = records.for_split("validation")
    model = build_model_for_data(config, train_images)
    print(f"Model: {model.count_params():,} parameters, precision {policy}, "
          f"images {config.model.image_size}px {model.backbone.image_data_format}.")

    train_data, validation_data = datasets_for_training(
        records,
        config.data,
        model.preprocessor.image_converter.resizing,
        config.model.image_size,
        seed=config.trainer.seed,
    )
    test_metrics, grid_path = None, None
    try:
        callbacks = [*training_callbacks(config, output_dir, validation_images), *callbacks]
        started = time.time()
        with training_levers(
            config.trainer.fused_batch_norm,
            config.trainer.release_intermediates,
            config.trainer.fast_conv_kernels,
        ):
            history = model.fit(
                train_data,
                validation_data=validation_data,
                epochs=config.trainer.max_epochs,
                steps_per_epoch=config.trainer.steps_per_epoch,
                callbacks=callbacks,
                verbose=verbose,
            )
        print(f"Trained in {time.time() - started:.0f} s.")
        model_path = export_model(model, output_dir / "model.keras")
        print(f"Saved {model_path}")
        test_metrics, grid_path = _final_evaluation(config, model, records, output_dir)
    except BaseException:
        finish_tracking(exit_code=1)
        raise
    finish_tracking(test_metrics, grid_path)
    return model, history, test_metrics


def _final_evaluation(config, model, records, output_dir):
    """Test recall (test_metrics.json) and a picture of retrieval results (retrieval_grid.png).

    The grid shows the test split, or the validation split when there is no test split.
    """
    test_images = records.for_split("test")
    test_metrics = None
    grid_images, embeddings = test_images, None
    if test_images:
        test_metrics, embeddings = evaluate(model, test_images, batch_size=config.data.val_batch_size,
                                            return_embeddings=True)
        (output_dir / "test_metrics.json").write_text(json.dumps(test_metrics, indent=2))
        print(f"Test split ({len(test_images)} images):")
        print(format_metrics_table(test_metrics))
    else:
        grid_images = records.for_split("validation")
        if grid_images:
            embeddings = embed_split(model, grid_images, batch_size=config.data.val_batch_size)
    grid_path = None
    if embeddings is not None:
        grid_path = write_grid(grid_images, embeddings, output_dir / "retrieval_grid.png",
                               num_queries=min(config.log_prediction_callback.max_sentences, GRID_MAX_ROWS),
                               k=config.log_prediction_callback.max_matches)
        print(f"Wrote {grid_path}")
    return test_metrics, grid_path
