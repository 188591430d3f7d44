"""Running the search app: `serve_page` blocks like any web server; `BackgroundServer` runs it in a thread.

Binding anything but a loopback address puts the photos and the model within reach of the network,
with no login in front; that is allowed, since it is sometimes wanted, but it is warned about.
Either way the app answers only the Host names it is given (loopback names, the bound address and
`allowed_hosts`; kclip.serve.security). uvicorn runs with bounds a browser never reaches: request
headers must arrive within HEADER_TIMEOUT seconds and fit in 16 KiB, idle connections close after
5 s, and at most LIMIT_CONCURRENCY connections are served at once (503 beyond).
"""
from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
import warnings

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from kclip.serve.app import MAX_UPLOAD_BYTES, create_app
from kclip.serve.security import allowed_host_names, is_loopback

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
HEADER_TIMEOUT = 10.0  # seconds a client has to send its request line and headers
KEEP_ALIVE_TIMEOUT = 5
LIMIT_CONCURRENCY = 64
MAX_HEADER_BYTES = 16 * 1024
MAX_LOGGED_TARGET = 300  # characters of a request's path and query the access log keeps


def upload_limit_bytes(megabytes) -> int:
    """--max-upload-mb as bytes; ValueError unless it is a finite number above 0 and at most 1024."""
    try:
        value = float(megabytes)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_UPLOAD_BYTES / 2**20):
        raise ValueError(f"the upload limit must be a number of megabytes above 0 and at most "
                         f"{MAX_UPLOAD_BYTES // 2**20}; got {megabytes!r}.")
    return max(1, int(value * 2**20))


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers take over HEADER_TIMEOUT seconds.

    uvicorn itself times out only idle keep-alive connections, so a client sending half a request
    (slowloris) would hold its connection for ever.
    """

    header_timeout = HEADER_TIMEOUT

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        waiting = self.conn.their_state is h11.IDLE  # no complete request line and headers yet
        if waiting and self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)
        elif not waiting and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        # IDLE: this connection's next request line and headers have not all arrived (a request being
        # answered is DONE until its response is sent).
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self.logger.info("closed a connection whose request headers took over %g s", self.header_timeout)
            self.transport.close()


class _ShortAccessLog(logging.Filter):
    """Cuts long request targets in uvicorn's access log, so a huge query is not written out whole."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) >= 3 and isinstance(record.args[2], str) \
                and len(record.args[2]) > MAX_LOGGED_TARGET:
            args = list(record.args)
            args[2] = args[2][:MAX_LOGGED_TARGET] + f"...[{len(record.args[2])} characters]"
            record.args = tuple(args)
        return True


def uvicorn_config(app, host: str, port: int, log_level: str = "info", **overrides) -> uvicorn.Config:
    """The uvicorn settings kclip serves with (see the module docstring); `overrides` change any of them."""
    options = dict(http=HeaderTimeoutProtocol, ws="none", timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                   limit_concurrency=LIMIT_CONCURRENCY, h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    options.update(overrides)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(existing, _ShortAccessLog) for existing in access.filters):
        access.addFilter(_ShortAccessLog())
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, **options)


def check_host(host: str) -> None:
    """Warn (UserWarning) when `host` is reachable from other machines."""
    if not is_loopback(host):
        warnings.warn(
            f"serving on {host}, which other machines can reach: anyone who can connect may search the index "
            f"and view every indexed photo (there is no login). Use --host {DEFAULT_HOST} to keep it local.",
            UserWarning, stacklevel=2,
        )


def serve_page(model, index_dir, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, log_level: str = "info",
               compute_threads: int | None = 1, allowed_hosts=(), **app_options) -> None:
    """Serve the search page for the index in `index_dir` until interrupted (Ctrl+C).

    model: the model that built the index (a DualEncoder, or the path of its .keras file).
    allowed_hosts: host names or addresses, besides the loopback names and `host` itself, that the
        page may be opened with (the LAN name of this machine, say; see docs/security.md).
    compute_threads: threads each model op and each ANN search may use (default 1: concurrent
        requests, not one request's ops, share the cores; see `limit_compute_threads`); None
        leaves the libraries' defaults.
    app_options go to kclip.serve.create_app (backend, max_upload_bytes, thumbnail_side).
    """
    check_host(host)
    if compute_threads is not None and compute_threads < 1:
        raise ValueError(f"compute_threads must be 1 or more (or None), got {compute_threads}.")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be from 1 to 65535; got {port!r}.")
    names = allowed_host_names(host, allowed_hosts)
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from kclip import load_model

        model = load_model(model)
    app = create_app(model, index_dir, allowed_hosts=names, **app_options)
    with threads_per_request(compute_threads):
        app.state.runner.warm_up()
    logger.info("serving the photos under %s to requests for %s", app.state.watcher.current().root, ", ".join(names))
    print(f"kclip search page: http://{'[' + host + ']' if ':' in host else host}:{port}/  (Ctrl+C stops it)")
    with threads_per_request(compute_threads):
        uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()


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

    def __init__(self, app, host: str = DEFAULT_HOST, port: int | None = None, log_level: str = "warning",
                 **config):
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port, log_level, **config))
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
