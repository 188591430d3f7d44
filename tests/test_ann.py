"""The faiss ANN backend: agreement with exact search, and never using a stale ANN file."""
import json

import numpy as np
import pytest

import kclip.index.index
from kclip.index.ann import MIN_ANN_ROWS, AnnSearcher, ann_file_stem
from kclip.index.index import Index
from kclip.index.store import FileRecord, commit, read_metadata
from kclip.evaluation.metrics import top_k


def unit_rows(count, dim, seed):
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def write_index(directory, embeddings):
    """An index folder holding `embeddings` (no image files are needed to load and search it)."""
    header = {"format": "kclip-image-index", "model_fingerprint": "f" * 16, "image_dir": "/photos",
              "dtype": str(embeddings.dtype)}
    records = [FileRecord(f"{i:05d}.jpg", 1, i) for i in range(len(embeddings))]
    commit(directory, header, embeddings, records, [])
    return read_metadata(directory)


def recall_at_10(found, truth):
    return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_ann_agrees_with_exact_search_on_random_vectors(dtype):
    # Random unit vectors are the hard case for ANN (no clusters to exploit).
    database = unit_rows(5000, 64, seed=0).astype(dtype)
    queries = unit_rows(200, 64, seed=1)
    exact_indices, _ = top_k(queries, database, 10)

    searcher = AnnSearcher.build(database)
    assert searcher.faiss_index is not None and searcher.faiss_index.ntotal == 5000
    indices, scores = searcher.search(queries, 10)

    assert indices.shape == scores.shape == (200, 10)
    assert recall_at_10(indices, exact_indices) >= 0.95
    # Candidates are re-scored exactly: the scores are the true cosines, best first.
    true_scores = np.einsum("qd,qkd->qk", queries, database[indices].astype(np.float32))
    np.testing.assert_allclose(scores, true_scores, rtol=0, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_small_ann_request_scans_exactly():
    database = unit_rows(MIN_ANN_ROWS - 1, 8, seed=2)
    searcher = AnnSearcher.build(database)
    assert searcher.faiss_index is None
    indices, _ = searcher.search(database[:3], 1)
    assert indices[:, 0].tolist() == [0, 1, 2]


def test_ann_file_is_saved_beside_embeddings_and_reused(tmp_path, monkeypatch):
    embeddings = unit_rows(3000, 32, seed=3).astype(np.float16)
    metadata = write_index(tmp_path, embeddings)
    stem = ann_file_stem(metadata)

    index = Index.load(tmp_path, backend="ann")
    assert index.prepare() is not None  # built now
    record = json.loads((tmp_path / f"{stem}.json").read_text())
    assert record["embeddings_file"] == metadata["embeddings_file"]
    assert record["embeddings_sha256"] == metadata["embeddings_sha256"] and record["count"] == 3000
    assert not list(tmp_path.glob(".*.tmp"))
    expected = index.search(embeddings[:5].astype(np.float32), 3)

    def no_build(*args, **kwargs):
        raise AssertionError("the saved ANN index should have been loaded, not rebuilt")

    monkeypatch.setattr(AnnSearcher, "build", no_build)
    reloaded = Index.load(tmp_path, backend="ann")
    assert reloaded.prepare() is None
    assert reloaded.search(embeddings[:5].astype(np.float32), 3) == expected
    assert [row[0].path.name for row in expected] == [f"{i:05d}.jpg" for i in range(5)]


def test_stale_ann_file_is_never_used(tmp_path):
    old = unit_rows(2000, 16, seed=4)
    old_metadata = write_index(tmp_path, old)
    Index.load(tmp_path, backend="ann").prepare()
    old_stem = ann_file_stem(old_metadata)
    old_files = {suffix: (tmp_path / f"{old_stem}{suffix}").read_bytes() for suffix in (".faiss", ".json")}

    # New embeddings: the commit removes the ANN files of the old ones.
    new = unit_rows(2000, 16, seed=5)
    new_metadata = write_index(tmp_path, new)
    assert not list(tmp_path.glob(f"{old_stem}.*"))

    # A stale ANN file put where the current one belongs (same name, other embeddings) is ignored.
    new_stem = ann_file_stem(new_metadata)
    for suffix, data in old_files.items():
        (tmp_path / f"{new_stem}{suffix}").write_bytes(data)
    assert AnnSearcher.load(tmp_path, new_metadata, new) is None
    index = Index.load(tmp_path, backend="ann")
    assert index.prepare() is not None  # rebuilt, not loaded
    assert json.loads((tmp_path / f"{new_stem}.json").read_text())["embeddings_sha256"] == new_metadata["embeddings_sha256"]
    found = index.search(new[:20], 1)
    assert [row[0].path.name for row in found] == [f"{i:05d}.jpg" for i in range(20)]

    # An .faiss file without its record (a killed save) is not used either.
    (tmp_path / f"{new_stem}.json").unlink()
    assert AnnSearcher.load(tmp_path, new_metadata, new) is None
    # Nor is a record whose .faiss file holds a different number of rows.
    AnnSearcher.build(new[:1500]).save(tmp_path, new_metadata)
    assert AnnSearcher.load(tmp_path, new_metadata, new) is None


def test_auto_backend_switches_at_threshold(tmp_path, monkeypatch):
    write_index(tmp_path, unit_rows(1200, 16, seed=6))
    assert Index.load(tmp_path).resolved_backend == "exact"
    monkeypatch.setattr(kclip.index.index, "ANN_THRESHOLD", 1000)
    index = Index.load(tmp_path)
    assert index.backend == "auto" and index.resolved_backend == "ann"
    assert Index.load(tmp_path, backend="exact").resolved_backend == "exact"
    with pytest.raises(ValueError, match="unknown search backend"):
        Index.load(tmp_path, backend="hnsw")
