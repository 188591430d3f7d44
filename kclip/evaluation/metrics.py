"""Retrieval metrics and exact top-k search over L2-normalized embeddings.

Only numpy is used here, so the same code scores a model whichever Keras backend trained it, and
nothing ever holds a whole queries x database score matrix: both the metrics and the search walk
the data in chunks, so memory is O(chunk x database) however many queries there are.

Conventions shared by everything in this module:
- Scores are dot products, i.e. cosine similarities for L2-normalized rows.
- Ranks are 1-based.
- Ties count against the query: a true item tied with a wrong one is ranked after it. Constant (or
  collapsed) embeddings therefore score recall 0, not 1, so a broken model never looks perfect.
"""
from __future__ import annotations

import numpy as np

DEFAULT_KS = (1, 5, 10)

# Database rows scored per matmul in top_k, per query; chosen so one block of scores (queries x rows,
# float32) is at most 16 MB while it is reduced.
_SCORE_BLOCK_ELEMENTS = 1 << 22
_MIN_DATABASE_CHUNK = 4096
_MAX_DATABASE_CHUNK = 65536

# Up to this many scores (64 MB of float32) top_k scores a float32 database in one matmul.
_SINGLE_PASS_ELEMENTS = 1 << 24

# top_k first keeps, per query, the groups of this many scores whose maximum could reach the top k;
# one elementwise max over the block is far cheaper than np.argpartition over all of it.
_GROUP_SIZE = 32


# ----------------------------------------------------------------------------------------------
# Input checks


def _as_float32_matrix(array, name: str, check_finite: bool = True) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (rows, dim); got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must hold floating-point embeddings; got dtype {array.dtype}.")
    # numpy has no BLAS for float16, so a float16 matmul is many times slower than float32.
    array = np.ascontiguousarray(array, dtype=np.float32)
    if check_finite and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the model's outputs.")
    return array


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _check_text_to_image(text_to_image, num_texts: int, num_images: int) -> np.ndarray:
    text_to_image = np.asarray(text_to_image)
    if text_to_image.shape != (num_texts,):
        raise ValueError(
            f"text_to_image must have one entry per caption, shape ({num_texts},); "
            f"got shape {text_to_image.shape}."
        )
    if num_texts and not np.issubdtype(text_to_image.dtype, np.integer):
        raise TypeError(f"text_to_image must hold integer image indices; got dtype {text_to_image.dtype}.")
    text_to_image = text_to_image.astype(np.int64)
    if num_texts and (text_to_image.min() < 0 or text_to_image.max() >= num_images):
        raise ValueError(
            f"text_to_image holds image indices outside [0, {num_images}): "
            f"min {text_to_image.min()}, max {text_to_image.max()}."
        )
    return text_to_image


def _check_pair(image_embeddings, text_embeddings):
    images = _as_float32_matrix(image_embeddings, "image_embeddings")
    texts = _as_float32_matrix(text_embeddings, "text_embeddings")
    if images.shape[1] != texts.shape[1]:
        raise ValueError(
            f"image and text embeddings must have the same width; got {images.shape[1]} and {texts.shape[1]}."
        )
    if len(images) == 0 or len(texts) == 0:
        raise ValueError(f"need at least one image and one caption; got {len(images)} and {len(texts)}.")
    return images, texts


# ----------------------------------------------------------------------------------------------
# Ranks and metrics


def text_to_image_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of each caption's own image among all images, shape (num_texts,)."""
    images, texts = _check_pair(image_embeddings, text_embeddings)
    text_to_image = _check_text_to_image(text_to_image, len(texts), len(images))
    chunk_size = _positive_int(chunk_size, "chunk_size")
    ranks = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk_size):
        stop = min(start + chunk_size, len(texts))
        scores = texts[start:stop] @ images.T
        true_scores = scores[np.arange(stop - start), text_to_image[start:stop]]
        # Counting every image at least as good as the true one (itself included) is the rank with
        # ties broken against the query.
        ranks[start:stop] = np.count_nonzero(scores >= true_scores[:, None], axis=1)
    return ranks


