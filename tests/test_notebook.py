"""Results show themselves in notebooks: _repr_png_ is the picture, _repr_html_ names each objective and
score; show() lays out several; an atlas summary shows its layers' first filters."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

import filterviz
from filterviz import render, render_filters, show
from filterviz.atlas.build import build_atlas
from filterviz.objectives import direction


def decoded(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def embedded_pictures(html: str) -> list[np.ndarray]:
    return [decoded(base64.b64decode(data)) for data in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_a_render_shows_its_picture_and_its_scores(tiny):
    result = render(tiny, ["channel:features.2:1", "channel:features.2:3"], "classic", seed=0, steps=3, size=20)
    grid = decoded(result._repr_png_())
    assert np.array_equal(grid, result.picture())
    assert np.array_equal(grid[:, :20], result.images[0]) and np.array_equal(grid[:, 25:], result.images[1])
    page = result._repr_html_()
    pictures = embedded_pictures(page)
    assert len(pictures) == 2 and all(np.array_equal(a, b) for a, b in zip(pictures, result.images))
    for name, start, end in zip(("filter 1 of features.2", "filter 3 of features.2"), result.start_score, result.score):
        assert f"{name}: {start:.3g} → {end:.3g}" in page


def test_one_image_is_shown_alone_and_names_are_escaped(tiny):
    result = render(tiny, [direction("features.2", [1, 0, 0, 0, 0, 0])], "classic", seed=0, steps=2, size=16)
    assert np.array_equal(decoded(result._repr_png_()), result.images[0])
    result.model = "<script>&x"
    assert "<script>" not in result._repr_html_() and "&lt;script&gt;&amp;x" in result._repr_html_()


def test_a_grid_render_is_a_render(tiny):
    grid = render_filters(tiny, "features.2", [0, 1, 2], seed=0, steps=2, size=16)
    assert np.array_equal(decoded(grid._repr_png_()), grid.picture())
    assert grid.picture().shape == (16, 3 * 16 + 2 * 5, 3)


def test_show_lays_out_renders_arrays_files_and_pillow_images(tiny, tmp_path):
    result = render(tiny, ["channel:features.2:0"], "classic", seed=0, steps=2, size=16)
    array = np.full((8, 8, 3), 200, np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    shown = show(result, array, tmp_path / "a.png", Image.fromarray(array), titles=["render", "array"])
    page = shown._repr_html_()
    assert page.count("<figure") == 5 and "repeat(4,auto)" in page  # the render's own figure, and four
    pictures = embedded_pictures(page)
    assert np.array_equal(pictures[0], result.images[0]) and all(np.array_equal(p, array) for p in pictures[1:])
    assert "<figcaption>render</figcaption>" in page and "<figcaption>array</figcaption>" in page
    with pytest.raises(TypeError, match="uint8 arrays"):
        show(np.zeros((4, 4)))._repr_html_()
    with pytest.raises(filterviz.FilterVizError, match="missing.png"):
        show(tmp_path / "missing.png")._repr_html_()


def test_an_atlas_summary_shows_each_layers_first_filters(tiny, tmp_path):
    summary = build_atlas(tiny, tmp_path / "atlas", size=16, steps=1, layers=["features.1", "features.3"],
                          precision="fp32")
    page = summary._repr_html_()
    assert str(tmp_path / "atlas" / "index.html") in page
    pictures = embedded_pictures(page)
    expected = [np.array(Image.open(tmp_path / "atlas" / "img" / layer / f"{k}.png"))
                for layer, count in (("features.1", 4), ("features.3", 6)) for k in range(count)]
    assert len(pictures) == len(expected) and all(np.array_equal(a, b) for a, b in zip(pictures, expected))
