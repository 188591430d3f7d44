"""Running the search app: `serve_page` blocks like any web server; `BackgroundServer` runs it in a thread.

Binding anything but a loopback address puts the photos and the model within reach of the network,
with no login in front; that is allowed, since it is sometimes wanted, but it is warned about.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
import warnings

import uvicorn

from kclip.serve.app import create_app

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> None:
    """Warn (UserWarning) when `host` is reachable from other machines."""
    if not is_loopback(host):
        warnings.warn(
            f"serving on {host}, which other machines can reach: anyone who can connect may search the index "
            f"and view every indexed photo (there is no login). Use --host {DEFAULT_HOST} to keep it local.",
            UserWarning, stacklevel=2,
        )


def serve_page(model, index_dir, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_level: str = "info",
               compute_threads: int | None = 1, **app_options) -> None:
    """Serve the search page for the index in `index_dir` until interrupted (Ctrl+C).

    model: the model that built the index (a DualEncoder, or the path of its .keras file).
    compute_threads: threads each model op and each ANN search may use (default 1: concurrent
        requests, not one request's ops, share the cores; see `limit_compute_threads`); None
        leaves the libraries' defaults.
    app_options go to kclip.serve.create_app (backend, max_upload_bytes, thumbnail_side).
    """
    check_host(host)
    if compute_threads is not None and compute_threads < 1:
        raise ValueError(f"compute_threads must be 1 or more (or None), got {compute_threads}.")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from kclip import load_model

        model = load_model(model)
    app = create_app(model, index_dir, **app_options)
    with threads_per_request(compute_threads):
        app.state.runner.warm_up()
    print(f"kclip search page: http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl+C stops it)")
    with threads_per_request(compute_threads):
        uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def threads_per_request(count: int | None):
    """Model ops and ANN searches on at most `count` threads while serving; restored after."""
    if count is None:
        yield
        return
    from kclip.backends.torch.levers import limit_compute_threads
    from kclip.index.ann import limit_search_threads

    # faiss and torch may share one OpenMP runtime, so setting one moves the other: read
    # both counts before setting either, and restore in the reverse order.
    previous_search, previous_compute = limit_search_threads(None), limit_compute_threads(None)
    limit_search_threads(count)
    limit_compute_threads(count)
    try:
        yield
    finally:
        limit_search_threads(previous_search)
        if previous_compute is not None:
            limit_compute_threads(previous_compute)


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class BackgroundServer:
    """Runs an ASGI app with uvicorn in a daemon thread; for tests, benchmarks and screenshots.

        with BackgroundServer(app) as server:
            httpx.get(server.url + "/api/index")
    """

    def __init__(self, app, host: str = DEFAULT_HOST, port: int | None = None, log_level: str = "warning"):
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the search server did not start on {self.url}.")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc_info):
        self.server.should_exit = True
        self.thread.join(timeout=10)
