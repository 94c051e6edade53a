"""The activation atlas: samples equal to the layer's activations where they were taken, known clusters
in cells of their own, cell averages equal to their samples' mean, pictures that raise their own
direction most, Carter's attribution equal to a finite difference, pages that link, a shared folder
with an atlas, kill -9 and resume to the same bytes, and bad input in one line. One UMAP fit serves
the tests that need its layout (a module-scoped atlas)."""

from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import filterviz
import filterviz.atlas.activation_build as activation_build
import filterviz.atlas.activations as activations
from filterviz import InputSpec
from filterviz.atlas import MANIFEST, build_activation_atlas, build_atlas
from filterviz.atlas.activations import NoAttribution, Samples, class_attribution, grid_cells, positions
from filterviz.atlas.executors import RenderSettings, RenderTask, run_task
from filterviz.image import png_bytes
from filterviz.objectives import direction
from filterviz.cli import main

from conftest import TinyNet, tiny_model

pytest.importorskip("umap")

COLORS = {"red": (220, 40, 30), "green": (40, 200, 50), "blue": (30, 50, 220)}
SPEC = InputSpec(mean=(128.0, 128.0, 128.0), std=(64.0, 64.0, 64.0), default_size=16)


class ColorNet(nn.Module):
    """A 1x1 convolution (3 -> 6) and a ReLU: each position's vector is its pixel's color's alone; then
    a mean over positions and a linear head of 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.act(self.conv(x))).flatten(1))


def color_model() -> filterviz.LoadedModel:
    torch.manual_seed(3)
    module = ColorNet().double()
    with torch.no_grad():
        module.conv.weight.copy_(torch.tensor([[1.0, -0.5, -0.5], [-0.5, 1.0, -0.5], [-0.5, -0.5, 1.0],
                                               [0.6, 0.6, -0.6], [-0.6, 0.6, 0.6], [0.6, -0.6, 0.6]])[:, :, None, None])
        module.conv.bias.fill_(0.2)
    model = filterviz.load_model(module, spec=SPEC, name="colors", device="cpu")
    # The head: class c's weights are the direction of color c's activation, so each cluster supports its color.
    with torch.no_grad():
        for row, rgb in enumerate(COLORS.values()):
            vector = model.activations(torch.tensor(rgb, dtype=torch.float64)[None, :, None, None], "act")[0, :, 0, 0]
            module.head.weight[row] = vector / vector.norm()
        module.head.bias.zero_()
    model.categories = tuple(COLORS)
    return model


def color_images(folder: Path) -> Path:
    """Four 16 px images of each color, with a little noise, so that each color is one cluster."""
    rng = np.random.default_rng(0)
    for name, rgb in COLORS.items():
        for number in range(4):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 6, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}-{number}.png")
    return folder


LAYER = "act"
SETTINGS = dict(grid=8, samples=480, min_samples=3, size=16, steps=40, chunk_size=4, scan_batch_size=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An atlas of the color model, then its activation atlas in the same folder (the one UMAP fit)."""
    folder = color_images(tmp_path_factory.mktemp("colors"))
    out = tmp_path_factory.mktemp("site")
    model = color_model()
    build_atlas(model, out, layers=["conv"], filters=range(2), size=16, steps=3)
    summary = build_activation_atlas(model, out, LAYER, images=folder, **SETTINGS)
    return model, folder, out, summary


def stored(out: Path, layer: str, kind: str) -> bytes:
    with sqlite3.connect(out / MANIFEST) as sql:
        return sql.execute("SELECT data FROM activation_data WHERE layer = ? AND kind = ?", (layer, kind)).fetchone()[0]


def shown_cells(out: Path, slug: str = LAYER) -> list[int]:
    page = (out / "activations" / slug / "index.html").read_text()
    return sorted(int(part.split(".html")[0]) for part in page.split('href="cells/')[1:])


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.targets += [value for name, value in attrs if name in ("href", "src") and value]


