"""Retrieval metrics and exact top-k search against hand-computed values and brute-force references."""
import numpy as np
import pytest

from kclip.evaluation.metrics import (
    format_metrics_table,
    image_to_text_ranks,
    retrieval_metrics,
    text_to_image_ranks,
    top_k,
)

# Three images, five captions. All values are exact in binary, so every score and tie is exact.
IMAGES = np.eye(3, dtype=np.float32)
TEXTS = np.array(
    [
        [1.0, 0.0, 0.0],   # image 0: its image alone scores 1 -> rank 1
        [0.0, 1.0, 0.0],   # image 0: scores (0, 1, 0), true score 0 ties with image 2 -> rank 3
        [0.5, 0.75, 0.0],  # image 1: best -> rank 1
        [0.0, 0.0, 0.0],   # image 2: everything ties -> rank 3 (ties count against the query)
        [1.0, 1.0, 0.0],   # image 2: true score 0, two images above -> rank 3
    ],
    dtype=np.float32,
)
TEXT_TO_IMAGE = np.array([0, 0, 1, 2, 2])


def reference_ranks(images, texts, text_to_image):
    """Literal, loop-by-loop definition of both rank kinds (ties against the query)."""
    scores = texts.astype(np.float64) @ images.T.astype(np.float64)
    t2i = [1 + sum(scores[t, j] >= scores[t, true] for j in range(len(images)) if j != true)
           for t, true in enumerate(text_to_image)]
    i2t = []
    for image in range(len(images)):
        positives = [t for t in range(len(texts)) if text_to_image[t] == image]
        if not positives:
            i2t.append(-1)
            continue
        best = max(scores[t, image] for t in positives)
        i2t.append(1 + sum(scores[t, image] >= best for t in range(len(texts)) if t not in positives))
    return np.array(t2i), np.array(i2t)


def test_ranks_and_recalls_match_hand_computed_values():
    assert text_to_image_ranks(IMAGES, TEXTS, TEXT_TO_IMAGE).tolist() == [1, 3, 1, 3, 3]
    # image 0: caption 4 ties with its best caption (score 1) -> 2; image 1: captions 1 and 4 beat
    # 0.75 -> 3; image 2: all three wrong captions tie at 0 -> 4.
    assert image_to_text_ranks(IMAGES, TEXTS, TEXT_TO_IMAGE).tolist() == [2, 3, 4]

    metrics = retrieval_metrics(IMAGES, TEXTS, TEXT_TO_IMAGE, ks=(1, 2, 3))
    assert metrics["t2i_r@1"] == pytest.approx(2 / 5)
    assert metrics["t2i_r@2"] == pytest.approx(2 / 5)
    assert metrics["t2i_r@3"] == 1.0
    assert metrics["i2t_r@1"] == 0.0
    assert metrics["i2t_r@2"] == pytest.approx(1 / 3)
    assert metrics["i2t_r@3"] == pytest.approx(2 / 3)
    assert metrics["t2i_mean_rank"] == pytest.approx(2.2)
    assert metrics["t2i_median_rank"] == 3.0
    assert metrics["i2t_mean_rank"] == 3.0
    assert metrics["i2t_median_rank"] == 3.0
    assert metrics["rsum"] == pytest.approx(2 / 5 + 2 / 5 + 1 + 0 + 1 / 3 + 2 / 3)
    assert (metrics["num_text_queries"], metrics["num_image_queries"]) == (5, 3)


def test_constant_embeddings_score_zero_not_one():
    images = np.ones((20, 4), np.float32) / 2
    texts = np.ones((20, 4), np.float32) / 2
    metrics = retrieval_metrics(images, texts, np.arange(20))
    assert all(metrics[f"{d}_r@{k}"] == 0.0 for d in ("t2i", "i2t") for k in (1, 5, 10))
    assert metrics["t2i_median_rank"] == 20.0 and metrics["rsum"] == 0.0


def test_perfect_embeddings_score_one_with_several_captions_per_image():
    images = np.eye(6, dtype=np.float32)
    text_to_image = np.repeat(np.arange(6), 5)
    metrics = retrieval_metrics(images, images[text_to_image], text_to_image)
    assert metrics["t2i_r@1"] == 1.0 and metrics["i2t_r@1"] == 1.0
    assert metrics["rsum"] == 6.0 and metrics["i2t_mean_rank"] == 1.0


