"""The search page in headless Chromium: type, page, "more like this", pictures by chooser and by drop, refusals.

Skipped, with the reason, where Playwright or Chromium is missing; CI installs both (see tests/browser.py)
and sets KCLIP_REQUIRE_BROWSER=1, which turns that skip into a failure.
"""
import os
import re

import pytest

from browser import launch, missing_browser_reason
from fake_encoder import FakeEncoder
from kclip.serve import BackgroundServer, create_app
from serve_fixtures import PHOTO_COLOURS, SECRET, build_colour_index, noise_png, png_bytes

MISSING = missing_browser_reason()
if MISSING and os.environ.get("KCLIP_REQUIRE_BROWSER") == "1":
    # CI sets this, so that a machine without Chromium fails instead of quietly skipping.
    raise RuntimeError(f"KCLIP_REQUIRE_BROWSER=1, but the browser tests cannot run: {MISSING}")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"browser tests skipped: {MISSING}")

UPLOAD_LIMIT = 50_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    index_dir = build_colour_index(tmp_path_factory.mktemp("page"))
    with BackgroundServer(create_app(FakeEncoder(), index_dir, max_upload_bytes=UPLOAD_LIMIT)) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def card_names(page):
    return page.locator(".card .name").all_inner_texts()


def search(page, text):
    page.fill("#q", text)
    page.press("#q", "Enter")
    page.wait_for_function("q => document.querySelector('#status').textContent.includes(q)", arg=text)


def test_typing_a_query_shows_thumbnails_names_and_scores(page, server):
    search(page, "red")
    assert card_names(page)[0] == "red.png" and len(card_names(page)) == len(PHOTO_COLOURS)
    first = page.locator(".card").first
    page.wait_for_function("() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    assert re.fullmatch(r"red\.png: score 1\.00\d\d \(rank 1\)|red\.png: score 0\.99\d\d \(rank 1\)",
                        first.get_attribute("title"))
    score = first.locator(".score")
    assert score.evaluate("e => getComputedStyle(e).opacity") == "0"
    first.hover()
    page.wait_for_function("e => getComputedStyle(e).opacity === '1'", arg=score.element_handle())
    assert score.inner_text() in ("1.000", "0.999")
    assert "q=red" in page.url and "k=24" in page.url
    # The URL is the search: opening it afresh shows the same results without typing.
    page.goto(page.url)
    page.wait_for_selector(".card")
    assert card_names(page)[0] == "red.png" and page.input_value("#q") == "red"


def test_more_like_this_and_paging(page, server):
    page.goto(server.url + "/?q=green&k=2")
    page.wait_for_selector(".card")
    assert card_names(page)[0] == "green.png" and page.is_disabled("#prev")
    page.click("#next")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Results 3–4')")
    assert "page=2" in page.url and page.inner_text("#page-label") == "Page 2"
    second_page = card_names(page)
    page.go_back()
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Results 1–2')")
    page.go_forward()
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Results 3–4')")
    assert card_names(page) == second_page

    target = page.locator(".card").nth(1)
    name = target.locator(".name").inner_text()
    target.locator("button.like").click()
    page.wait_for_function("n => document.querySelector('#status').textContent.includes('like ' + n)", arg=name)
    assert card_names(page)[0] == name and "like=" in page.url and "q=" not in page.url


def test_a_bookmarked_url_with_its_own_page_size(page, server):
    page.goto(server.url + "/?q=cyan&k=5")
    page.wait_for_selector(".card")
    assert len(card_names(page)) == 5 and card_names(page)[0] == "cyan.png"
    assert page.input_value("#k") == "5" and page.input_value("#q") == "cyan"
    search(page, "magenta")  # the next search keeps that page size
    assert len(card_names(page)) == 5 and "k=5" in page.url


def test_a_picture_from_the_file_chooser_or_dropped_searches_by_example(page, tmp_path):
    picture = tmp_path / "holiday.png"
    picture.write_bytes(png_bytes("yellow"))
    page.set_input_files("#file", str(picture))
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('holiday.png')")
    assert card_names(page)[0] == "yellow.png" and page.is_visible("#query-picture")

    # Drag-and-drop: a picture made in the page is dropped on it, as a file from the desktop would be.
    page.evaluate("""async () => {
        const canvas = Object.assign(document.createElement('canvas'), {width: 30, height: 30});
        const context = canvas.getContext('2d');
        context.fillStyle = 'rgb(255, 0, 255)';
        context.fillRect(0, 0, 30, 30);
        const blob = await new Promise(resolve => canvas.toBlob(resolve, 'image/png'));
        const transfer = new DataTransfer();
        transfer.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
        document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('dropped.png')")
    assert card_names(page)[0] == "magenta.png"


def test_refusals_are_shown_as_messages(page, server, tmp_path):
    page.fill("#q", "   ")
    page.press("#q", "Enter")
    page.wait_for_selector("#message:not([hidden])")
    assert "the query is empty" in page.inner_text("#message") and card_names(page) == []

    text_file = tmp_path / "notes.png"
    text_file.write_text("not a picture")
    page.set_input_files("#file", str(text_file))
    page.wait_for_function("() => document.querySelector('#message').textContent.includes('notes.png')")
    assert "not an image" in page.inner_text("#message")

    big = tmp_path / "big.png"
    big.write_bytes(noise_png(200))
    assert big.stat().st_size > UPLOAD_LIMIT + 64 * 1024
    page.set_input_files("#file", str(big))
    page.wait_for_function("() => document.querySelector('#message').textContent.includes('larger than the limit')")
    assert card_names(page) == [] and "Traceback" not in page.content()

    for path in ("/image/..%2F..%2Fsecret.txt", "/thumb/..%2Fsecret.txt", "/static/..%2F..%2Fsecret.txt"):
        response = page.request.get(server.url + path)
        assert response.status == 404 and SECRET not in response.text(), path
    page.goto(server.url + "/?like=0000000000000000")
    page.wait_for_selector("#message:not([hidden])")
    assert "not in the index" in page.inner_text("#message")


def test_the_readme_screenshot_command_works(tmp_path, browser):
    import importlib.util
    from pathlib import Path

    from PIL import Image

    script = Path(__file__).resolve().parents[1] / "scripts" / "page_screenshot.py"
    spec = importlib.util.spec_from_file_location("kclip_script_page_screenshot", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    index_dir = build_colour_index(tmp_path)
    out = tmp_path / "shot.png"
    args = module.parse_args(["--model", "fake", "--index", str(index_dir), "--query", "blue", "--out", str(out),
                              "--width", "800", "--height", "600"])
    module.screenshot(FakeEncoder(), args.index, args.query, args.out, args.k, args.width, args.height, browser=browser)
    shot = Image.open(out).convert("RGB")
    assert shot.size == (800, 600)
    # The first thumbnail (blue.png) is drawn: pure-blue pixels are on the page.
    pixels = list(shot.getdata())
    assert sum(1 for r, g, b in pixels if b > 200 and r < 60 and g < 60) > 5000
