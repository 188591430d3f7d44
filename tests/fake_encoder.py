"""A deterministic stand-in for the dual encoder, for tests of indexing, search and classification.

An image's embedding is its mean colour; a text's embedding is the mean of the colours named in it
("a red car" -> red). Both go through the same mapping, so the text "red" finds the reddest image.
The encoder records what it was asked to embed, so tests can check which files were (re)embedded.
"""
from __future__ import annotations

import hashlib

import numpy as np

from kclip.data.image_io import load_image

COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


def colour_embedding(rgb) -> np.ndarray:
    """Map an RGB colour (0..255) to a unit vector; distinct pure colours get distinct directions."""
    centred = np.asarray(rgb, dtype=np.float64) / 255.0 - 0.5
    # The constant fourth component keeps mid-grey (all zeros after centring) a valid direction.
    vector = np.append(centred, 0.1)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def solid_image(colour, size=(24, 16)) -> np.ndarray:
    """An (height, width, 3) uint8 image of one colour name or RGB triple."""
    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return np.broadcast_to(np.asarray(rgb, dtype=np.uint8), (size[0], size[1], 3)).copy()


class FakeEncoder:
    """Implements encode_image / encode_text / fingerprint / image_size like the real model."""

    embedding_dim = 4

    def __init__(self, name: str = "fake-colour-v1", image_size: int = 32, fail_after_images: int | None = None):
        self.name = name
        self.image_size = image_size
        # Simulates a crash (e.g. the process being killed) once this many images were embedded.
        self.fail_after_images = fail_after_images
        self.image_calls = 0
        self.text_calls = 0
        self.images_encoded = 0
        self.encoded_colours: list[tuple[int, int, int]] = []

    def fingerprint(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()[:16]

    def encode_image(self, images, batch_size: int = 32) -> np.ndarray:
        self.image_calls += 1
        rows = []
        for image in images:
            if self.fail_after_images is not None and self.images_encoded >= self.fail_after_images:
                raise RuntimeError("simulated crash while embedding images")
            pixels = load_image(image)
            mean = tuple(int(round(value)) for value in pixels.reshape(-1, 3).mean(axis=0))
            self.encoded_colours.append(mean)
            self.images_encoded += 1
            rows.append(colour_embedding(mean))
        return np.stack(rows) if rows else np.zeros((0, self.embedding_dim), np.float32)

    def encode_text(self, texts, batch_size: int = 32) -> np.ndarray:
        self.text_calls += 1
        rows = []
        for text in texts:
            named = [COLOURS[word] for word in text.lower().replace(",", " ").split() if word in COLOURS]
            rgb = np.mean(named, axis=0) if named else (128, 128, 128)
            rows.append(colour_embedding(rgb))
        return np.stack(rows)
