"""The atlas in a real browser: headless Chromium opens the index, a layer page and a filter page from
disk (file://), with no console errors, every image loaded, and a screenshot that is not blank."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filterviz.atlas import build_atlas

from conftest import tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags for a closed network: no background connections, no sync, no updates; a fresh profile each run.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1100, "height": 800})
        yield context
        context.close()


def visit(context, page_file: Path) -> bytes:
    """Open a page from disk, bring every image into view, and return a screenshot; fail on any console
    error, page error, failed request or image that did not load."""
    problems: list[str] = []
    page = context.new_page()
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.goto(page_file.as_uri(), wait_until="load")
    for image in page.query_selector_all("img"):
        image.scroll_into_view_if_needed()
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=10_000)
    broken = page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).map(i => i.src)")
    page.evaluate("window.scrollTo(0, 0)")
    shot = page.screenshot(full_page=True)
    count = page.evaluate("document.images.length")
    page.close()
    assert not problems, problems
    assert not broken, broken
    assert count > 0
    return shot


def test_atlas_pages_open_in_chromium(browser, tmp_path, photos):
    build_atlas(tiny_model(), tmp_path, size=24, steps=3, images=photos, top_k=3)
    for page in (tmp_path / "index.html", tmp_path / "layers" / "features.3.html",
                 tmp_path / "filters" / "features.6" / "5.html"):
        shot = np.asarray(Image.open(io.BytesIO(visit(browser, page))).convert("RGB"))
        colors = len(np.unique(shot.reshape(-1, 3), axis=0))
        assert shot.std() > 10 and colors > 50, f"{page.name}: the screenshot looks blank"


def test_the_browser_check_catches_a_missing_image(browser, tmp_path):
    build_atlas(tiny_model(), tmp_path, size=16, steps=1, layers=["features.1"])
    (tmp_path / "img" / "features.1" / "2.png").unlink()
    with pytest.raises(AssertionError, match="2.png"):
        visit(browser, tmp_path / "layers" / "features.1.html")
