"""One training run, from a `Config` to `OUTPUT_DIR/model.keras` and test recall."""

import contextlib
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import keras

from kclip.backends.torch import distributed
from kclip.backends.torch.levers import training_levers
from kclip.data.pipeline import datasets_for_training, repeated_for_fit
from kclip.data.sources import load_records
from kclip.evaluation.evaluate import embed_split, evaluate, format_metrics_table, write_grid
from kclip.models.towers import build_dual_encoder, build_word_vocabulary
from kclip.backends.jax.distribution import configure as configure_distribution
from kclip.backends.jax.distribution import undistributed
from kclip.training import feature_cache
from kclip.training.export import export_model
from kclip.training.tracking import finish_tracking, training_callbacks
from kclip.utils.files import write_json
from kclip.utils.precision import explain_precision
from kclip.utils.precision import accelerator_scope

GRID_MAX_ROWS = 12


def resolve_jit_compile(jit_compile="auto"):
    """auto: XLA on JAX only. On this CPU it lost on TensorFlow (tf.function without XLA was
    faster for the demo and the small size) and torch.compile lost on torch
    (benchmarks/RESULTS-training.md, "Backends")."""
    if jit_compile != "auto":
        return bool(jit_compile)
    return keras.config.backend() == "jax"


def validation_epochs(every_n_epochs, max_epochs):
    """The epochs (1-based) at which `fit` computes the validation loss: the ones the recall
    callback evaluates on, every N and the last, so that `trainer.eval_every_n_epochs` governs all
    validation, as Lightning's `check_val_every_n_epoch` does."""
    return sorted({*range(every_n_epochs, max_epochs + 1, every_n_epochs), max_epochs})


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
        contrastive_chunk_size=config.trainer.contrastive_chunk_size,
        jit_compile=resolve_jit_compile(config.trainer.jit_compile),
    )
    return model


def train(config, callbacks=(), verbose="auto"):
    """Trains, saves `model.keras` and `test_metrics.json` in `config.output_dir`.

    Returns (model, history, test_metrics).
    """
    previous_policy = keras.config.dtype_policy()
    try:
        with accelerator_scope(getattr(config.trainer, "accelerator", "auto")):
            return _train(config, callbacks, verbose)
    finally:
        # The run's policy lives on in its model's layers; models built later in this process
        # (an evaluation, a second run) must not inherit it silently.
        keras.config.set_dtype_policy(previous_policy)
        if config.trainer.distribution != "none":
            distributed.shutdown()


def _train(config, callbacks, verbose):
    keras.utils.set_random_seed(config.trainer.seed)
    policy, why = explain_precision(config.trainer.precision)
    print(f"Precision: {policy} ({why}).", flush=True)
    keras.config.set_dtype_policy(policy)
    # Before the model is built: its variables are laid out on the devices as they are created.
    configure_distribution(config.trainer.distribution, config.data.train_batch_size)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Under torch data parallel rank 0 writes the run's files and prepares the data; the others
    # then read what it prepared (kclip/backends/torch/distributed.py).
    primary = distributed.is_primary()
    if primary:
        write_json(output_dir / "config.json", asdict(config))

    with distributed.primary_first(), contextlib.ExitStack() as stack:
        report_dir = output_dir if primary else stack.enter_context(tempfile.TemporaryDirectory())
        records = load_records(config.data, report_dir, seed=config.trainer.seed)
    print(records.summary())
    train_images = records.for_split("train")
    validation_images = records.for_split("validation")
    model = build_model_for_data(config, train_images)
    print(f"Model: {model.count_params():,} parameters, precision {policy}, "
          f"images {config.model.image_size}px {model.backbone.image_data_format}.")

    # Frozen image tower: the heads train on its features, computed once (kclip/training/feature_cache.py).
    cached = None
    if config.trainer.distribution == "none":
        cached = feature_cache.cached_datasets(model, records, config.model, config.data, seed=config.trainer.seed)
    if cached is not None:
        train_data, validation_data = cached
    else:
        with distributed.primary_first():
            train_data, validation_data = datasets_for_training(
                records,
                config.data,
                model.preprocessor.image_converter.resizing,
                config.model.image_size,
                seed=config.trainer.seed,
                preprocessor=model.preprocessor,
            )
    train_data, steps_per_epoch = repeated_for_fit(train_data, config.trainer.steps_per_epoch)
    test_metrics, grid_path = None, None
    try:
        callbacks = [*training_callbacks(config, output_dir, validation_images), *callbacks]
        started = time.time()
        with training_levers(
            config.trainer.fused_batch_norm,
            config.trainer.release_intermediates,
            config.trainer.fast_conv_kernels,
            config.trainer.fused_attention,
            config.trainer.fold_pool_padding,
            config.trainer.keep_freed_memory,
            inplace_activations=config.trainer.inplace_activations,
            model=model,
        ):
            history = model.fit(
                train_data,
                validation_data=validation_data,
                validation_freq=validation_epochs(config.trainer.eval_every_n_epochs, config.trainer.max_epochs),
                epochs=config.trainer.max_epochs,
                steps_per_epoch=steps_per_epoch,
                callbacks=callbacks,
                verbose=verbose if primary else 0,
                # The data pipeline shuffles each epoch itself; fit's own shuffle would only warn.
                shuffle=False,
            )
        print(f"Trained in {time.time() - started:.0f} s.")
        if not primary:  # rank 0 exports and evaluates the model every rank holds
            return model, history, None
        with undistributed():  # evaluation takes batches of any size
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
        write_json(output_dir / "test_metrics.json", test_metrics)
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
