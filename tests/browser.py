"""Headless Chromium for the search-page tests and screenshot, through Playwright.

Playwright cannot download its own browser here, so it drives the system's Chromium
(`apt-get install chromium`): /usr/bin/chromium, or the file named by $KCLIP_CHROMIUM.
"""
import os
import shutil


def chromium_path():
    candidates = [os.environ.get("KCLIP_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser")]
    return next((path for path in candidates if path and os.path.isfile(path)), None)


def missing_browser_reason():
    """Why browser tests can't run here, or None when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install playwright; it is in kclip's [test] extra)"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set KCLIP_CHROMIUM to its executable)"
    return None


def launch(playwright):
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True)
