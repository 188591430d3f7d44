"""Approximate nearest-neighbour search for large indexes, with faiss.

How it works: every embedding is compressed to a 4-bit product-quantization code (faiss
"PQ{dim/2}x4fs": dim/4 bytes per image, 64 bytes at width 256, 64 MB for a million images), and a query scans *all* the codes
with faiss' SIMD fast-scan kernels, which is several times cheaper than reading the float vectors.
The best `rerank` candidates (default 512) are then re-scored exactly against the stored embeddings,
so the returned scores are true cosines and the order among the candidates is exact.

Why no inverted lists (IVF) or graph (HNSW): CLIP-style embeddings cluster, but the hard case -- and
the benchmark's case -- is vectors with no structure, where an IVF index must probe most of its
lists to keep recall, and a graph is slow to build on few cores. A full fast-scan of compact codes
took 5.2 ms per query (p50) at 1M x 256 random unit vectors on a 2-core AMD EPYC, with recall@10 of
0.991 and a 3.4 s build (the `ann_search` / `ann_build` lines of
benchmarks/results/search-2026-11-27.jsonl; benchmarks/RESULTS-search.md).

On disk the ANN index lives beside the embeddings, as two files named after the embeddings'
checksum:
    ann-<sha16>.faiss   the faiss index (codes and codebooks), written atomically (kclip.utils.files), under the index lock
    ann-<sha16>.json    what it was built from: embeddings_file, embeddings_sha256, count, dim,
                        parameters, and faiss_sha256 (of the .faiss file's bytes); written last, so
                        an .faiss file without it is never used
An ANN file whose record does not match the current metadata.json exactly is stale and is ignored
(and removed by the next build), so it can never answer for other embeddings. faiss parses its
files in native code, so the .faiss file's bytes are checked against faiss_sha256 before faiss
sees them: only a file this record vouches for is ever deserialized.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ANN_FORMAT = "kclip-ann-pq-fastscan"
ANN_FORMAT_VERSION = 1
DEFAULT_RERANK = 512
# Below this many rows a 4-bit codebook (16 centroids per sub-vector) cannot be trained well, and
# exact search is fast anyway: the ANN searcher then scans the float vectors itself.
MIN_ANN_ROWS = 1024
TRAIN_SAMPLE = 100_000


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("the ANN backend needs faiss: pip install faiss-cpu") from error
    return faiss


def limit_search_threads(count: int | None) -> int:
    """Sets faiss' OpenMP threads per search (one, in a server that runs many searches at once;
    None changes nothing); returns the count before."""
    faiss = _faiss()
    previous = faiss.omp_get_max_threads()
    if count is not None:
        faiss.omp_set_num_threads(int(count))
    return previous


def ann_file_stem(metadata: dict) -> str:
    return f"ann-{metadata['embeddings_sha256'][:16]}"


def ann_record(metadata: dict) -> dict:
    """What an ANN file must have been built from to answer for the index `metadata` describes."""
    return {
        "format": ANN_FORMAT,
        "format_version": ANN_FORMAT_VERSION,
        "embeddings_file": metadata["embeddings_file"],
        "embeddings_sha256": metadata["embeddings_sha256"],
        "count": int(metadata["count"]),
        "embedding_dim": int(metadata["embedding_dim"]),
    }


def _pq_subvectors(dim: int) -> int:
    """Two dimensions per 4-bit code (1 for odd widths): fine enough for recall@10 >= 0.95 at 1M."""
    return dim // 2 if dim % 2 == 0 else dim


def _as_float32(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32)


class AnnSearcher:
    """PQ fast-scan candidates + exact re-ranking; search(queries, k) -> (indices, scores), best first.

    embeddings: the index's (rows, dim) float16/float32 embeddings (kept by reference, not copied):
    they re-score the candidates. faiss_index: a trained, filled faiss index over the same rows, or
    None for an index too small to need one (then every row is scored exactly).
    """

    def __init__(self, embeddings: np.ndarray, faiss_index=None, rerank: int = DEFAULT_RERANK):
        self.embeddings = embeddings
        self.faiss_index = faiss_index
        self.rerank = int(rerank)
        if faiss_index is not None and faiss_index.ntotal != len(embeddings):
            raise ValueError(f"the ANN index holds {faiss_index.ntotal} rows but the embeddings {len(embeddings)}.")

    # -- building, saving, loading --------------------------------------------------------------

    @classmethod
    def build(cls, embeddings: np.ndarray, rerank: int = DEFAULT_RERANK, seed: int = 0) -> "AnnSearcher":
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be (rows, dim); got shape {embeddings.shape}.")
        if len(embeddings) < MIN_ANN_ROWS:
            return cls(embeddings, None, rerank)
        faiss = _faiss()
        dim = embeddings.shape[1]
        index = faiss.index_factory(dim, f"PQ{_pq_subvectors(dim)}x4fs", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = embeddings if len(embeddings) <= TRAIN_SAMPLE else embeddings[
            np.sort(rng.choice(len(embeddings), TRAIN_SAMPLE, replace=False))]
        index.train(_as_float32(sample))
        for start in range(0, len(embeddings), 65536):  # float32 copies one chunk at a time
            index.add(_as_float32(embeddings[start:start + 65536]))
        return cls(embeddings, index, rerank)

    def save(self, directory: Path, metadata: dict) -> None:
        """Write ann-<sha16>.faiss then its .json record, each atomically (see the module docstring)."""
        from kclip.utils.files import write_bytes, write_json

        if self.faiss_index is None:
            return  # too small to need a file; rebuilding is instant
        stem = ann_file_stem(metadata)
        data = np.asarray(_faiss().serialize_index(self.faiss_index)).tobytes()
        write_bytes(directory / f"{stem}.faiss", data)
        write_json(directory / f"{stem}.json", {**ann_record(metadata), "rerank": self.rerank,
                                                "faiss_sha256": hashlib.sha256(data).hexdigest()}, indent=1)

    @classmethod
    def load(cls, directory: Path, metadata: dict, embeddings: np.ndarray,
             rerank: int = DEFAULT_RERANK) -> "AnnSearcher | None":
        """The saved ANN index of this exact embeddings file, or None when there is none or it is stale."""
        if len(embeddings) < MIN_ANN_ROWS:
            return cls(embeddings, None, rerank)
        stem = ann_file_stem(metadata)
        record_path, index_path = directory / f"{stem}.json", directory / f"{stem}.faiss"
        if not (record_path.is_file() and index_path.is_file()):
            return None
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            logger.warning("ignoring unreadable ANN record %s: %s", record_path, error)
            return None
        if not isinstance(record, dict):
            logger.warning("ignoring ANN record %s: not a JSON object", record_path)
            return None
        expected = ann_record(metadata)
        if any(record.get(key) != value for key, value in expected.items()):
            logger.warning("ignoring stale ANN index %s: it was built from other embeddings", index_path)
            return None
        faiss = _faiss()
        try:
            data = index_path.read_bytes()
        except OSError as error:
            logger.warning("ignoring unreadable ANN index %s: %s", index_path, error)
            return None
        if not isinstance(record.get("faiss_sha256"), str) or hashlib.sha256(data).hexdigest() != record["faiss_sha256"]:
            logger.warning("ignoring ANN index %s: its bytes do not match the checksum in %s", index_path, record_path.name)
            return None
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except (OSError, RuntimeError) as error:
            logger.warning("ignoring unreadable ANN index %s: %s", index_path, error)
            return None
        if index.ntotal != len(embeddings) or index.d != embeddings.shape[1]:
            logger.warning("ignoring ANN index %s: %d x %d rows, embeddings are %s",
                           index_path, index.ntotal, index.d, embeddings.shape)
            return None
        return cls(embeddings, index, rerank)

    # -- search ---------------------------------------------------------------------------------

    def _exact(self, rows: np.ndarray, candidates: np.ndarray, query: np.ndarray, k: int):
        """Best k of `candidates` (row numbers) by exact score; ties go to the lower row number."""
        scores = _as_float32(rows) @ query
        order = np.lexsort((candidates, -scores))[:k]
        return candidates[order], scores[order]

    def search(self, query_embeddings: np.ndarray, k: int):
        queries = _as_float32(np.atleast_2d(query_embeddings))
        k = min(int(k), len(self.embeddings))
        if self.faiss_index is None:
            from kclip.evaluation.metrics import top_k

            return top_k(queries, self.embeddings, k)
        num_candidates = min(len(self.embeddings), max(self.rerank, 4 * k))
        _, candidates = self.faiss_index.search(queries, num_candidates)
        indices = np.empty((len(queries), k), dtype=np.int64)
        scores = np.empty((len(queries), k), dtype=np.float32)
        for row, (query, found) in enumerate(zip(queries, candidates)):
            found = np.unique(found[found >= 0])  # sorted rows read the embeddings in order
            indices[row], scores[row] = self._exact(self.embeddings[found], found, query, k)
        return indices, scores
