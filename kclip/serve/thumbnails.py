"""Thumbnails made once per image version and kept beside the index, so no request decodes a photo twice.

    <index folder>/thumbnails/<entry.version>.jpg

The name hashes the file's path, size and mtime_ns as the index recorded them, so an edited photo gets
a new thumbnail after the next index build, and thumbnails of files gone from the index are simply
never asked for again (`prune` removes them). Each is written whole and fsync'ed
(kclip.utils.files), and `prune` also removes the temporaries a killed writer left. Only names
this cache gives (<16 hex>.jpg and their temporaries) are ever deleted: anything else a user puts
in the folder stays. When the index folder is read-only the cache lives in a temporary folder
instead, with a warning.
"""
from __future__ import annotations

import io
import logging
import tempfile
import time
import uuid
from pathlib import Path

from PIL import Image

from kclip.data.image_io import ImageLoadError, load_image
from kclip.index.ownership import THUMBNAIL_DIR, THUMBNAIL_FILE
from kclip.utils.files import is_temporary, write_bytes

logger = logging.getLogger(__name__)

THUMBNAIL_SIDE = 256  # longer side in pixels: sharp in a grid of ~200 px tiles on a 1.25x screen
JPEG_QUALITY = 85
# A temporary this old is left over by a killed writer; a younger one may be another server's write.
STALE_TEMPORARY_SECONDS = 60.0


class ThumbnailCache:
    def __init__(self, index_dir, side: int = THUMBNAIL_SIDE):
        self.side = int(side)
        self.directory = Path(index_dir) / THUMBNAIL_DIR
        try:
            self.directory.mkdir(exist_ok=True)
            probe = self.directory / f".probe-{uuid.uuid4().hex[:8]}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            fallback = Path(tempfile.mkdtemp(prefix="kclip-thumbnails-"))
            logger.warning("cannot write thumbnails beside the index in %s (%s); caching them in %s instead",
                           self.directory, error, fallback)
            self.directory = fallback
        self.made = 0  # thumbnails decoded and written by this process (tests check it stays put)

    def path(self, version: str) -> Path:
        return self.directory / f"{version}.jpg"

    def get(self, version: str, source: Path) -> Path:
        """The thumbnail file of `source`, made now if this version has none yet.

        Raises ImageLoadError (or OSError) if the photo can no longer be read.
        """
        target = self.path(version)
        if target.is_file():
            return target
        pixels = load_image(source, max_side=self.side)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        # Written under a unique temporary name, fsync'ed, then renamed: two requests making the same
        # thumbnail can't tear it, and a power cut can't leave a truncated one.
        write_bytes(target, buffer.getvalue())
        self.made += 1
        return target

    def prune(self, keep_versions) -> int:
        """Delete this cache's thumbnails whose version is not in keep_versions, and stale temporaries.

        Returns how many went. Files with other names are never touched.
        """
        keep = {f"{version}.jpg" for version in keep_versions}
        removed = 0
        now = time.time()
        for path in self.directory.iterdir():
            if not THUMBNAIL_FILE.match(path.name) or not path.is_file() or path.is_symlink():
                continue
            if is_temporary(path.name):
                try:
                    if now - path.stat().st_mtime < STALE_TEMPORARY_SECONDS:
                        continue
                except FileNotFoundError:
                    continue
            elif path.name in keep:
                continue
            path.unlink(missing_ok=True)
            removed += 1
        return removed


__all__ = ["ImageLoadError", "ThumbnailCache", "THUMBNAIL_DIR"]
