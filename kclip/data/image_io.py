"""Robust image loading shared by training preparation, indexing and search.

Every caller gets the same answer for the same file: an (H, W, 3) uint8 RGB array with the EXIF
orientation applied, whatever the file's mode (greyscale, palette, RGBA, CMYK, 16-bit). Files that
cannot be decoded raise `ImageLoadError` (a ValueError) naming the file and the reason, so callers
can skip and report them instead of crashing half-way through a data set.

Only Pillow and numpy are used here: this module is imported by light-weight tools that must not pay
for importing Keras or TensorFlow.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

# Largest image, in pixels, that we agree to decode. 150 megapixels is above any camera photo
# (a 100 MP medium-format frame fits) yet keeps the decoded RGB buffer under ~450 MB. It sits
# below Pillow's own hard limit (2 x Image.MAX_IMAGE_PIXELS, about 179 MP by default) so that our
# clear error, not Pillow's DecompressionBombWarning/Error, is what users see.
MAX_IMAGE_PIXELS = 150_000_000

# File extensions Pillow decodes that photo collections use. Compared in lower case.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff",
        ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
    }
)

# Anything load_image accepts as its source.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

# Transparent pixels are shown on white, the way image viewers and web pages show them.
_BACKGROUND_RGB = (255, 255, 255)


class ImageLoadError(ValueError):
    """An image could not be read: missing, empty, truncated, too large or not an image."""


def _describe(source: object) -> str:
    """A short name for the source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes in memory>"
    return f"<{type(source).__name__}>"


def _check_pixel_count(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} = {width * height / 1e6:.0f} megapixels, above the "
            f"limit of {max_pixels / 1e6:.0f} MP (kclip.data.image_io.MAX_IMAGE_PIXELS). Downscale the file, "
            "or pass a larger max_pixels if you really mean to decode it."
        )


