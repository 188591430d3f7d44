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

A commit writes a fresh embeddings-<token>.npy first and then replaces metadata.json, each through a
temporary file and os.replace. metadata.json alone says which embeddings file is current, so a build
killed at any point leaves the previous metadata paired with its own, untouched, embeddings; files
left over by a killed build are removed by the next successful one. Concurrent builds into one
folder are not supported.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_NAME = "kclip-image-index"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
CHECKPOINT_DIR = "partial"



def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); rebuild the index (rebuild=True).") from error


def read_metadata(directory: Path) -> dict:
    path = directory / METADATA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no kclip index ({METADATA_FILE} is missing); build one first.")
    metadata = _read_json(path)
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a kclip image index (format {metadata.get('format')!r}).")
    if metadata.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {metadata['format_version']}, newer than this kclip reads "
            f"({FORMAT_VERSION}); upgrade kclip or rebuild the index."
        )
    return metadata


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


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows); the rename itself is still atomic
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder, then rename over `path` in one step."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)


def _write_array(path: Path, array: np.ndarray) -> None:
    _atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))


def _write_json(path: Path, data: dict) -> None:
    _atomic_write(path, lambda handle: handle.write(json.dumps(data, indent=1).encode("utf-8")))


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


def _remove_stale_files(out_dir: Path, current_embeddings: str, current_sha256: str) -> None:
    """Drop embeddings and ANN files no metadata points at any more, temporaries and checkpoints."""
    for path in out_dir.glob("embeddings-*.npy"):
        if path.name != current_embeddings:
            path.unlink(missing_ok=True)
    for path in list(out_dir.glob("ann-*.faiss")) + list(out_dir.glob("ann-*.json")):
        if path.stem != f"ann-{current_sha256[:16]}":
            path.unlink(missing_ok=True)
    for path in out_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)
    shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)


def commit(out_dir: Path, header: dict, embeddings: np.ndarray, records: list, skipped: list) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    embeddings_file = f"embeddings-{uuid.uuid4().hex[:12]}.npy"
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
    _remove_stale_files(out_dir, embeddings_file, metadata["embeddings_sha256"])