def test_images_without_captions_are_candidates_but_not_image_queries():
    images = np.eye(4, dtype=np.float32)
    texts = np.eye(4, dtype=np.float32)[:2]
    ranks = image_to_text_ranks(images, texts, np.array([0, 1]))
    assert ranks.tolist() == [1, 1, -1, -1]
    assert retrieval_metrics(images, texts, np.array([0, 1]))["num_image_queries"] == 2


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 64, 10_000])
def test_chunked_equals_reference_and_unchunked_with_many_ties(chunk_size):
    rng = np.random.default_rng(0)
    # Small integers make every dot product exact, with many ties.
    images = rng.integers(-1, 2, size=(40, 6)).astype(np.float32)
    texts = rng.integers(-1, 2, size=(90, 6)).astype(np.float32)
    text_to_image = rng.integers(0, 40, size=90)
    expected_t2i, expected_i2t = reference_ranks(images, texts, text_to_image)
    assert text_to_image_ranks(images, texts, text_to_image, chunk_size).tolist() == expected_t2i.tolist()
    assert image_to_text_ranks(images, texts, text_to_image, chunk_size).tolist() == expected_i2t.tolist()
    unchunked = retrieval_metrics(images, texts, text_to_image, chunk_size=10_000)
    assert retrieval_metrics(images, texts, text_to_image, chunk_size=chunk_size) == unchunked


def test_metrics_reject_bad_inputs_with_clear_messages():
    with pytest.raises(ValueError, match="same width"):
        retrieval_metrics(IMAGES, TEXTS[:, :2], TEXT_TO_IMAGE)
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(IMAGES, TEXTS, np.array([0, 0, 1, 2, 3]))
    with pytest.raises(ValueError, match="one entry per caption"):
        retrieval_metrics(IMAGES, TEXTS, np.array([0, 1]))
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(IMAGES * np.nan, TEXTS, TEXT_TO_IMAGE)
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(IMAGES, TEXTS, TEXT_TO_IMAGE, chunk_size=0)


def test_format_metrics_table_shows_percentages():
    table = format_metrics_table(retrieval_metrics(IMAGES, TEXTS, TEXT_TO_IMAGE, ks=(1, 2, 3)))
    lines = table.splitlines()
    assert "R@1" in lines[0] and "median rank" in lines[0]
    assert lines[2].split()[:4] == ["text->image", "40.0", "40.0", "100.0"]
    assert "rsum 280.0" in table


def reference_top_k(queries, database, k):
    scores = np.atleast_2d(queries).astype(np.float64) @ database.astype(np.float64).T
    order = np.array([np.lexsort((np.arange(len(row)), -row))[:k] for row in scores])
    return order, np.take_along_axis(scores, order, axis=1)


@pytest.mark.parametrize("chunk_size", [None, 97, 2048, 3000])
@pytest.mark.parametrize("k", [1, 10, 25])
def test_top_k_equals_brute_force_on_random_data(chunk_size, k):
    rng = np.random.default_rng(1)
    database = rng.standard_normal((5000, 16)).astype(np.float32)
    queries = rng.standard_normal((7, 16)).astype(np.float32)
    indices, scores = top_k(queries, database, k, chunk_size=chunk_size)
    expected_indices, expected_scores = reference_top_k(queries, database, k)
    assert indices.shape == (7, k) and scores.dtype == np.float32
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", [np.float32, np.float16])
@pytest.mark.parametrize("chunk_size", [None, 50, 1500])
def test_top_k_ties_prefer_lower_indices(storage, chunk_size):
    rng = np.random.default_rng(2)
    # Few distinct rows, so most scores tie, including across groups and chunks.
    database = rng.integers(-1, 2, size=(4000, 5)).astype(storage)
    queries = rng.integers(-1, 2, size=(9, 5)).astype(np.float32)
    indices, scores = top_k(queries, database, 12, chunk_size=chunk_size)
    expected_indices, expected_scores = reference_top_k(queries, database, 12)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_array_equal(scores, expected_scores)


def test_top_k_constant_database_returns_first_rows_in_order():
    indices, scores = top_k(np.ones(3, np.float32), np.ones((10_000, 3), np.float16), 5)
    assert indices.tolist() == [0, 1, 2, 3, 4]  # a single (dim,) query gives 1-D results
    assert scores.tolist() == [3.0] * 5


def test_top_k_float16_storage_matches_float32_copy():
    rng = np.random.default_rng(3)
    database = rng.standard_normal((3000, 32)).astype(np.float16)
    queries = rng.standard_normal((4, 32)).astype(np.float32)
    got = top_k(queries, database, 8, chunk_size=1000)
    expected = top_k(queries, database.astype(np.float32), 8)
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_top_k_caps_k_and_rejects_bad_arguments():
    database = np.eye(4, dtype=np.float32)
    indices, _ = top_k(database[:1], database, 10)
    assert indices.tolist() == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k(database[:1], database, 0)
    with pytest.raises(ValueError, match="width"):
        top_k(np.ones((1, 3), np.float32), database, 2)
    with pytest.raises(ValueError, match="empty database"):
        top_k(database[:1], np.zeros((0, 4), np.float32), 2)