def image_to_text_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size: int = 1024) -> np.ndarray:
    """1-based rank of each image's best caption among all captions, shape (num_images,).

    Only wrong captions scoring at least as high as the best true one push it down; other true
    captions do not. Images with no caption at all get rank -1 (they are not image queries).
    """
    images, texts = _check_pair(image_embeddings, text_embeddings)
    text_to_image = _check_text_to_image(text_to_image, len(texts), len(images))
    chunk_size = _positive_int(chunk_size, "chunk_size")

    # Captions grouped by image, so the captions of a chunk of images are one contiguous slice:
    # this avoids a dense (chunk x num_texts) positives mask.
    captions_by_image = np.argsort(text_to_image, kind="stable")
    caption_counts = np.bincount(text_to_image, minlength=len(images))
    group_ends = np.cumsum(caption_counts)
    group_starts = group_ends - caption_counts

    ranks = np.full(len(images), -1, dtype=np.int64)
    for start in range(0, len(images), chunk_size):
        stop = min(start + chunk_size, len(images))
        counts = caption_counts[start:stop]
        has_caption = counts > 0
        if not has_caption.any():
            continue
        scores = images[start:stop] @ texts.T
        first, last = group_starts[start], group_ends[stop - 1]
        true_captions = captions_by_image[first:last]
        owner_rows = text_to_image[true_captions] - start
        true_scores = scores[owner_rows, true_captions]

        best_true = np.full(stop - start, -np.inf, dtype=np.float32)
        segment_starts = group_starts[start:stop][has_caption] - first
        best_true[has_caption] = np.maximum.reduceat(true_scores, segment_starts)

        at_least_best = np.count_nonzero(scores >= best_true[:, None], axis=1)
        true_at_least_best = np.bincount(
            owner_rows[true_scores >= best_true[owner_rows]], minlength=stop - start
        )
        chunk_ranks = at_least_best - true_at_least_best + 1
        ranks[start:stop] = np.where(has_caption, chunk_ranks, -1)
    return ranks


def retrieval_metrics(
    image_embeddings,
    text_embeddings,
    text_to_image,
    ks=DEFAULT_KS,
    chunk_size: int = 1024,
) -> dict:
    """Standard (CLIP_benchmark) text<->image retrieval metrics.

    image_embeddings: (num_images, dim); text_embeddings: (num_texts, dim), both L2-normalized.
    text_to_image: (num_texts,) index of each caption's image.

    Text->image R@k is the fraction of captions whose image is in the top k images; image->text
    R@k is the fraction of images (with at least one caption) that have any of their captions in the
    top k captions. Recalls are fractions in [0, 1], so "rsum", the sum of all recalls (six with the
    default ks), lies in [0, 2 * len(ks)]. Mean/median ranks are 1-based. Ties count against the
    query. Queries are processed chunk_size at a time; the result does not depend on chunk_size.
    """
    ks = tuple(_positive_int(k, "each of ks") for k in ks)
    if not ks:
        raise ValueError("ks must name at least one cutoff, e.g. (1, 5, 10).")
    t2i = text_to_image_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size)
    i2t = image_to_text_ranks(image_embeddings, text_embeddings, text_to_image, chunk_size)
    i2t = i2t[i2t > 0]

    metrics: dict = {}
    for direction, ranks in (("t2i", t2i), ("i2t", i2t)):
        for k in ks:
            metrics[f"{direction}_r@{k}"] = float(np.mean(ranks <= k))
    for direction, ranks in (("t2i", t2i), ("i2t", i2t)):
        metrics[f"{direction}_mean_rank"] = float(np.mean(ranks))
        metrics[f"{direction}_median_rank"] = float(np.median(ranks))
    metrics["rsum"] = float(sum(metrics[f"{d}_r@{k}"] for d in ("t2i", "i2t") for k in ks))
    metrics["num_text_queries"] = int(len(t2i))
    metrics["num_image_queries"] = int(len(i2t))
    return metrics


