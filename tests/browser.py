"""A headless Chromium page for the playground's browser tests (Debian's Chromium, driven by Playwright)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"  # screenshots


@contextmanager
def chromium_page(**page_options) -> Iterator[tuple[object, list[str]]]:
    """Yields (page, errors): a new page and the JavaScript errors it raises. Skips the test when
    Chromium or Playwright is not installed."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        # Autoplay without a fresh user gesture: the tests check what plays, not the autoplay policy, and
        # on a loaded machine the queue can outlast Chromium's ~5 s window of transient user activation
        # (the page then shows its controls instead of playing, which a user would just press).
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"])
        try:
            page = browser.new_page(**page_options)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(15_000)
            yield page, errors
        finally:
            browser.close()