def test_samples_are_the_layers_activations_where_they_were_taken(built):
    model, folder, out, summary = built
    samples = Samples.from_bytes(stored(out, LAYER, "samples"))
    files = sorted(folder.glob("*.png"))
    assert len(samples) == summary.samples == 12 * 40  # 480 spread over 12 images
    with torch.no_grad():
        for image, path in enumerate(files):
            pixels = torch.from_numpy(np.asarray(Image.open(path))).permute(2, 0, 1)[None].double()
            maps = model.activations(pixels, LAYER)[0].numpy()
            rows = np.flatnonzero(samples.images == image)
            where = positions(0, image, 16, 16, 40)  # drawn from (seed, image) alone
            assert np.array_equal(samples.ys[rows] * 16 + samples.xs[rows], where)
            np.testing.assert_allclose(samples.vectors[rows], maps[:, samples.ys[rows], samples.xs[rows]].T, rtol=1e-6)


def test_known_clusters_land_in_cells_of_their_own_with_their_mean(built):
    model, folder, out, summary = built
    samples = Samples.from_bytes(stored(out, LAYER, "samples"))
    layout = np.frombuffer(stored(out, LAYER, "layout"), dtype=np.float64).reshape(-1, 2)
    numbers = grid_cells(layout, SETTINGS["grid"])
    colors = np.array([path.name.split("-")[0] for path in sorted(folder.glob("*.png"))])
    shown = shown_cells(out)
    assert summary.cells == len(shown) >= 3
    seen = set()
    for number in shown:
        members = np.flatnonzero(numbers == number)
        assert len(members) >= SETTINGS["min_samples"]
        cluster = set(colors[samples.images[members]])
        assert len(cluster) == 1, (number, cluster)  # a cell never mixes two clusters
        seen |= cluster
    assert seen == set(COLORS)  # and every cluster has cells
    # The cell's page names the class its average supports: its own color (the head points there), by
    # the attribution W v of a linear head after a mean over positions.
    head = model.module.head.weight.detach().numpy()
    for number in shown:
        members = np.flatnonzero(numbers == number)
        mean = samples.vectors[members].astype(np.float64).mean(axis=0)
        color = colors[samples.images[members[0]]]
        page = (out / "activations" / LAYER / "cells" / f"{number}.html").read_text()
        expected = head @ mean
        assert list(COLORS)[int(np.argmax(expected))] == color
        assert f"<h1>{LAYER}, cell {number}: {color}</h1>" in page
        assert f"{color} ({list(COLORS).index(color)}, {expected.max():.3g})" in page
        assert f"<dd>{len(members)} activation vectors" in page


def test_a_pass_interrupted_midway_continues_to_the_same_samples(built, tmp_path, monkeypatch):
    model, folder, out, summary = built
    monkeypatch.setattr(activation_build, "CHECKPOINT_SECONDS", 0.0)
    loads = {"count": 0}
    real_load = activations.load_square

    def dying_load(path, side, *channels):  # the process "dies" on the seventh image
        loads["count"] += 1
        if loads["count"] == 7:
            raise KeyboardInterrupt
        return real_load(path, side, *channels)

    monkeypatch.setattr(activations, "load_square", dying_load)
    with pytest.raises(KeyboardInterrupt):
        build_activation_atlas(model, tmp_path, LAYER, images=folder, **SETTINGS)
    monkeypatch.setattr(activations, "load_square", real_load)
    resumed = build_activation_atlas(model, tmp_path, LAYER, images=folder, **SETTINGS)
    assert resumed.scanned == 12 - 6  # two batches of 3 were kept
    assert stored(tmp_path, LAYER, "samples") == stored(out, LAYER, "samples")
    assert shown_cells(tmp_path) == shown_cells(out)
    for number in shown_cells(out):
        picture = f"activations/{LAYER}/img/{number}.png"
        assert (tmp_path / picture).read_bytes() == (out / picture).read_bytes()


