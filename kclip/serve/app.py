"""The search page's web app: a JSON API over one index, the page itself, and thumbnails.

    GET  /                          the page (static/index.html; the URL's ?q=, ?like=, &k=, &page= drive it)
    GET  /api/search?q=TEXT&k=24&offset=0        search by text
    GET  /api/search?like=ID&k=24&offset=0       "more like this": search by an indexed image's embedding
    POST /api/search/image?k=24&offset=0         search by an uploaded picture (multipart field "image",
                                                 or the raw file as the request body)
    GET  /api/index                              what the index holds
    GET  /thumb/ID, /image/ID                    an indexed image's thumbnail / original file

Files are reached only through ids from the index (kclip.serve.state.image_id): nothing a request
says is ever joined to a path. Errors are JSON {"error": message} with a 4xx status; anything
unexpected is logged and answered with a short 500 message, never a stack trace.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from kclip.data.image_io import ImageLoadError, load_image, open_image
from kclip.serve.state import IndexWatcher, ModelRunner
from kclip.serve.thumbnails import ThumbnailCache

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
MAX_K = 100  # results per page
MAX_RESULTS = 1000  # how deep paging may go (offset + k)
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
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


def create_app(model, index_dir, *, backend: str = "auto", max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, thumbnail_side: int | None = None) -> FastAPI:
    """A FastAPI app that searches the index in `index_dir` with `model` (the model that built it).

    model: a kclip DualEncoder (or anything with encode_text, encode_image and fingerprint).
    The index is re-read when it changes on disk (checked on every request); thumbnails are cached in
    index_dir/thumbnails. Serve it with any ASGI server, e.g. `uvicorn.run(app)`, or use kclip.serve_page.
    """
    if not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
        raise ValueError(f"max_upload_bytes must be a positive integer; got {max_upload_bytes!r}.")
    runner = ModelRunner(model)
    watcher = IndexWatcher(index_dir, runner.fingerprint, backend=backend)
    thumbnails = ThumbnailCache(watcher.directory, **({"side": thumbnail_side} if thumbnail_side else {}))
    watcher.on_reload = lambda snapshot: thumbnails.prune(entry.version for entry in snapshot.entries)
    image_size = getattr(model, "image_size", None)
    # Uploads are decoded no bigger than the model needs, as encode_image itself would.
    decode_side = 4 * int(image_size) if isinstance(image_size, int) and image_size > 0 else None

    app = FastAPI(title="kclip search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.watcher, app.state.runner, app.state.thumbnails = watcher, runner, thumbnails

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
        if q is None or not q.strip():
            raise HTTPException(400, "the query is empty: type some words to search for, or drop a picture.")
        return answer(snapshot, lambda: runner.encode_text(q.strip()), k, offset, {"q": q.strip()})

    @app.get("/api/search")
    def search(q: str | None = None, like: str | None = None, k: str | None = None, offset: str | None = None):
        return search_text_or_like(q, like, k, offset)

    @app.post("/api/search/image")
    async def search_image(request: Request, k: str | None = None, offset: str | None = None):
        k, offset = _paging(k, offset)
        name, data = await _read_upload(request, max_upload_bytes)

        def run():
            try:
                width, height = open_image(data).size  # the header only: refuse before decoding
                if width * height > max_upload_pixels:
                    raise HTTPException(413, f"the picture is {width}x{height} pixels, more than the "
                                             f"{max_upload_pixels / 1e6:g} megapixels accepted; send a smaller one.")
                pixels = load_image(data, max_side=decode_side)
            except ImageLoadError as error:
                raise HTTPException(400, f"could not read {name} as a picture: {_upload_problem(error)}; "
                                         "try a JPEG, PNG, WebP, GIF, BMP or TIFF file.") from None
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
        except (ImageLoadError, OSError) as error:
            logger.warning("no thumbnail for %s: %s", entry.path, error)
            raise HTTPException(404, f"{entry.name} can no longer be read; rebuild the index.") from None
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400",
                                                                     "X-Content-Type-Options": "nosniff"})

    @app.get("/image/{identifier}")
    def original(identifier: str):
        snapshot, entry = indexed_entry(identifier)
        path = snapshot.file_path(entry)
        if not path.is_file():
            raise HTTPException(404, f"{entry.name} is no longer on disk; rebuild the index.")
        return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @app.get("/")
    def page():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _upload_problem(error: ImageLoadError) -> str:
    # load_image names in-memory data "<N bytes in memory>: ..." and Pillow adds a BytesIO repr; neither helps.
    reason = str(error).split(": ", 1)[-1].rstrip(".")
    if "cannot identify image file" in reason:
        return "it is not an image, or not a format that can be decoded"
    return reason


async def _read_upload(request: Request, max_bytes: int) -> tuple[str, bytes]:
    """The uploaded file's name and bytes; 413 as soon as the body passes max_bytes, read or declared."""
    too_large = HTTPException(413, f"the upload is larger than the limit of {max_bytes / 2**20:.0f} MB; "
                                   "send a smaller picture.")
    # The multipart envelope adds a few hundred bytes around the file.
    limit = max_bytes + 64 * 1024
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async def replay():
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
        uploads = [value for value in form.values() if hasattr(value, "read")]
        if not uploads:
            raise HTTPException(400, "no picture in the upload: send it in the form field \"image\".")
        name, data = uploads[0].filename or "the upload", await uploads[0].read()
        await form.close()
    else:
        name, data = "the upload", bytes(body)
    if not data:
        raise HTTPException(400, "the upload is empty: choose or drop a picture file.")
    if len(data) > max_bytes:
        raise too_large
    return name, data
