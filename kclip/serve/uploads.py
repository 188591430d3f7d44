"""Pictures uploaded as queries: read within a byte limit, opened only as the formats the page names,
refused by their header before any pixel is decoded, and decoded a few at a time.

Memory: one decode holds the file's pixels at full size (3 bytes per pixel, plus one or two copies
while converting and resizing), so a 50-megapixel PNG costs about 150-450 MB while it decodes;
`DecodeSlots` bounds how many run at once, and glibc is asked to hand the freed memory back after
a large one, so an idle server shrinks again.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import io
import logging
import threading
import warnings

import numpy as np
from fastapi import HTTPException, Request
from PIL import Image, UnidentifiedImageError

from kclip.data.image_io import ImageLoadError, load_image

logger = logging.getLogger(__name__)

# Pillow's names of the formats the page advertises ("JPEG, PNG, WebP, GIF, BMP or TIFF"); any other
# plugin (ICO, ICNS, DDS, JPEG 2000, SGI, QOI, SPIDER, ...) never sees an upload.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
FORMAT_NAMES = "a JPEG, PNG, WebP, GIF, BMP or TIFF file"
# Content types a picture may arrive with. text/plain is refused: it is what another site's page may
# send without the browser asking this server first.
RAW_CONTENT_TYPES = ("image/", "application/octet-stream")
MULTIPART = "multipart/form-data"
DEFAULT_DECODE_SLOTS = 2
DECODE_WAIT_SECONDS = 30.0
BODY_READ_SECONDS = 60.0  # a client that sends its upload slower than this is cut off
_TRIM_ABOVE_PIXELS = 4_000_000


class DecodeSlots:
    """At most `count` uploads decode at once; the next waits up to `wait` seconds, then gets a 503."""

    def __init__(self, count: int = DEFAULT_DECODE_SLOTS, wait: float = DECODE_WAIT_SECONDS):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"max_concurrent_decodes must be a whole number >= 1; got {count!r}.")
        self.count, self.wait = count, float(wait)
        self._semaphore = threading.BoundedSemaphore(count)
        self.active = 0
        self.most_active = 0  # the most decodes seen at once (tests check the bound)
        self._counter = threading.Lock()

    def __enter__(self):
        if not self._semaphore.acquire(timeout=self.wait):
            raise HTTPException(503, f"the server is busy decoding {self.count} other pictures; try again in a moment.")
        with self._counter:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        return self

    def __exit__(self, *exc_info):
        with self._counter:
            self.active -= 1
        self._semaphore.release()


def _release_freed_memory() -> None:
    """Ask glibc to return freed heap pages to the system (a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def decode_upload(data: bytes, name: str, max_pixels: int, max_side: int | None) -> np.ndarray:
    """The uploaded picture as an (H, W, 3) uint8 array; HTTPException 400/413 for what may not be decoded."""
    try:
        with warnings.catch_warnings():
            # The pixel cap below, not Pillow's warning, decides (Pillow's own hard limit still applies).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError:
        raise HTTPException(413, f"the picture in {name} is larger than the {max_pixels / 1e6:g} megapixels "
                                 "accepted; send a smaller one.") from None
    except UnidentifiedImageError:
        raise HTTPException(400, f"could not read {name} as a picture: it is not an image, or not a format the "
                                 f"page takes; send {FORMAT_NAMES}.") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise HTTPException(400, f"could not read {name} as a picture: {_short(error)}; send {FORMAT_NAMES}.") from None
    try:
        width, height = image.size  # the header only: refused before decoding
        if width * height > max_pixels:
            raise HTTPException(413, f"the picture is {width}x{height} pixels, more than the "
                                     f"{max_pixels / 1e6:g} megapixels accepted; send a smaller one.")
        try:
            return load_image(image, max_side=max_side, max_pixels=max_pixels)
        except (ImageLoadError, OSError) as error:
            raise HTTPException(400, f"could not read {name} as a picture: {_short(error)}; "
                                     f"send {FORMAT_NAMES}.") from None
    finally:
        image.close()
        if width * height > _TRIM_ABOVE_PIXELS:
            _release_freed_memory()


def _short(error: Exception) -> str:
    # load_image names in-memory data "<PIL...>: ..." and Pillow may add a BytesIO repr; neither helps.
    reason = str(error).split(": ", 1)[-1].rstrip(".")
    return reason if "BytesIO" not in reason else "the data is damaged or not a picture"


def check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != MULTIPART and not content_type.startswith(RAW_CONTENT_TYPES):
        raise HTTPException(415, f"uploads must be sent as {MULTIPART} (form field \"image\") or with an image/* "
                                 f"content type, not {content_type or 'no content type'!r}.")


async def read_upload(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """The uploaded file's name and bytes; 413 as soon as the body passes max_bytes, read or declared."""
    check_content_type(request)
    too_large = HTTPException(413, f"the upload is larger than the limit of {_megabytes(max_bytes)}; "
                                   "send a smaller picture.")
    # The multipart envelope adds a few hundred bytes around the file.
    limit = max_bytes + 64 * 1024
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()

    async def read_all():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise too_large

    try:
        await asyncio.wait_for(read_all(), BODY_READ_SECONDS)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"the upload took longer than {BODY_READ_SECONDS:g} s to arrive; "
                                 "try again on a faster connection.") from None
    if request.headers.get("content-type", "").lower().startswith(MULTIPART):
        async def replay():
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
        uploads = [value for value in form.values() if hasattr(value, "read")]
        if not uploads:
            raise HTTPException(400, "no picture in the upload: send it in the form field \"image\".")
        name, data = _display_name(uploads[0].filename), await uploads[0].read()
        await form.close()
    else:
        name, data = "the upload", bytes(body)
    if not data:
        raise HTTPException(400, "the upload is empty: choose or drop a picture file.")
    if len(data) > max_bytes:
        raise too_large
    return name, data


def _display_name(filename: str | None) -> str:
    """The client's file name as messages show it: the last part only, printable, at most 100 characters."""
    if not filename:
        return "the upload"
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(character for character in name if character.isprintable())[:100]
    return name or "the upload"


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.3g} MB"
