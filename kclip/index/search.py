"""Search an image index by text or by example, and zero-shot classification.

Both use the same towers that built the index; an index built by other weights is
refused, since its vectors live in a different space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from kclip.data.image_io import is_image_file_name, load_image
from kclip.index.index import Index, SearchResult, _decode_side

# A result grid is drawn in memory: (top_k + 2) tiles of tile_size^2 RGB pixels. These bounds keep it
# under about 300 MB (a 100,000-pixel tile asked for 17.9 GB).
MAX_GRID_TILE_SIZE = 1024
MAX_GRID_PIXELS = 100_000_000


def check_grid_size(tile_size, top_k) -> None:
    """ValueError unless a result grid of `top_k` tiles of `tile_size` pixels fits the bounds above."""
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or not 16 <= tile_size <= MAX_GRID_TILE_SIZE:
        raise ValueError(f"the grid's tile size must be a whole number of pixels from 16 to {MAX_GRID_TILE_SIZE}; "
                         f"got {tile_size!r}.")
    pixels = (int(top_k) + 2) * tile_size * tile_size
    if pixels > MAX_GRID_PIXELS:
        raise ValueError(f"a grid of {top_k} results at {tile_size} pixels per tile would be {pixels / 1e6:.0f} "
                         f"megapixels, above {MAX_GRID_PIXELS / 1e6:.0f}; ask for fewer results or smaller tiles.")


def _is_image_query(query) -> bool:
    """Arrays, PIL images and Path objects are images; so is a str ending in an image extension.

    Deciding by the name, not by whether the file exists, makes a mistyped path an error
    ("does not exist") instead of a silent text search for "holidy/beach.jpg".
    """
    if isinstance(query, (np.ndarray, Image.Image, os.PathLike)):
        return True
    if isinstance(query, str):
        return is_image_file_name(query.strip())
    raise TypeError(f"a query must be text, an image path or an image array; got {type(query).__name__}.")


def _embed_images(model, images, batch_size: int = 32) -> np.ndarray:
    max_side = _decode_side(model)
    arrays = [load_image(Path(image.strip()).expanduser() if isinstance(image, str) else image, max_side=max_side)
              for image in images]
    return np.asarray(model.encode_image(arrays, batch_size=batch_size), dtype=np.float32)


def search(query, model, index, top_k: int = 5) -> list[SearchResult]:
    """The top_k images of `index` most similar to `query`, best first.

    query: a non-empty text (embedded with model.encode_text), or an image for search by example: a
    Path, a numpy array, a PIL image, or a str ending in an image extension such as ".jpg".
    index: an Index or the folder of one. The model must be the one that built the index.
    """
    if isinstance(query, str) and not query.strip():
        raise ValueError("the query is empty; give some text to search for, or an image path.")
    if isinstance(index, (str, os.PathLike)):
        index = Index.load(index)
    fingerprint = str(model.fingerprint())
    if fingerprint != index.fingerprint:
        raise ValueError(
            f"the index was built by model {index.fingerprint}, but this model is {fingerprint}; "
            "search with the model that built it, or rebuild the index with this one (build_index(..., rebuild=True))."
        )
    if _is_image_query(query):
        query_embedding = _embed_images(model, [query])
    else:
        query_embedding = np.asarray(model.encode_text([query]), dtype=np.float32)
    return index.search(query_embedding, top_k)[0]


@dataclass(frozen=True)
class Classification:
    """Zero-shot labels for one image: `ranking` is [(label, probability)], most likely first."""

    ranking: list

    @property
    def label(self) -> str:
        return self.ranking[0][0]

    @property
    def probability(self) -> float:
        return self.ranking[0][1]


def classify(images, labels, model, template: str = "a photo of a {}", logit_scale: float = 100.0,
             batch_size: int = 32) -> list[Classification]:
    """Zero-shot classification, as in CLIP: softmax over logit_scale x cosine(image, template(label)).

    images: one image (path, array, PIL image) or a list of them; returns one Classification per image.
    """
    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]
    labels = [str(label) for label in labels]
    if not labels or any(not label.strip() for label in labels):
        raise ValueError(f"labels must be a non-empty list of non-empty names; got {labels!r}.")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct; got {labels!r}.")
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' where the label goes; got {template!r}.")
    if len(images) == 0:
        raise ValueError("no images to classify.")
    image_embeddings = _embed_images(model, list(images), batch_size)
    text_embeddings = np.asarray(model.encode_text([template.format(label) for label in labels],
                                                   batch_size=batch_size), dtype=np.float32)
    logits = logit_scale * (image_embeddings @ text_embeddings.T)
    logits -= logits.max(axis=1, keepdims=True)  # keeps exp() from overflowing
    probabilities = np.exp(logits)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    results = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")
        results.append(Classification([(labels[i], float(row[i])) for i in order]))
    return results