def test_a_cells_picture_raises_its_direction_more_than_the_other_cells_pictures(built):
    model, folder, out, summary = built
    samples = Samples.from_bytes(stored(out, LAYER, "samples"))
    layout = np.frombuffer(stored(out, LAYER, "layout"), dtype=np.float64).reshape(-1, 2)
    numbers = grid_cells(layout, SETTINGS["grid"])
    shown = shown_cells(out)
    units, pictures = [], []
    for number in shown:
        mean = samples.vectors[numbers == number].astype(np.float64).mean(axis=0)
        units.append(mean / np.linalg.norm(mean))
        picture = np.asarray(Image.open(out / "activations" / LAYER / "img" / f"{number}.png"))
        pictures.append(torch.from_numpy(picture).permute(2, 0, 1).double())
    with torch.no_grad():
        maps = model.activations(torch.stack(pictures), LAYER)  # (cells, C, H, W)
    scores = np.einsum("nchw,mc->mn", maps.numpy(), np.array(units)) / (maps.shape[2] * maps.shape[3])
    # scores[i, j]: direction i on picture j. Cells of one cluster share nearly one direction, so each
    # cell's picture is compared with the pictures of the other clusters' cells.
    colors = np.array([path.name.split("-")[0] for path in sorted(folder.glob("*.png"))])
    cluster = [colors[samples.images[numbers == number][0]] for number in shown]
    for i in range(len(shown)):
        others = [j for j in range(len(shown)) if cluster[j] != cluster[i]]
        assert scores[i, i] > scores[i, others].max(), (shown[i], scores[i])


def test_a_task_of_directions_renders_what_render_does_and_travels_to_workers():
    """Every executor runs ``run_task`` (here, in worker processes, on Ray workers), so a task of directions
    there gives what ``render`` gives for the same directions, keys and seed; and it pickles."""
    model = tiny_model()
    vectors = ((1.0, 0.5, 0.0, 0.2), (0.0, 1.0, 1.0, 0.0))
    task = RenderTask("features.1", (7, 30), vectors)
    settings = RenderSettings(filterviz.get_recipe("lucid", size=16, steps=4), seed=5, precision="fp32")
    result = run_task(model, task, settings)
    expected = filterviz.render(model, [direction("features.1", v) for v in vectors], settings.recipe, seed=5,
                                keys=[7, 30], precision="fp32", batch_size=2)
    assert result.pngs == tuple(png_bytes(image) for image in expected.images)
    assert result.scores == tuple(float(s) for s in expected.score)
    assert pickle.loads(pickle.dumps(task)) == task


def test_attribution_is_the_derivative_along_the_average_at_every_position():
    model = tiny_model()  # conv relu conv relu pool conv relu | pool linear: nonlinear after features.1
    model.categories = tuple(f"class {k}" for k in range(5))
    vectors = np.random.default_rng(1).uniform(0, 1, (3, 4))
    got = class_attribution(model, "features.1", vectors, 16)
    layer = model.module.features[1]

    def logits(maps: torch.Tensor) -> np.ndarray:
        handle = layer.register_forward_hook(lambda module, inputs, output: maps)
        try:
            with torch.no_grad():
                return model.logits(torch.full((len(maps), 3, 16, 16), 128.0, dtype=torch.float64)).numpy()
        finally:
            handle.remove()

    uniform = torch.from_numpy(vectors)[:, :, None, None].expand(3, 4, 16, 16)
    step = 1e-6
    expected = (logits(uniform * (1 + step)) - logits(uniform * (1 - step))) / (2 * step)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert np.abs(got).max() > 1e-3


