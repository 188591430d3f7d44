"""Take a screenshot of the search page, as in the README (docs/search_page.png).

    python scripts/demo.py --trainer.max_epochs 4 --output_dir runs/demo-page     # model + index of held-out images
    python scripts/page_screenshot.py --run runs/demo-page --out docs/search_page.png

Serves the run's index on a free loopback port, types the query in headless Chromium (Playwright
driving the system's browser: /usr/bin/chromium or $KCLIP_CHROMIUM), hovers the first result so its
score shows, and saves the page.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import kclip  # noqa: E402
from kclip.serve import BackgroundServer, create_app  # noqa: E402

DEFAULT_QUERY = "a red circle to the left of a blue square"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Screenshot the kclip search page.", allow_abbrev=False)
    parser.add_argument("--run", help="a demo output folder holding model.keras and index/")
    parser.add_argument("--model", help="the .keras model (default: RUN/model.keras)")
    parser.add_argument("--index", help="the index folder (default: RUN/index)")
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument("--k", type=int, default=12, choices=[12, 24, 48, 96])
    parser.add_argument("--out", default="docs/search_page.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=820)
    args = parser.parse_args(argv)
    if not args.run and not (args.model and args.index):
        parser.error("give --run, or both --model and --index.")
    args.model = args.model or os.path.join(args.run, "model.keras")
    args.index = args.index or os.path.join(args.run, "index")
    return args


def chromium_path():
    candidates = [os.environ.get("KCLIP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")]
    path = next((path for path in candidates if path and os.path.isfile(path)), None)
    if path is None:
        raise FileNotFoundError("no Chromium found: apt-get install chromium, or set KCLIP_CHROMIUM to its executable.")
    return path


def screenshot(model, index, query, out, k=12, width=1200, height=820, browser=None) -> Path:
    """Save the page showing `query`'s results to `out`; `browser`: a Playwright browser to reuse."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with BackgroundServer(create_app(model, index)) as server:
        if browser is not None:
            _shoot(browser, server.url, query, out, k, width, height)
            return out
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
            try:
                _shoot(browser, server.url, query, out, k, width, height)
            finally:
                browser.close()
    return out


def _shoot(browser, url, query, out, k, width, height):
    page = browser.new_page(viewport={"width": width, "height": height})
    try:
        page.goto(f"{url}/?k={k}")
        page.fill("#q", query)
        page.press("#q", "Enter")
        page.wait_for_selector(".card")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
        page.locator(".card").first.hover()
        page.wait_for_function("() => getComputedStyle(document.querySelector('.card .score')).opacity === '1'")
        page.screenshot(path=str(out))
    finally:
        page.close()


def main(argv=None, load_model=kclip.load_model):
    args = parse_args(argv)
    path = screenshot(load_model(args.model), args.index, args.query, args.out, args.k, args.width, args.height)
    print(f"screenshot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
