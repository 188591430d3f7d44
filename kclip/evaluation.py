"""Retrieval recall of a trained model over one split of captioned images."""

import numpy as np

from kclip.retrieval import format_metrics_table, retrieval_metrics


def embed_split(model, images, batch_size=64):
    """Embeds every image and every caption of a list of `CaptionedImage`s.

    Returns (image_embeddings, text_embeddings, text_to_image).
    """
    if not images:
        raise ValueError("Nothing to evaluate: the split has no images.")
    captions, text_to_image = [], []
    for index, image in enumerate(images):
        captions.extend(image.captions)
        text_to_image.extend([index] * len(image.captions))
    image_embeddings = model.encode_image([image.image_path for image in images], batch_size=batch_size)
    text_embeddings = model.encode_text(captions, batch_size=4 * batch_size)
    return image_embeddings, text_embeddings, np.asarray(text_to_image)


def evaluate(model, images, batch_size=64):
    """Standard text->image and image->text recall (R@1/5/10, ranks, rsum)."""
    metrics = retrieval_metrics(*embed_split(model, images, batch_size=batch_size))
    metrics["num_images"] = len(images)
    metrics["num_captions"] = sum(len(image.captions) for image in images)
    return metrics


__all__ = ["embed_split", "evaluate", "format_metrics_table"]
