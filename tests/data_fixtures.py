"""Helpers that write tiny captioned-image data sets in every supported layout, bad files included.

Each `make_*` function returns a `Fixture` saying what a correct reader must recover (captions per
image id) and which items it must skip, so tests compare against intent rather than re-derive it.
"""

from __future__ import annotations

import csv
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

NON_ASCII_NAME = "café_straße_ü.jpg"
NON_ASCII_CAPTION = "Ein Mädchen läuft über die Straße, sehr schnell ."
COMMA_CAPTION = "A dog, wet and happy , shakes itself ."


@dataclass
class Fixture:
    data_dir: Path
    captions: dict[str, list[str]]  # image id -> captions a reader must keep
    bad_files: list[str] = field(default_factory=list)  # image files that must be reported unreadable
    missing_images: list[str] = field(default_factory=list)
    malformed_lines: int = 0
    empty_captions: int = 0
    splits: dict[str, str] = field(default_factory=dict)  # image id -> split, where the layout fixes it


def write_image(path: Path, colour=(200, 30, 30), size=(24, 16), image_format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=image_format)
    return path


def write_noise_jpeg(path: Path, size=(64, 48), seed: int = 0) -> Path:
    """A JPEG with enough entropy-coded data that cutting it in half really truncates the scan."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return path


def write_bad_image_files(folder: Path) -> dict[str, Path]:
    """A zero-byte file, a truncated JPEG and a text file, all named .jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    truncated = write_noise_jpeg(folder / "truncated.jpg")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    text = folder / "text_not_image.jpg"
    text.write_text("<html>404 not found</html>\n", encoding="utf-8")
    return {"empty": empty, "truncated": truncated, "text": text}


def write_huge_header_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression-bomb lookalike)."""
    buffer = path.parent / (path.name + ".tmp.png")
    Image.new("L", (4, 4), 0).save(buffer)
    data = bytearray(buffer.read_bytes())
    buffer.unlink()
    # IHDR data starts at byte 16 (8-byte signature, 4-byte length, 4-byte type); CRC follows it.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def write_exif_rotated_jpeg(path: Path) -> Path:
    """Stored 40 wide x 20 high, left half red and right half blue, with EXIF orientation 6.

    Orientation 6 means "rotate 90 degrees clockwise to display": shown correctly the image is
    20 wide x 40 high with red on top and blue at the bottom.
    """
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=100, exif=exif.tobytes())
    return path


def write_mode_images(folder: Path) -> dict[str, tuple[Path, dict[tuple[int, int], tuple[int, int, int]]]]:
    """Images in awkward modes: name -> (path, {(x, y): expected RGB}), exact for lossless formats."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}

    def save(name, image, expected):
        path = folder / name
        image.save(path)
        written[name] = (path, expected)

    save("grey.png", Image.new("L", (4, 4), 77), {(0, 0): (77, 77, 77)})
    save("bilevel.png", Image.new("1", (4, 4), 1), {(1, 1): (255, 255, 255)})
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((3, 3), 1)
    save("palette.png", palette, {(0, 0): (10, 20, 30), (3, 3): (200, 100, 50)})
    transparent = palette.copy()
    transparent.info["transparency"] = 0  # palette index 0 is transparent -> white
    save("palette_transparent.png", transparent, {(0, 0): (255, 255, 255), (3, 3): (200, 100, 50)})
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.putpixel((2, 0), (255, 0, 0, 128))
    save("rgba.png", rgba, {(0, 0): (255, 255, 255), (1, 0): (0, 0, 255), (2, 0): (255, 127, 127)})
    save("grey_alpha.png", Image.new("LA", (4, 4), (0, 0)), {(0, 0): (255, 255, 255)})
    save("cmyk.tif", Image.new("CMYK", (4, 4), (0, 255, 255, 0)), {(0, 0): (255, 0, 0)})
    sixteen = np.array([[0, 65535], [32896, 1028]], dtype=np.uint16)
    save("sixteen_bit.png", Image.fromarray(sixteen), {(0, 0): (0, 0, 0), (1, 0): (255, 255, 255),
                                                       (0, 1): (128, 128, 128), (1, 1): (4, 4, 4)})
    save("thirty_two_bit.tif", Image.fromarray(sixteen.astype(np.int32)), {(1, 0): (255, 255, 255), (0, 1): (128, 128, 128)})
    return written


