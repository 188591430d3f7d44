"""Gradient caching (GradCache, Gao et al. 2021; open_clip's `--accum-freq`): a contrastive batch
larger than the towers' activations fit, at the memory of one chunk.

`trainer.contrastive_chunk_size` = c splits each batch (each rank's batch under data parallel)
into chunks of c rows, in two passes:

1. Each chunk runs through both towers without keeping activations; the embeddings of all
   chunks (and, under data parallel, of all ranks) meet in the loss, which is differentiated
   with respect to the embeddings (and the logit scale and bias) only.
2. Each chunk runs again, keeping activations this time, and the cached embedding gradients
   are pushed back through it; parameter gradients add up over the chunks.

The second pass must compute the embeddings the first one did: the random state that dropout
draws from (torch's generators, Keras' seed-generator variables) and the batch-norm moving
statistics are restored to their values before the first pass, and each chunk replays the
masks it drew there. Batch norm normalizes with each chunk's own statistics in both passes. The
result equals, to rounding, the gradient of the same chunked forward built as one graph
(tests/test_chunked_loss.py), at the memory of one chunk's activations plus the embeddings.

On JAX the same thing is `jax.checkpoint` around each chunk's towers: the backward pass reruns
each chunk's forward from its inputs and its random state.
"""

import keras

from kclip.models import losses


def checked_chunk_size(chunk_size):
    """None (no chunks) or a positive number of rows."""
    if chunk_size is None:
        return None
    if int(chunk_size) < 1:
        raise ValueError(f"contrastive_chunk_size must be a positive number of rows, not {chunk_size}.")
    return int(chunk_size)


def check_chunk_size(chunk_size, rows):
    if rows % chunk_size:
        raise ValueError(
            f"trainer.contrastive_chunk_size={chunk_size} does not divide the batch of {rows} rows "
            f"(each process's batch under data parallel); choose a divisor of {rows}."
        )
    return rows // chunk_size


def static_rows(image_ids):
    rows = image_ids.shape[0]
    if rows is None:
        raise ValueError(
            "trainer.contrastive_chunk_size needs batches of a known size (the training pipeline's "
            "drop_remainder=True batches); this batch's size is only known at run time."
        )
    return int(rows)


def chunk(inputs, start, size):
    return {key: value[start:start + size] for key, value in inputs.items()}


def _add(total, gradient):
    if gradient is None:
        return total
    return gradient if total is None else total + gradient


# --- torch ---------------------------------------------------------------------------------


def _torch_rng_state():
    import torch

    return torch.get_rng_state(), (torch.cuda.get_rng_state() if torch.cuda.is_available() else None)


def _set_torch_rng_state(state):
    import torch

    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)


def torch_backward(model, inputs, image_ids, chunk_size, scale_loss):
    """Leaves the chunked batch's (scaled) gradients in each variable's `.grad`; returns
    (loss, text-to-image accuracy, image-to-text accuracy)."""
    import torch

    rows = int(image_ids.shape[0])
    count = check_chunk_size(chunk_size, rows)
    state = [variable.value.detach().clone() for variable in model.non_trainable_variables]
    random_state = _torch_rng_state()
    with torch.no_grad():
        first = [model(chunk(inputs, k * chunk_size, chunk_size), training=True) for k in range(count)]
    images = torch.cat([outputs["image_embeddings"] for outputs in first]).detach().requires_grad_()
    texts = torch.cat([outputs["text_embeddings"] for outputs in first]).detach().requires_grad_()
    del first
    loss, text_to_image, image_to_text = model.embedding_loss(images, texts, image_ids)
    scale_loss(loss).backward()
    with torch.no_grad():
        for variable, value in zip(model.non_trainable_variables, state):
            variable.value.copy_(value)
    _set_torch_rng_state(random_state)
    for k in range(count):
        outputs = model(chunk(inputs, k * chunk_size, chunk_size), training=True)
        pairs = [(outputs[name], cached.grad[k * chunk_size:(k + 1) * chunk_size])
                 for name, cached in (("image_embeddings", images), ("text_embeddings", texts))
                 if cached.grad is not None and outputs[name].requires_grad]
        if pairs:
            torch.autograd.backward([tensor for tensor, _ in pairs], [gradient for _, gradient in pairs])
    return loss.detach(), text_to_image, image_to_text


# --- TensorFlow ----------------------------------------------------------------------------


