"""filterviz serve in a real browser (headless Chromium, as tests/test_atlas_browser.py drives it): open
the page, complete a layer name, start a render of a tiny (slowed) model, see the picture change at least
twice while it forms, see it finish, download it; no console error, page error or failed request."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import torch

import filterviz
from filterviz.serve import create_app

from conftest import TINY_SPEC, TinyNet
from test_atlas_browser import browser  # noqa: F401 - the fixture: Chromium, or a skip where it is missing
from test_serve_live import live_server

pytest.importorskip("uvicorn")


class Slow(TinyNet):
    """TinyNet, 20 ms slower per forward pass: a render long enough to be watched."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)
        return super().forward(x)


def test_render_watch_and_download_in_a_browser(browser, tmp_path):  # noqa: F811
    torch.manual_seed(0)
    model = filterviz.load_model(Slow().to(torch.float64), spec=TINY_SPEC, name="slow", device="cpu")
    app = create_app([model], cache=tmp_path / "cache", registry=False, device="cpu", precision="fp32")
    problems: list[str] = []
    with live_server(app) as base:
        page = browser.new_page()
        page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: problems.append(str(error)))
        # The page closes a job's event stream itself once the job has ended; Chromium reports that
        # stream as aborted (ERR_ABORTED) when the close comes before the server's end. Any other
        # failure, of any request, is a problem.
        page.on("requestfailed", lambda request: None if (request.url.endswith("/events") and
                                                          "ERR_ABORTED" in (request.failure or ""))
                else problems.append(f"failed: {request.url} ({request.failure})"))
        page.goto(f"{base}/?model=slow&layer=features.3&filter=2&size=32&steps=40", wait_until="load")
        page.wait_for_selector("body[data-ready=true]", timeout=30_000)
        assert page.input_value("#objective") == "channel:features.3:2"  # from the address's parameters
        # Completion of layer names: "channel:features.3" offers it; Enter takes it.
        page.fill("#objective", "")
        page.type("#objective", "channel:features.")
        page.wait_for_selector("#suggestions:not([hidden]) li")
        offered = page.eval_on_selector_all("#suggestions li", "items => items.map(i => i.textContent)")
        assert offered[:3] == ["features.0", "features.1", "features.2"]
        page.type("#objective", "3")
        page.keyboard.press("Enter")
        assert page.input_value("#objective") == "channel:features.3:"
        page.type("#objective", "2")
        # Record every picture the preview shows, once loaded.
        page.evaluate("""() => { window.shown = [];
            document.getElementById('preview').addEventListener('load', e => window.shown.push(e.target.src)); }""")
        page.click("#start")
        page.wait_for_function("document.getElementById('status').textContent.includes('done')", timeout=60_000)
        page.wait_for_function("window.shown.length > 0 && !document.getElementById('download').hidden")
        shown = page.evaluate("window.shown")
        assert len(set(shown)) >= 3, shown  # the first picture, then at least two changes
        points = page.get_attribute("#curve-line", "points")
        assert len(points.split()) >= 10
        with page.expect_download() as download:
            page.click("#download")
        saved = Path(download.value.path()).read_bytes()
        job = page.evaluate("document.getElementById('download').href").split("/api/jobs/")[1].split("/")[0]
        assert saved == httpx.get(f"{base}/api/jobs/{job}/image.png").content
        assert saved[:8] == b"\x89PNG\r\n\x1a\n"
        page.close()
    assert not problems, problems
