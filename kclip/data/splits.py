"""Train / validation / test assignment, always by image and never by caption.

Splitting captions at random puts the same photo on both sides of the split, so validation
recall measures memorisation. Every function here maps an *image* to a split:

- official lists when the data set ships them (Flickr8k's Flickr_8k.{train,dev,test}Images.txt),
- Karpathy's split JSON (dataset_flickr8k.json / dataset_flickr30k.json) when it lies next to the
  images, the split that published retrieval numbers use,
- otherwise a stable hash of the image id, so a given image lands in the same split on every
  machine, run and Python version, and adding images never moves the existing ones.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

SPLITS = ("train", "validation", "test")

# Names the sources use for our three splits. Karpathy's "restval" is the part of the original
# validation images that everyone trains on.
_SPLIT_ALIASES = {
    "train": "train", "training": "train", "restval": "train",
    "val": "validation", "valid": "validation", "validation": "validation", "dev": "validation",
    "test": "test", "testing": "test",
}

# Original Flickr8k release: one image file name per line.
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "validation": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}

KARPATHY_FILE_NAMES = ("dataset_flickr8k.json", "dataset_flickr30k.json", "dataset_coco.json")


def normalise_split_name(name: str) -> str:
    """Map a split name a data set uses ("val", "dev", "restval", ...) to one of SPLITS."""
    key = str(name).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(f"Unknown split name {name!r}; expected one of {sorted(_SPLIT_ALIASES)}.")
    return _SPLIT_ALIASES[key]


def check_split_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Validate (train, validation, test) fractions: three non-negative numbers summing to 1."""
    values = tuple(float(value) for value in fractions)
    if len(values) != 3:
        raise ValueError(
            f"split_fractions must be three numbers (train, validation, test), got {fractions!r}."
        )
    if any(value < 0 or math.isnan(value) for value in values) or not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"split_fractions must be non-negative and sum to 1, got {fractions!r} "
            f"(sum {sum(values):.4f}); e.g. (0.8, 0.1, 0.1)."
        )
    return values  # type: ignore[return-value]


def hash_fraction(image_id: str) -> float:
    """A number in [0, 1) fixed by the image id alone (SHA-1 of its UTF-8 bytes)."""
    digest = hashlib.sha1(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def hash_split(image_id: str, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """Assign `image_id` to a split with probability given by `fractions`, deterministically."""
    train, validation, _ = check_split_fractions(fractions)
    position = hash_fraction(image_id)
    if position < train:
        return "train"
    if position < train + validation:
        return "validation"
    return "test"


def find_flickr8k_split_files(folder: Path) -> dict[str, Path] | None:
    """The three official Flickr8k split lists in `folder`, or None unless all three are there."""
    paths = {split: Path(folder) / name for split, name in FLICKR8K_SPLIT_FILES.items()}
    return paths if all(path.is_file() for path in paths.values()) else None


def read_flickr8k_split_files(paths: dict[str, Path]) -> dict[str, str]:
    """Map image file name -> split from the official Flickr8k lists.

    An image listed in two lists is an error in the lists; it raises rather than leaking across.
    """
    assignment: dict[str, str] = {}
    for split, path in paths.items():
        for line in Path(path).read_text(encoding="utf-8-sig", errors="replace").splitlines():
            file_name = line.strip()
            if not file_name:
                continue
            previous = assignment.setdefault(file_name, split)
            if previous != split:
                raise ValueError(
                    f"{file_name} is listed in both the {previous} and the {split} split files "
                    f"({path.parent}); fix the lists so each image is in exactly one split."
                )
    return assignment


def find_karpathy_json(*folders: Path) -> Path | None:
    """The first Karpathy split JSON (dataset_flickr8k.json, ...) found in `folders`, if any."""
    for folder in folders:
        for name in KARPATHY_FILE_NAMES:
            candidate = Path(folder) / name
            if candidate.is_file():
                return candidate
    return None


def read_karpathy_json(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Read a Karpathy split file: (file name -> split, file name -> raw captions).

    Entries without a file name or with an unknown split are ignored here; images they refer to
    fall back to the caller's handling of unlisted images.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read the Karpathy split file {path}: {error}. Re-download it.") from error
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(
            f"{path} is not a Karpathy split file: expected a JSON object with an 'images' list "
            "whose entries have 'filename', 'split' and 'sentences'."
        )
    splits: dict[str, str] = {}
    captions: dict[str, list[str]] = {}
    for entry in data["images"]:
        if not isinstance(entry, dict) or not entry.get("filename"):
            continue
        file_name = str(entry["filename"])
        if "filepath" in entry and entry["filepath"]:
            # COCO entries name their sub-folder (train2014/...) separately.
            file_name = f"{entry['filepath']}/{file_name}"
        try:
            splits[file_name] = normalise_split_name(entry.get("split", ""))
        except ValueError:
            continue
        sentences = entry.get("sentences") or []
        captions[file_name] = [
            str(sentence.get("raw", "")) for sentence in sentences if isinstance(sentence, dict)
        ]
    return splits, captions


def choose_split_source(method: str, list_folders: Sequence[Path],
                        json_folders: Sequence[Path]) -> tuple[str, dict[str, str] | None]:
    """Where splits come from: ("official lists" | "karpathy json" | "hash", file name -> split).

    method "auto" prefers the official Flickr8k lists, then a Karpathy JSON, then the hash split
    (returned as None: the caller hashes each image id); "official"/"karpathy" insist on that
    source; "hash" always hashes, ignoring any lists.
    """
    if method not in ("auto", "official", "karpathy", "hash"):
        raise ValueError(f"split_method must be 'auto', 'official', 'karpathy' or 'hash', got {method!r}.")
    if method in ("auto", "official"):
        for folder in list_folders:
            lists = find_flickr8k_split_files(folder)
            if lists:
                return "official lists", read_flickr8k_split_files(lists)
    if method in ("auto", "karpathy"):
        json_path = find_karpathy_json(*json_folders)
        if json_path:
            return "karpathy json", read_karpathy_json(json_path)[0]
    if method in ("official", "karpathy"):
        searched = ", ".join(str(folder) for folder in (list_folders if method == "official" else json_folders))
        raise ValueError(f"split_method={method!r} but no {method} split files were found in {searched}; "
                         "use split_method='auto' or 'hash'.")
    return "hash", None
