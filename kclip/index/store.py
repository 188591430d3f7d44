"""The on-disk format of an image index: atomic writes, metadata, embeddings and build checkpoints.

Layout of an index folder (no pickle anywhere):
    metadata.json               what the index holds; names its embeddings file (see below)
    embeddings-<token>.npy      (count, dim) float16 or float32, L2-normalized rows, row i = files[i]
    partial/part-<token>.npy    rows embedded by an unfinished build (+ part-<token>.json listing
                                their files); deleted once a build completes
    ann-<sha16>.faiss/.json     optional ANN index of the embeddings whose sha256 starts with sha16
                                (see kclip.index.ann); used only if its .json matches metadata.json

metadata.json keys: format, format_version, image_dir (absolute), model_fingerprint, embedding_dim,
dtype, normalized, embeddings_file, embeddings_sha256 (of the array's raw bytes), count,
files ([{path (relative to image_dir, "/"-separated), size, mtime_ns}]), num_skipped,
skipped ([{path, reason}]), updated_at.

    index.lock                  taken by whoever writes the folder (see index_lock)
    cleanup.json                the files a commit is about to write or replace; exists only while
                                one runs (or after it was killed), so whatever it left is removed later

Nothing else is ever written, and only the files these records name are ever deleted
(kclip.index.ownership); build_index refuses a folder holding anything else and no kclip index.
metadata.json is validated on load (`validate_metadata`): wrong types, absolute or ".." paths, or
counts that disagree are refused as a damaged index, never followed.

A commit writes a fresh embeddings-<token>.npy first and then replaces metadata.json, each through
kclip.utils.files (temporary file, fsync, os.replace, fsync of the folder). metadata.json alone says
which embeddings file is current, so a build killed at any point leaves the previous metadata paired
with its own, untouched, embeddings.

Concurrency: every writer (a build, an ANN save) holds index.lock, so a second build of the same
folder waits for the first and then reuses its embeddings. Replaced files are deleted only under
that lock, right after a commit. Readers take no lock: they read metadata.json,
then its embeddings file; if a commit removed that file in between, they read metadata.json again
(load_index_files).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
from filelock import FileLock, Timeout

from kclip.index import ownership
from kclip.index.ownership import CHECKPOINT_DIR, FORMAT_NAME, LOCK_FILE, METADATA_FILE
from kclip.utils.files import write_json, write_numpy

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
# A second build of the same folder waits this long for the first one before giving up.
DEFAULT_LOCK_TIMEOUT = 600.0


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rebuild the index (rebuild=True).") from error


def read_metadata(directory: Path) -> dict:
    path = directory / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no kclip index ({METADATA_FILE} is missing); build one first.")
    metadata = _read_json(path)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        found = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ValueError(f"{path} is not a kclip image index (format {found!r}).")
    version = metadata.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this kclip reads "
            f"({FORMAT_VERSION}); upgrade kclip or rebuild the index."
        )
    validate_metadata(metadata, path)
    return metadata


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EMBEDDINGS_FILE = re.compile(r"^embeddings-[0-9A-Za-z_-]{1,64}\.npy$")


def _is_int(value, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def safe_relative_path(path) -> str | None:
    """What is wrong with `path` as an indexed file's path (relative, "/"-separated, inside its folder); None if nothing."""
    if not isinstance(path, str) or not path:
        return "is not a non-empty string"
    if "\0" in path:
        return "holds a NUL character"
    # A backslash is an ordinary character in a POSIX file name, but a separator on Windows.
    parts = re.split(r"[/\\]", path) if os.name == "nt" else path.split("/")
    if path.startswith("/") or Path(path).is_absolute() or Path(path).drive:
        return "is an absolute path"
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' part"
    return None


