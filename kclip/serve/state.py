"""What the search server holds: the model behind a lock, and the index, reloaded when it changes on disk.

Requests take one `IndexSnapshot` at their start and use only it, so a rebuild landing mid-request
never mixes two versions of the index in one answer. A new snapshot is made when metadata.json changes
(kclip.index.store replaces it last and atomically, so a changed file means a complete new index).
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kclip.data.image_io import is_image_file_name
from kclip.index.index import Index
from kclip.index.store import METADATA_FILE

logger = logging.getLogger(__name__)


class OutsideIndexedFolder(ValueError):
    """An index entry whose file does not resolve inside the indexed folder (a link out, or an edited index)."""


def image_id(relative_path: str) -> str:
    """A stable, opaque id for an indexed file: what URLs carry instead of a path."""
    return hashlib.sha256(relative_path.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Entry:
    """One indexed image as the server shows it."""

    row: int
    id: str
    path: str  # relative to the image folder, "/"-separated, as metadata.json stores it
    size: int
    mtime_ns: int

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def version(self) -> str:
        """Changes when the file does, so a changed photo gets a fresh thumbnail."""
        return hashlib.sha256(f"{self.path}\0{self.size}\0{self.mtime_ns}".encode()).hexdigest()[:16]


class IndexSnapshot:
    """One loaded version of the index, with its search backend ready and ids for every file."""

    def __init__(self, index: Index, token: tuple):
        self.index = index
        self.token = token
        self.entries = [
            Entry(row, image_id(record["path"]), record["path"], int(record["size"]), int(record["mtime_ns"]))
            for row, record in enumerate(index.metadata.get("files", []))
        ]
        self.by_id = {entry.id: entry for entry in self.entries}
        # Index.search answers with paths; this maps them back to rows.
        self.row_by_path = {path: row for row, path in enumerate(index.paths)}
        self.root = index.image_dir.resolve() if index.image_dir is not None else None
        index.prepare()  # built here, under the reload lock, never by two requests at once

    def entry(self, identifier: str) -> Entry | None:
        return self.by_id.get(identifier)

    def file_path(self, entry: Entry) -> Path:
        """The file behind `entry`, resolved; OutsideIndexedFolder unless it is an image file inside the folder.

        The path comes from metadata.json, never from the request, and metadata.json was validated on
        load (no absolute or ".." paths); a symbolic link can still lead out, so the resolved path is checked.
        """
        if self.root is None:
            raise OutsideIndexedFolder(f"{entry.path}: the index names no image folder")
        path = (self.root / entry.path).resolve()
        if self.root not in path.parents or not is_image_file_name(path.name):
            raise OutsideIndexedFolder(f"{entry.path} -> {path}: not an image file inside {self.root}")
        return path

    def embedding(self, entry: Entry) -> np.ndarray:
        return np.asarray(self.index.embeddings[entry.row], dtype=np.float32)

    def info(self) -> dict:
        metadata = self.index.metadata
        return {"count": len(self.index), "updated_at": metadata.get("updated_at"),
                "backend": self.index.resolved_backend, "skipped": metadata.get("num_skipped", 0)}


def _disk_token(directory: Path) -> tuple:
    status = os.stat(directory / METADATA_FILE)
    return (status.st_mtime_ns, status.st_size, status.st_ino)


class IndexWatcher:
    """Hands out the current IndexSnapshot, loading a new one when metadata.json has changed.

    The check is one stat() per request. A new index that cannot be used (damaged, or built by
    another model) is not swapped in: the previous snapshot keeps serving and `warning` says why.
    """

    def __init__(self, directory, fingerprint: str, backend: str = "auto"):
        self.directory = Path(directory).expanduser().resolve()
        self.fingerprint = str(fingerprint)
        self.backend = backend
        self.warning: str | None = None
        self.on_reload = None  # called with each new snapshot (the app prunes old thumbnails)
        self._lock = threading.Lock()
        self._failed_token = None
        self._snapshot = self._load()  # errors at start-up are raised

    def _load(self) -> IndexSnapshot:
        # The token is read before the index, so a rebuild landing in between is caught by the next check.
        # A rebuild may also delete the embeddings file between reading metadata.json and the array: retry once.
        for attempt in range(2):
            try:
                token = _disk_token(self.directory)
            except OSError:
                token = None  # Index.load says what is missing
            try:
                index = Index.load(self.directory, backend=self.backend)
                break
            except FileNotFoundError:
                if attempt or token is None:
                    raise
        if index.fingerprint != self.fingerprint:
            raise ValueError(
                f"the index in {self.directory} was built by model {index.fingerprint}, but the server's model is "
                f"{self.fingerprint}; serve it with the model that built it, or rebuild it with this one."
            )
        return IndexSnapshot(index, token)

    def current(self) -> IndexSnapshot:
        try:
            token = _disk_token(self.directory)
        except OSError:
            token = None  # metadata.json is missing for a moment (or for good): keep serving what we have
        snapshot = self._snapshot
        if token is None or token == snapshot.token or token == self._failed_token:
            return snapshot
        with self._lock:
            if self._snapshot.token == token or token == self._failed_token:
                return self._snapshot
            try:
                snapshot = self._load()
            except Exception as error:  # noqa: BLE001 - whatever is wrong with the new index, keep the last good one
                self._failed_token = token
                # Paths and details go to the log only; the page says what happened and where to look.
                self.warning = ("the index on disk changed but could not be loaded; still serving the previous "
                                "version (the server log says why).")
                logger.warning("the index in %s changed but could not be loaded (%s: %s); still serving the "
                               "previous version", self.directory, type(error).__name__, error)
                return self._snapshot
            self._snapshot, self.warning = snapshot, None
            logger.info("reloaded the index from %s: %d images", self.directory, len(snapshot.index))
        if self.on_reload is not None:
            try:
                self.on_reload(snapshot)
            except OSError as error:
                logger.warning("after reloading the index: %s", error)
        return snapshot


class _TextRequest:
    __slots__ = ("text", "vector", "error", "done")

    def __init__(self, text: str):
        self.text, self.vector, self.error, self.done = text, None, None, False


class ModelRunner:
    """Runs the model one call at a time (Keras models are not safe to call from several threads).

    Text queries that arrive while the model is busy wait in a queue; the next thread to get the model
    embeds every waiting text in one batch (up to max_batch), which costs little more than one text,
    and hands each request its own row. So concurrent clients are not served strictly one by one.

    The last `cache_size` texts' embeddings are kept: the next page of a search, going back, or a
    shared link asks for the same text again, and the model's answer for it cannot change.

    On torch, a kclip model's text tower runs as a traced graph (`traced_text=True`,
    kclip.backends.torch.traced_text): the same numbers without Keras' per-layer Python.
    """

    def __init__(self, model, max_batch: int = 32, cache_size: int = 1024, traced_text: bool = True):
        self.model = model
        self._traced = None  # without it, the model's own encode_text
        if traced_text and hasattr(model, "preprocessor") and hasattr(model, "_encoder"):
            from kclip.backends.torch.traced_text import TracedTextEncoder

            self._traced = TracedTextEncoder(model)
        self.max_batch = int(max_batch)
        self.fingerprint = str(model.fingerprint())
        self._model_lock = threading.Lock()
        self._queue_lock = threading.Lock()
        self._pending: list[_TextRequest] = []
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = int(cache_size)

    def encode_text(self, text: str) -> np.ndarray:
        """(1, dim) embedding of one text."""
        with self._queue_lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
                return cached[None].copy()
        request = _TextRequest(text)
        with self._queue_lock:
            self._pending.append(request)
        with self._model_lock:
            while not request.done:
                with self._queue_lock:
                    batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                self._run(batch)
        if request.error is not None:
            raise request.error
        return request.vector[None]

    def _run(self, batch: list) -> None:
        try:
            encode = self._traced.encode if self._traced is not None else self.model.encode_text
            vectors = np.asarray(encode([request.text for request in batch]), dtype=np.float32)
            if len(vectors) != len(batch):
                raise ValueError(f"model.encode_text returned {len(vectors)} rows for {len(batch)} texts.")
            for request, vector in zip(batch, vectors):
                request.vector = vector
            self._remember(batch)
        except Exception as error:  # every waiting request hears of it, not only the one that ran the batch
            for request in batch:
                request.error = error
        finally:
            for request in batch:
                request.done = True

    def warm_up(self) -> None:
        """Prepare the traced text tower for short queries before the first request (a few seconds)."""
        if self._traced is not None:
            with self._model_lock:
                self._traced.warm_up(max_rows=min(8, self.max_batch))

    def _remember(self, batch: list) -> None:
        if self._cache_size < 1:
            return
        with self._queue_lock:
            for request in batch:
                self._cache[request.text] = request.vector
                self._cache.move_to_end(request.text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def encode_image(self, image: np.ndarray) -> np.ndarray:
        with self._model_lock:
            return np.asarray(self.model.encode_image([image]), dtype=np.float32)