def tensorflow_gradients(model, inputs, image_ids, chunk_size):
    """(gradients of the scaled loss for `model.trainable_weights`, loss, accuracies...)."""
    import tensorflow as tf

    rows = static_rows(image_ids)
    count = check_chunk_size(chunk_size, rows)
    variables = model.trainable_weights
    state = [tf.identity(variable.value) for variable in model.non_trainable_variables]
    first = [model(chunk(inputs, k * chunk_size, chunk_size), training=True) for k in range(count)]
    images = tf.stop_gradient(tf.concat([outputs["image_embeddings"] for outputs in first], 0))
    texts = tf.stop_gradient(tf.concat([outputs["text_embeddings"] for outputs in first], 0))
    with tf.GradientTape() as tape:
        tape.watch([images, texts])
        loss, text_to_image, image_to_text = model.embedding_loss(images, texts, image_ids)
        scaled_loss = model.optimizer.scale_loss(loss)
    image_gradient, text_gradient, *totals = tape.gradient(scaled_loss, [images, texts, *variables])
    totals = [_dense(gradient) for gradient in totals]
    for variable, value in zip(model.non_trainable_variables, state):
        variable.assign(value)
    for k in range(count):
        rows_of_chunk = slice(k * chunk_size, (k + 1) * chunk_size)
        with tf.GradientTape() as tape:
            outputs = model(chunk(inputs, k * chunk_size, chunk_size), training=True)
        targets, cached = [], []
        for name, gradient in (("image_embeddings", image_gradient), ("text_embeddings", text_gradient)):
            if gradient is not None:
                targets.append(outputs[name])
                cached.append(gradient[rows_of_chunk])
        gradients = tape.gradient(targets, variables, output_gradients=cached)
        totals = [_add(total, _dense(gradient)) for total, gradient in zip(totals, gradients)]
    return totals, loss, text_to_image, image_to_text


def _dense(gradient):
    import tensorflow as tf

    # Keras 3.15's Adam gets sparse embedding gradients wrong (kclip/models/task.py's TF step).
    return tf.convert_to_tensor(gradient) if isinstance(gradient, tf.IndexedSlices) else gradient


# --- JAX -----------------------------------------------------------------------------------


def jax_embeddings(model, trainable, non_trainable, inputs, chunk_size, groups=1):
    """Both towers' embeddings, chunk by chunk, each chunk's forward rematerialized in the backward
    pass; returns (image embeddings, text embeddings, non-trainable state after the last chunk).

    `groups` > 1 (data parallel over that many devices): each device's rows are chunked, and chunk
    k takes the k-th chunk of every device, so that every chunk stays spread over the devices.
    """
    import jax
    import jax.numpy as jnp

    rows = static_rows(inputs["images"])
    if rows % groups:
        raise ValueError(f"A batch of {rows} rows does not split over {groups} devices.")
    count = check_chunk_size(chunk_size, rows // groups)

    def towers(trainable, non_trainable, piece):
        outputs, non_trainable = model.stateless_call(trainable, non_trainable, piece, training=True)
        return outputs["image_embeddings"], outputs["text_embeddings"], non_trainable

    towers = jax.checkpoint(towers)

    def piece_of(value, k):
        shaped = jnp.reshape(value, (groups, count, chunk_size) + tuple(value.shape[1:]))
        return jnp.reshape(shaped[:, k], (groups * chunk_size,) + tuple(value.shape[1:]))

    images, texts = [], []
    for k in range(count):
        image, text, non_trainable = towers(trainable, non_trainable,
                                            {key: piece_of(value, k) for key, value in inputs.items()})
        images.append(image)
        texts.append(text)

    def ordered(parts):
        # Back to the batch's own row order: device-major, then chunk.
        stacked = jnp.stack([jnp.reshape(part, (groups, chunk_size, -1)) for part in parts], axis=1)
        return jnp.reshape(stacked, (rows, -1))

    return ordered(images), ordered(texts), non_trainable


def jax_loss(model, trainable, non_trainable, inputs, image_ids):
    """JAX: (loss, accuracies..., non-trainable state) of the chunked batch, as a pure function."""
    images, texts, non_trainable = jax_embeddings(model, trainable, non_trainable, inputs,
                                                  model.contrastive_chunk_size, groups=groups_of(inputs))
    # The logit layers' variables are read from this step's traced values.
    with keras.StatelessScope(state_mapping=list(zip(model.trainable_variables, trainable))):
        loss, text_to_image, image_to_text = model.embedding_loss(images, texts, image_ids)
    return loss, text_to_image, image_to_text, non_trainable


def loss_of_rows(name, logits_layers, images, texts, all_images, all_texts, image_ids, all_ids, temperature):
    """The loss and accuracies of these rows (`images`, `texts`) against the whole batch
    (`all_*`, every rank's rows under data parallel; the same tensors in one process)."""
    clip_logits, sigmoid_logits = logits_layers
    text_logits = clip_logits(all_images, texts)
    image_logits = clip_logits(all_texts, images)
    if name == "clip":
        loss = losses.clip_loss_of_rows(text_logits, image_logits, image_ids, all_ids)
    elif name == "siglip":
        loss = losses.sigmoid_loss(sigmoid_logits(all_images, texts), image_ids, all_ids)
    elif name == "soft_targets":
        # Its targets mix every pair's similarities: each rank computes the whole batch's loss.
        loss = losses.soft_targets_loss(all_images, all_texts, temperature)
    else:
        raise ValueError(f"Unknown loss {name!r}. Choose one of {losses.LOSS_NAMES}.")
    return (loss, losses.accuracy_of_rows(text_logits, image_ids, all_ids),
            losses.accuracy_of_rows(image_logits, image_ids, all_ids))


def groups_of(inputs):
    """Devices a JAX DataParallel batch is split over (1 without a distribution)."""
    distribution = keras.distribution.distribution() if keras.config.backend() == "jax" else None
    if distribution is None:
        return 1
    return len(distribution.device_mesh.devices.reshape(-1))
