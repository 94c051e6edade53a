"""The book's names and figures: generate_pattern, comparable layers, and the demo."""

from __future__ import annotations

import re
import socket

import numpy as np
from PIL import Image

import filterviz
from filterviz import book, deprocess_image, render_filters
from filterviz.cli import main
from filterviz.params import classic_start

from conftest import tiny_model
from test_render import book_loop_reference


def test_generate_pattern_as_in_the_book(embedded):
    image = filterviz.generate_pattern(embedded, "blocks.3.depthwise.act", 0, seed=0)
    assert image.shape == (150, 150, 3) and image.dtype == np.uint8
    # The defaults are the book's: the same bytes as size 150, 40 steps of 1 given explicitly.
    again = filterviz.generate_pattern(embedded, "blocks.3.depthwise.act", 0, size=150, steps=40, step=1.0, seed=0)
    assert np.array_equal(image, again)


def test_generate_pattern_defaults_run_the_books_loop(monkeypatch):
    # With its default steps and step, generate_pattern is the book's loop written out plainly
    # (tests/test_render.py): 40 steps of 1 from the seeded noise, deprocessed. (Its default size, 150,
    # is checked above; a smaller one keeps this fast.)
    renders = []
    real = book.render_filters
    monkeypatch.setattr(book, "render_filters", lambda *args, **kwargs: renders.append(real(*args, **kwargs))
                        or renders[-1])
    model = tiny_model()
    image = filterviz.generate_pattern(model, "features.3", 3, size=40, seed=7)
    start = classic_start(40, [3], seed=7)[0]
    expected = book_loop_reference(model.module, 3, 3, start, steps=40)
    assert np.abs(renders[0].pixels[0] - expected).max() < 1e-9
    assert np.abs(renders[0].pixels[0] - book_loop_reference(model.module, 3, 3, start, steps=39)).max() > 1e-3
    assert np.array_equal(image, deprocess_image(renders[0].pixels[0]))


def test_render_raises_activation_on_embedded_model(embedded):
    # ReLU6 units, so activations lie in 0..6; these filters start near zero (0..0.4 for this seed).
    result = render_filters(embedded, "blocks.3.depthwise.act", [2, 3, 4, 5, 6, 7], size=96, seed=0)
    assert not result.dead.any()
    assert (result.start_activation < 0.5).all()
    assert (result.activation > result.start_activation + 1.3).all(), (result.start_activation, result.activation)


def test_comparable_layers_of_embedded_model(embedded):
    # The first activation at output strides 2, 4, 8 and 16, as block1_conv1 ... block4_conv1 are for VGG16.
    assert filterviz.book_layers(embedded) == [
        "stem.act", "blocks.1.depthwise.act", "blocks.3.depthwise.act", "blocks.5.depthwise.act"]


def test_demo_command_offline_falls_back_and_writes_the_book_figures(tmp_path, monkeypatch, capsys, embedded):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    for variable in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)

    def offline(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    code = main(["demo", "-o", str(tmp_path / "out"), "--seed", "0", "--device", "cpu", "--beside", "none"])
    err = capsys.readouterr().err.strip().splitlines()

    assert code == 0
    assert "IMAGENET1K_FEATURES weights are not in the torch cache" in err[0]
    assert err[0].endswith("using the embedded efficientnet-lite0 instead")
    dead = [int(m.group(1)) for line in err if (m := re.search(r"warning: filter (\d+) of blocks.3.depthwise.act of efficientnet-lite0 is (?:dead|stuck)", line))]
    assert 61 in dead  # a filter of this layer that never responds (see README)
    assert any("filter 61 of blocks.3.depthwise.act of efficientnet-lite0 is dead" in line for line in err)
    assert err[-1].startswith("filterviz: wrote ") and err[-1].endswith("with efficientnet-lite0")
    assert len(err) == 2 + len(dead)  # one line for the fallback, one per dead or stuck filter, one at the end
    names = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert names == ["grid_blocks.3.depthwise.act.png", "vggconv1.png", "vggconv2.png", "vggconv3.png", "vggconv4.png"]
    for name in names:
        image = np.array(Image.open(tmp_path / "out" / name))
        if name.startswith("vggconv"):
            assert image.shape == (150, 150, 3) and image.std() > 10  # the book's size, not flat
            continue
        assert image.shape == (8 * 64 + 7 * 5,) * 2 + (3,)
        tiles = [image[r:r + 64, c:c + 64] for r in range(0, 547, 69) for c in range(0, 547, 69)]
        assert all(tile.std() > 10 for index, tile in enumerate(tiles) if index not in dead)
        for index in dead:  # crossed out in red, corner to corner
            assert (tiles[index][0, 0] == [255, 0, 0]).all() and (tiles[index][63, 0] == [255, 0, 0]).all()
        # A tile is its filter rendered alone at 64 px with the same seed (up to batch rounding).
        alone = render_filters(embedded, "blocks.3.depthwise.act", [2], size=64, seed=0, precision="fp32").images[0]
        assert np.abs(tiles[2].astype(int) - alone.astype(int)).max() <= 1
    # vggconv1.png is filter 0 of the first layer, as generate_pattern makes it with the same seed; the
    # four figures are four different pictures.
    first = filterviz.generate_pattern(embedded, "stem.act", 0, seed=0)
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "vggconv1.png")), first)
    figures = [(tmp_path / "out" / f"vggconv{n}.png").read_bytes() for n in range(1, 5)]
    assert len(set(figures)) == 4


def test_demo_shows_the_same_filters_with_another_recipe_beside_the_books(tmp_path, embedded, monkeypatch):
    monkeypatch.setattr(book, "BEST_GRID_TILE", 32)  # small tiles, few steps: the same code, quickly
    quick = filterviz.get_recipe("lucid", steps=2, size=48, escape_steps=0)
    figures = filterviz.run_demo(tmp_path / "out", embedded, seed=0, best=quick)
    books, beside = figures[:5], figures[5:]
    assert [f.path.relative_to(tmp_path / "out").as_posix() for f in beside] == [
        f"lucid/vggconv{n}.png" for n in range(1, 5)] + ["lucid/grid_blocks.3.depthwise.act.png"]
    for ours, theirs in zip(books, beside):  # the same layers and filters, another recipe
        assert [o.name for o in ours.render.objectives] == [o.name for o in theirs.render.objectives]
        assert theirs.render.recipe.parameterization == "fourier" and ours.render.recipe.name == "classic"
    side = np.array(Image.open(tmp_path / "out" / "side_by_side.png"))
    assert side.shape == (2 * 150 + 5, 4 * 150 + 3 * 5, 3)  # two rows of four, scaled to the largest (150 px)
    first = np.array(Image.open(tmp_path / "out" / "vggconv1.png"))
    assert np.array_equal(side[:150, :150], first)
    again = np.array(Image.open(beside[0].path).resize((150, 150), Image.NEAREST))
    assert np.array_equal(side[155:, :150], again)
    grid = np.array(Image.open(beside[-1].path))
    assert grid.shape == (8 * 32 + 7 * 5,) * 2 + (3,)
