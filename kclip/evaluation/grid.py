"""Pictures of retrieval results: one row per query, its top-k images in columns.

    render_grid([("a red car", [("car.jpg", 0.83, True), ("bus.jpg", 0.61, False)])], "grid.png")

Geometry (all in pixels; GridLayout computes it, so tests and callers can find every tile):
    PADDING = 8, LABEL_HEIGHT = 16, OUTLINE = 3, caption_width = 2 * tile_size by default
    width  = caption_width + 2 * PADDING + columns * (tile_size + PADDING)
    height = PADDING + rows * (tile_size + LABEL_HEIGHT + PADDING)
    where columns is the largest number of items in any row. Each row has its caption, word-wrapped,
    at the left; each tile has its score printed under it. The true image is outlined in TRUE_COLOUR
    (OUTLINE pixels wide, just outside the tile). A row whose items say which one is true but that has
    no true item among them is a miss: its caption is outlined in MISS_COLOUR and marked "MISS".
Only Pillow's built-in font is used, so nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from kclip.data.image_io import ImageLoadError, load_image
from kclip.utils.files import write_file_atomic

PADDING = 8
LABEL_HEIGHT = 16
OUTLINE = 3
BACKGROUND = (255, 255, 255)
TILE_BACKGROUND = (235, 235, 235)
TEXT_COLOUR = (0, 0, 0)
TRUE_COLOUR = (0, 170, 0)
MISS_COLOUR = (220, 0, 0)
MIN_TILE_SIZE = 32


@dataclass(frozen=True)
class GridLayout:
    num_rows: int
    num_columns: int
    tile_size: int
    caption_width: int

    @property
    def width(self) -> int:
        return self.caption_width + 2 * PADDING + self.num_columns * (self.tile_size + PADDING)

    @property
    def height(self) -> int:
        return PADDING + self.num_rows * (self.tile_size + LABEL_HEIGHT + PADDING)

    def row_top(self, row: int) -> int:
        return PADDING + row * (self.tile_size + LABEL_HEIGHT + PADDING)

    def tile_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of a tile, right and bottom exclusive."""
        left = self.caption_width + 2 * PADDING + column * (self.tile_size + PADDING)
        top = self.row_top(row)
        return left, top, left + self.tile_size, top + self.tile_size

    def caption_box(self, row: int) -> tuple[int, int, int, int]:
        top = self.row_top(row)
        return PADDING, top, PADDING + self.caption_width, top + self.tile_size + LABEL_HEIGHT


def _check_rows(rows) -> list:
    if isinstance(rows, (str, bytes)) or not rows:
        raise ValueError("rows must be a non-empty list of (caption, items) pairs.")
    checked = []
    for number, row in enumerate(rows):
        try:
            caption, items = row
        except (TypeError, ValueError):
            raise ValueError(f"row {number} must be a (caption, items) pair; got {row!r:.80}.") from None
        normalized = []
        for item in items:
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                raise ValueError(
                    f"row {number}: each item must be (image, score) or (image, score, is_true); got {item!r:.80}."
                )
            image, score, is_true = (*item, None) if len(item) == 2 else item
            normalized.append((image, float(score), None if is_true is None else bool(is_true)))
        checked.append((str(caption), normalized))
    return checked


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are split, overflow ends in '...'."""
    lines, current = [], ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def _tile(source, tile_size: int) -> Image.Image | None:
    """The image scaled to fit a tile (aspect ratio kept), or None when it cannot be read."""
    try:
        picture = Image.fromarray(load_image(source, max_side=tile_size))
    except (ImageLoadError, OSError, TypeError):
        return None
    # load_image only shrinks; small images are enlarged too, so every tile is filled the same way.
    scale = tile_size / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture if picture.size == size else picture.resize(size, Image.Resampling.BICUBIC)


def _outline(draw: ImageDraw.ImageDraw, box, colour) -> None:
    left, top, right, bottom = box
    draw.rectangle((left - OUTLINE, top - OUTLINE, right - 1 + OUTLINE, bottom - 1 + OUTLINE),
                   outline=colour, width=OUTLINE)


def render_grid(rows, out_path, tile_size: int = 128, caption_width: int | None = None) -> Path:
    """Draw rows of (caption, [(image, score, is_true), ...]) into an image file; return its path.

    image: a path or an image array. is_true: True for the query's true image (outlined in green),
    False for a wrong one, None when the truth is unknown (plain search). The file format follows
    out_path's suffix (.png recommended). See the module docstring for the exact geometry.
    """
    if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < MIN_TILE_SIZE:
        raise ValueError(f"tile_size must be an integer of at least {MIN_TILE_SIZE} pixels; got {tile_size!r}.")
    rows = _check_rows(rows)
    layout = GridLayout(len(rows), max(len(items) for _, items in rows), tile_size,
                        2 * tile_size if caption_width is None else int(caption_width))
    canvas = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line_height = int(draw.textbbox((0, 0), "Ag", font=font)[3]) + 3

    for row_number, (caption, items) in enumerate(rows):
        is_miss = any(item[2] is not None for item in items) and not any(item[2] for item in items)
        left, top, right, bottom = layout.caption_box(row_number)
        max_lines = max(1, (bottom - top) // line_height - (1 if is_miss else 0))
        for line_number, line in enumerate(_wrap(draw, caption, font, right - left - 2 * OUTLINE, max_lines)):
            draw.text((left + OUTLINE, top + OUTLINE + line_number * line_height), line, fill=TEXT_COLOUR, font=font)
        if is_miss:
            draw.text((left + OUTLINE, bottom - OUTLINE - line_height), "MISS", fill=MISS_COLOUR, font=font)
            _outline(draw, layout.caption_box(row_number), MISS_COLOUR)

        for column, (source, score, is_true) in enumerate(items):
            box = layout.tile_box(row_number, column)
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=TILE_BACKGROUND)
            picture = _tile(source, tile_size)
            if picture is None:
                draw.text((box[0] + 4, box[1] + tile_size // 2 - 6), "unreadable", fill=MISS_COLOUR, font=font)
            else:
                offset = ((tile_size - picture.width) // 2, (tile_size - picture.height) // 2)
                canvas.paste(picture, (box[0] + offset[0], box[1] + offset[1]))
            if is_true:
                _outline(draw, box, TRUE_COLOUR)
            draw.text((box[0], box[3] + OUTLINE + 1), f"{score:.3f}",
                      fill=TRUE_COLOUR if is_true else TEXT_COLOUR, font=font)

    return write_file_atomic(Path(out_path), canvas.save)
