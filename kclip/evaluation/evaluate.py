"""Retrieval recall of a trained model over one split of captioned images, and pictures of it."""

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kclip.evaluation.metrics import format_metrics_table, retrieval_metrics, text_to_image_ranks, top_k


def _progress(total, description, progress):
    """A tqdm bar; progress=None shows it only on a terminal."""
    return tqdm(total=total, desc=description, unit="item", leave=False,
                disable=None if progress is None else not progress)


def _captions(images):
    captions, text_to_image = [], []
    for index, image in enumerate(images):
        captions.extend(image.captions)
        text_to_image.extend([index] * len(image.captions))
    return captions, text_to_image


def tokenize_split(model, images, batch_size=64):
    """The split's captions packed for `embed_split(..., tokenized=...)`, to embed one split repeatedly."""
    return model.tokenize(_captions(images)[0], batch_size=4 * batch_size)


def embed_split(model, images, batch_size=64, progress=None, tokenized=None):
    """Embeds every image and every caption of a list of `CaptionedImage`s.

    `tokenized`, from `tokenize_split` with the same images and batch size, skips tokenizing.
    Returns (image_embeddings, text_embeddings, text_to_image).
    """
    if not images:
        raise ValueError("Nothing to evaluate: the split has no images.")
    captions, text_to_image = _captions(images)
    paths = [image.image_path for image in images]
    image_batches, text_batches = [], []
    with _progress(len(paths), "Embedding images", progress) as bar:
        for start in range(0, len(paths), batch_size):
            image_batches.append(model.encode_image(paths[start:start + batch_size], batch_size=batch_size))
            bar.update(len(image_batches[-1]))
    text_batch = 4 * batch_size
    with _progress(len(captions), "Embedding captions", progress) as bar:
        # Without `tokenized`, only `encode_text` is asked of the model (any encoder will do).
        if tokenized is not None:
            for packed in tokenized:
                text_batches.append(model.encode_tokenized([packed]))
                bar.update(len(text_batches[-1]))
        else:
            for start in range(0, len(captions), text_batch):
                text_batches.append(model.encode_text(captions[start:start + text_batch], batch_size=text_batch))
                bar.update(len(text_batches[-1]))
    text_embeddings = np.concatenate(text_batches)
    if len(text_embeddings) != len(captions):
        raise ValueError(f"{len(text_embeddings)} caption embeddings for {len(captions)} captions: "
                         "`tokenized` must come from tokenize_split with the same images and batch size.")
    return np.concatenate(image_batches), text_embeddings, np.asarray(text_to_image)


def metrics_from_embeddings(images, embeddings):
    metrics = retrieval_metrics(*embeddings)
    metrics["num_images"] = len(images)
    metrics["num_captions"] = sum(len(image.captions) for image in images)
    return metrics


def evaluate(model, images, batch_size=64, progress=None, return_embeddings=False):
    """Standard text->image and image->text recall (R@1/5/10, ranks, rsum).

    With return_embeddings=True, returns (metrics, (image_embeddings, text_embeddings, text_to_image)).
    """
    embeddings = embed_split(model, images, batch_size=batch_size, progress=progress)
    metrics = metrics_from_embeddings(images, embeddings)
    return (metrics, embeddings) if return_embeddings else metrics


def choose_queries(images, count):
    """Caption indices (into the split's caption list) of `count` queries spread over the split.

    The first caption of evenly spaced images, so the same queries come back every epoch.
    """
    first_caption, position = [], 0
    for image in images:
        first_caption.append(position)
        position += len(image.captions)
    count = min(count, len(images))
    if count <= 0:
        return []
    picked = np.linspace(0, len(images) - 1, count).round().astype(int)
    return [first_caption[i] for i in dict.fromkeys(picked.tolist())]


def query_matches(embeddings, query_indices, k):
    """For each query caption: (true image index, top-k image indices, their scores, rank of the true image)."""
    image_embeddings, text_embeddings, text_to_image = embeddings
    query_indices = np.asarray(query_indices, dtype=np.int64)
    if len(query_indices) == 0:
        return []
    indices, scores = top_k(text_embeddings[query_indices], image_embeddings, k)
    ranks = text_to_image_ranks(image_embeddings, text_embeddings[query_indices], text_to_image[query_indices])
    return [
        (int(text_to_image[query]), indices[row].tolist(), scores[row].tolist(), int(ranks[row]))
        for row, query in enumerate(query_indices)
    ]


def grid_rows(images, embeddings, num_queries=8, k=5):
    """Rows for `kclip.evaluation.grid.render_grid`: (caption, [(image path, score, is_true), ...])."""
    captions = [caption for image in images for caption in image.captions]
    queries = choose_queries(images, num_queries)
    rows = []
    for query, (true_image, indices, scores, _) in zip(queries, query_matches(embeddings, queries, k)):
        items = [(images[i].image_path, score, i == true_image) for i, score in zip(indices, scores)]
        rows.append((captions[query], items))
    return rows


def write_grid(images, embeddings, out_path, num_queries=8, k=5, tile_size=96):
    """A PNG of `num_queries` captions and their top-k images, the true image outlined."""
    from kclip.evaluation.grid import render_grid

    return render_grid(grid_rows(images, embeddings, num_queries, k), Path(out_path), tile_size=tile_size)


__all__ = [
    "choose_queries",
    "embed_split",
    "tokenize_split",
    "evaluate",
    "format_metrics_table",
    "grid_rows",
    "metrics_from_embeddings",
    "query_matches",
    "write_grid",
]
