"""trainer.contrastive_chunk_size (gradient caching, kclip/models/grad_cache.py) on every backend.

The reference is the same chunked forward built as one graph: each chunk through the towers in
training mode (batch norm on the chunk's rows, dropout drawing from the same random state), the
embeddings concatenated, the loss over the whole batch (`clip_loss` / `sigmoid_loss` on the
square matrix, not the row-block form the train step uses), one backward pass.
"""

import keras
import numpy as np
import pytest

from helpers import TINY_DISTILBERT, fixed_batch, tiny_model
from kclip.models import losses

pytestmark = pytest.mark.backend_neutral

BATCH, CHUNK = 8, 2


def model_and_batch(loss="clip", dropout=0.1, seed=0):
    keras.utils.set_random_seed(seed)
    # Dropout in the heads and in the text tower, so that the replayed masks matter.
    model = tiny_model(loss=loss, dropout=dropout, text_encoder_config={**TINY_DISTILBERT, "dropout": dropout})
    inputs, image_ids = fixed_batch(BATCH)
    image_ids = np.array([0, 1, 2, 0, 3, 4, 2, 5])  # shared images, also across chunks
    inputs = {key: keras.ops.convert_to_numpy(value) for key, value in model.preprocessor(inputs).items()}
    model.preprocessor = None
    return model, inputs, image_ids


def reference_loss(model, images, texts, image_ids):
    if model.contrastive_loss == "siglip":
        return losses.sigmoid_loss(model.sigmoid_logits(images, texts), image_ids)
    return losses.clip_loss(model.backbone.contrastive_logits(images, texts), image_ids)


def chunks(inputs):
    return [{key: value[start:start + CHUNK] for key, value in inputs.items()} for start in range(0, BATCH, CHUNK)]


def snapshot(model):
    return [keras.ops.convert_to_numpy(v) for v in model.non_trainable_variables]


def restore(model, values):
    for variable, value in zip(model.non_trainable_variables, values):
        variable.assign(value)


def torch_pair(model, inputs, image_ids):
    import torch

    from kclip.models import grad_cache

    state, random_state = snapshot(model), torch.get_rng_state()
    tensors = {key: torch.as_tensor(value) for key, value in inputs.items()}
    ids = torch.as_tensor(image_ids)
    outputs = [model(part, training=True) for part in chunks(tensors)]
    images = torch.cat([o["image_embeddings"] for o in outputs])
    texts = torch.cat([o["text_embeddings"] for o in outputs])
    loss = reference_loss(model, images, texts, ids)
    variables = model.trainable_weights
    want = torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True)
    want_state = snapshot(model)
    restore(model, state)
    torch.set_rng_state(random_state)
    for variable in variables:
        variable.value.grad = None
    got_loss, _, _ = grad_cache.torch_backward(model, tensors, ids, CHUNK, lambda value: value)
    got = [v.value.grad for v in variables]
    as_numpy = lambda values: [None if g is None else g.detach().numpy() for g in values]  # noqa: E731
    return (float(loss.detach()), as_numpy(want), want_state), (float(got_loss), as_numpy(got), snapshot(model))


def tensorflow_pair(model, inputs, image_ids):
    import tensorflow as tf

    from kclip.models import grad_cache

    state = snapshot(model)
    variables = model.trainable_weights
    with tf.GradientTape() as tape:
        outputs = [model(part, training=True) for part in chunks(inputs)]
        images = tf.concat([o["image_embeddings"] for o in outputs], 0)
        texts = tf.concat([o["text_embeddings"] for o in outputs], 0)
        loss = reference_loss(model, images, texts, image_ids)
    want = [None if g is None else tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, variables)]
    want_state = snapshot(model)
    restore(model, state)
    got, got_loss, _, _ = grad_cache.tensorflow_gradients(model, inputs, tf.constant(image_ids), CHUNK)
    got = [None if g is None else g.numpy() for g in got]
    return (float(loss), want, want_state), (float(got_loss), got, snapshot(model))


