"""The search page's JSON API and files, in-process (TestClient) and over HTTP, with the fake colour encoder."""
import io
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

import kclip
from kclip.serve import thumbnails as thumbnail_module
from fake_encoder import COLOURS, FakeEncoder, colour_embedding, solid_image
from kclip.serve import BackgroundServer, create_app
from kclip.serve.app import STATIC_DIR
from kclip.serve.server import check_host
from kclip.serve.state import ModelRunner, image_id
from serve_fixtures import (PHOTO_COLOURS, SECRET, ExclusiveEncoder, build_colour_index, local_client, noise_png,
                            png_bytes)


@pytest.fixture
def index_dir(tmp_path):
    return build_colour_index(tmp_path)


@pytest.fixture
def client(index_dir):
    return local_client(create_app(FakeEncoder(), index_dir), raise_server_exceptions=False)


def names(answer):
    return [result["name"] for result in answer["results"]]


def test_text_search_ranks_the_named_colour_first(client):
    answer = client.get("/api/search", params={"q": "a red car", "k": 3}).json()
    assert names(answer)[0] == "red.png"
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert [result["rank"] for result in answer["results"]] == [1, 2, 3]
    scores = [result["score"] for result in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert answer["query"] == {"q": "a red car"} and answer["index"]["count"] == len(PHOTO_COLOURS)
    assert answer["results"][1]["path"].count("/") <= 1  # relative paths only, never the folder on disk


def test_pages_continue_where_the_previous_page_ended(client):
    whole = client.get("/api/search", params={"q": "green", "k": 6}).json()
    pages = [client.get("/api/search", params={"q": "green", "k": 2, "offset": offset}).json()
             for offset in (0, 2, 4)]
    assert sum((names(page) for page in pages), []) == names(whole)
    assert [result["rank"] for result in pages[1]["results"]] == [3, 4]
    assert [page["has_more"] for page in pages] == [True, True, False]


def test_more_like_this_searches_by_the_indexed_image(client):
    blue = next(r for r in client.get("/api/search", params={"q": "blue"}).json()["results"] if r["name"] == "blue.png")
    answer = client.get("/api/search", params={"like": blue["id"], "k": 2}).json()
    assert names(answer)[0] == "blue.png" and answer["results"][0]["score"] == pytest.approx(1.0, abs=2e-3)
    assert answer["query"] == {"like": blue["id"], "name": "blue.png"}
    missing = client.get("/api/search", params={"like": "0123456789abcdef"})
    assert missing.status_code == 404 and "not in the index" in missing.json()["error"]


@pytest.mark.parametrize("params, message", [
    ({"q": ""}, "the query is empty"),
    ({"q": "   "}, "the query is empty"),
    ({}, "the query is empty"),
    ({"q": "red", "k": "0"}, "k must be from 1 to 100"),
    ({"q": "red", "k": "five"}, "k must be a whole number"),
    ({"q": "red", "k": "101"}, "k must be from 1 to 100"),
    ({"q": "red", "offset": "-1"}, "offset must be from 0"),
    ({"q": "red", "k": "10", "offset": "995"}, "offset must be from 0 to 990"),
])
def test_bad_queries_get_a_clear_message(client, params, message):
    response = client.get("/api/search", params=params)
    assert response.status_code == 400
    assert message in response.json()["error"] and "Traceback" not in response.text


def test_only_indexed_files_are_served(client, index_dir):
    answer = client.get("/api/search", params={"q": "red", "k": 1}).json()["results"][0]
    image = client.get(answer["image"])
    assert image.status_code == 200 and image.content == (index_dir.parent / "photos" / "red.png").read_bytes()
    attempts = [
        "/image/..%2F..%2Fsecret.txt", "/image/../secret.txt", "/thumb/..%2Fsecret.txt",
        "/image/%2e%2e%2f%2e%2e%2fsecret.txt", "/image/secret.txt", "/image/" + image_id("secret.txt"),
        "/thumb/" + image_id("../secret.txt"), "/static/..%2F..%2F..%2Fsecret.txt", "/static/../app.py",
        "/image/..%5C..%5Csecret.txt", "/image/%2Fetc%2Fpasswd",
    ]
    for url in attempts:
        response = client.get(url)
        assert response.status_code == 404 and response.json()["error"], url
        assert SECRET not in response.text and "root:" not in response.text, url


def test_picture_upload_searches_by_example(client):
    multipart = client.post("/api/search/image", params={"k": 2}, files={"image": ("q.png", png_bytes("yellow"), "image/png")})
    assert multipart.status_code == 200 and names(multipart.json())[0] == "yellow.png"
    assert multipart.json()["query"] == {"image": "q.png"}
    raw = client.post("/api/search/image", content=png_bytes("magenta"), headers={"content-type": "image/png"})
    assert raw.status_code == 200 and names(raw.json())[0] == "magenta.png"


@pytest.mark.parametrize("data, message", [
    (b"", "the upload is empty"),
    (b"<html>not a picture</html>", "it is not an image"),
    (png_bytes("red")[:60], "could not read q.png as a picture"),  # truncated
])
def test_bad_upload_gets_a_clear_message(client, data, message):
    response = client.post("/api/search/image", files={"image": ("q.png", data, "image/png")})
    assert response.status_code == 400 and message in response.json()["error"]


def test_oversized_upload_is_refused_declared_or_streamed(index_dir):
    client = local_client(create_app(FakeEncoder(), index_dir, max_upload_bytes=100_000))
    big = noise_png(400)  # about 480 kB
    assert len(big) > 200_000
    declared = client.post("/api/search/image", files={"image": ("big.png", big, "image/png")})
    assert declared.status_code == 413 and "larger than the limit" in declared.json()["error"]
    streamed = client.post("/api/search/image", content=(big[i:i + 8192] for i in range(0, len(big), 8192)),
                           headers={"content-type": "image/png"})
    assert streamed.status_code == 413
    small = client.post("/api/search/image", files={"image": ("ok.png", noise_png(100), "image/png")})
    assert small.status_code == 200


def test_a_small_file_holding_a_huge_picture_is_refused_before_decoding(index_dir, monkeypatch):
    from kclip.serve import uploads as upload_module

    client = local_client(create_app(FakeEncoder(), index_dir, max_upload_pixels=1_000_000))
    monkeypatch.setattr(upload_module, "load_image", lambda *args, **kwargs: pytest.fail("decoded a refused picture"))
    huge = png_bytes("red", size=(1000, 1001))
    assert len(huge) < 20_000
    response = client.post("/api/search/image", files={"image": ("huge.png", huge, "image/png")})
    assert response.status_code == 413
    assert response.json()["error"].startswith("the picture is 1001x1000 pixels, more than the 1 megapixels")


def test_thumbnails_are_made_once_and_kept_beside_the_index(client, index_dir, monkeypatch):
    url = client.get("/api/search", params={"q": "cyan", "k": 1}).json()["results"][0]["thumbnail"]
    first = client.get(url)
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    thumbnail = Image.open(io.BytesIO(first.content))
    assert max(thumbnail.size) <= 256 and thumbnail.getpixel((5, 5))[1] > 200  # cyan: green and blue high
    cached = list((index_dir / "thumbnails").glob("*.jpg"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("a cached thumbnail was decoded again")

    monkeypatch.setattr(thumbnail_module, "load_image", no_decoding)
    assert client.get(url).content == first.content
    assert client.app.state.thumbnails.made == 1


def test_a_rebuilt_index_is_served_without_restarting(client, index_dir, tmp_path):
    photos = tmp_path / "photos"
    assert names(client.get("/api/search", params={"q": "white"}).json())[0] != "white.png"
    Image.fromarray(solid_image("white")).save(photos / "white.png")
    kclip.build_index(FakeEncoder(), photos, index_dir, progress=False)
    answer = client.get("/api/search", params={"q": "white"}).json()
    assert names(answer)[0] == "white.png" and answer["index"]["count"] == len(PHOTO_COLOURS) + 1

    # An index rebuilt by another model can't be searched with this one: keep the old, say why.
    kclip.build_index(FakeEncoder(name="another-model"), photos, index_dir, rebuild=True, progress=False)
    answer = client.get("/api/search", params={"q": "white"}).json()
    assert names(answer)[0] == "white.png" and "could not be loaded" in answer["warning"]
    assert "another" not in answer["index"].get("fingerprint", "")
    kclip.build_index(FakeEncoder(), photos, index_dir, rebuild=True, progress=False)
    assert client.get("/api/search", params={"q": "white"}).json()["warning"] is None


def test_stale_thumbnails_are_pruned_after_a_photo_changes(client, index_dir, tmp_path):
    url = client.get("/api/search", params={"q": "red", "k": 1}).json()["results"][0]["thumbnail"]
    client.get(url)
    red = tmp_path / "photos" / "red.png"
    Image.fromarray(solid_image("black", size=(48, 64))).save(red)
    os.utime(red, ns=(red.stat().st_atime_ns, red.stat().st_mtime_ns + 5_000_000_000))
    kclip.build_index(FakeEncoder(), tmp_path / "photos", index_dir, progress=False)
    new = client.get("/api/search", params={"q": "black", "k": 1}).json()["results"][0]
    assert new["name"] == "red.png" and new["thumbnail"] != url
    assert list((index_dir / "thumbnails").glob("*.jpg")) == []
    assert Image.open(io.BytesIO(client.get(new["thumbnail"]).content)).getpixel((5, 5))[0] < 50


def test_concurrent_queries_over_http_get_their_own_answers(tmp_path):
    encoder = ExclusiveEncoder()
    index_dir = build_colour_index(tmp_path, encoder)
    app = create_app(encoder, index_dir)
    queries = [PHOTO_COLOURS[i % len(PHOTO_COLOURS)] for i in range(48)]
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        def ask(colour):
            response = http.get("/api/search", params={"q": colour, "k": 1})
            return response.status_code, response.json()["results"][0]["name"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, queries))
        upload = http.post("/api/search/image", files={"image": ("q.png", png_bytes("blue"), "image/png")})
    assert answers == [(200, f"{colour}.png") for colour in queries]
    assert upload.json()["results"][0]["name"] == "blue.png"
    assert encoder.overlaps == 0 and 1 <= encoder.text_calls <= len(queries)


def test_texts_waiting_for_the_model_are_embedded_together_each_getting_its_own_row():
    entered, release = threading.Event(), threading.Event()

    class Gated(FakeEncoder):
        batches = []

        def encode_text(self, texts, batch_size=32):
            self.batches.append(list(texts))
            if len(self.batches) == 1:
                entered.set()
                release.wait(10)
            return super().encode_text(texts, batch_size)

    encoder = Gated()
    runner = ModelRunner(encoder)
    waiting = ["green", "blue", "yellow", "cyan"]
    with ThreadPoolExecutor(len(waiting) + 1) as pool:
        first = pool.submit(runner.encode_text, "red")
        assert entered.wait(10)
        others = [pool.submit(runner.encode_text, colour) for colour in waiting]
        deadline = time.monotonic() + 10
        while len(runner._pending) < len(waiting) and time.monotonic() < deadline:
            time.sleep(0.005)
        release.set()
        vectors = [first.result()] + [future.result() for future in others]
    assert encoder.batches[0] == ["red"] and sorted(encoder.batches[1]) == sorted(waiting)
    assert len(encoder.batches) == 2
    for colour, vector in zip(["red", *waiting], vectors):
        assert vector.shape == (1, 4) and np.allclose(vector[0], colour_embedding(COLOURS[colour]))


def test_a_repeated_text_is_answered_from_the_cache_without_the_model():
    class Counting(FakeEncoder):
        texts = []

        def encode_text(self, texts, batch_size=32):
            self.texts.extend(texts)
            return super().encode_text(texts, batch_size)

    encoder = Counting()
    runner = ModelRunner(encoder, cache_size=2)
    first = runner.encode_text("red")
    again = runner.encode_text("red")  # the next page of the same search
    assert encoder.texts == ["red"]
    np.testing.assert_array_equal(again, first)
    again[0, 0] = 99.0  # a caller's change must not reach the cache
    assert runner.encode_text("red")[0, 0] == first[0, 0]
    runner.encode_text("blue")
    runner.encode_text("green")  # holds two: "red" was the least recently used, and goes
    runner.encode_text("red")
    assert encoder.texts == ["red", "blue", "green", "red"]
    assert np.allclose(runner.encode_text("green")[0], colour_embedding(COLOURS["green"]))
    assert encoder.texts == ["red", "blue", "green", "red"]


def test_unexpected_errors_answer_without_a_stack_trace(index_dir):
    class Broken(FakeEncoder):
        def encode_text(self, texts, batch_size=32):
            raise RuntimeError("internal detail that must not leak")

    client = local_client(create_app(Broken(), index_dir), raise_server_exceptions=False)
    response = client.get("/api/search", params={"q": "red"})
    assert response.status_code == 500
    assert "log has the details" in response.json()["error"] and "internal detail" not in response.text


def test_an_index_from_another_model_is_refused_at_start(index_dir):
    with pytest.raises(ValueError, match="built by model"):
        create_app(FakeEncoder(name="another-model"), index_dir)


def test_the_page_works_offline():
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, path.name


def test_other_hosts_than_loopback_are_warned_about():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            check_host(host)
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org"):
        with pytest.warns(UserWarning, match="other machines can reach"):
            check_host(host)


def test_real_tiny_model_answers_as_kclip_search_does(tmp_path):
    from helpers import tiny_model

    model = tiny_model()
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for number in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos / f"p{number}.png")
    index = kclip.build_index(model, photos, tmp_path / "index", progress=False)
    client = local_client(create_app(model, tmp_path / "index"))
    answer = client.get("/api/search", params={"q": "a red circle", "k": 3}).json()
    expected = kclip.search("a red circle", model=model, index=index, top_k=3)
    assert names(answer) == [result.path.name for result in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx([r.score for r in expected], abs=1e-3)
    upload = client.post("/api/search/image", files={"image": ("p.png", (photos / "p3.png").read_bytes(), "image/png")})
    assert names(upload.json())[0] == "p3.png"
