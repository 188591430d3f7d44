"""What keeps other web sites away from the search page: Host and Origin checks, and protective headers.

DNS rebinding: a web site the user visits can point its own host name at 127.0.0.1, and the
browser then lets that site's scripts read whatever the local server answers. The server therefore
answers only requests whose Host header is a name it was told it serves (loopback names by
default; `allowed_hosts` for a LAN), as Jupyter and TensorBoard do. Starlette's
TrustedHostMiddleware does the same, but cuts "[::1]:8000" at its first colon and answers in plain
text; this guard parses IPv6 literals and answers in the API's JSON form.

Cross-site requests: a page on another site may still send a form (multipart POST) to
127.0.0.1 without reading the answer. Browsers name the sending page in the Origin header, so any
request whose Origin is not the server's own address is refused (403).

Every answer also carries a Content-Security-Policy (scripts, styles and images from the page's own
origin only, no framing), X-Frame-Options, nosniff, no referrer, and Cross-Origin-Resource-Policy
same-origin, so no other site can embed the photos or the page.
"""
from __future__ import annotations

import ipaddress
import json
import re
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")
_HOST_NAME = re.compile(r"^(?:\*|(?:\*\.)?[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*)$")

SECURITY_HEADERS = (
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                                 b"connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def normalise_allowed_host(name: str) -> str:
    """A host name or IP address as `allowed_hosts` stores it; ValueError for anything else.

    "*.example.lan" allows every sub-domain, and "*" any name (which gives up the protection).
    """
    text = str(name).strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    if not _HOST_NAME.match(text):
        raise ValueError(
            f"allowed host {name!r} is not a host name or IP address; give the name the page is opened with, "
            "without http:// or a port, e.g. --allowed-host photos.lan or --allowed-host 192.168.1.20."
        )
    return text


def allowed_host_names(bind_host: str, extra=()) -> tuple:
    """The Host names a server bound to `bind_host` answers: loopback names, the bound address, `extra`."""
    names = list(LOOPBACK_NAMES)
    if bind_host not in WILDCARD_BINDS and not is_loopback(bind_host):
        names.append(normalise_allowed_host(bind_host))
    names += [normalise_allowed_host(name) for name in extra]
    return tuple(dict.fromkeys(names))


def host_of(header: str) -> str | None:
    """The host part of a Host header ("[::1]:8000" -> "::1", "Photos.LAN." -> "photos.lan"); None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        end = header.find("]")
        if end < 0 or (header[end + 1:] and not re.match(r"^:\d{1,5}$", header[end + 1:])):
            return None
        host = header[1:end]
    else:
        host, _, port = header.partition(":")
        if port and not port.isdigit():
            return None
    host = host.rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host if _HOST_NAME.match(host) and host != "*" else None


def host_matches(host: str, allowed: tuple) -> bool:
    for name in allowed:
        if name == "*" or name == host or (name.startswith("*.") and host.endswith(name[1:])):
            return True
    return False


class RequestGuard:
    """ASGI middleware: refuse unknown Host names (400) and foreign Origins (403); add SECURITY_HEADERS."""

    def __init__(self, app, allowed_hosts=LOOPBACK_NAMES):
        self.app = app
        self.allowed_hosts = tuple(normalise_allowed_host(name) for name in allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for key, value in scope["headers"]:
            headers.setdefault(key, value.decode("latin-1"))
        raw_host = headers.get(b"host", "")
        host = host_of(raw_host)
        if host is None or not host_matches(host, self.allowed_hosts):
            shown = raw_host[:100]
            return await _refuse(send, 400, (
                f"this server does not answer to the host name {shown!r}. Open the page by the address it "
                f"was started with (it answers to {', '.join(self.allowed_hosts)}); if that name is yours, start "
                "the server with --allowed-host NAME. (This check keeps other web sites from reading your photos "
                "through a rebound DNS name.)"))
        origin = headers.get(b"origin")
        if origin is not None and not _same_origin(origin, raw_host):
            return await _refuse(send, 403, (
                f"cross-site request refused: the page at {origin[:100]!r} may not use this search server; "
                "only its own page may. Open the page itself to search."))

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (key, value) for key, value in SECURITY_HEADERS if key not in present]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _same_origin(origin: str, raw_host: str) -> bool:
    """True when the Origin header names this server's own address (scheme, host and port as the Host header)."""
    parts = urlsplit(origin.strip().lower())
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == raw_host.strip().lower() \
        and not parts.path.strip("/")


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store"), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