def jax_pair(model, inputs, image_ids):
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    optimizer_variables = [v.value for v in model.optimizer.variables]

    def reference(trainable, non_trainable):
        images, texts = [], []
        for part in chunks(inputs):
            outputs, non_trainable = model.stateless_call(trainable, non_trainable, part, training=True)
            images.append(outputs["image_embeddings"])
            texts.append(outputs["text_embeddings"])
        with keras.StatelessScope(state_mapping=list(zip(model.trainable_variables, trainable))):
            loss = reference_loss(model, jnp.concatenate(images), jnp.concatenate(texts), image_ids)
        return loss, non_trainable

    (loss, want_state), want = jax.value_and_grad(reference, has_aux=True)(trainable, non_trainable)
    (_, (got_loss, _, _, got_state)), got = jax.value_and_grad(model._stateless_loss, has_aux=True)(
        trainable, non_trainable, optimizer_variables, inputs, image_ids)
    as_numpy = lambda values: [np.asarray(v) for v in values]  # noqa: E731
    return (float(loss), as_numpy(want), as_numpy(want_state)), (float(got_loss), as_numpy(got), as_numpy(got_state))


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_chunked_gradients_equal_one_graph_over_the_same_chunks(loss):
    model, inputs, image_ids = model_and_batch(loss)
    model.compile(learning_rate=1e-3, image_learning_rate=1e-3, text_learning_rate=1e-3,
                  contrastive_chunk_size=CHUNK)
    pair = {"torch": torch_pair, "tensorflow": tensorflow_pair, "jax": jax_pair}[keras.config.backend()]
    (want_loss, want, want_state), (got_loss, got, got_state) = pair(model, inputs, image_ids)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    assert len(got) == len(want) > 20
    scale = max(np.abs(g).max() for g in want if g is not None)
    for variable, g_got, g_want in zip(model.trainable_weights, got, want):
        if g_want is None or not np.any(g_want):
            assert g_got is None or np.allclose(g_got, 0.0, atol=1e-6 * scale), variable.path
            continue
        np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5 * scale, err_msg=variable.path)
    # The batch-norm statistics and the seed state end where the one-graph forward left them.
    for a, b in zip(got_state, want_state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Dropout was on: the same weights score the batch differently in inference mode.
    outputs = model(inputs, training=False)
    inference = float(keras.ops.convert_to_numpy(
        reference_loss(model, outputs["image_embeddings"], outputs["text_embeddings"], image_ids)))
    assert abs(inference - want_loss) > 1e-3


def batches(inputs, image_ids):
    """fit's data: arrays, or on TensorFlow batches of a known size, as the training pipeline gives
    (gradient caching there needs the chunk count when the step is traced)."""
    if keras.config.backend() != "tensorflow":
        return {"x": inputs, "y": image_ids, "batch_size": BATCH, "shuffle": False}
    import tensorflow as tf

    return {"x": tf.data.Dataset.from_tensor_slices((inputs, image_ids)).batch(BATCH, drop_remainder=True)}


def fit_weights(chunk_size, loss="clip"):
    """Weights after two `fit` steps, with a frozen image backbone, three learning rates and a
    loss-scale optimizer."""
    from kclip.models.optimizers import MultiRateAdamW

    model, inputs, image_ids = model_and_batch(loss, seed=3)
    model.backbone.image_encoder.trainable = False
    optimizer = keras.optimizers.LossScaleOptimizer(MultiRateAdamW(learning_rate=2e-3))
    model.compile(optimizer=optimizer, learning_rate=2e-3, image_learning_rate=1e-3, text_learning_rate=3e-3,
                  contrastive_chunk_size=chunk_size)
    frozen = [keras.ops.convert_to_numpy(v) for v in model.backbone.image_encoder.trainable_weights]
    both = {key: np.concatenate([value, value]) for key, value in inputs.items()}
    history = model.fit(**batches(both, np.concatenate([image_ids, image_ids + 10])), epochs=1, verbose=0)
    return model, frozen, history.history["loss"][0]


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_fit_with_one_chunk_per_batch_trains_as_without_chunks(loss):
    """One chunk of the whole batch replays the plain step exactly, through `fit`, the optimizer
    and its loss scale, per-tower rates and a frozen tower; dropout included."""
    plain, frozen, plain_loss = fit_weights(None, loss)
    chunked, _, chunked_loss = fit_weights(BATCH, loss)
    assert chunked_loss == pytest.approx(plain_loss, rel=1e-5)
    for a, b in zip(chunked.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for value, variable in zip(frozen, chunked.backbone.image_encoder.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), value)


def test_chunk_size_must_divide_the_batch():
    model, inputs, image_ids = model_and_batch()
    with pytest.raises(ValueError, match="positive"):
        model.compile(contrastive_chunk_size=0)
    model.compile(contrastive_chunk_size=3)
    with pytest.raises(ValueError, match="does not divide the batch of 8 rows"):
        model.fit(**batches(inputs, image_ids), epochs=1, verbose=0)


@pytest.mark.torch_only
def test_chunked_gradients_hold_with_the_torch_levers_on():
    """fit runs the step under the levers (fused batch norm and attention, freed intermediates, in-place
    ReLUs, torch-ordered conv kernels); the first pass runs them without autograd, the second with it."""
    from kclip.backends.torch.levers import training_levers

    model, inputs, image_ids = model_and_batch("clip")
    model.compile(learning_rate=1e-3, image_learning_rate=1e-3, text_learning_rate=1e-3,
                  contrastive_chunk_size=CHUNK)
    with training_levers(model=model):
        (want_loss, want, _), (got_loss, got, _) = torch_pair(model, inputs, image_ids)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    scale = max(np.abs(g).max() for g in want if g is not None)
    for variable, g_got, g_want in zip(model.trainable_weights, got, want):
        if g_want is not None:
            np.testing.assert_allclose(g_got, g_want, rtol=1e-5, atol=1e-5 * scale, err_msg=variable.path)
