"""Contrastive losses and in-batch metrics, written once in `keras.ops`.

Every function takes `image_ids`: row i of the batch holds caption i and image i,
and two rows with the same id show the same image. Captions of one image in a batch
are therefore positives for each other's images, never negatives.

The `*_of_rows` forms score some rows (one data-parallel rank's captions or images, or all of
them) against every column of the global batch; each is the mean (or, for SigLIP, the sum
divided by the row count) over its rows, so the loss of the global batch is the mean of the
losses of equal-sized row blocks.
"""

from keras import ops

LOSS_NAMES = ("clip", "soft_targets", "siglip")


def positives_mask(image_ids, column_ids=None):
    """(B, C) float32 mask: 1 where row i and column j show the same image (C = B by default)."""
    image_ids = ops.reshape(image_ids, (-1,))
    column_ids = image_ids if column_ids is None else ops.reshape(column_ids, (-1,))
    return ops.cast(ops.equal(image_ids[:, None], column_ids[None, :]), "float32")


def soft_cross_entropy(logits, targets):
    """Mean over rows of -sum_j targets_ij * log_softmax(logits)_ij."""
    log_probabilities = ops.log_softmax(logits, axis=-1)
    return ops.mean(-ops.sum(targets * log_probabilities, axis=-1))


def clip_loss(logits_per_text, image_ids):
    """Symmetric cross-entropy of CLIP over a (captions x images) logit matrix.

    Each row's target spreads evenly over every column showing the same image;
    with distinct ids this is exactly CLIP's one-hot loss.
    """
    logits_per_text = ops.cast(logits_per_text, "float32")
    mask = positives_mask(image_ids)
    targets = mask / ops.sum(mask, axis=-1, keepdims=True)
    text_to_image = soft_cross_entropy(logits_per_text, targets)
    image_to_text = soft_cross_entropy(ops.transpose(logits_per_text), ops.transpose(targets))
    return (text_to_image + image_to_text) / 2.0


def clip_loss_of_rows(text_logits, image_logits, row_ids, column_ids):
    """CLIP's loss over some rows: `text_logits` (R, C) scores these rows' captions against every
    image, `image_logits` (R, C) these rows' images against every caption. With all rows it is
    `clip_loss(text_logits, ids)`, since `image_logits` is then that matrix's transpose."""
    mask = positives_mask(row_ids, column_ids)
    targets = mask / ops.sum(mask, axis=-1, keepdims=True)
    text_to_image = soft_cross_entropy(ops.cast(text_logits, "float32"), targets)
    image_to_text = soft_cross_entropy(ops.cast(image_logits, "float32"), targets)
    return (text_to_image + image_to_text) / 2.0


def sigmoid_loss(logits, row_ids, column_ids=None):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023) over a (captions x images) logit matrix.

    Every pair is a binary problem: label +1 where the caption shows the image (captions of one
    image all count), -1 elsewhere; the loss is -sum log sigmoid(label * logit) divided by the
    number of rows, as in the paper. `logits` already hold the learnable scale and bias
    (`kclip.models.layers.SigmoidLogits`). No softmax over the batch: rows can be scored apart.
    """
    logits = ops.cast(logits, "float32")
    labels = 2.0 * positives_mask(row_ids, column_ids) - 1.0
    rows = ops.cast(ops.shape(logits)[0], "float32")
    return -ops.sum(ops.log_sigmoid(labels * logits)) / rows


def soft_targets_loss(image_embeddings, text_embeddings, temperature=1.0):
    """The seed's loss: targets are the softmax of the mean in-modality similarity.

    As in the keras-io dual encoder, the logits and the targets' similarities are both divided
    by the temperature: targets = softmax((image_sim + text_sim) / (2 * temperature)).
    Computed on normalized embeddings; on raw ones it collapses (see STACK.md).
    """
    image_embeddings = ops.cast(image_embeddings, "float32")
    text_embeddings = ops.cast(text_embeddings, "float32")
    logits = ops.matmul(text_embeddings, ops.transpose(image_embeddings)) / temperature
    image_similarity = ops.matmul(image_embeddings, ops.transpose(image_embeddings))
    text_similarity = ops.matmul(text_embeddings, ops.transpose(text_embeddings))
    targets = ops.softmax((image_similarity + text_similarity) / (2.0 * temperature), axis=-1)
    text_loss = soft_cross_entropy(logits, targets)
    image_loss = soft_cross_entropy(ops.transpose(logits), ops.transpose(targets))
    return (text_loss + image_loss) / 2.0


def contrastive_loss(name, outputs, image_ids, temperature=1.0):
    """Dispatches on the configured loss name over the backbone's outputs."""
    if name == "clip":
        return clip_loss(outputs["logits"], image_ids)
    if name == "soft_targets":
        return soft_targets_loss(
            outputs["image_embeddings"], outputs["text_embeddings"], temperature
        )
    if name == "siglip":
        return sigmoid_loss(outputs["sigmoid_logits"], image_ids)
    raise ValueError(f"Unknown loss {name!r}. Choose one of {LOSS_NAMES}.")


def accuracy_of_rows(logits, row_ids, column_ids):
    """Top-1 accuracy of some rows against every column: the best column shows the row's image."""
    mask = positives_mask(row_ids, column_ids)
    return ops.mean(ops.take_along_axis(mask, ops.argmax(logits, axis=1)[:, None], axis=1))


def in_batch_accuracy(logits_per_text, image_ids):
    """Top-1 accuracy both ways: the best-scoring column shows the row's image."""
    mask = positives_mask(image_ids)
    text_best = ops.argmax(logits_per_text, axis=1)
    image_best = ops.argmax(logits_per_text, axis=0)
    text_to_image = ops.take_along_axis(mask, text_best[:, None], axis=1)
    image_to_text = ops.take_along_axis(mask, image_best[:, None], axis=1)
    return ops.mean(text_to_image), ops.mean(image_to_text)
