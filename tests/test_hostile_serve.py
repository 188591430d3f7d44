"""Hostile requests to the search page, in-process and over real HTTP: foreign Host names and Origins,
uploads the page does not take, tampered or broken index files, huge and invisible queries, slow clients.
Each case asserts the exact refusal, and that no file outside the index folder changed."""
import hashlib
import io
import json
import os
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from fake_encoder import FakeEncoder, solid_image
from kclip.serve import BackgroundServer, create_app
from kclip.serve import uploads as upload_module
from kclip.serve.security import allowed_host_names, normalise_allowed_host
from kclip.serve.server import HeaderTimeoutProtocol, _ShortAccessLog, uvicorn_config
from kclip.serve.thumbnails import ThumbnailCache
from serve_fixtures import SECRET, build_colour_index, local_client, png_bytes

FOREIGN_HOST = "this server does not answer to the host name 'attacker.example'"


def tree(folder: Path) -> dict:
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


class CountingEncoder(FakeEncoder):
    texts = None

    def encode_text(self, texts, batch_size=32):
        self.texts = (self.texts or []) + list(texts)
        return super().encode_text(texts, batch_size)


def outside_the_index(tmp_path: Path) -> dict:
    return {name: digest for name, digest in tree(tmp_path).items() if not name.startswith("index/")}


@pytest.fixture
def setup(tmp_path):
    """An app over the colour index; after the test, every file outside the index folder must be unchanged."""
    index_dir = build_colour_index(tmp_path)
    before = outside_the_index(tmp_path)
    encoder = CountingEncoder()
    app = create_app(encoder, index_dir)
    yield tmp_path, index_dir, encoder, app
    assert outside_the_index(tmp_path) == before


def first_result(client, colour="red"):
    return client.get("/api/search", params={"q": colour, "k": 1}).json()["results"][0]


def test_every_route_refuses_a_foreign_host_and_loopback_names_work(setup):
    tmp_path, index_dir, encoder, app = setup
    client = local_client(app)
    found = first_result(client)
    routes = [("GET", "/"), ("GET", "/api/index"), ("GET", "/api/search?q=red"), ("GET", found["image"]),
              ("GET", found["thumbnail"]), ("GET", "/static/app.js"), ("GET", "/no/such/route"),
              ("POST", "/api/search/image")]
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", ""):
        for method, url in routes:
            response = client.request(method, url, headers={"host": host}, content=png_bytes("red"))
            assert response.status_code == 400, (host, url)
            assert response.json()["error"].startswith("this server does not answer to the host name"), (host, url)
    assert client.get("/api/index", headers={"host": "attacker.example"}).json()["error"].startswith(FOREIGN_HOST)
    for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "localhost."):
        assert client.get("/api/search?q=red", headers={"host": host}).status_code == 200, host
    lan = local_client(create_app(FakeEncoder(), index_dir, allowed_hosts=("photos.lan", "*.home.arpa")))
    for host, status in (("photos.lan:8000", 200), ("nas.home.arpa", 200), ("attacker.example", 400)):
        assert lan.get("/api/index", headers={"host": host}).status_code == status, host