def _write_good_images(folder: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        write_image(folder / name, colour=(20 * index, 100, 200 - 20 * index))


def make_kaggle_flickr8k(root: Path) -> Fixture:
    """Images/ + captions.txt, with every kind of bad input the reader must skip."""
    data_dir = root / "kaggle8k"
    images = data_dir / "Images"
    good = ["1000_a.jpg", "1001_b.jpg", "1002_c.jpg", NON_ASCII_NAME]
    _write_good_images(images, good)
    bad = write_bad_image_files(images)
    write_image(images / "stray_without_captions.png")
    captions = {name: [f"caption {k} of {name}" for k in range(5)] for name in good}
    captions["1000_a.jpg"][1] = COMMA_CAPTION
    captions[NON_ASCII_NAME][0] = NON_ASCII_CAPTION
    rows = [(name, caption) for name, texts in captions.items() for caption in texts]
    rows += [(path.name, "a caption for a broken file") for path in bad.values()]
    rows += [("missing_photo.jpg", "a caption whose image is not on disk")]
    rows += [("1001_b.jpg", "   ")]  # empty caption
    with open(data_dir / "captions.txt", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows[:7])
        handle.write("just_one_field_no_comma\n")  # malformed
        handle.write("\n")  # blank line: ignored, not counted
        writer.writerows(rows[7:])
    return Fixture(data_dir, captions, bad_files=[p.name for p in bad.values()],
                   missing_images=["missing_photo.jpg"], malformed_lines=1, empty_captions=1)


def make_flickr8k_original(root: Path) -> Fixture:
    """Flicker8k_Dataset/ + Flickr8k.token.txt + the three official split lists."""
    data_dir = root / "flickr8k_release"
    names = [f"{1000 + k}_x.jpg" for k in range(8)] + ["unlisted.jpg"]
    _write_good_images(data_dir / "Flicker8k_Dataset", names)
    captions = {name: [f"a photo number {k} of {name}" for k in range(3)] for name in names}
    lines = [f"{name}#{k}\t{text}" for name, texts in captions.items() for k, text in enumerate(texts)]
    lines.insert(4, "1003_x.jpg#9 no tab on this line")
    lines.append("1002_x.jpg.1#0\tan entry pointing at a file that does not exist")
    (data_dir / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = {names[k]: "train" for k in range(4)} | {names[4]: "validation", names[5]: "validation"} \
        | {names[6]: "test", names[7]: "test"}
    for split, file_name in (("train", "trainImages"), ("validation", "devImages"), ("test", "testImages")):
        listed = [name for name, value in splits.items() if value == split]
        (data_dir / f"Flickr_8k.{file_name}.txt").write_text("\n".join(listed) + "\n", encoding="utf-8")
    del captions["unlisted.jpg"]
    return Fixture(data_dir, captions, missing_images=["1002_x.jpg.1"], malformed_lines=1, splits=splits)


def make_kaggle_flickr30k(root: Path) -> Fixture:
    """flickr30k_images/results.csv + flickr30k_images/flickr30k_images/*.jpg, as Kaggle's zip nests it."""
    data_dir = root / "kaggle30k"
    names = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg"]
    _write_good_images(data_dir / "flickr30k_images" / "flickr30k_images", names)
    captions = {name: [f"people doing thing {k} in {name}" for k in range(5)] for name in names}
    captions[names[0]][2] = 'A man in a "hoodie" | waves .'
    lines = ["image_name| comment_number| comment"]
    lines += [f"{name}| {k}| {text}" for name, texts in captions.items() for k, text in enumerate(texts)]
    lines.append("2199200615.jpg| 4   A dog runs across the grass .")  # the real file's broken line
    (data_dir / "flickr30k_images" / "results.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Fixture(data_dir, captions, malformed_lines=1)


def write_karpathy_json(path: Path, entries: list[tuple[str, str, list[str]]]) -> Path:
    images = [{"filename": name, "split": split, "imgid": index,
               "sentences": [{"raw": text, "tokens": text.lower().split()} for text in texts]}
              for index, (name, split, texts) in enumerate(entries)]
    path.write_text(json.dumps({"images": images, "dataset": "flickr8k"}, ensure_ascii=False), encoding="utf-8")
    return path


def make_karpathy(root: Path) -> Fixture:
    """Images/ + dataset_flickr8k.json (no other caption file): captions and splits from the JSON."""
    data_dir = root / "karpathy8k"
    entries = [("k0.jpg", "train", ["k zero one", "k zero two"]), ("k1.jpg", "restval", ["k one"]),
               ("k2.jpg", "val", ["k two"]), ("k3.jpg", "test", ["k three", "k three again"]),
               ("k4.jpg", "test", ["", "k four"])]
    _write_good_images(data_dir / "Images", [name for name, _, _ in entries])
    write_karpathy_json(data_dir / "dataset_flickr8k.json", entries)
    captions = {name: [text for text in texts if text] for name, _, texts in entries}
    splits = {"k0.jpg": "train", "k1.jpg": "train", "k2.jpg": "validation", "k3.jpg": "test", "k4.jpg": "test"}
    return Fixture(data_dir, captions, empty_captions=1, splits=splits)


def make_custom(root: Path, kind: str = "csv") -> Fixture:
    """images/ + one caption file with non-default column names ("file", "text")."""
    data_dir = root / f"custom_{kind}"
    names = ["one.jpg", "sub/two.png", "three.JPG"]
    _write_good_images(data_dir / "images", names)
    captions = {"images/one.jpg": ["first", "second", "third"], "images/sub/two.png": ["only one"],
                "images/three.JPG": ["upper-case extension", NON_ASCII_CAPTION]}
    rows = [(image_id.removeprefix("images/"), text) for image_id, texts in captions.items() for text in texts]
    if kind == "csv":
        with open(data_dir / "my_captions.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "text"])
            writer.writerows(rows)
    else:
        with open(data_dir / "my_captions.jsonl", "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"file": "one.jpg", "text": captions["images/one.jpg"]}) + "\n")
            for image, text in rows[3:]:
                handle.write(json.dumps({"file": image, "text": text}, ensure_ascii=False) + "\n")
            handle.write("{not json\n")
    return Fixture(data_dir, captions, malformed_lines=0 if kind == "csv" else 1)


def make_indexed_custom(root: Path, count: int = 6, captions_per_image: int = 3) -> Fixture:
    """A custom CSV folder whose image k is a flat (40k, 0, 0) colour and whose captions say "image k".

    Pixels and captions both name their image, so a pipeline that mixes them up is caught.
    """
    data_dir = root / f"indexed_{count}"
    captions = {}
    for index in range(count):
        write_image(data_dir / f"{index}.png", colour=(40 * index, 0, 0), size=(20 + index, 16))
        captions[f"{index}.png"] = [f"image {index} caption {k}" for k in range(captions_per_image)]
    with open(data_dir / "captions.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((name, text) for name, texts in captions.items() for text in texts)
    return Fixture(data_dir, captions)


def make_odd_images_custom(root: Path) -> Fixture:
    """A custom CSV folder of awkward files: EXIF-rotated, CMYK, 16-bit, palette and a large photo."""
    data_dir = root / "odd_images"
    write_exif_rotated_jpeg(data_dir / "rotated.jpg")
    modes = write_mode_images(data_dir / "modes")
    write_noise_jpeg(data_dir / "large.jpg", size=(1200, 800))
    names = ["rotated.jpg", "large.jpg"] + [f"modes/{name}" for name in ("cmyk.tif", "sixteen_bit.png", "palette.png")]
    del modes
    captions = {name: [f"a picture called {name}"] for name in names}
    with open(data_dir / "captions.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((name, texts[0]) for name, texts in captions.items())
    return Fixture(data_dir, captions)
