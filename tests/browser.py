"""Open a static page in headless Chromium (Debian's, driven by Playwright) and collect its console errors."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_page(page_file: Path) -> Iterator[tuple[object, list[str]]]:
    """``(page, errors)`` for ``page_file`` loaded from ``file://``; ``errors`` collects console errors and page
    exceptions. Skips when chromium is missing (``bash scripts/bootstrap.sh --test`` installs it)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (bash scripts/bootstrap.sh --test installs it)")
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=_ARGS)
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(Path(page_file).as_uri())
            page.wait_for_load_state("load")
            yield page, errors
        finally:
            browser.close()