def test_allowed_host_names_follow_the_bound_address():
    assert allowed_host_names("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert allowed_host_names("0.0.0.0", ["Photos.LAN"]) == ("localhost", "127.0.0.1", "::1", "photos.lan")
    assert allowed_host_names("192.168.1.20") == ("localhost", "127.0.0.1", "::1", "192.168.1.20")
    for bad in ("http://photos.lan", "photos.lan:8000", "a b", ""):
        with pytest.raises(ValueError, match="is not a host name or IP address"):
            normalise_allowed_host(bad)


def test_requests_sent_by_other_sites_pages_are_refused(setup):
    _, _, encoder, app = setup
    client = local_client(app)
    for origin in ("https://attacker.example", "null", "http://127.0.0.1:9999", "http://localhost:8000"):
        response = client.post("/api/search/image", files={"image": ("q.png", png_bytes("red"), "image/png")},
                               headers={"origin": origin})
        assert response.status_code == 403, origin
        assert response.json()["error"].startswith(f"cross-site request refused: the page at {origin!r}"), origin
        assert client.get("/api/search?q=red", headers={"origin": origin}).status_code == 403
    same = client.post("/api/search/image", files={"image": ("q.png", png_bytes("red"), "image/png")},
                       headers={"origin": "http://127.0.0.1:8000"})
    assert same.status_code == 200 and same.json()["results"][0]["name"] == "red.png"


def test_a_text_plain_upload_is_refused_before_decoding(setup, monkeypatch):
    _, _, _, app = setup
    monkeypatch.setattr(upload_module, "load_image", lambda *a, **k: pytest.fail("decoded a refused upload"))
    response = local_client(app).post("/api/search/image", content=png_bytes("red"), headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"] == ("uploads must be sent as multipart/form-data (form field \"image\") or with "
                                        "an image/* content type, not 'text/plain'.")


def ico_holding_a_big_png(side: int) -> bytes:
    """An ICO whose directory says 256x256 but whose picture is a side x side PNG (Pillow decodes it in open)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (250, 0, 0)).save(buffer, format="PNG")
    png = buffer.getvalue()
    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 22) + png


def encoded(format_name: str) -> bytes:
    image = Image.fromarray(solid_image("blue", size=(32, 32)))
    buffer = io.BytesIO()
    (image.convert("L") if format_name == "SPIDER" else image).save(buffer, format=format_name)
    return buffer.getvalue()


@pytest.mark.parametrize("format_name", ["ICO", "SGI", "TGA", "PCX", "PPM", "DDS", "QOI", "SPIDER", "ICNS", "IM",
                                         "JPEG2000", "AVIF"])
def test_formats_the_page_does_not_name_are_never_opened(setup, monkeypatch, format_name):
    _, _, _, app = setup
    try:
        data = ico_holding_a_big_png(3000) if format_name == "ICO" else encoded(format_name)
    except (OSError, KeyError) as error:
        pytest.skip(f"this Pillow cannot write {format_name}: {error}")
    monkeypatch.setattr(upload_module, "load_image", lambda *a, **k: pytest.fail("decoded a refused upload"))
    response = local_client(app).post("/api/search/image", files={"image": (f"q.{format_name.lower()}", data)})
    assert response.status_code == 400
    assert response.json()["error"] == (f"could not read q.{format_name.lower()} as a picture: it is not an image, or "
                                        "not a format the page takes; send a JPEG, PNG, WebP, GIF, BMP or TIFF file.")


@pytest.mark.parametrize("format_name", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"])
def test_the_formats_the_page_names_are_searched(setup, format_name):
    _, _, _, app = setup
    response = local_client(app).post("/api/search/image", files={"image": ("q", encoded(format_name))})
    assert response.status_code == 200 and response.json()["results"][0]["name"] == "blue.png"


def test_decodes_are_bounded_and_a_waiting_upload_gets_a_clear_503(setup, monkeypatch):
    _, index_dir, _, _ = setup
    app = create_app(FakeEncoder(), index_dir, max_concurrent_decodes=1)
    slots = app.state.decode_slots
    real_load = upload_module.load_image

    def slow_load(*args, **kwargs):
        time.sleep(0.02)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(upload_module, "load_image", slow_load)
    client = local_client(app)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: client.post("/api/search/image", files={"image": ("q.png", png_bytes("red"))})
                                 .status_code, range(8)))
    assert statuses == [200] * 8 and slots.most_active == 1
    slots.wait = 0.01
    with slots:  # another upload is decoding
        busy = client.post("/api/search/image", files={"image": ("q.png", png_bytes("red"))})
    assert busy.status_code == 503
    assert busy.json()["error"] == "the server is busy decoding 1 other pictures; try again in a moment."


@pytest.mark.parametrize("query", ["\x00", "\x00\x00 \x00", "\u200b\u200c\u200d\ufeff", "\u2060 \u200b", "\x1f\x7f"])
def test_queries_of_invisible_characters_are_empty(setup, query):
    _, _, encoder, app = setup
    response = local_client(app).get("/api/search", params={"q": query})
    assert response.status_code == 400
    assert response.json()["error"] == "the query is empty: type some words to search for, or drop a picture."
    assert encoder.texts is None


def test_a_huge_query_is_refused_before_the_model_sees_it(setup):
    _, _, encoder, app = setup
    client = local_client(app)
    response = client.get("/api/search", params={"q": "red " * 250 + "x"})
    assert response.status_code == 400
    assert response.json()["error"] == "the query is 1001 characters long; at most 1000 are accepted, so shorten it."
    assert client.get("/api/search", params={"q": "r\u200bed"}).json()["query"] == {"q": "red"}
    assert encoder.texts == ["red"]
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        huge = http.get("/api/search", params={"q": "red " * 15_000})  # 60 KB: over the 16 KiB request-line limit
    assert huge.status_code == 400 and encoder.texts == ["red"]


def test_a_broken_metadata_json_keeps_the_last_good_index_and_shows_no_paths(setup):
    tmp_path, index_dir, _, app = setup
    client = local_client(app)
    good = first_result(client, "green")["name"]
    for broken in ({"files": 5}, {"format_version": "2"}, {"files": [{"path": "../../etc/passwd", "size": 1,
                                                                      "mtime_ns": 1}], "count": 1}):
        metadata = json.loads((index_dir / "metadata.json").read_text())
        (index_dir / "metadata.json").write_text(json.dumps({**metadata, **broken}))
        os.utime(index_dir / "metadata.json", ns=(time.time_ns(), time.time_ns() + hash(str(broken)) % 10**9))
        for url in ("/api/index", "/api/search?q=green&k=1"):
            response = client.get(url)
            assert response.status_code == 200, (broken, url)
            assert response.json()["warning"] == ("the index on disk changed but could not be loaded; still serving "
                                                  "the previous version (the server log says why).")
            assert str(tmp_path) not in response.text and "passwd" not in response.text
        assert first_result(client, "green")["name"] == good
        (index_dir / "metadata.json").write_text(json.dumps(metadata))


def test_a_tampered_index_is_refused_at_start_and_links_out_of_the_folder_are_not_served(tmp_path):
    index_dir = build_colour_index(tmp_path)
    metadata = json.loads((index_dir / "metadata.json").read_text())
    (index_dir / "metadata.json").write_text(json.dumps(
        {**metadata, "files": [{**metadata["files"][0], "path": "/etc/hostname"}, *metadata["files"][1:]]}))
    with pytest.raises(ValueError, match=r"files\[0\].path is an absolute path"):
        create_app(FakeEncoder(), index_dir)

    photos = tmp_path / "linked"
    photos.mkdir()
    Image.fromarray(solid_image("red")).save(photos / "red.png")
    outside = tmp_path / "outside.png"
    Image.fromarray(solid_image("blue")).save(outside)
    (photos / "blue.png").symlink_to(outside)
    from kclip.index.index import build_index

    build_index(FakeEncoder(), photos, tmp_path / "linked.kclip", progress=False)
    client = local_client(create_app(FakeEncoder(), tmp_path / "linked.kclip"))
    blue = first_result(client, "blue")
    assert blue["name"] == "blue.png"
    for url in (blue["image"], blue["thumbnail"]):
        response = client.get(url)
        assert response.status_code == 404
        assert response.json()["error"] == "blue.png is not inside the indexed folder; rebuild the index."
    assert client.get(first_result(client, "red")["image"]).status_code == 200


def test_protective_headers_and_private_caching(setup):
    tmp_path, index_dir, _, app = setup
    before = tree(tmp_path / "photos")
    client = local_client(app)
    found = first_result(client)
    for url in ("/", "/api/index", found["image"], found["thumbnail"], "/static/app.js"):
        headers = client.get(url).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"] and "script-src 'self'" in \
            headers["content-security-policy"], url
        assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff", url
        assert headers["cross-origin-resource-policy"] == "same-origin", url
    assert client.get(found["thumbnail"]).headers["cache-control"] == "private, max-age=86400"
    assert client.get(found["image"]).headers["cache-control"] == "private, no-cache"
    assert SECRET not in client.get("/image/..%2Fsecret.txt").text
    assert tree(tmp_path / "photos") == before


def test_thumbnails_are_fsynced_and_only_the_caches_own_files_are_pruned(tmp_path, monkeypatch):
    import kclip.utils.files

    photo = tmp_path / "red.png"
    Image.fromarray(solid_image("red")).save(photo)
    cache = ThumbnailCache(tmp_path / "index")
    synced = []
    real_fsync = kclip.utils.files.os.fsync
    monkeypatch.setattr(kclip.utils.files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    made = cache.get("0123456789abcdef", photo)
    assert made.name == "0123456789abcdef.jpg" and synced
    folder = cache.directory
    mine = folder / "my_small_1.jpg"
    mine.write_bytes(b"the user's own")
    stale = folder / ".fedcba9876543210.jpg.abc123.tmp.jpg"
    fresh = folder / ".0011223344556677.jpg.def456.tmp.jpg"
    for temporary in (stale, fresh):
        temporary.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    (folder / "fedcba9876543210.jpg").write_bytes(b"old version")
    assert cache.prune(["0123456789abcdef"]) == 2
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        ["0123456789abcdef.jpg", "my_small_1.jpg", fresh.name])


def test_a_client_that_never_finishes_its_headers_is_cut_off(setup):
    _, _, _, app = setup

    class Quick(HeaderTimeoutProtocol):
        header_timeout = 0.3

    config = uvicorn_config(app, "127.0.0.1", 8000)
    assert (config.timeout_keep_alive, config.limit_concurrency, config.h11_max_incomplete_event_size) == (5, 64, 16384)
    with BackgroundServer(app, http=Quick) as server:
        with socket.create_connection((server.host, server.port), timeout=20) as slow:
            slow.sendall(b"GET /api/index HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            assert slow.recv(1024) == b""  # closed by the server, not answered
        with socket.create_connection((server.host, server.port), timeout=20) as kept_alive:
            kept_alive.sendall(b"GET /api/index HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = kept_alive.recv(65536)
            assert first.startswith(b"HTTP/1.1 200 OK")
            kept_alive.sendall(b"GET /api/index HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the second request stalls
            while kept_alive.recv(65536):
                pass  # the rest of the first answer, if any, then the close
        answer = httpx.get(server.url + "/api/index", timeout=20)
        assert answer.status_code == 200 and answer.json()["count"] == 6


def test_the_access_log_keeps_only_the_start_of_a_long_request_target():
    import logging

    target = "/api/search?q=" + "x" * 5000
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5000", "GET", target, "1.1", 400), None)
    assert _ShortAccessLog().filter(record)
    assert record.getMessage() == f'127.0.0.1:5000 - "GET {target[:300]}...[5014 characters] HTTP/1.1" 400'