def validate_metadata(metadata: dict, path: Path) -> None:
    """Raise ValueError naming the first key of `metadata` that does not have the documented form.

    An index folder may have been copied from someone else: its paths must stay inside its image
    folder, and every value must have the type the readers rely on.
    """
    def refuse(key: str, problem: str):
        raise ValueError(f"{path} is damaged or was edited by hand: {key} {problem}; rebuild the index "
                         "(rebuild=True).")

    if not _is_int(metadata.get("format_version"), 1):
        refuse("format_version", f"must be a whole number >= 1, not {metadata.get('format_version')!r}")
    image_dir = metadata.get("image_dir")
    if not isinstance(image_dir, str) or "\0" in image_dir or not Path(image_dir).is_absolute():
        refuse("image_dir", f"must be an absolute folder path, not {image_dir!r}")
    if not isinstance(metadata.get("model_fingerprint"), str):
        refuse("model_fingerprint", "must be a string")
    if metadata.get("dtype") not in DTYPES:
        refuse("dtype", f"must be one of {list(DTYPES)}, not {metadata.get('dtype')!r}")
    if not _is_int(metadata.get("embedding_dim"), 1):
        refuse("embedding_dim", f"must be a whole number >= 1, not {metadata.get('embedding_dim')!r}")
    if not isinstance(metadata.get("embeddings_file"), str) or not _EMBEDDINGS_FILE.match(metadata["embeddings_file"]):
        refuse("embeddings_file", f"must name an embeddings-*.npy file in the index folder, not "
                                  f"{metadata.get('embeddings_file')!r}")
    if not isinstance(metadata.get("embeddings_sha256"), str) or not _SHA256.match(metadata["embeddings_sha256"]):
        refuse("embeddings_sha256", "must be 64 lower-case hex digits")
    files = metadata.get("files")
    if not isinstance(files, list):
        refuse("files", f"must be a list, not {type(files).__name__}")
    if not _is_int(metadata.get("count")) or metadata["count"] != len(files):
        refuse("count", f"must equal the number of files ({len(files)}), not {metadata.get('count')!r}")
    seen = set()
    for number, row in enumerate(files):
        if not isinstance(row, dict):
            refuse(f"files[{number}]", "must be an object")
        problem = safe_relative_path(row.get("path"))
        if problem:
            refuse(f"files[{number}].path", f"{problem} ({row.get('path')!r}); indexed paths stay inside image_dir")
        if row["path"] in seen:
            refuse(f"files[{number}].path", f"repeats {row['path']!r}")
        seen.add(row["path"])
        if not (_is_int(row.get("size")) and _is_int(row.get("mtime_ns"), -2**63)):
            refuse(f"files[{number}]", "needs whole-number size and mtime_ns")
    skipped = metadata.get("skipped", [])
    if not isinstance(skipped, list) or not all(
            isinstance(row, dict) and isinstance(row.get("path"), str) and isinstance(row.get("reason"), str)
            for row in skipped):
        refuse("skipped", "must be a list of {path, reason} strings")
    if not _is_int(metadata.get("num_skipped", 0)):
        refuse("num_skipped", "must be a whole number >= 0")
    if not isinstance(metadata.get("updated_at", ""), (str, type(None))):
        refuse("updated_at", "must be a string")


def array_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def load_embeddings(directory: Path, metadata: dict, verify_checksum: bool = False) -> np.ndarray:
    name = metadata["embeddings_file"]
    if Path(name).name != name:
        raise ValueError(f"{directory / METADATA_FILE} names an embeddings file outside the index: {name!r}.")
    embeddings = np.load(directory / name, allow_pickle=False)
    expected_shape = (metadata["count"], metadata["embedding_dim"])
    if embeddings.shape != expected_shape or embeddings.dtype != np.dtype(metadata["dtype"]):
        raise ValueError(
            f"{directory / name} holds {embeddings.dtype} {embeddings.shape}, but {METADATA_FILE} says "
            f"{metadata['dtype']} {expected_shape}; the index is damaged, rebuild it (rebuild=True)."
        )
    if verify_checksum and array_sha256(embeddings) != metadata["embeddings_sha256"]:
        raise ValueError(f"{directory / name} does not match its checksum; rebuild the index (rebuild=True).")
    return embeddings


def load_index_files(directory: Path, verify_checksum: bool = False, attempts: int = 10) -> tuple:
    """(metadata, embeddings) of one committed state, read without the lock.

    A commit may land between reading metadata.json and loading the embeddings file it names, and
    the committing build then deletes that file; metadata.json is then read again, up to `attempts`
    times (each retry means another commit finished, so this only fails under a storm of commits).
    """
    attempt = 1
    while True:
        metadata = read_metadata(directory)
        try:
            return metadata, load_embeddings(directory, metadata, verify_checksum)
        except FileNotFoundError:
            if attempt >= attempts or read_metadata(directory) == metadata:
                raise
            logger.debug("%s changed while it was read; reading it again", directory)
            attempt += 1


def _write_array(path: Path, array: np.ndarray) -> None:
    write_numpy(path, array)


def _write_json(path: Path, data: dict) -> None:
    write_json(path, data, indent=1, ensure_ascii=True)


# -- the lock ------------------------------------------------------------------------------------


class IndexLockTimeout(TimeoutError):
    """Another process or thread held an index folder's lock for longer than the caller would wait."""


