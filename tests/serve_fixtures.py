"""Shared set-up for the search-page tests: a folder of solid-colour photos indexed by the fake colour encoder."""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

import kclip
from fake_encoder import FakeEncoder, solid_image

PHOTO_COLOURS = ["red", "green", "blue", "yellow", "magenta", "cyan"]
SECRET = "the secret file's content must never be served"


def write_photos(folder: Path) -> Path:
    for number, colour in enumerate(PHOTO_COLOURS):
        path = folder / ("nested" if number % 2 else "") / f"{colour}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(solid_image(colour, size=(48, 64))).save(path)
    # Beside the photos but not in the index: nothing may reach it.
    (folder / "secret.txt").write_text(SECRET)
    (folder.parent / "secret.txt").write_text(SECRET)
    return folder


def build_colour_index(tmp_path: Path, encoder=None) -> Path:
    photos = write_photos(tmp_path / "photos")
    index_dir = tmp_path / "index"
    kclip.build_index(encoder or FakeEncoder(), photos, index_dir, progress=False)
    return index_dir


def local_client(app, **options):
    """A TestClient that asks for the page as a browser on this machine does: the app refuses Host: testserver."""
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1:8000", **options)


def png_bytes(colour, size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(solid_image(colour, size=size)).save(buffer, format="PNG")
    return buffer.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
    """A PNG that does not compress: about 3 x side^2 bytes."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class ExclusiveEncoder(FakeEncoder):
    """A FakeEncoder that fails if two threads call it at once, and is slow enough for them to try."""

    def __init__(self, *args, delay: float = 0.005, **kwargs):
        super().__init__(*args, **kwargs)
        self.delay = delay
        self.active = 0
        self.overlaps = 0
        self._counter = threading.Lock()

    def _enter(self):
        with self._counter:
            self.active += 1
            if self.active > 1:
                self.overlaps += 1
        time.sleep(self.delay)

    def _leave(self):
        with self._counter:
            self.active -= 1

    def encode_text(self, texts, batch_size: int = 32):
        self._enter()
        try:
            return super().encode_text(texts, batch_size)
        finally:
            self._leave()

    def encode_image(self, images, batch_size: int = 32):
        self._enter()
        try:
            return super().encode_image(images, batch_size)
        finally:
            self._leave()
