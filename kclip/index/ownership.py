"""Which files in an index folder are kclip's: the only ones it may ever overwrite or delete.

An index folder is often made next to (or, by mistake, inside) a folder of the user's own files, so
kclip never deletes by a loose pattern. It deletes only:
  - files named in the index's own records: the embeddings and ANN files of a replaced
    metadata.json, and every file a commit was about to write, listed in cleanup.json before the
    write began (so a build killed half-way leaves its orphan named there);
  - build checkpoints in partial/ and half-written temporaries, matched by the exact names kclip
    gives them (part-<12 hex>.npy, .metadata.json.<random>.tmp, ...);
  - thumbnails named <16 hex>.jpg (kclip.serve.thumbnails).
Before writing anything, `check_index_folder` refuses an index folder that holds anything else and
no kclip index, and an index folder inside the image folder or around it.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

logger = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
LOCK_FILE = "index.lock"
CHECKPOINT_DIR = "partial"
THUMBNAIL_DIR = "thumbnails"
CLEANUP_FILE = "cleanup.json"
FORMAT_NAME = "kclip-image-index"

_INDEX_FILE = r"(?:metadata\.json|cleanup\.json|embeddings-[0-9a-f]{12}\.npy|ann-[0-9a-f]{16}\.(?:faiss|json))"
_CHECKPOINT_FILE = r"part-[0-9a-f]{12}\.(?:npy|json)"
_THUMBNAIL_FILE = r"[0-9a-f]{16}\.jpg"


def _temporary(name: str) -> str:
    # kclip.utils.files.temporary_path: ".NAME.<mkstemp random>.tmp[.ext]"
    return rf"\.{name}\.[A-Za-z0-9_]+\.tmp(?:\.[a-z]+)?"


INDEX_FILE = re.compile(rf"^(?:{_INDEX_FILE}|index\.lock|{_temporary(_INDEX_FILE)})$")
CHECKPOINT_FILE = re.compile(rf"^(?:{_CHECKPOINT_FILE}|{_temporary(_CHECKPOINT_FILE)})$")
THUMBNAIL_FILE = re.compile(rf"^(?:{_THUMBNAIL_FILE}|{_temporary(_THUMBNAIL_FILE)})$")
TEMPORARY_INDEX_FILE = re.compile(rf"^{_temporary(_INDEX_FILE)}$")
_FOLDERS = {CHECKPOINT_DIR: CHECKPOINT_FILE, THUMBNAIL_DIR: THUMBNAIL_FILE}


def foreign_entries(directory: Path) -> list[str]:
    """Names under `directory` that kclip never writes into an index folder, sorted."""
    foreign = []
    for path in directory.iterdir():
        pattern = _FOLDERS.get(path.name)
        if pattern is not None and path.is_dir() and not path.is_symlink():
            foreign += [f"{path.name}/{inner.name}" for inner in path.iterdir()
                        if not (pattern.match(inner.name) and inner.is_file() and not inner.is_symlink())]
        elif not (INDEX_FILE.match(path.name) and path.is_file() and not path.is_symlink()):
            foreign.append(path.name + ("/" if path.is_dir() else ""))
    return sorted(foreign)


def _metadata_format(directory: Path):
    """The "format" metadata.json declares; None when there is no readable JSON object."""
    try:
        data = json.loads((directory / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_index_folder(out_dir: Path, image_dir: Path) -> None:
    """Raise ValueError, before anything is written, when `out_dir` may not hold an index of `image_dir`.

    Both paths must be resolved. Allowed: a folder that does not exist yet, an empty one, one
    holding a kclip index, or one holding only files kclip writes (an interrupted first build).
    """
    if _inside(out_dir, image_dir):
        raise ValueError(
            f"the index folder {out_dir} is inside the image folder {image_dir} (or is it): the index would list its "
            f"own files as photos, and its clean-up would run among your photos. Put the index beside the photos, "
            f"e.g. {image_dir.parent / (image_dir.name + '.kclip')}."
        )
    if _inside(image_dir, out_dir):
        raise ValueError(
            f"the image folder {image_dir} is inside the index folder {out_dir}: an index folder holds only the "
            f"index. Choose an index folder outside {image_dir}, e.g. {image_dir.parent / (image_dir.name + '.kclip')}."
        )
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"the index folder {out_dir} is a file, not a folder; choose a folder name.")
    declared = _metadata_format(out_dir)
    if declared == FORMAT_NAME:
        return
    if (out_dir / METADATA_FILE).is_file() and declared is not None:
        raise ValueError(
            f"{out_dir} holds a metadata.json of another kind (format {declared!r}), not a kclip index; "
            "kclip will not write into it. Choose a new, empty index folder."
        )
    foreign = foreign_entries(out_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(
            f"the index folder {out_dir} is not empty and holds no kclip index ({shown}); kclip writes an index only "
            "into a new or empty folder, or one holding a kclip index, so that it never overwrites or deletes your "
            "files. Choose a new folder."
        )


def read_cleanup(directory: Path) -> set:
    """Names a commit recorded before writing them (cleanup.json); only names kclip gives its index files."""
    path = directory / CLEANUP_FILE
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("files", [])
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, AttributeError, RecursionError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return set()
    if not isinstance(names, list):
        return set()
    return {name for name in names if isinstance(name, str) and INDEX_FILE.match(name)
            and name not in (METADATA_FILE, CLEANUP_FILE, LOCK_FILE)}


def write_cleanup(directory: Path, names) -> None:
    from kclip.utils.files import write_json

    write_json(directory / CLEANUP_FILE, {"format": "kclip-index-cleanup", "files": sorted(names)}, indent=1)


def remove_owned(directory: Path, names, keep) -> list:
    """Delete the files `names` in `directory` that are not in `keep`; returns the removed names."""
    removed = []
    for name in sorted(set(names) - set(keep)):
        path = directory / name
        if INDEX_FILE.match(name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(name)
    return removed


def remove_temporaries(directory: Path) -> list:
    """Half-written index files (.metadata.json.<random>.tmp, ...) that a killed writer left."""
    removed = []
    for path in directory.iterdir():
        if TEMPORARY_INDEX_FILE.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def remove_checkpoints(checkpoint_dir: Path) -> bool:
    """Delete kclip's build checkpoints, then the folder if nothing else is in it; True if any went."""
    if not checkpoint_dir.is_dir() or checkpoint_dir.is_symlink():
        return False
    for path in checkpoint_dir.iterdir():
        if CHECKPOINT_FILE.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
    try:
        checkpoint_dir.rmdir()
    except OSError:  # something kclip did not write is in there: leave it, and the folder
        logger.warning("left %s in place: it holds files kclip did not write", checkpoint_dir)
    return True