class Skip(nn.Module):
    """A layer with a skip connection around it: the logits read the input besides the layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x)) + x.mean(dim=1, keepdim=True)
        return self.head(y.mean(dim=(2, 3)))


def test_no_class_is_named_where_a_skip_connection_goes_around_the_layer():
    model = filterviz.load_model(Skip().double(), spec=SPEC, name="skip", device="cpu")
    model.categories = ("a", "b")
    with pytest.raises(NoAttribution, match="skip connection"):
        class_attribution(model, "act", np.ones((2, 4)), 16)
    model.categories = None
    with pytest.raises(NoAttribution, match="names no output classes"):
        class_attribution(model, "act", np.ones((2, 4)), 16)


def test_pages_link_and_an_atlas_in_the_folder_links_to_them_and_keeps_them(built):
    model, folder, out, summary = built
    pages = sorted((out / "activations").rglob("*.html")) + [out / "index.html"]
    for page in pages:
        parser = Links()
        parser.feed(page.read_text())
        for target in parser.targets:
            assert (page.parent / target).resolve().is_file(), f"{page.relative_to(out)} links to missing {target}"
    index = (out / "index.html").read_text()
    assert f'<a href="activations/{LAYER}/index.html">{LAYER} ({summary.cells} cells)</a>' in index
    grid_page = (out / "activations" / LAYER / "index.html").read_text()
    assert '<a href="../../index.html">colors</a>' in grid_page
    assert all(f'src="img/{n}.png"' in grid_page and 'loading="lazy"' in grid_page for n in shown_cells(out))
    # Another atlas run rewrites its index with the same link, and keeps the activation atlas's files.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(MANIFEST)}
    build_atlas(model, out, layers=["conv"], filters=range(2), size=16, steps=3)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(MANIFEST)}
    assert after == before
    # And the same activation atlas again renders nothing and writes the same bytes.
    again = build_activation_atlas(model, out, LAYER, images=folder, **SETTINGS)
    assert again.rendered == 0 and again.cells == summary.cells
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and not p.name.startswith(MANIFEST)} == before


def _command(model_file: Path, out: Path, photos: Path) -> list[str]:
    return [sys.executable, "-m", "filterviz", "activation-atlas", str(model_file), "features.3", "--images",
            str(photos), "--out", str(out), "--grid", "5", "--samples", "600", "--size", "32", "--steps", "60",
            "--chunk-size", "1", "--recipe", "classic", "-q"]


def _cells_done(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / MANIFEST}?mode=ro", uri=True, timeout=0.1) as sql:
            return sql.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_then_resume_gives_the_same_bytes(tmp_path, photos):
    model_file = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(model_file))
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    subprocess.run(_command(model_file, clean, photos), check=True)
    total = _cells_done(clean)
    assert total >= 4
    process = subprocess.Popen(_command(model_file, resumed, photos))
    deadline = time.monotonic() + 120
    while _cells_done(resumed) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert process.poll() is None, "the activation atlas finished before it could be killed; give it more work"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = _cells_done(resumed)
    assert 2 <= killed_at < total
    done = subprocess.run(_command(model_file, resumed, photos)[:-1], check=True, capture_output=True, text=True)
    assert f"{total - killed_at} rendered now, {killed_at} already done" in done.stderr

    def files(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and not p.name.startswith(MANIFEST)}

    assert files(resumed) == files(clean)


def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, photos, monkeypatch):
    out = tmp_path / "out"
    cases = [
        (["--grid", "101"], "--grid 101 is too large"),
        (["--images", str(tmp_path / "none")], "does not exist"),
        (["--layer-typo"], "unrecognized arguments"),
    ]
    for extra, said in cases:
        argv = ["activation-atlas", "efficientnet-lite0", "blocks.9", "--images", str(photos), "--out", str(out),
                *extra]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert main(["activation-atlas", "efficientnet-lite0", "blocks.99", "--images", str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "blocks.99" in err and err.count("\n") == 1, err
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "umap" else found(name, *rest))
    assert main(["activation-atlas", "efficientnet-lite0", "blocks.9", "--images", str(photos), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == "filterviz: error: activation atlases need umap-learn, which is not installed; install it with: " \
                  "pip install 'filterviz[umap]'\n"
    assert not out.exists()