@contextmanager
def index_lock(directory: Path, timeout: float | None = DEFAULT_LOCK_TIMEOUT):
    """Hold `directory`/index.lock: one writer at a time (builds, ANN saves, stale-file removal).

    An operating-system lock (filelock: flock on POSIX), so a writer that dies releases it at once
    and no stale lock can block the folder. timeout=None waits for ever; otherwise
    IndexLockTimeout names the lock file after `timeout` seconds. Readers never take it.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    lock = FileLock(path, timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire()
    except Timeout as error:
        raise IndexLockTimeout(
            f"another kclip build is writing the index in {directory}: its lock file {path} stayed taken for "
            f"{timeout:g} s. Wait for that build to finish (or stop it), or pass a longer lock_timeout. The lock "
            "is an operating-system lock, freed as soon as its process ends, so never delete the file by hand."
        ) from error
    try:
        yield path
    finally:
        lock.release()


class FileRecord(NamedTuple):
    """An image file as the index knows it; a changed size or mtime_ns means "embed again"."""

    path: str  # relative to the image folder, "/"-separated
    size: int
    mtime_ns: int


def file_rows(records) -> list:
    """FileRecords as the JSON objects metadata.json stores."""
    return [{"path": path, "size": size, "mtime_ns": mtime_ns} for path, size, mtime_ns in records]


def file_records(rows) -> list:
    return [FileRecord(row["path"], row["size"], row["mtime_ns"]) for row in rows]


def write_checkpoint(checkpoint_dir: Path, header: dict, records: list, rows: list) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    _write_array(checkpoint_dir / f"part-{token}.npy", np.stack(rows))
    # The .json is written last: a part counts only once it exists, so its .npy is complete.
    _write_json(checkpoint_dir / f"part-{token}.json", {**header, "files": file_rows(records)})


def read_checkpoints(checkpoint_dir: Path, header: dict) -> dict:
    """Rows embedded by an unfinished build with the same model, image folder and dtype."""
    found = {}
    for part in sorted(checkpoint_dir.glob("part-*.json")) if checkpoint_dir.is_dir() else []:
        try:
            data = _read_json(part)
            if any(data.get(key) != value for key, value in header.items()):
                continue
            rows = np.load(part.with_suffix(".npy"), allow_pickle=False)
            records = file_records(data["files"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("ignoring unreadable build checkpoint %s: %s", part, error)
            continue
        if len(rows) == len(records):
            found.update(zip(records, rows))
    return found


def remove_stale_files(out_dir: Path) -> list:
    """Delete the files the index's records name as replaced; call it holding index_lock.

    Kept: metadata.json, the embeddings file it names, the ANN files of those embeddings, the lock.
    Removed: the files cleanup.json names (the previous embeddings and ANN files, and whatever a
    killed commit was writing), kclip's half-written temporaries and its build checkpoints; never
    anything else (kclip.index.ownership). Returns the removed names. Without committed metadata
    nothing is removed.
    """
    try:
        metadata = read_metadata(out_dir)
    except (FileNotFoundError, ValueError):
        return []
    keep_ann = f"ann-{metadata['embeddings_sha256'][:16]}"
    keep = {metadata["embeddings_file"], f"{keep_ann}.faiss", f"{keep_ann}.json"}
    removed = ownership.remove_owned(out_dir, ownership.read_cleanup(out_dir), keep)
    removed += ownership.remove_temporaries(out_dir)
    if ownership.remove_checkpoints(out_dir / CHECKPOINT_DIR):
        removed.append(CHECKPOINT_DIR)
    (out_dir / ownership.CLEANUP_FILE).unlink(missing_ok=True)
    return removed


def commit(out_dir: Path, header: dict, embeddings: np.ndarray, records: list, skipped: list) -> None:
    """Write a new embeddings file, then point metadata.json at it; call it holding index_lock."""
    out_dir.mkdir(parents=True, exist_ok=True)
    embeddings_file = f"embeddings-{uuid.uuid4().hex[:12]}.npy"
    # Recorded before it exists: a build killed from here on leaves an orphan the next commit may delete.
    replaced = ownership.read_cleanup(out_dir) | {embeddings_file}
    try:
        previous = read_metadata(out_dir)
    except (FileNotFoundError, ValueError):
        previous = None
    if previous is not None:
        stem = f"ann-{previous['embeddings_sha256'][:16]}"
        replaced |= {previous["embeddings_file"], f"{stem}.faiss", f"{stem}.json"}
    ownership.write_cleanup(out_dir, replaced)
    _write_array(out_dir / embeddings_file, embeddings)
    metadata = {
        **header,
        "format_version": FORMAT_VERSION,
        "embedding_dim": int(embeddings.shape[1]),
        "normalized": True,
        "embeddings_file": embeddings_file,
        "embeddings_sha256": array_sha256(embeddings),
        "count": len(records),
        "num_skipped": len(skipped),
        "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": file_rows(records),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
    }
    _write_json(out_dir / METADATA_FILE, metadata)
    remove_stale_files(out_dir)
