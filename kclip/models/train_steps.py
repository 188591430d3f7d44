"""The torch and TensorFlow halves of `DualEncoder.train_step` (JAX's stateless step stays in the task).

Each returns (loss, text-to-image accuracy, image-to-text accuracy) after applying the optimizer.
The loss is the same `keras.ops` code on every backend; only how gradients are taken differs, and,
on torch, the data-parallel wiring (kclip/backends/torch/distributed.py) and gradient caching
(kclip/models/grad_cache.py).
"""

from kclip.models import grad_cache


def torch_step(model, inputs, image_ids):
    """One torch step; under data parallel on this rank's rows of the global batch."""
    import torch

    from kclip.backends.torch import distributed

    parallel = distributed.active()
    if parallel:
        if not model._replicas_synced:
            # Every rank starts from rank 0's weights, whatever each built or restored.
            distributed.broadcast_variables(model.variables)
            object.__setattr__(model, "_replicas_synced", True)
        inputs, image_ids = distributed.local_batch(inputs, image_ids)
    # Not `model.zero_grad()`: the model's torch parameters are registered only once `fit` tracks them.
    for variable in model.trainable_weights:
        variable.value.grad = None
    if model.contrastive_chunk_size:
        loss, text_to_image, image_to_text = grad_cache.torch_backward(
            model, inputs, image_ids, model.contrastive_chunk_size, model.optimizer.scale_loss)
    else:
        outputs = model(inputs, training=True)
        if parallel:
            loss, text_to_image, image_to_text = model.embedding_loss(
                outputs["image_embeddings"], outputs["text_embeddings"], image_ids)
        else:
            loss, text_to_image, image_to_text = model._loss_and_metrics(outputs, image_ids)
        model.optimizer.scale_loss(loss).backward()
    variables = [v for v in model.trainable_weights if v.value.grad is not None]
    gradients = [v.value.grad for v in variables]
    if parallel:
        distributed.average_gradients(gradients)
    with torch.no_grad():
        model.optimizer.apply(gradients, variables)
    if parallel:
        distributed.average_state(model)
        # fit logs the global batch's loss and accuracies: the means of the ranks' ones.
        loss, text_to_image, image_to_text = distributed.mean_over_ranks([loss, text_to_image, image_to_text])
    return loss, text_to_image, image_to_text


def tensorflow_step(model, inputs, image_ids):
    import tensorflow as tf

    if model.contrastive_chunk_size:
        gradients, loss, text_to_image, image_to_text = grad_cache.tensorflow_gradients(
            model, inputs, image_ids, model.contrastive_chunk_size)
        model.optimizer.apply(gradients, model.trainable_weights)
        return loss, text_to_image, image_to_text
    with tf.GradientTape() as tape:
        outputs = model(inputs, training=True)
        loss, text_to_image, image_to_text = model._loss_and_metrics(outputs, image_ids)
        scaled_loss = model.optimizer.scale_loss(loss)
    gradients = tape.gradient(scaled_loss, model.trainable_weights)
    # Embedding gradients come as IndexedSlices, and Keras 3.15's Adam squares their
    # rows before summing repeated tokens (sum of squares, not square of sum): the
    # second moment goes wrong for every token seen twice in a batch. Dense
    # gradients give the update torch and JAX compute.
    gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]
    model.optimizer.apply(gradients, model.trainable_weights)
    return loss, text_to_image, image_to_text


def embedding_loss(model, image_embeddings, text_embeddings, image_ids):
    """`DualEncoder.embedding_loss`: these rows scored against the whole batch, which under torch data
    parallel is every rank's rows, gathered with their gradient."""
    import keras

    all_images, all_texts, all_ids = image_embeddings, text_embeddings, image_ids
    if keras.config.backend() == "torch":
        from kclip.backends.torch import distributed

        if distributed.active():
            all_images = distributed.gather_with_grad(image_embeddings)
            all_texts = distributed.gather_with_grad(text_embeddings)
            all_ids = distributed.gather(image_ids)
    layers = (model.backbone.contrastive_logits, getattr(model, "sigmoid_logits", None))
    return grad_cache.loss_of_rows(model.contrastive_loss, layers, image_embeddings, text_embeddings,
                                   all_images, all_texts, image_ids, all_ids, model.temperature)