def format_metrics_table(metrics: dict) -> str:
    """A small fixed-width table of retrieval_metrics' output (recalls shown as percentages)."""
    ks = sorted({int(key.split("@")[1]) for key in metrics if key.startswith("t2i_r@")})
    header = ["direction"] + [f"R@{k}" for k in ks] + ["mean rank", "median rank"]
    lines = []
    for direction, label in (("t2i", "text->image"), ("i2t", "image->text")):
        cells = [label] + [f"{100 * metrics[f'{direction}_r@{k}']:.1f}" for k in ks]
        cells += [f"{metrics[f'{direction}_mean_rank']:.1f}", f"{metrics[f'{direction}_median_rank']:.1f}"]
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]

    def render(row):
        return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))

    table = [render(header), render(["-" * w for w in widths])] + [render(row) for row in lines]
    footer = f"rsum {100 * metrics['rsum']:.1f} (sum of recalls, in percent)"
    if "num_text_queries" in metrics:
        footer += f"; {metrics['num_text_queries']} captions, {metrics['num_image_queries']} images"
    return "\n".join(table + [footer])


# ----------------------------------------------------------------------------------------------
# Exact top-k search


def _rows_top_k_exact(scores: np.ndarray, indices: np.ndarray, k: int):
    """Top k of each row, best first and lower index first among ties; k <= row length."""
    if scores.shape[1] > k:
        kth_position = scores.shape[1] - k
        kept = np.argpartition(scores, kth_position, axis=1)[:, kth_position:]
        # argpartition puts the k-th largest score first among the kept ones.
        threshold = np.take_along_axis(scores, kept[:, :1], axis=1)
        # argpartition picks arbitrarily among scores tied with the k-th one; where more scores tie
        # than fit, redo those rows so the lowest indices win.
        tied_rows = np.flatnonzero(np.count_nonzero(scores >= threshold, axis=1) > k)
        kept_scores = np.take_along_axis(scores, kept, axis=1)
        kept_indices = np.take_along_axis(indices, kept, axis=1)
        for row in tied_rows:
            candidates = np.flatnonzero(scores[row] >= threshold[row, 0])
            order = np.lexsort((indices[row, candidates], -scores[row, candidates]))[:k]
            kept_scores[row] = scores[row, candidates[order]]
            kept_indices[row] = indices[row, candidates[order]]
        scores, indices = kept_scores, kept_indices
    order = np.lexsort((indices, -scores), axis=1)
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _block_candidates(scores: np.ndarray, first_index: int, k: int):
    """(indices, scores) of a superset of each row's top k in one block of scores (not sorted)."""
    num_rows, width = scores.shape
    num_groups = width // _GROUP_SIZE
    if num_groups <= 4 * k:
        indices = np.broadcast_to(np.arange(first_index, first_index + width), scores.shape)
        return _rows_top_k_exact(scores, indices, min(k, width))

    # Group g holds columns g, g + num_groups, g + 2 * num_groups, ...: a strided layout lets the
    # group maxima come from one vectorized elementwise max. Any score in the row's top k lies in a
    # group whose maximum is at least the k-th largest group maximum.
    grouped_width = num_groups * _GROUP_SIZE
    grouped = scores[:, :grouped_width].reshape(num_rows, _GROUP_SIZE, num_groups)
    group_max = grouped.max(axis=1)
    top_groups = np.argpartition(group_max, num_groups - k, axis=1)[:, num_groups - k:]
    kth_group_max = np.take_along_axis(group_max, top_groups, axis=1).min(axis=1, keepdims=True)

    members = top_groups[:, :, None] + num_groups * np.arange(_GROUP_SIZE)  # (rows, k, group)
    member_columns = members.reshape(num_rows, -1)
    tail_columns = np.broadcast_to(np.arange(grouped_width, width), (num_rows, width - grouped_width))
    columns = np.concatenate([member_columns, tail_columns], axis=1)
    candidate_scores = np.take_along_axis(scores, columns, axis=1)
    candidate_indices, candidate_scores = _rows_top_k_exact(candidate_scores, columns + first_index, k)

    # Where more groups tie with the k-th group maximum than were kept, a tied score with a lower
    # index may sit in a dropped group: redo those (rare) rows over the whole block.
    tied_rows = np.flatnonzero(np.count_nonzero(group_max >= kth_group_max, axis=1) > k)
    if len(tied_rows):
        all_indices = np.broadcast_to(np.arange(first_index, first_index + width), (len(tied_rows), width))
        fixed_indices, fixed_scores = _rows_top_k_exact(scores[tied_rows], all_indices, k)
        candidate_indices[tied_rows] = fixed_indices
        candidate_scores[tied_rows] = fixed_scores
    return candidate_indices, candidate_scores


