import io
import warnings

import numpy as np
import pytest
from PIL import Image

from data_fixtures import (write_bad_image_files, write_exif_rotated_jpeg, write_huge_header_png,
                           write_image, write_mode_images, write_noise_jpeg)
from kclip.data.image_io import (IMAGE_EXTENSIONS, ImageLoadError, encode_jpeg, iter_image_files, load_image,
                            verify_image_file)


def test_every_awkward_mode_becomes_correct_rgb(tmp_path):
    for name, (path, expected) in write_mode_images(tmp_path).items():
        pixels = load_image(path)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, name
        for (x, y), rgb in expected.items():
            assert np.abs(pixels[y, x].astype(int) - rgb).max() <= 1, (name, (x, y), pixels[y, x], rgb)


def test_exif_orientation_is_applied(tmp_path):
    pixels = load_image(write_exif_rotated_jpeg(tmp_path / "rotated.jpg"))
    # Stored 40x20 with red left / blue right; displayed it is 20 wide, 40 high, red on top.
    assert pixels.shape == (40, 20, 3)
    assert tuple(pixels[5, 10]) > (200, 0, 0) and pixels[5, 10, 2] < 60
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60


def test_max_side_limits_the_longer_side_for_jpeg_and_png(tmp_path):
    for name in ("big.jpg", "big.png"):
        path = write_image(tmp_path / name, colour=(0, 200, 0), size=(1600, 800))
        pixels = load_image(path, max_side=100)
        assert pixels.shape == (50, 100, 3), name
        assert abs(int(pixels[25, 50, 1]) - 200) <= 3
    # Smaller images are never enlarged.
    assert load_image(write_image(tmp_path / "small.png", size=(30, 20)), max_side=100).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="max_side"):
        load_image(tmp_path / "small.png", max_side=0)


def test_max_side_applies_after_exif_rotation(tmp_path):
    pixels = load_image(write_exif_rotated_jpeg(tmp_path / "rotated.jpg"), max_side=20)
    assert pixels.shape == (20, 10, 3)


def test_bad_files_raise_image_load_error_naming_the_file(tmp_path):
    for kind, path in write_bad_image_files(tmp_path).items():
        with pytest.raises(ImageLoadError) as caught:
            load_image(path)
        assert str(path) in str(caught.value), kind
        with pytest.raises(ImageLoadError):
            verify_image_file(path)
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nowhere.jpg")
    with pytest.raises(ImageLoadError, match="zero bytes"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="not a readable image"):
        load_image(b"plain text, not an image")
    assert issubclass(ImageLoadError, ValueError)


def test_oversized_images_get_a_clear_error_not_a_pillow_warning(tmp_path):
    huge = write_huge_header_png(tmp_path / "bomb.png")  # claims 900 megapixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageLoadError, match="megapixels|too large"):
            load_image(huge)
    small = write_image(tmp_path / "ok.png", size=(20, 10))
    with pytest.raises(ImageLoadError, match="megapixels"):
        load_image(small, max_pixels=100)


def test_sources_other_than_paths(tmp_path):
    path = write_image(tmp_path / "ünïcødé 名前.png", colour=(1, 2, 3))
    assert tuple(load_image(str(path))[0, 0]) == (1, 2, 3)
    assert tuple(load_image(path.read_bytes())[0, 0]) == (1, 2, 3)
    assert tuple(load_image(Image.open(path))[0, 0]) == (1, 2, 3)
    grey = np.full((3, 5), 9, dtype=np.uint8)
    assert load_image(grey).shape == (3, 5, 3) and load_image(grey)[0, 0, 2] == 9
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black -> white
    assert tuple(load_image(rgba)[0, 0]) == (255, 255, 255)
    floats = np.full((2, 2, 3), 0.5, dtype=np.float32)
    assert tuple(load_image(floats)[0, 0]) == (128, 128, 128)
    assert tuple(load_image(np.full((2, 2), 65535, dtype=np.uint16))[0, 0]) == (255, 255, 255)
    with pytest.raises(ImageLoadError, match="shape"):
        load_image(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(TypeError):
        load_image(12345)


def test_a_callers_pil_image_is_not_modified(tmp_path):
    image = Image.new("RGB", (200, 100), (5, 5, 5))
    assert load_image(image, max_side=50).shape == (25, 50, 3)
    assert image.size == (200, 100)


def test_iter_image_files_is_recursive_sorted_and_case_insensitive(tmp_path):
    for relative in ("b.JPG", "a.png", "sub/c.JpEg", "sub/deeper/d.webp", "notes.txt", ".hidden.jpg", "._mac.jpg"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    found = [path.relative_to(tmp_path).as_posix() for path in iter_image_files(tmp_path)]
    assert found == ["a.png", "b.JPG", "sub/c.JpEg", "sub/deeper/d.webp"]
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"} <= IMAGE_EXTENSIONS
    with pytest.raises(FileNotFoundError):
        list(iter_image_files(tmp_path / "missing"))


def test_encode_jpeg_round_trips_and_is_deterministic(tmp_path):
    pixels = load_image(write_noise_jpeg(tmp_path / "noise.jpg"))
    encoded = encode_jpeg(pixels, quality=95)
    assert encoded == encode_jpeg(pixels, quality=95)
    decoded = np.asarray(Image.open(io.BytesIO(encoded)))
    assert decoded.shape == pixels.shape
    assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() < 8
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(pixels, quality=0)
