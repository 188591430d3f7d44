"""A searchable image index: build it from a folder, load it, search it by text or by example.

    index = build_index(model, "photos/", "photos.kclip")      # incremental on reruns
    for result in search("a dog on a beach", model, index, top_k=5):
        print(result.rank, result.score, result.path)

The files on disk are described in kclip.index.store. Search is exact (every image is scored) for
indexes under ANN_THRESHOLD images and approximate above it (kclip.index.ann: faiss PQ fast-scan plus exact
re-ranking, saved beside the embeddings); backend="exact" or "ann" forces either.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from kclip.index.ann import AnnSearcher
from kclip.data.image_io import ImageLoadError, decode_side, iter_image_files, load_image
from kclip.index.ownership import check_index_folder, remove_checkpoints
from kclip.index.store import (
    CHECKPOINT_DIR, DEFAULT_LOCK_TIMEOUT, FORMAT_NAME, METADATA_FILE, FileRecord, IndexLockTimeout, commit,
    file_records, index_lock, load_embeddings, load_index_files, read_checkpoints, read_metadata,
    write_checkpoint,
)
from kclip.evaluation.metrics import top_k as exact_top_k

logger = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
BACKENDS = ("auto", "exact", "ann")
# "auto" switches from exact search to the ANN index at this many images: exact search of 50k x 256
# float32 rows takes a few ms, and an ANN index pays off above that.
ANN_THRESHOLD = 50_000


@dataclass(frozen=True)
class SearchResult:
    path: Path
    score: float
    rank: int  # 1-based


@dataclass
class BuildReport:
    """What build_index did; `skipped` lists (relative path, reason) of files that could not be read."""

    num_files: int = 0
    num_embedded: int = 0
    num_reused: int = 0
    num_removed: int = 0
    skipped: list = field(default_factory=list)
    backend: str = "exact"  # the search backend the index resolved to
    ann_seconds: float | None = None  # time spent building the ANN index, None when an up-to-date one was reused

    def summary(self) -> str:
        text = (
            f"{self.num_files} image files: {self.num_embedded} embedded, {self.num_reused} unchanged, "
            f"{self.num_removed} removed from the index, {len(self.skipped)} skipped; search: {self.backend}"
        )
        if self.backend == "ann":
            text += " (ANN index reused)" if self.ann_seconds is None else f" (ANN index built in {self.ann_seconds:.1f} s)"
        return text + "".join(f"\n  skipped {path}: {reason}" for path, reason in self.skipped)


class ExactSearcher:
    """Brute-force search over every row: the default backend.

    A search backend is built from the (rows, dim) embeddings and answers search(queries, k) with
    (indices, scores) arrays of shape (num_queries, k), best first. An approximate-nearest-neighbour
    backend plugs in by implementing the same two methods and registering in SEARCH_BACKENDS.
    """

    def __init__(self, embeddings: np.ndarray):
        # Converted once to float32 because numpy's float16 matmul is several times slower.
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if not np.isfinite(self.embeddings).all():
            raise ValueError("index embeddings contain NaN or infinite values; rebuild the index.")

    def search(self, query_embeddings: np.ndarray, k: int):
        return exact_top_k(query_embeddings, self.embeddings, k)


# Backends built from the embeddings alone. "ann" is also built this way for an Index with no folder;
# an Index loaded from a folder first looks for a saved, up-to-date ANN file there (Index.prepare).
SEARCH_BACKENDS = {"exact": ExactSearcher, "ann": AnnSearcher.build}


class Index:
    """Image paths and their embeddings, searchable by embedding."""

    def __init__(self, paths, embeddings, fingerprint: str, *, image_dir=None, metadata=None, backend="auto",
                 directory=None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown search backend {backend!r}; choose one of {list(BACKENDS)}.")
        self.paths = [Path(path) for path in paths]
        self.embeddings = np.asarray(embeddings)
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.paths):
            raise ValueError(
                f"need one embedding row per path: {len(self.paths)} paths, embeddings of shape {self.embeddings.shape}."
            )
        self.fingerprint = str(fingerprint)
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.metadata = metadata or {}
        self.backend = backend
        self.directory = Path(directory) if directory is not None else None
        self.report: BuildReport | None = None
        self._searcher = None  # built on first search, so loading stays cheap

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def resolved_backend(self) -> str:
        """"exact" or "ann": what search() uses ("auto" means ANN from ANN_THRESHOLD images on)."""
        if self.backend == "auto":
            return "ann" if len(self) >= ANN_THRESHOLD else "exact"
        return self.backend

    def prepare(self) -> float | None:
        """Build the search backend now instead of on the first search.

        For the ANN backend of an index loaded from a folder, an up-to-date saved ANN file is loaded;
        otherwise one is built and saved beside the embeddings (a folder that cannot be written only
        logs a warning). Returns the seconds spent building an ANN index, or None if none was built.
        """
        if self._searcher is not None:
            return None
        built_seconds = None
        if self.resolved_backend == "ann" and self.directory is not None and self.metadata:
            searcher = AnnSearcher.load(self.directory, self.metadata, self.embeddings)
            if searcher is None:
                start = time.perf_counter()
                searcher = AnnSearcher.build(self.embeddings)
                built_seconds = time.perf_counter() - start
                try:
                    # Briefly: a build holding the lock will commit new embeddings and drop these anyway.
                    with index_lock(self.directory, timeout=5):
                        if read_metadata(self.directory) == self.metadata:
                            searcher.save(self.directory, self.metadata)
                except IndexLockTimeout:
                    logger.info("%s is being rebuilt; the ANN index is not saved", self.directory)
                except (OSError, ValueError) as error:
                    logger.warning("could not save the ANN index in %s (%s); it is rebuilt on every load",
                                   self.directory, error)
        else:
            searcher = SEARCH_BACKENDS[self.resolved_backend](self.embeddings)
        self._searcher = searcher
        return built_seconds

    @classmethod
    def load(cls, directory, backend: str = "auto", verify_checksum: bool = False) -> "Index":
        directory = Path(directory).expanduser()
        metadata, embeddings = load_index_files(directory, verify_checksum)
        image_dir = Path(metadata["image_dir"])
        paths = [image_dir / record["path"] for record in metadata["files"]]
        return cls(paths, embeddings, metadata["model_fingerprint"], image_dir=image_dir, metadata=metadata,
                   backend=backend, directory=directory)

    def search(self, query_embeddings, top_k: int = 5) -> list[list[SearchResult]]:
        """One list of results per query row (a single (dim,) query also gives a list of one list)."""
        if len(self) == 0:
            raise ValueError("the index holds no images; build it from a folder with readable images.")
        queries = np.atleast_2d(np.asarray(query_embeddings, dtype=np.float32))
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(
                f"query embeddings have shape {queries.shape} but the index has width {self.dim}; "
                "embed queries with the model that built the index."
            )
        self.prepare()
        indices, scores = self._searcher.search(queries, top_k)
        return [
            [SearchResult(self.paths[i], float(s), rank) for rank, (i, s) in enumerate(zip(row_i, row_s), start=1)]
            for row_i, row_s in zip(indices, scores)
        ]


# ----------------------------------------------------------------------------------------------
# Building


def _decode_side(model) -> int | None:
    """The shared decoding rule (kclip.data.image_io.decode_side): the pixels encode_image would decode."""
    return decode_side(getattr(model, "image_size", None))


def _load_or_reason(path: Path, max_side: int | None):
    try:
        return load_image(path, max_side=max_side), None
    except (ImageLoadError, OSError) as error:
        return None, str(error)


def _loaded_batches(records: list, image_dir: Path, batch_size: int, max_side: int | None):
    """Yield (records, [(array or None, error or None)]) per batch, decoding the next batch meanwhile.

    Pillow releases the GIL while decoding, so threads overlap decoding with the model's work.
    """
    batches = [records[start:start + batch_size] for start in range(0, len(records), batch_size)]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        def submit(batch):
            return [pool.submit(_load_or_reason, image_dir / record.path, max_side) for record in batch]

        pending = submit(batches[0]) if batches else []
        for number, batch in enumerate(batches):
            current = pending
            if number + 1 < len(batches):
                pending = submit(batches[number + 1])
            yield batch, [future.result() for future in current]


def _check_vectors(vectors, expected_rows: int, expected_dim: int | None) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != expected_rows:
        raise ValueError(f"model.encode_image returned shape {vectors.shape} for {expected_rows} images.")
    if expected_dim is not None and vectors.shape[1] != expected_dim:
        raise ValueError(f"model.encode_image returned width {vectors.shape[1]}, but the index has {expected_dim}.")
    if not np.isfinite(vectors).all():
        raise ValueError("model.encode_image returned NaN or infinite values; check the model.")
    # metadata.json promises normalized rows, and search scores are cosines only if they are.
    if len(vectors) and not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-2):
        raise ValueError("model.encode_image must return L2-normalized rows; these are not unit length.")
    return vectors


def _scan(image_dir: Path, report: "BuildReport") -> list:
    records = []
    for path in iter_image_files(image_dir):
        relative = path.relative_to(image_dir).as_posix()
        try:
            status = path.stat()
        except OSError as error:
            report.skipped.append((relative, f"cannot read file information ({error})"))
            continue
        records.append(FileRecord(relative, status.st_size, status.st_mtime_ns))
    report.num_files = len(records) + len(report.skipped)
    if report.num_files == 0:
        raise ValueError(f"no image files found under {image_dir} (looked for names ending in .jpg, .png, ...).")
    return records


def _previous_index(out_dir: Path, fingerprint: str, image_dir: Path) -> dict | None:
    if not (out_dir / METADATA_FILE).exists():
        return None
    previous = read_metadata(out_dir)
    if previous["model_fingerprint"] != fingerprint:
        raise ValueError(
            f"{out_dir} holds an index built by model {previous['model_fingerprint']}, but this model is "
            f"{fingerprint}; use a new out_dir, or pass rebuild=True to re-embed everything."
        )
    if previous["image_dir"] != str(image_dir):
        raise ValueError(
            f"{out_dir} indexes {previous['image_dir']}, not {image_dir}; use a new out_dir, "
            "or pass rebuild=True to replace it."
        )
    return previous


def build_index(model, image_dir, out_dir, batch_size: int = 32, dtype: str = "float16", progress: bool = True,
                rebuild: bool = False, checkpoint_every: int = 1024, backend: str = "auto",
                lock_timeout: float | None = DEFAULT_LOCK_TIMEOUT) -> Index:
    """Embed every image under image_dir (recursively) into an index in out_dir; return it.

    Incremental: when out_dir already holds an index built by the same model (fingerprint) from the
    same folder with the same dtype, only new or changed files (size or mtime_ns differ) are embedded,
    and deleted files are dropped; a different model raises ValueError. rebuild=True ignores whatever
    out_dir holds and starts afresh. Unreadable images are skipped and listed, with the reason, in the
    returned index's `.report` and in metadata.json. Every `checkpoint_every` new embeddings are saved
    under out_dir/partial, so rerunning an interrupted build resumes it; the previous index stays
    intact and loadable until the new one is complete.
    backend: "auto" (ANN from ANN_THRESHOLD images on), "exact" or "ann". With ANN, the ANN index is
    built (or an up-to-date one reused) and saved beside the embeddings before returning.
    out_dir must be new, empty or a kclip index, and neither inside image_dir nor around it:
    anything else is refused with ValueError before a file is written (kclip.index.ownership), so
    the user's own files are never overwritten or deleted.
    A build holds out_dir/index.lock from start to commit: a second build of the same folder waits
    for it (up to `lock_timeout` seconds, None = for ever, then IndexLockTimeout naming the lock
    file) and then embeds only what the first one did not. Readers (Index.load) never wait.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}.")
    for name, value in (("batch_size", batch_size), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    image_dir = Path(image_dir).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().resolve()
    if not image_dir.is_dir():
        raise FileNotFoundError(f"Image folder {image_dir} does not exist or is not a folder.")
    check_index_folder(out_dir, image_dir)  # before the lock file: nothing is written into a refused folder
    with index_lock(out_dir, lock_timeout):
        check_index_folder(out_dir, image_dir)  # again: another process may have written meanwhile
        index = _build_locked(model, image_dir, out_dir, batch_size, dtype, progress, rebuild, checkpoint_every,
                              backend)
    report = index.report
    report.backend = index.resolved_backend
    if report.backend == "ann":  # after the lock: saving the ANN file takes it again
        report.ann_seconds = index.prepare()
    return index


def _build_locked(model, image_dir: Path, out_dir: Path, batch_size, dtype, progress, rebuild, checkpoint_every,
                  backend) -> Index:
    fingerprint = str(model.fingerprint())
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    if rebuild:
        remove_checkpoints(checkpoint_dir)
    previous = None if rebuild else _previous_index(out_dir, fingerprint, image_dir)
    report = BuildReport()
    records = _scan(image_dir, report)

    header = {"format": FORMAT_NAME, "model_fingerprint": fingerprint, "image_dir": str(image_dir), "dtype": dtype}
    known = {}  # FileRecord -> embedding row from the previous index or an interrupted build
    dim = None
    if previous is not None and previous["dtype"] == dtype:
        dim = previous["embedding_dim"]
        known.update(zip(file_records(previous["files"]), load_embeddings(out_dir, previous)))
    known.update(read_checkpoints(checkpoint_dir, header))
    to_embed = [record for record in records if record not in known]
    report.num_reused = len(records) - len(to_embed)

    fresh = {}  # FileRecord -> embedding row computed now
    unsaved_records, unsaved_rows = [], []
    batches = _loaded_batches(to_embed, image_dir, batch_size, _decode_side(model))
    with tqdm(total=len(to_embed), disable=not progress, unit="img", desc="Embedding images") as bar, \
            closing(batches):  # stops the decoding threads at once if embedding fails
        for batch, loaded in batches:
            readable = [(record, array) for record, (array, _) in zip(batch, loaded) if array is not None]
            report.skipped += [(record.path, error) for record, (_, error) in zip(batch, loaded) if error]
            if readable:
                vectors = model.encode_image([array for _, array in readable], batch_size=batch_size)
                vectors = _check_vectors(vectors, len(readable), dim)
                dim = vectors.shape[1]
                for (record, _), row in zip(readable, vectors.astype(dtype)):
                    fresh[record] = row
                    unsaved_records.append(record)
                    unsaved_rows.append(row)
            if len(unsaved_rows) >= checkpoint_every:
                write_checkpoint(checkpoint_dir, header, unsaved_records, unsaved_rows)
                unsaved_records, unsaved_rows = [], []
            bar.update(len(batch))
    report.num_embedded = len(fresh)

    indexed = [record for record in records if record in known or record in fresh]
    if not indexed:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in report.skipped[:3])
        raise ValueError(f"none of the {report.num_files} image files under {image_dir} could be read ({reasons}).")
    if report.skipped:
        logger.warning("skipped %d unreadable image(s), e.g. %s", len(report.skipped), report.skipped[0][0])
    if previous is not None:
        kept_paths = {record.path for record in indexed}
        report.num_removed = sum(1 for row_record in previous["files"] if row_record["path"] not in kept_paths)

    unchanged = (
        previous is not None and not fresh and previous["dtype"] == dtype
        and indexed == file_records(previous["files"])
        and report.skipped == [(s["path"], s["reason"]) for s in previous["skipped"]]
    )
    if not unchanged:
        embeddings = np.stack([fresh[record] if record in fresh else known[record] for record in indexed])
        commit(out_dir, header, embeddings, indexed, report.skipped)
    else:
        remove_checkpoints(checkpoint_dir)
    index = Index.load(out_dir, backend=backend)
    index.report = report
    return index
