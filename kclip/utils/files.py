"""One way to write a file: all of it or none of it, and still there after a power cut.

Every file kclip produces goes through `write_atomic` (or one of its forms below): the data goes to
a temporary file in the destination folder, is flushed and fsync'ed, replaces the destination with
one `os.replace`, and then the folder itself is fsync'ed so that the rename is durable too. A reader
sees the old file or the new one, never a truncated mix, and a crash leaves at most a hidden
`.NAME.*.tmp` file behind.

Why not a library: `atomicwrites` (the usual choice) was archived by its author in 2022, and
`safer` renames without any fsync (its own README points to atomicwrites for atomic writes).
The few lines below do exactly the four steps, and nothing else.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

TEMPORARY_SUFFIX = ".tmp"


def fsync_directory(directory) -> None:
    """Make a rename inside `directory` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse fsync on folders; the rename itself is still atomic
        pass
    finally:
        os.close(descriptor)


def temporary_path(path, extension: str = "") -> Path:
    """A fresh hidden name beside `path` for a partial write (`.NAME.<random>.tmp[extension]`), created empty."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX + extension,
                                        dir=path.parent)
    os.close(descriptor)
    return Path(name)


def write_atomic(path, write: Callable, mode: str = "wb", encoding: str | None = None, newline=None) -> Path:
    """Call `write(handle)` on a temporary file beside `path`, then put it in place atomically.

    `mode` is "wb" or "w" (text, then `encoding` defaults to UTF-8). If `write` raises, `path` is
    left as it was and the temporary file is removed. Creates the parent folder. Returns `path`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"write_atomic writes whole files; mode must be 'w' or 'wb', got {mode!r}.")
    text = {"encoding": encoding or "utf-8", "newline": newline} if mode == "w" else {}

    def save(temporary):
        with open(temporary, mode, **text) as handle:
            write(handle)

    return write_file_atomic(path, save)


def write_file_atomic(path, save: Callable[[Path], object]) -> Path:
    """For writers that need a file name (Keras' `model.save`, PIL's `image.save`): `save(temporary)`.

    The temporary name keeps `path`'s extension (`.NAME.<random>.tmp.keras`) because such writers
    choose the format from it. The temporary file is fsync'ed, then renamed over `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path, path.suffix)
    try:
        save(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path


def write_text(path, text: str, encoding: str = "utf-8") -> Path:
    return write_atomic(path, lambda handle: handle.write(text), mode="w", encoding=encoding)


def write_bytes(path, data: bytes) -> Path:
    return write_atomic(path, lambda handle: handle.write(data))


def write_json(path, data, indent: int | None = 2, **kwargs) -> Path:
    """`data` as JSON (UTF-8, non-ASCII kept as is unless ensure_ascii=True is passed)."""
    kwargs.setdefault("ensure_ascii", False)
    return write_text(path, json.dumps(data, indent=indent, **kwargs) + "\n")


def write_numpy(path, array) -> Path:
    """A `.npy` file, without pickle."""
    import numpy as np

    return write_atomic(path, lambda handle: np.save(handle, np.asarray(array), allow_pickle=False))


def temporary_directory(path) -> Path:
    """A fresh hidden, empty sibling folder of `path` to build a whole folder in (see commit_directory).

    Files written inside it need no atomic writes of their own: nobody reads the folder until
    commit_directory has fsync'ed them all and renamed the folder into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent))


def commit_directory(building, path) -> Path:
    """fsync every file and folder under `building`, then rename it to `path` (replacing a folder there)."""
    building, path = Path(building), Path(path)
    for root, _, names in os.walk(building):
        for name in names:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(root)
    os.chmod(building, 0o777 & ~_UMASK)  # mkdtemp makes it 0700
    if path.exists():
        # A folder cannot be os.replace'd over a non-empty one: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=TEMPORARY_SUFFIX, dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(building, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(building, path)
    fsync_directory(path.parent)
    return path


def is_temporary(path) -> bool:
    """True for a name `write_atomic` or `write_file_atomic` uses while writing."""
    name = Path(path).name
    return name.startswith(".") and (name.endswith(TEMPORARY_SUFFIX) or ".tmp." in name)


def _read_umask() -> int:
    # os.umask can only be read by setting it, so it is read once, at import, before any threads write.
    current = os.umask(0o022)
    os.umask(current)
    return current


_UMASK = _read_umask()
