"""Read the captioned-photo layouts people actually have on disk into one common form.

`LAYOUTS` names the supported layouts (Kaggle Flickr8k, the original Flickr8k release, Kaggle
Flickr30k, Karpathy split JSON, and custom CSV/JSONL) and the files each one expects. Whatever the
layout, `read_captioned_images` returns `CaptionRecords`: one entry per image with all of its
captions and its split. Bad input (malformed lines, empty captions, missing, empty, truncated or
non-image files) is skipped and recorded in a `SkipReport`, never fatal unless it exceeds
`max_bad_fraction`.
"""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from kclip.data import report as skip
from kclip.data import splits as split_rules
from kclip.data.caption_files import jsonl_parser, keep_caption, parse_results_line, parse_token_line, \
    read_lines, read_table
from kclip.data.report import SkipReport
from kclip.data.image_io import find_unreadable_images, iter_image_files

LAYOUTS = {
    "kaggle_flickr8k": "Images/ folder + captions.txt (CSV with header 'image,caption')",
    "flickr8k": "Flicker8k_Dataset/ (or Flickr8k_Dataset/) folder + Flickr8k.token.txt "
                "(lines 'IMG.jpg#N<TAB>caption'), with Flickr_8k.{train,dev,test}Images.txt for the "
                "official split; the text files may sit in Flickr8k_text/",
    "kaggle_flickr30k": "flickr30k_images/ folder + results.csv ('image_name| comment_number| comment'), "
                        "results.csv either next to flickr30k_images/ or inside it",
    "karpathy": "dataset_flickr8k.json or dataset_flickr30k.json (Karpathy split, images[].filename, "
                ".split, .sentences[].raw) + one image folder: " + ", ".join(
                    ["Images/", "images/", "Flicker8k_Dataset/", "flickr30k_images/"]),
    "custom": "a folder of images + exactly one caption file (*.csv, *.tsv or *.jsonl) with "
              "'image' and 'caption' columns (names set by image_column/caption_column), image paths "
              "relative to the caption file's folder or its images/ sub-folder; pass caption_file= "
              "to choose among several",
}

_IMAGE_FOLDER_NAMES = ("Images", "images", "Flicker8k_Dataset", "Flickr8k_Dataset", "flickr30k_images")
_CUSTOM_SUFFIXES = (".csv", ".tsv", ".jsonl")
_DEFAULT_REPORT_NAME = "kclip_skip_report.txt"


@dataclass(frozen=True)
class CaptionedImage:
    """One image and every caption kept for it."""

    image_path: Path
    # Path relative to the image folder, "/"-separated and NFC-normalised: stable across machines.
    image_id: str
    captions: list[str]
    split: str  # "train", "validation" or "test"


@dataclass
class CaptionRecords:
    """The result of reading a data set: images (sorted by image_id) plus what was skipped."""

    images: list[CaptionedImage]
    layout: str
    data_dir: Path
    split_source: str  # "official lists", "karpathy json" or "hash"
    skip_report: SkipReport = field(default_factory=SkipReport)
    report_path: Path | None = None

    def __len__(self) -> int:
        return len(self.images)

    def for_split(self, split: str) -> list[CaptionedImage]:
        split = split_rules.normalise_split_name(split)
        return [image for image in self.images if image.split == split]

    def split_counts(self) -> dict[str, int]:
        """Number of images in each split."""
        return {name: sum(image.split == name for image in self.images) for name in split_rules.SPLITS}

    def caption_pairs(self, split: str | None = None) -> list[tuple[Path, str, str]]:
        """(image path, caption, image id) for every caption, optionally of one split only."""
        chosen = self.images if split is None else self.for_split(split)
        return [(image.image_path, caption, image.image_id) for image in chosen for caption in image.captions]

    def summary(self) -> str:
        counts = ", ".join(f"{name} {count}" for name, count in self.split_counts().items())
        captions = sum(len(image.captions) for image in self.images)
        return (f"{self.layout} at {self.data_dir}: {len(self.images)} images, {captions} captions "
                f"({counts}; split by {self.split_source}); {self.skip_report.summary()}")


@dataclass
class _Plan:
    layout: str
    images_dir: Path
    caption_file: Path