def open_image(source: ImageSource, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open `source` lazily (header only) as a PIL image, with clear errors for bad input.

    Paths and bytes are opened but not decoded; call `.load()` (or use `load_image`) to decode.
    """
    name = _describe(source)
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_uint8(source, name))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"{name}: no image data (zero bytes).")
        file_object: object = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            what = "is a folder, not an image file" if path.is_dir() else "does not exist"
            raise ImageLoadError(f"{path}: {what}. Check the path.")
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: file is empty (zero bytes); re-download or delete it.")
        file_object = path
    else:
        raise TypeError(
            f"load_image expects a path, bytes, a PIL image or a numpy array, got {type(source).__name__}."
        )
    try:
        # Our own pixel cap (checked right below) replaces Pillow's warning, which users miss.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file_object)
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{name}: image too large to decode safely ({error}).") from error
    except (OSError, SyntaxError, ValueError) as error:
        # UnidentifiedImageError is an OSError: the file is text, HTML, or a format Pillow lacks.
        raise ImageLoadError(f"{name}: not a readable image ({error}).") from error
    _check_pixel_count(image, name, max_pixels)
    return image


def _array_to_uint8(array: np.ndarray, name: str) -> np.ndarray:
    """Convert an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array of any numeric dtype to uint8.

    uint16 is scaled from 0..65535; floats are taken as 0..1 when their maximum is at most 1, else
    as 0..255; other integers and bools are clipped to 0..255 (bools map to 0/255).
    """
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageLoadError(
            f"{name}: array of shape {array.shape} is not an image; expected (H, W), (H, W, 3) or (H, W, 4)."
        )
    if array.size == 0:
        raise ImageLoadError(f"{name}: array of shape {array.shape} has no pixels.")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(array)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array) * scale + 0.5, 0, 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        return np.clip(array, 0, 255).astype(np.uint8)
    raise ImageLoadError(f"{name}: array dtype {array.dtype} is not a numeric image type.")


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _BACKGROUND_RGB + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, compositing transparency on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _composite_on_white(image)
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own I -> L conversion clips at 255 instead of scaling, which turns a 16-bit
        # photo white. 16-bit files hold 0..65535, so scale that range down to 0..255.
        values = np.asarray(image).astype(np.int64)
        top = 65535 if values.max(initial=0) <= 65535 else int(values.max())
        scaled = np.clip(values * 255 // max(top, 1), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_array_to_uint8(np.asarray(image), "float image")).convert("RGB")
    # Pillow handles 1, L, P, CMYK, YCbCr and HSV -> RGB correctly (CMYK with inverted Adobe
    # JPEG data is already un-inverted by the JPEG decoder).
    return image.convert("RGB")


def _decode(image: Image.Image, name: str, max_side: int | None) -> Image.Image:
    if max_side is not None:
        width, height = image.size
        longer = max(width, height)
        if image.format == "JPEG" and longer > max_side:
            # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale, so a 100 MP photo never needs
            # its full-size buffer; it keeps both sides at least as large as requested.
            requested = (max(1, width * max_side // longer), max(1, height * max_side // longer))
            image.draft("RGB", requested)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Truncated downloads end up here ("image file is truncated").
        raise ImageLoadError(f"{name}: cannot decode image data ({error}).") from error
    rgb = to_rgb(image)
    if max_side is not None and max(rgb.size) > max_side:
        # resize() returns a new image, so a caller's PIL image is never modified in place.
        width, height = rgb.size
        longer = max(width, height)
        new_size = (max(1, round(width * max_side / longer)), max(1, round(height * max_side / longer)))
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return rgb


def load_image(source: ImageSource, max_side: int | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Load `source` as an (H, W, 3) uint8 RGB array.

    `source` may be a path (str or Path, any Unicode name), the encoded file's bytes, a PIL image,
    or an array (H x W greyscale, H x W x 3 RGB or H x W x 4 RGBA). The EXIF orientation tag is
    applied, transparency is composited on white, and 16-bit/CMYK/palette images become 8-bit RGB.
    When `max_side` is given the result's longer side is at most `max_side` (aspect ratio kept),
    and JPEGs are decoded at reduced scale so huge files stay cheap.

    Raises ImageLoadError (a ValueError) for missing, empty, truncated, oversized or non-image input.
    """
    if max_side is not None and (not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"max_side must be a positive integer or None, got {max_side!r}.")
    name = _describe(source)
    if isinstance(source, np.ndarray):
        # Arrays skip Pillow's decoder, so convert them directly and only use Pillow to resize.
        pixels = _array_to_uint8(source, name)
        image = Image.fromarray(pixels)
        if image.mode != "RGB" or (max_side is not None and max(image.size) > max_side):
            return np.asarray(_decode(image, name, max_side))
        return pixels.copy()
    image = open_image(source, max_pixels=max_pixels)
    owns_file = not isinstance(source, Image.Image)
    try:
        return np.asarray(_decode(image, name, max_side), dtype=np.uint8).copy()
    finally:
        if owns_file:
            image.close()


# The one decoding rule for model inputs, shared by training (tf.data on loose files), evaluation,
# DualEncoder.encode_image and indexing: decode with the longer side capped at this many times the
# model's input side, then let the model's own resizing layer make the square. 4x lets Pillow's
# JPEG draft mode skip most of a big photo's pixels yet leaves room for a clean downscale and for
# the training crop; a smaller cap in one path would give that path different pixels.
DECODE_SIDE_FACTOR = 4


def decode_side(image_size) -> int | None:
    """The longest side images are decoded at for a model taking `image_size` pixels square."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        return None  # a model of unknown input size: decode at full size
    return DECODE_SIDE_FACTOR * int(image_size)


def load_model_image(source: ImageSource, image_size) -> np.ndarray:
    """`source` decoded by the shared rule for a model of `image_size`: resize it with the model's layer next."""
    return load_image(source, max_side=decode_side(image_size))


def verify_image_file(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """Check cheaply that `path` decodes; return its (width, height) or raise ImageLoadError.

    JPEGs are decoded at 1/8 scale, which still reads every byte of the entropy-coded data, so
    truncated downloads are caught at a fraction of a full decode's cost.
    """
    image = open_image(path, max_pixels=max_pixels)
    try:
        size = image.size
        if image.format == "JPEG":
            image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
        image.load()
        return size
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"{path}: cannot decode image data ({error}).") from error
    finally:
        image.close()


def find_unreadable_images(paths: Sequence[str | os.PathLike], decode: bool = True) -> dict[Path, str]:
    """{path: reason} for each of `paths` that is missing, empty or (when `decode`) does not decode.

    Checks run in threads: Pillow releases the GIL while decoding, so this scales with cores.
    """
    def problem(path: Path) -> str:
        try:
            if path.stat().st_size == 0:
                return "zero-byte file"
            if decode:
                verify_image_file(path)
        except (ImageLoadError, OSError) as error:
            return str(error).replace(f"{path}: ", "")
        return ""

    paths = [Path(path) for path in paths]
    with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
        return {path: reason for path, reason in zip(paths, pool.map(problem, paths)) if reason}


def is_image_file_name(name: str | os.PathLike) -> bool:
    """True when the file name has one of IMAGE_EXTENSIONS (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def iter_image_files(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield the image files under `folder`, recursively, in sorted order.

    Files are selected by extension (case-insensitive); hidden files and folders (names starting
    with ".", such as macOS "._photo.jpg" resource forks) are skipped.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist or is not a folder.")
    found = []
    for directory, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for file_name in files:
            if not file_name.startswith(".") and is_image_file_name(file_name):
                found.append(Path(directory) / file_name)
    # Sort by the path relative to the root so the order does not depend on os.walk's order.
    yield from sorted(found, key=lambda path: path.relative_to(root).as_posix())


def encode_jpeg(array: np.ndarray, quality: int = 95) -> bytes:
    """Encode an image array (anything load_image accepts as an array) as JPEG bytes."""
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"JPEG quality must be between 1 and 100, got {quality}.")
    rgb = load_image(np.asarray(array))
    buffer = io.BytesIO()
    # Fixed subsampling and no optimisation passes keep the output byte-identical run to run.
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
    return buffer.getvalue()
