"""Real pictures with human-written names, offline: Noto Color Emoji named by Unicode CLDR.

Each emoji the font can draw becomes one picture (rendered with Pillow), and its captions
come from CLDR's English annotations: the spoken name ("grinning face") and the keywords
people search it by ("face | grin"). Both are Debian packages, so the set installs from the
machine's package registry with no download at run time:

    apt-get install -y fonts-noto-color-emoji unicode-cldr-core

The set is written once in the Kaggle Flickr8k layout (Images/*.png + captions.txt) and then
read like any other captioned-image folder.
"""

import csv
import json
import os
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

FONT_PATH = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR_DIR = "/usr/share/unicode/cldr/common"
MARKER_FILE = ".kclip_emoji.json"
_VERSION = 1
# Noto Color Emoji is a bitmap font: it has glyphs at this size only.
_FONT_SIZE = 109


def _require(path, package, what):
    if not Path(path).exists():
        raise FileNotFoundError(
            f"The emoji data set needs {what} at {path}, which is missing. Install it with "
            f"`apt-get install -y {package}` (Debian/Ubuntu), or pass its location to "
            f"write_emoji_dataset()."
        )


def read_cldr_annotations(cldr_dir=CLDR_DIR, language="en"):
    """{emoji: (name, [keywords])} from CLDR's annotations and derived annotations.

    The derived file adds skin-tone, flag and keycap sequences. Entries without a spoken
    name are dropped.
    """
    cldr_dir = Path(cldr_dir)
    _require(cldr_dir / "annotations" / f"{language}.xml", "unicode-cldr-core", "Unicode CLDR")
    names, keywords = {}, {}
    for folder in ("annotations", "annotationsDerived"):
        path = cldr_dir / folder / f"{language}.xml"
        if not path.is_file():
            continue
        for node in ElementTree.parse(path).getroot().iter("annotation"):
            text = (node.text or "").strip()
            if not text or node.get("draft") in ("unconfirmed", "provisional"):
                continue
            cp = node.get("cp")
            if node.get("type") == "tts":
                names[cp] = text
            else:
                keywords[cp] = [word.strip() for word in text.split("|") if word.strip()]
    return {cp: (name, keywords.get(cp, [])) for cp, name in names.items()}


class EmojiRenderer:
    """Draws one emoji as a square RGB picture on white, or None when the font lacks it."""

    def __init__(self, font_path=FONT_PATH, image_size=96):
        _require(font_path, "fonts-noto-color-emoji", "the Noto Color Emoji font")
        self.image_size = image_size
        # Sequences (flags, skin tones, ZWJ families) need complex text layout (libraqm) to
        # combine; without it they come out as several glyphs and are skipped.
        layout = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        self.font = ImageFont.truetype(str(font_path), _FONT_SIZE, layout_engine=layout)
        self._missing = self._draw("\U000e0000")  # a code point no font draws: the .notdef box

    def _draw(self, text):
        canvas = Image.new("RGBA", (_FONT_SIZE * 3, _FONT_SIZE * 2), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((8, 8), text, font=self.font, embedded_color=True)
        box = canvas.getbbox()
        return None if box is None else canvas.crop(box)

    def render(self, emoji):
        glyph = self._draw(emoji)
        if glyph is None or self._is_missing(glyph):
            return None
        # One glyph is about 136 px wide; wider means the sequence did not combine.
        if glyph.width > _FONT_SIZE * 1.5:
            return None
        side = max(glyph.size)
        square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
        return square.convert("RGB").resize((self.image_size, self.image_size), Image.LANCZOS)

    def _is_missing(self, glyph):
        if self._missing is None or glyph.size != self._missing.size:
            return False
        return np.array_equal(np.asarray(glyph), np.asarray(self._missing))


def emoji_captions(name, keywords):
    """The captions of one emoji: its name, and its name with the keywords it is searched by."""
    captions = [name]
    extra = [word for word in keywords if word.lower() != name.lower()]
    if extra:
        captions.append(f"{name}: {', '.join(extra)}")
    return captions


def _file_name(emoji):
    return "u" + "_".join(f"{ord(char):04x}" for char in emoji if char != "\ufe0f") + ".png"


def write_emoji_dataset(out_dir, image_size=96, font_path=FONT_PATH, cldr_dir=CLDR_DIR, max_images=None):
    """Writes the emoji set (Images/*.png + captions.txt) once and returns `out_dir`.

    Emoji the font cannot draw as one picture are skipped, and counted in
    `skipped.txt`. A marker file records the parameters, so a second call is cheap.
    """
    out_dir = Path(out_dir)
    parameters = {"version": _VERSION, "image_size": image_size, "max_images": max_images,
                  "font": str(font_path), "cldr": str(cldr_dir)}
    marker = out_dir / MARKER_FILE
    if marker.is_file() and json.loads(marker.read_text()) == parameters:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not marker.is_file():
        raise ValueError(f"{out_dir} exists and is not a kclip emoji data set; choose an empty or "
                         "new folder so that nothing of yours is overwritten.")
    annotations = read_cldr_annotations(cldr_dir)
    renderer = EmojiRenderer(font_path, image_size)
    building = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    (building / "Images").mkdir(parents=True)
    rows, skipped = [], []
    for emoji, (name, keywords) in sorted(annotations.items()):
        if max_images is not None and len(rows) >= max_images:
            break
        picture = renderer.render(emoji)
        if picture is None:
            skipped.append(f"{emoji}\t{name}\tnot drawn as one picture by the font")
            continue
        file_name = _file_name(emoji)
        picture.save(building / "Images" / file_name)
        rows.append((file_name, emoji_captions(name, keywords)))
    if not rows:
        raise ValueError(f"The font {font_path} drew none of the {len(annotations)} CLDR emoji.")
    with open(building / "captions.txt", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows((file_name, caption) for file_name, captions in rows for caption in captions)
    (building / "skipped.txt").write_text("\n".join(skipped) + "\n", encoding="utf-8")
    (building / MARKER_FILE).write_text(json.dumps(parameters), encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(building, out_dir)
    print(f"Emoji data set: {len(rows)} pictures in {out_dir} ({len(skipped)} skipped, see skipped.txt).")
    return out_dir


# scikit-image's sample photos that the demo indexes beside the held-out emoji, and the
# free-text search each one answers.
SAMPLE_PHOTOS = {"chelsea": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket",
                 "motorcycle": "a motorcycle", "coins": "coins"}


def write_sample_photos(folder):
    """Writes scikit-image's real photos into `folder` as photo_<name>.png; {query: path}, or {}
    when scikit-image is not installed (pip install scikit-image)."""
    try:
        import skimage.data as photos
    except ImportError:
        return {}
    loaders = {"chelsea": photos.chelsea, "coffee": photos.coffee, "rocket": photos.rocket,
               "motorcycle": lambda: photos.stereo_motorcycle()[0], "coins": photos.coins}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, query in SAMPLE_PHOTOS.items():
        path = folder / f"photo_{name}.png"
        Image.fromarray(np.asarray(loaders[name]())).convert("RGB").save(path)
        written[query] = path
    return written
