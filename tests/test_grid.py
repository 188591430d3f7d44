"""The results grid: deterministic geometry, tiles where documented, outlines in the documented colours."""
import numpy as np
import pytest
from PIL import Image

from fake_encoder import COLOURS, solid_image
from kclip.evaluation.grid import BACKGROUND, MISS_COLOUR, OUTLINE, PADDING, TRUE_COLOUR, GridLayout, render_grid

TILE = 40


def pixel(image: Image.Image, x: int, y: int):
    return image.getpixel((x, y))[:3]


@pytest.fixture
def grid(tmp_path):
    blue_file = tmp_path / "blue.png"
    Image.fromarray(solid_image("blue", size=(30, 60))).save(blue_file)  # landscape, letterboxed
    rows = [
        ("a red thing, found at rank two", [
            (solid_image("green"), 0.9, False), (solid_image("red"), 0.8, True), (blue_file, 0.1, False)]),
        ("a yellow thing that is missing from the top results entirely", [
            (solid_image("cyan"), 0.5, False), (solid_image("magenta"), 0.4, False)]),
    ]
    path = render_grid(rows, tmp_path / "out" / "grid.png", tile_size=TILE)
    return Image.open(path).convert("RGB"), GridLayout(2, 3, TILE, 2 * TILE)


def test_size_follows_the_documented_formula(grid):
    image, layout = grid
    assert image.size == (layout.width, layout.height)
    assert image.size == (2 * TILE + 2 * PADDING + 3 * (TILE + PADDING), PADDING + 2 * (TILE + 16 + PADDING))


def test_each_item_is_a_tile_at_its_documented_place(grid):
    image, layout = grid
    expected = [["green", "red", "blue"], ["cyan", "magenta", None]]
    for row, names in enumerate(expected):
        for column, name in enumerate(names):
            left, top, right, bottom = layout.tile_box(row, column)
            centre = pixel(image, (left + right) // 2, (top + bottom) // 2)
            assert centre == (BACKGROUND if name is None else COLOURS[name]), (row, column)


def test_true_image_is_outlined_in_green_and_others_are_not(grid):
    image, layout = grid
    for column, outlined in enumerate([False, True, False]):
        left, top, right, bottom = layout.tile_box(0, column)
        middle_y, middle_x = (top + bottom) // 2, (left + right) // 2
        sides = [pixel(image, left - 2, middle_y), pixel(image, right + 1, middle_y),
                 pixel(image, middle_x, top - 2)]
        assert all(colour == (TRUE_COLOUR if outlined else BACKGROUND) for colour in sides), column


def test_a_row_without_its_true_image_is_marked_as_a_miss(grid):
    image, layout = grid
    for row, is_miss in ((0, False), (1, True)):
        left, top, right, bottom = layout.caption_box(row)
        edge = pixel(image, left - OUTLINE + 1, (top + bottom) // 2)
        assert edge == (MISS_COLOUR if is_miss else BACKGROUND), row
    # The caption row has red text ("MISS") inside the box as well as the outline.
    left, top, right, bottom = layout.caption_box(1)
    inside = np.asarray(image)[top + OUTLINE:bottom - OUTLINE, left + OUTLINE:right - OUTLINE]
    red, green, blue = (inside[..., channel].astype(int) for channel in range(3))
    assert ((red > 150) & (green < 100) & (blue < 100)).any()  # anti-aliased, so not exactly MISS_COLOUR


def test_captions_are_wrapped_inside_their_box(tmp_path):
    caption = "a very long caption " * 30 + "withaverylongwordthatcannotfitonasinglelinewhateverhappens"
    path = render_grid([(caption, [(solid_image("red"), 0.5, None)])], tmp_path / "g.png", tile_size=TILE)
    pixels = np.asarray(Image.open(path).convert("RGB"))
    layout = GridLayout(1, 1, TILE, 2 * TILE)
    left, top, right, bottom = layout.caption_box(0)
    caption_area = pixels[top:bottom, left:right]
    assert (caption_area != BACKGROUND).any(axis=2).any()  # text was drawn
    gap = pixels[:, right:layout.tile_box(0, 0)[0]]
    assert (gap == BACKGROUND).all()  # and none of it spills towards the tiles


def test_unreadable_images_do_not_stop_the_grid(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    path = render_grid([("query", [(broken, 0.3, None), (tmp_path / "missing.png", 0.2, None)])],
                       tmp_path / "g.png", tile_size=TILE)
    assert Image.open(path).size == (GridLayout(1, 2, TILE, 2 * TILE).width, GridLayout(1, 2, TILE, 2 * TILE).height)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="non-empty"):
        render_grid([], tmp_path / "g.png")
    with pytest.raises(ValueError, match="tile_size"):
        render_grid([("q", [])], tmp_path / "g.png", tile_size=4)
    with pytest.raises(ValueError, match="each item"):
        render_grid([("q", ["just a path"])], tmp_path / "g.png")
