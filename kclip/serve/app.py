"""The search page's web app: a JSON API over one index, the page itself, and thumbnails.

    GET  /                          the page (static/index.html; the URL's ?q=, ?like=, &k=, &page= drive it)
    GET  /api/search?q=TEXT&k=24&offset=0        search by text
    GET  /api/search?like=ID&k=24&offset=0       "more like this": search by an indexed image's embedding
    POST /api/search/image?k=24&offset=0         search by an uploaded picture (multipart field "image",
                                                 or the raw file as the request body)
    GET  /api/index                              what the index holds
    GET  /thumb/ID, /image/ID                    an indexed image's thumbnail / original file

Files are reached only through ids from the index (kclip.serve.state.image_id): nothing a request
says is ever joined to a path, and a file is served only if it resolves inside the indexed folder.
Errors are JSON {"error": message} with a 4xx status; anything unexpected is logged and answered
with a short 500 message, never a stack trace, and answers never show a path on the server.
Every request passes kclip.serve.security.RequestGuard first: unknown Host names get 400, requests
sent by other sites' pages (Origin) 403 (see docs/security.md).
"""
from __future__ import annotations

import logging
import time
import unicodedata
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kclip.data.image_io import ImageLoadError
from kclip.serve.security import LOOPBACK_NAMES, RequestGuard
from kclip.serve.state import IndexWatcher, ModelRunner, OutsideIndexedFolder
from kclip.serve.thumbnails import ThumbnailCache
from kclip.serve.uploads import DEFAULT_DECODE_SLOTS, DecodeSlots, decode_upload, read_upload

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = 100  # results per page
MAX_RESULTS = 1000  # how deep paging may go (offset + k)
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_UPLOAD_BYTES = 1024 * 1024 * 1024  # what any one upload may be set to: the whole body is held in memory
# Longer texts are refused before the model sees them: tokenizing them holds the model lock, and the
# text tower reads only its first max_length tokens anyway.
MAX_QUERY_CHARS = 1000
# A small file can hold a huge picture (a flat 20000 x 20000 PNG is a few hundred kB); 50 MP fits
# any phone or camera photo and bounds what one upload may make the server decode.
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int_parameter(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise HTTPException(400, f"{name} must be a whole number from {low} to {high}; got {value!r}.") from None
    if not low <= number <= high:
        raise HTTPException(400, f"{name} must be from {low} to {high}; got {number}.")
    return number


def _paging(k: str | None, offset: str | None) -> tuple[int, int]:
    k = _int_parameter(k, "k", 24, 1, MAX_K)
    offset = _int_parameter(offset, "offset", 0, 0, MAX_RESULTS - k)
    return k, offset


def query_text(q: str | None) -> str:
    """The text to search for: control and invisible format characters (NUL, zero-width space, ...) removed."""
    if q is None:
        return ""
    if len(q) > MAX_QUERY_CHARS:
        raise HTTPException(400, f"the query is {len(q)} characters long; at most {MAX_QUERY_CHARS} are accepted, "
                                 "so shorten it.")
    kept = "".join(" " if character.isspace() else character for character in q
                   if unicodedata.category(character) not in ("Cc", "Cf") or character.isspace())
    return " ".join(kept.split())


def create_app(model, index_dir, *, backend: str = "auto", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, thumbnail_side: int | None = None,
               allowed_hosts=LOOPBACK_NAMES, max_concurrent_decodes: int = DEFAULT_DECODE_SLOTS) -> FastAPI:
    """A FastAPI app that searches the index in `index_dir` with `model` (the model that built it).

    model: a kclip DualEncoder (or anything with encode_text, encode_image and fingerprint).
    The index is re-read when it changes on disk (checked on every request); thumbnails are cached in
    index_dir/thumbnails. Serve it with any ASGI server, e.g. `uvicorn.run(app)`, or use kclip.serve_page.
    allowed_hosts: the Host names the app answers (default: loopback names only; see
        kclip.serve.security); add the name or address a LAN opens the page with.
    max_concurrent_decodes: uploads decoded at once (each may hold max_upload_pixels x ~9 bytes).
    """
    if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) \
            or not 1 <= max_upload_bytes <= MAX_UPLOAD_BYTES:
        raise ValueError(f"max_upload_bytes must be a whole number from 1 to {MAX_UPLOAD_BYTES} (1 GiB); "
                         f"got {max_upload_bytes!r}.")
    if isinstance(max_upload_pixels, bool) or not isinstance(max_upload_pixels, int) or max_upload_pixels < 1:
        raise ValueError(f"max_upload_pixels must be a whole number >= 1; got {max_upload_pixels!r}.")
    decode_slots = DecodeSlots(max_concurrent_decodes)
    runner = ModelRunner(model)
    watcher = IndexWatcher(index_dir, runner.fingerprint, backend=backend)
    thumbnails = ThumbnailCache(watcher.directory, **({"side": thumbnail_side} if thumbnail_side else {}))
    watcher.on_reload = lambda snapshot: thumbnails.prune(entry.version for entry in snapshot.entries)
    watcher.on_reload(watcher.current())  # also clears what a killed server left half-written
    image_size = getattr(model, "image_size", None)
    # Uploads are decoded no bigger than the model needs, as encode_image itself would.
    decode_side = 4 * int(image_size) if isinstance(image_size, int) and image_size > 0 else None

    app = FastAPI(title="kclip search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.watcher, app.state.runner, app.state.thumbnails = watcher, runner, thumbnails
    app.state.decode_slots = decode_slots
    app.add_middleware(RequestGuard, allowed_hosts=tuple(allowed_hosts))

    @app.exception_handler(StarletteHTTPException)  # also the router's own 404 and 405
    async def http_error(request, error):
        return _error(error.status_code, str(error.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, error):
        return _error(400, f"bad request: {error.errors()[0].get('msg', 'invalid parameters')}.")

    @app.exception_handler(Exception)
    async def unexpected_error(request, error):
        logger.exception("error while answering %s", request.url.path)
        return _error(500, "the server failed to answer this request; its log has the details.")

    def answer(snapshot, embed, k: int, offset: int, query: dict) -> JSONResponse:
        """Search with the embedding `embed()` returns; the Server-Timing header says where the time went."""
        started = time.perf_counter()
        query_embedding = embed()
        embedded = time.perf_counter()
        found = snapshot.index.search(query_embedding, min(offset + k, len(snapshot.index)))[0][offset:]
        searched = time.perf_counter()
        results = []
        for result in found:
            entry = snapshot.entries[snapshot.row_by_path[result.path]]
            results.append({"rank": result.rank, "score": round(result.score, 4), "id": entry.id,
                            "name": entry.name, "path": entry.path,
                            "thumbnail": f"/thumb/{entry.id}?v={entry.version}", "image": f"/image/{entry.id}"})
        body = {"query": query, "k": k, "offset": offset, "results": results,
                "has_more": offset + k < min(len(snapshot.index), MAX_RESULTS),
                "index": snapshot.info(), "warning": watcher.warning}
        timing = f"embed;dur={(embedded - started) * 1000:.2f}, search;dur={(searched - embedded) * 1000:.2f}"
        return JSONResponse(body, headers={"Server-Timing": timing})

    def search_text_or_like(q, like, k, offset):
        k, offset = _paging(k, offset)
        snapshot = watcher.current()
        if like:
            entry = snapshot.entry(like)
            if entry is None:
                raise HTTPException(404, "that image is not in the index (it may have been removed); search again.")
            return answer(snapshot, lambda: snapshot.embedding(entry), k, offset, {"like": like, "name": entry.name})
        text = query_text(q)
        if not text:
            raise HTTPException(400, "the query is empty: type some words to search for, or drop a picture.")
        return answer(snapshot, lambda: runner.encode_text(text), k, offset, {"q": text})

    @app.get("/api/search")
    def search(q: str | None = None, like: str | None = None, k: str | None = None, offset: str | None = None):
        return search_text_or_like(q, like, k, offset)

    @app.post("/api/search/image")
    async def search_image(request: Request, k: str | None = None, offset: str | None = None):
        k, offset = _paging(k, offset)
        name, data = await read_upload(request, max_upload_bytes)

        def run():
            with decode_slots:
                pixels = decode_upload(data, name, max_upload_pixels, decode_side)
            snapshot = watcher.current()
            return answer(snapshot, lambda: runner.encode_image(pixels), k, offset, {"image": name})

        return await run_in_threadpool(run)

    @app.get("/api/index")
    def index_info():
        snapshot = watcher.current()
        return {**snapshot.info(), "warning": watcher.warning, "max_upload_bytes": max_upload_bytes,
                "max_k": MAX_K, "max_results": MAX_RESULTS}

    def indexed_entry(identifier: str):
        snapshot = watcher.current()
        entry = snapshot.entry(identifier)
        if entry is None:
            raise HTTPException(404, "no such image in the index.")
        return snapshot, entry

    @app.get("/thumb/{identifier}")
    def thumbnail(identifier: str):
        snapshot, entry = indexed_entry(identifier)
        try:
            path = thumbnails.get(entry.version, snapshot.file_path(entry))
        except OutsideIndexedFolder as error:
            logger.warning("refused to read %s", error)
            raise HTTPException(404, f"{entry.name} is not inside the indexed folder; rebuild the index.") from None
        except (ImageLoadError, OSError) as error:
            logger.warning("no thumbnail for %s: %s", entry.path, error)
            raise HTTPException(404, f"{entry.name} can no longer be read; rebuild the index.") from None
        # private: a shared proxy or browser cache must not keep someone's photos.
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/image/{identifier}")
    def original(identifier: str):
        snapshot, entry = indexed_entry(identifier)
        try:
            path = snapshot.file_path(entry)
        except OutsideIndexedFolder as error:
            logger.warning("refused to serve %s", error)
            raise HTTPException(404, f"{entry.name} is not inside the indexed folder; rebuild the index.") from None
        if not path.is_file():
            raise HTTPException(404, f"{entry.name} is no longer on disk; rebuild the index.")
        return FileResponse(path, headers={"Cache-Control": "private, no-cache"})

    @app.get("/")
    def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