def default_database_chunk(num_queries: int) -> int:
    """Database rows per matmul so one block of scores stays around 16 MB of float32."""
    rows = _SCORE_BLOCK_ELEMENTS // max(1, num_queries)
    return int(min(_MAX_DATABASE_CHUNK, max(_MIN_DATABASE_CHUNK, rows)))


def top_k(query_embeddings, database, k: int, chunk_size: int | None = None):
    """Exact top-k search by dot product.

    query_embeddings: (num_queries, dim) or a single (dim,) query. database: (num_rows, dim), float16
    or float32 (float16 is converted to float32 one chunk at a time, because numpy has no fast float16
    matmul). Returns (indices int64, scores float32), each (num_queries, k) -- or (k,) for a single
    query -- best first, lower database index first among equal scores. k larger than the database
    is cut to its size. The database is walked chunk_size rows at a time (default: sized to the
    number of queries), so memory stays O(num_queries x chunk_size). The database is not checked for
    NaN here (a full pass per call would double the cost); ExactSearcher checks it once.
    """
    single_query = np.ndim(query_embeddings) == 1
    queries = _as_float32_matrix(np.atleast_2d(query_embeddings), "query_embeddings")
    database = np.asarray(database)
    if database.ndim != 2 or not np.issubdtype(database.dtype, np.floating):
        raise ValueError(
            f"database must be a 2-D float array (rows, dim); got shape {database.shape}, dtype {database.dtype}."
        )
    if queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries have width {queries.shape[1]} but the database has width {database.shape[1]}; "
            "were they made by the same model?"
        )
    if len(database) == 0:
        raise ValueError("cannot search an empty database.")
    k = min(_positive_int(k, "k"), len(database))
    if chunk_size is None:
        chunk_size = default_database_chunk(len(queries))
        if database.dtype == np.float32 and len(queries) * len(database) <= _SINGLE_PASS_ELEMENTS:
            # Few queries: one matrix-vector product over the whole (float32, uncopied) database
            # reads it once at memory speed; every extra BLAS call costs a thread hand-off.
            chunk_size = len(database)
    else:
        chunk_size = _positive_int(chunk_size, "chunk_size")

    found_indices, found_scores = [], []
    for start in range(0, len(database), chunk_size):
        block = database[start:start + chunk_size]
        if block.dtype != np.float32:
            block = block.astype(np.float32)
        block_indices, block_scores = _block_candidates(queries @ block.T, start, k)
        found_indices.append(block_indices)
        found_scores.append(block_scores)
    if len(found_indices) == 1:
        indices, scores = found_indices[0], found_scores[0]
    else:
        indices, scores = _rows_top_k_exact(np.concatenate(found_scores, axis=1), np.concatenate(found_indices, axis=1), k)
    if single_query:
        return indices[0], scores[0]
    return indices, scores