def _first_file(folders: Iterable[Path], name: str) -> Path | None:
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def _first_dir(data_dir: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        folder = data_dir / name
        if folder.is_dir():
            # Kaggle's Flickr30k zip nests flickr30k_images/flickr30k_images/*.jpg.
            return folder / name if (folder / name).is_dir() else folder
    return None


def _plan(data_dir: Path, layout: str, caption_file: Path | None, images_dir: Path | None) -> _Plan:
    if caption_file is not None and layout in ("auto", "custom"):
        caption_file = Path(caption_file)
        if not caption_file.is_file():
            raise FileNotFoundError(f"Caption file {caption_file} does not exist.")
        return _Plan("custom", Path(images_dir) if images_dir else caption_file.parent, caption_file)
    text_dirs = [data_dir, data_dir / "Flickr8k_text"]
    candidates = {
        "flickr8k": (_first_dir(data_dir, ["Flicker8k_Dataset", "Flickr8k_Dataset"]),
                     _first_file(text_dirs, "Flickr8k.token.txt")),
        "kaggle_flickr8k": (_first_dir(data_dir, ["Images"]), _first_file([data_dir], "captions.txt")),
        "kaggle_flickr30k": (_first_dir(data_dir, ["flickr30k_images"]),
                             _first_file([data_dir, data_dir / "flickr30k_images"], "results.csv")),
        "karpathy": (_first_dir(data_dir, _IMAGE_FOLDER_NAMES), split_rules.find_karpathy_json(data_dir)),
    }
    custom_files = sorted(path for path in data_dir.iterdir()
                          if path.is_file() and path.suffix.lower() in _CUSTOM_SUFFIXES and path.name != "results.csv")
    if len(custom_files) == 1:
        candidates["custom"] = (Path(images_dir) if images_dir else data_dir, custom_files[0])
    wanted = list(candidates) if layout == "auto" else [layout]
    for name in wanted:
        folder, captions = candidates.get(name, (None, None))
        if folder is not None and captions is not None:
            return _Plan(name, Path(images_dir) if images_dir else folder, captions)
    if layout == "custom" and len(custom_files) > 1:
        raise ValueError(
            f"{data_dir} holds several possible caption files ({', '.join(p.name for p in custom_files)}); "
            "pass caption_file= to say which one to read."
        )
    expectations = "\n".join(f"  - {name}: {needs}" for name, needs in LAYOUTS.items())
    found = sorted(path.name + ("/" if path.is_dir() else "") for path in data_dir.iterdir())
    shown = ", ".join(found[:15]) + (f", ... ({len(found)} entries)" if len(found) > 15 else "")
    which = "any known layout" if layout == "auto" else f"the '{layout}' layout"
    raise ValueError(
        f"{data_dir} does not match {which}. Supported layouts and the files each expects:\n"
        f"{expectations}\nFound: {shown or 'an empty folder'}. Point data_dir at the folder that holds "
        "these files, or pass layout=/caption_file= explicitly."
    )


def detect_layout(data_dir: str | os.PathLike) -> str:
    """Name the layout of `data_dir` (one of LAYOUTS) from the files on disk, or raise ValueError."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Data folder {data_dir} does not exist or is not a folder.")
    return _plan(data_dir, "auto", None, None).layout


def _nfc(name: str) -> str:
    # macOS writes file names decomposed (NFD) while caption files usually hold NFC: compare both as NFC.
    return unicodedata.normalize("NFC", name)


def _read_captions(plan: _Plan, report: SkipReport, image_column: str, caption_column: str) -> dict[str, list[str]]:
    path = plan.caption_file
    if plan.layout == "kaggle_flickr8k":
        return read_table(path, "image", "caption", report)
    if plan.layout == "kaggle_flickr30k":
        return read_lines(path, parse_results_line, report)
    if plan.layout == "flickr8k":
        return read_lines(path, parse_token_line, report)
    if plan.layout == "karpathy":
        captions: dict[str, list[str]] = {}
        for image, sentences in split_rules.read_karpathy_json(path)[1].items():
            report.total_captions += len(sentences)
            for sentence in sentences:
                keep_caption(captions, image, sentence, f"{path.name}: {image}", report)
        return captions
    if path.suffix.lower() == ".jsonl":
        return read_lines(path, jsonl_parser(image_column, caption_column), report)
    return read_table(path, image_column, caption_column, report, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")


def _outside_reason(image: str, images_dir: Path) -> str | None:
    """Why the caption file's image name leads outside the image folder; None when it stays inside."""
    name = image.replace("\\", "/")
    if "\0" in name:
        return "names a file with a NUL character"
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        if _relative_inside(name, images_dir) is None:
            return f"is an absolute path outside {images_dir}; caption files name images inside it"
        return None
    if ".." in PurePosixPath(name).parts:
        return f"climbs out with '..'; caption files name images inside {images_dir}"
    return None


def _relative_inside(name: str, images_dir: Path) -> str | None:
    """An absolute image path as the "/"-separated path relative to images_dir; None when it lies outside."""
    try:
        return Path(name).resolve().relative_to(images_dir.resolve()).as_posix()
    except (ValueError, OSError):
        return None


def _find_image(image: str, on_disk: dict[str, Path], lower_case: dict[str, str], plan: _Plan) -> tuple[str, Path] | None:
    """(image id, path) of the file a caption line names, or None when it is not on disk."""
    name = _nfc(PurePosixPath(image.replace("\\", "/")).as_posix())
    if PurePosixPath(name).is_absolute():
        name = _relative_inside(name, plan.images_dir) or name
    # Custom caption files may name images relative to the images/ folder beside them.
    prefixes = ("", "images/", "Images/") if plan.layout == "custom" else ("",)
    match = next((prefix + name for prefix in prefixes if prefix + name in on_disk), None)
    match = match or lower_case.get(name.lower())  # "IMG.JPG" on disk for "img.jpg" in the file
    if match:
        return match, on_disk[match]
    candidate = plan.images_dir / name
    # An extension we do not list; a link leading out of the folder is refused like a '..' path.
    if candidate.is_file() and plan.images_dir.resolve() in candidate.resolve().parents:
        return name, candidate
    return None


def read_captioned_images(
    data_dir: str | os.PathLike,
    layout: str = "auto",
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    check_images: bool = True,
    max_bad_fraction: float = 0.05,
    caption_file: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    split_method: str = "auto",
    report_path: str | os.PathLike | None = None,
) -> CaptionRecords:
    """Read every captioned image under `data_dir` into CaptionRecords.

    layout: "auto" (see detect_layout) or one of LAYOUTS. split_method: "auto" takes the official
    Flickr8k lists, else a Karpathy JSON, else a hash split with `split_fractions`; "hash" forces
    the hash split. check_images decodes every image cheaply so broken files are skipped now rather
    than crashing training later. Skipped items go to a report written to `report_path` (default
    <data_dir>/kclip_skip_report.txt, or the temp folder when data_dir is read-only); more than
    `max_bad_fraction` of captions dropped raises ValueError.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Data folder {data_dir} does not exist or is not a folder.")
    if layout != "auto" and layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; use 'auto' or one of {sorted(LAYOUTS)}.")
    if not 0 <= max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be between 0 and 1, got {max_bad_fraction}.")
    fractions = split_rules.check_split_fractions(split_fractions)
    plan = _plan(data_dir, layout, Path(caption_file) if caption_file else None,
                 Path(images_dir) if images_dir else None)
    report = SkipReport(source=f"{plan.layout} layout at {data_dir}")
    captions = _read_captions(plan, report, image_column, caption_column)

    # One walk of the image folder; lookups then cost nothing, even for 30k images.
    on_disk = {_nfc(path.relative_to(plan.images_dir).as_posix()): path for path in iter_image_files(plan.images_dir)}
    lower_case = {name.lower(): name for name in on_disk}
    resolved: dict[str, tuple[str, Path]] = {}  # name in the caption file -> (image id, path)
    for image in captions:
        outside = _outside_reason(image, plan.images_dir)
        if outside:
            report.add(image[:200], skip.OUTSIDE_DATA_FOLDER, outside, captions_dropped=len(captions[image]))
            continue
        found = _find_image(image, on_disk, lower_case, plan)
        if found:
            resolved[image] = found
        else:
            report.add(image, skip.MISSING_IMAGE, f"not found in {plan.images_dir}", captions_dropped=len(captions[image]))
    problems = find_unreadable_images(sorted({path for _, path in resolved.values()}), decode=check_images)

    split_source, listed = split_rules.choose_split_source(
        split_method, list_folders=[plan.caption_file.parent, data_dir, data_dir / "Flickr8k_text"],
        json_folders=[data_dir, plan.images_dir.parent, plan.images_dir])
    kept: dict[str, CaptionedImage] = {}
    for image, (image_id, path) in resolved.items():
        if path in problems:
            report.add(str(path), skip.UNREADABLE_IMAGE, problems[path], captions_dropped=len(captions[image]))
            continue
        if listed is None:
            split = split_rules.hash_split(image_id, fractions)
        else:
            split = listed.get(image_id) or listed.get(PurePosixPath(image_id).name)
            if split is None:
                report.add(image_id, skip.NOT_IN_SPLIT_LISTS, split_source, captions_dropped=len(captions[image]), bad=False)
                continue
        if image_id in kept:  # two spellings of one file in the caption file: merge their captions
            kept[image_id].captions.extend(captions[image])
        else:
            kept[image_id] = CaptionedImage(path, image_id, list(captions[image]), split)
    for image_id in sorted(set(on_disk) - {image_id for image_id, _ in resolved.values()}):
        report.add(image_id, skip.IMAGE_WITHOUT_CAPTIONS, bad=False)

    written = None
    if len(report) or report.bad_fraction > max_bad_fraction:
        written = _write_report(report, Path(report_path) if report_path else data_dir / _DEFAULT_REPORT_NAME)
    report.raise_if_too_many(max_bad_fraction, written)
    if not kept:
        raise ValueError(f"No usable captioned images in {data_dir} ({report.summary()}); "
                         f"see {written}." if written else f"No captioned images found in {data_dir}.")
    images = [kept[image_id] for image_id in sorted(kept)]
    return CaptionRecords(images, plan.layout, data_dir, split_source, report, written)


def _write_report(report: SkipReport, path: Path) -> Path:
    try:
        return report.write(path)
    except OSError:
        # The data folder may be read-only (a shared mount): fall back to the temp folder.
        return report.write(Path(tempfile.gettempdir()) / path.name)
