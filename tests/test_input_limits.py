"""Bad inputs at the limits: each is refused in one line (``filterviz: error: ...``, exit status 2, no
traceback, nothing written), before any work; and what only a late check can find stops the run in one
line, leaving what was done valid and resumable.

Nothing here allocates much: budgets are made small with ``--max-memory``, and a guard fails a test
that measures a forward pass at a large side or starts an ascent before refusing.
"""

from __future__ import annotations

import pickle
import re
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import filterviz
from filterviz import ascent, device, plan
from filterviz.atlas.examples import load_square
from filterviz.cli import main
from filterviz.errors import FilterVizError, MemoryBudgetError

from conftest import TinyNet

EMBEDDED = "efficientnet-lite0"


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if an ascent starts, or a forward pass is measured at a large side, before the input
    is refused: a refusal must come first, from small probes only."""
    def ascent_started(*args, **kwargs):
        raise AssertionError("the ascent started before the input was refused")

    measure = device.saved_bytes_per_image

    def small_only(model, forward, size, dtype):
        assert size <= 256, f"a forward pass was measured at {size} px, not estimated from small probes"
        return measure(model, forward, size, dtype)

    monkeypatch.setattr(ascent, "optimize_batch", ascent_started)
    monkeypatch.setattr(device, "saved_bytes_per_image", small_only)


def refused(capsys, folder: Path, *argv: object) -> str:
    """Run the command line; it must exit 2 with one ``filterviz: error:`` line and write nothing in
    ``folder``. Returns the line."""
    before = sorted(folder.rglob("*"))
    code = main([str(arg) for arg in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("filterviz: error: "), err
    assert sorted(folder.rglob("*")) == before, f"something was written: {sorted(folder.rglob('*'))}"
    return lines[0]


def works(capsys, *argv: object) -> str:
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Traceback" not in captured.err
    return captured.out


def camera(side: int = 96) -> np.ndarray:
    """scikit-image's camera man, a real grayscale photo, at ``side`` px (uint8)."""
    skimage_data = pytest.importorskip("skimage.data")
    return np.asarray(Image.fromarray(skimage_data.camera()).resize((side, side), Image.Resampling.BILINEAR))


# -- image files: decompression bombs, non-images, 16-bit and float images ---------------------------------------


@pytest.fixture
def small_images(tmp_path) -> Path:
    """A dataset of two small photos (24x24, 576 pixels each)."""
    folder = tmp_path / "images"
    folder.mkdir()
    for number in range(2):
        Image.fromarray(np.roll(camera(24), 5 * number, axis=1)).convert("RGB").save(folder / f"photo{number}.png")
    return folder


@pytest.mark.parametrize("limit", [2000, 1000], ids=["over the limit (PIL warns)", "over twice it (PIL fails)"])
def test_a_decompression_bomb_in_images_is_refused_from_its_header(capsys, tmp_path, small_images, monkeypatch,
                                                                     limit):
    # PIL's limit made small, so that a 60x60 file (3600 pixels) stands for a bomb without being one.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    Image.new("RGB", (60, 60)).save(small_images / "zbomb.png")
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self) or None)
    line = refused(capsys, tmp_path, "atlas", EMBEDDED, "-o", tmp_path / "atlas", "--layers", "blocks.0",
                   "--filters", "0", "--size", "16", "--steps", "0", "--images", small_images)
    assert "zbomb.png' has 3,600 pixels, more than the" in line and "PIL.Image.MAX_IMAGE_PIXELS" in line
    assert f"{limit:,}" in line
    assert not decoded  # refused from the header: no pixel was decoded


def test_an_image_damaged_past_its_header_stops_the_scan_in_one_line_and_the_atlas_resumes(capsys, tmp_path,
                                                                                           small_images):
    data = (small_images / "photo1.png").read_bytes()
    (small_images / "photo1.png").write_bytes(data[:len(data) // 2])  # a sound header, half the pixels
    out = tmp_path / "atlas"
    argv = ["atlas", EMBEDDED, "-o", out, "--layers", "blocks.0", "--filters", "0-1", "--size", "16", "--steps", "0",
            "--images", small_images, "-q"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(r"filterviz: error: cannot read image '.*photo1.png' \(image file is "
                                      r"truncated.*\); remove it from the folder", err[0]), err
    (small_images / "photo1.png").unlink()
    argv.remove("-q")
    assert main([str(a) for a in argv]) == 0
    assert "(0 rendered now, 2 already done)" in capsys.readouterr().err  # the renders were kept


def _crops_match_the_photo(atlas: Path, photo: Path, side: int) -> int:
    """Check every example crop of the atlas against the 8-bit photo's pixels at its place; returns how
    many crops were compared."""
    reference = load_square(photo, side).astype(int)
    with sqlite3.connect(atlas / "manifest.sqlite") as sql:
        rows = sql.execute("SELECT top, left, side, file FROM examples").fetchall()
    for top, left, crop, file in rows:
        pixels = np.asarray(Image.open(atlas / file).convert("RGB"), dtype=int)
        assert np.abs(pixels - reference[top:top + crop, left:left + crop]).max() <= 1, file
    return len(rows)


@pytest.mark.parametrize("kind", ["16-bit PNG", "float TIFF"])
def test_16_bit_and_float_images_are_read_on_their_real_range(capsys, tmp_path, kind):
    photo = camera()
    eight = tmp_path / "camera8.png"
    Image.fromarray(photo).save(eight)
    folder = tmp_path / "images"
    folder.mkdir()
    if kind == "16-bit PNG":  # 0..65535, as a 16-bit scan or export of the same photo holds it
        wide = folder / "camera16.png"
        Image.fromarray(photo.astype(np.uint16) * 257).save(wide)
        assert Image.open(wide).mode == "I;16"
    else:  # 0..1 floats, as scikit-image's img_as_float gives them
        wide = folder / "camera.tif"
        Image.fromarray((photo / 255.0).astype(np.float32)).save(wide)
        assert Image.open(wide).mode == "F"
    for side in (96, 40):
        assert np.abs(load_square(wide, side).astype(int) - load_square(eight, side).astype(int)).max() <= 1
    out = tmp_path / "atlas"
    works(capsys, "atlas", EMBEDDED, "-o", out, "--layers", "blocks.0", "--filters", "0-1", "--size", "40",
          "--steps", "0", "--top-k", "1", "--images", folder, "-q")
    assert _crops_match_the_photo(out, eight, 40) == 2


def test_float_images_outside_0_to_1_and_32_bit_integers_use_their_own_range(tmp_path):
    photo = camera(32)
    cases = {"wide.tif": (photo.astype(np.float32) * 4 - 100), "int.tif": photo.astype(np.int32) * 257}
    for name, values in cases.items():
        Image.fromarray(values).save(tmp_path / name)
    stretched = (photo.astype(float) - photo.min()) / (photo.max() - photo.min()) * 255
    got = load_square(tmp_path / "wide.tif", 32)[..., 0].astype(float)
    assert np.abs(got - stretched).max() <= 1  # no declared range: min..max
    assert np.abs(load_square(tmp_path / "int.tif", 32)[..., 0].astype(int) - photo).max() <= 1  # 0..65535


@pytest.fixture
def spectrum_images(tmp_path) -> Path:
    folder = tmp_path / "spectrum"
    folder.mkdir()
    Image.fromarray(camera(130)).save(folder / "a.png")
    return folder


def test_spectrum_folder_bombs_and_non_images_are_refused_before_work(capsys, tmp_path, spectrum_images,
                                                                      monkeypatch, no_work):
    render = ["render", EMBEDDED, "blocks.0", "0", "--recipe", "maco", "--size", "32", "--steps", "1",
              "-o", tmp_path / "out.png", "--spectrum", spectrum_images]
    small = camera(64)
    (spectrum_images / "notes.png").write_text("not an image")
    line = refused(capsys, tmp_path, *render)
    assert re.search(r"cannot read image '.*notes.png' \(cannot identify image file.*\); remove it", line)
    (spectrum_images / "notes.png").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 25_000)  # 130x130 = 16,900 pass; 200x200 = 40,000 do not
    Image.new("RGB", (200, 200)).save(spectrum_images / "bomb.png")
    line = refused(capsys, tmp_path, *render)
    assert "bomb.png' has 40,000 pixels, more than the 25,000 that PIL decodes safely" in line
    (spectrum_images / "bomb.png").unlink()
    Image.fromarray(small).save(spectrum_images / "small.png")
    line = refused(capsys, tmp_path, *render)
    assert "small.png' is 64x64, smaller than the 128 px that a spectrum is estimated at" in line


@pytest.mark.parametrize(("content", "expected"), [
    (np.array([["a"]] * 3), r"holds <U1 values, not real numbers"),
    (np.full((3, 8, 5), np.nan), r"holds NaN, infinite or negative values"),
    (-np.ones((3, 8, 5)), r"holds NaN, infinite or negative values"),
    (np.zeros((3, 8, 5)), r"is all zeros"),
    (np.ones((8, 5)), r"has shape \(8, 5\); expected \(3, H, W//2\+1\)"),
    (None, r"does not exist"),
    (b"not numpy", r"cannot read spectrum .*give a .npy file"),
])
def test_a_bad_spectrum_file_is_one_line(capsys, tmp_path, content, expected, no_work):
    path = tmp_path / "inputs" / "spectrum.npy"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    line = refused(capsys, tmp_path, "render", EMBEDDED, "blocks.0", "0", "--recipe", "maco", "--size", "32",
                   "-o", tmp_path / "out.png", "--spectrum", path)
    assert re.search(expected, line), line


# -- direction files ---------------------------------------------------------------------------------------------


def _save(path: Path, content: object) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        np.savez(path, **content)
    elif content is not None:
        np.save(path, content, allow_pickle=True)


@pytest.mark.parametrize(("name", "content", "expected"), [
    ("text.npy", np.array(["a", "b"]), r"holds text \(dtype <U1\), not real numbers"),
    ("objects.npy", np.array([1.0, "x", None], dtype=object),
     r"holds Python objects \(dtype object\), which filterviz does not load because loading them runs code"),
    ("pickled.npy", pickle.dumps([1.0] * 16), r"is a Python pickle; give a .npy file of one vector"),
    ("notes.npy", b"1 2 3", r"is not a .npy file; give a .npy file of one vector"),
    ("archive.npz", {"direction": np.ones(16)}, r"is an .npz archive \(np.savez\), not one array"),
    ("complex.npy", np.ones(16) + 1j, r"holds complex numbers \(dtype complex128\)"),
    ("matrix.npy", np.ones((4, 4)), r"holds a 4x4 array, not one vector"),
    ("scalar.npy", np.float64(3.0), r"holds a single number, not a vector"),
    ("zero.npy", np.zeros(16), r"is all zeros, which points nowhere"),
    ("nan.npy", np.r_[np.ones(3), np.nan, np.ones(12)], r"holds nan at index 3; give finite numbers"),
    ("inf.npy", np.r_[np.inf, np.ones(15)], r"holds inf at index 0; give finite numbers"),
    ("missing.npy", None, r"direction file '.*missing.npy' does not exist"),
    ("short.npy", np.ones(5), r"direction '.*short.npy' has 5 numbers, but layer blocks.0 of efficientnet-lite0 "
                              r"has 16 channels; give a vector of 16 numbers"),
])
def test_a_bad_direction_file_is_one_line_before_work(capsys, tmp_path, name, content, expected, no_work):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _save(inputs / name, content)
    line = refused(capsys, tmp_path, "render", EMBEDDED, "--objective", f"direction:blocks.0:{inputs / name}",
                   "--size", "16", "-o", tmp_path / "out.png")
    assert re.search(expected, line), line
    assert "allow_pickle" not in line  # never advise loading code


def test_a_direction_of_one_row_is_that_row_and_a_wrong_length_fails_before_work(tmp_path, embedded, no_work):
    np.save(tmp_path / "row.npy", np.arange(1, 17, dtype=np.float32)[None])
    objective = filterviz.parse_objective(f"direction:blocks.0:{tmp_path / 'row.npy'}")
    assert objective.terms[0][1].vector == tuple(float(v) for v in range(1, 17))
    np.save(tmp_path / "long.npy", np.ones(17))
    with pytest.raises(FilterVizError, match="has 17 numbers, but layer blocks.0 .* has 16 channels"):
        plan.check_render(embedded, [f"direction:blocks.0:{tmp_path / 'long.npy'}"], size=16)
    with pytest.raises(FilterVizError, match="has 17 numbers, but the model's output of .* has 1000 channels"):
        plan.check_render(embedded, [f"direction:<output>:{tmp_path / 'long.npy'}"], size=16)


# -- the demo on a model with too few activation layers ----------------------------------------------------------


class OneRelu(nn.Module):
    def __init__(self, activations: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU() if activations else nn.Identity()
        self.head = nn.Conv2d(4, 2, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)))


@pytest.mark.parametrize(("activations", "expected"), [
    (1, r"has 1 such layer: act; use a deeper model"), (0, r"has no such layers; use a deeper model")])
def test_the_demo_on_a_model_with_too_few_activation_layers_is_one_line(capsys, tmp_path, activations, expected):
    path = tmp_path / "inputs" / "small.pt"
    path.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(OneRelu(activations).eval(), torch.rand(1, 3, 16, 16)).save(path)
    line = refused(capsys, tmp_path, "demo", "--model", path, "-o", tmp_path / "figures", "--device", "cpu")
    assert "the demo shows filters of 4 activation layers (ReLU and the like) at 4 different strides" in line
    assert re.search(expected, line), line


def test_run_demo_names_the_layers_it_found(tmp_path):
    torch.manual_seed(0)
    tiny = filterviz.load_model(TinyNet(), spec=filterviz.InputSpec(default_size=16), device="cpu", name="tiny")
    with pytest.raises(FilterVizError, match=r"tiny has 2 such layers: features.1, features.6"):
        filterviz.run_demo(tmp_path / "figures", tiny)
    assert not (tmp_path / "figures").exists()


# -- TorchScript models made by torch.jit.script -----------------------------------------------------------------


def doubled_relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x) * 2.0


class ScriptedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(doubled_relu(self.conv(x))) + x  # a helper function, and F.relu inside it


class ScriptedNet(nn.Module):
    """Calls functions, loops over modules and over a range, and calls a module in a branch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blocks = nn.ModuleList([ScriptedBlock(), ScriptedBlock()])
        self.head = nn.Conv2d(4, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = block(x)
        for _ in range(2):
            x = x * 0.5
        if x.shape[-1] > 2:
            x = self.head(x)
        return torch.flatten(x.mean(dim=(2, 3)), 1)


def test_a_scripted_model_that_calls_functions_lists_and_renders_its_layers(capsys, tmp_path):
    torch.manual_seed(0)
    net = ScriptedNet().eval()
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(net).save(path)
    out = works(capsys, "layers", path, "--size", "16", "--preprocess", "unit")
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == ["stem", "blocks.0.conv", "blocks.0.act", "blocks.0", "blocks.1.conv", "blocks.1.act", "blocks.1",
                     "head"]
    works(capsys, "render", path, "blocks.1.act", "2", "--size", "16", "--steps", "2", "--preprocess", "unit",
          "--seed", "0", "-o", tmp_path / "act.png", "-q")
    model = filterviz.load_model(path, preprocess="unit", device="cpu")
    # The file holds filter 2's picture, as the API renders it from the same file.
    rendered = filterviz.render_filters(model, "blocks.1.act", [2], size=16, steps=2, seed=0)
    assert not rendered.stuck[0]
    assert np.array_equal(np.array(Image.open(tmp_path / "act.png")), rendered.images[0])
    pixels = torch.rand(2, 3, 16, 16) * 255
    seen = {}
    net.blocks[1].act.register_forward_hook(lambda module, inputs, output: seen.setdefault("act", output))
    net.head.register_forward_hook(lambda module, inputs, output: seen.setdefault("head", output))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(pixels), net(pixels / 255))
        torch.testing.assert_close(model.activations(pixels, "blocks.1.act"), seen["act"])
        torch.testing.assert_close(model.activations(pixels, "head"), seen["head"])  # inside the branch


# -- transforms larger than the image ----------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "expected"), [
    (["--size", "8", "--jitter", "8"], r"--jitter 8 leaves no image: it crops that many px off the 8 px image; "
                                       r"use --jitter 7 or less"),
    (["--size", "8", "--pad", "2", "--jitter", "4", "--final-jitter", "8"],
     r"--final-jitter 8 leaves no image: the view is 8 px .*; use --final-jitter 7 or less"),
    (["--size", "8", "--crop", "0.01,0.5"], r"--crop 0.01,0.5 takes boxes of 0.08 px of the 8 px view, less than "
                                            r"1 px; use a smallest box \(LOW\) of 0.125 or more"),
    (["--size", "8", "--scales", "1e9"], r"--scales 1e\+09 zooms into less than 1 px of the 8 px view; use factors "
                                         r"of 8 or less"),
    (["--size", "8", "--scales", "0.000001,1"], r"--scales 1e-06 shrinks the 8 px view to less than 1 px; use "
                                                r"factors of 0.125 or more"),
    (["--size", "16", "--pad", "3000", "--max-memory", "64M"],
     r"a 16 px image of efficientnet-lite0 \(seen as 1 view of 6016 px\) needs about .* at blocks.0, more than the "
     r"memory budget of 64.0 MiB \(--max-memory\): use --pad \d+ or less, or "),
    (["--size", "16", "--view-size", "4000", "--max-memory", "64M"],
     r"\(seen as 1 view of 4000 px\) needs about .*: use --view-size \d+ or less"),
])
def test_transforms_larger_than_the_image_are_refused_before_work(capsys, tmp_path, options, expected, no_work):
    line = refused(capsys, tmp_path, "render", EMBEDDED, "blocks.0", "0", *options, "-o", tmp_path / "out.png")
    assert re.search(expected, line), line


def test_grid_and_atlas_refuse_such_transforms_too(capsys, tmp_path, no_work):
    line = refused(capsys, tmp_path, "grid", EMBEDDED, "blocks.0", "--filters", "0-1", "--size", "4", "--recipe",
                   "lucid", "--jitter", "40", "-o", tmp_path / "grid.png")
    assert "--jitter 40 leaves no image: it crops that many px off the 28 px padded image (--size 4, --pad 12)" in line
    line = refused(capsys, tmp_path, "atlas", EMBEDDED, "--layers", "blocks.0", "--filters", "0", "--size", "4",
                   "--crop", "0.1,1", "-o", tmp_path / "atlas")
    assert "--crop 0.1,1 takes boxes of 0.4 px of the 4 px view" in line


# -- memory: refused before any work, with the figures -----------------------------------------------------------


@pytest.mark.parametrize(("argv", "expected"), [
    (["render", EMBEDDED, "blocks.0", "0", "--size", "2048", "--max-memory", "64M"],
     r"a 2048 px image of efficientnet-lite0 needs about .* at stem.conv \(a forward pass up to blocks.0\), more than "
     r"the memory budget of 64.0 MiB \(--max-memory\): use --size \d+ or less, or --max-memory \d+[MG]"),
    (["render", EMBEDDED, "blocks.3", "0", "--size", "200", "--max-memory", "4M"],
     r"a 200 px image of efficientnet-lite0 needs about \d.* MiB at blocks.3, more than the memory budget of 4.0 MiB "
     r"\(--max-memory\): use --size \d+ or less, or --max-memory \d+M"),
    (["render", EMBEDDED, "blocks.0", "0", "--size", "64", "--copies", "8", "--diversity", "blocks.0",
      "--max-memory", "4M"],
     r"8 copies compared with each other \(a diversity term\) must share one batch: 8 images of 64 px of "
     r"efficientnet-lite0 need about .*: use --copies [1-7] or less, or --size \d+ or less"),
    (["render", EMBEDDED, "blocks.0", "0", "--size", "64", "--copies", "64", "--max-memory", "4M"],
     r"64 images of 64 px of efficientnet-lite0 are kept as results until they are written, which with a batch "
     r"needs about .*: use at most \d+ images at a time \(fewer --copies, --objective or --filters\), or --size"),
    (["grid", EMBEDDED, "blocks.0", "--filters", "0-7", "--size", "64", "--batch-size", "8", "--max-memory", "4M"],
     r"a batch of 8 images of 64 px of efficientnet-lite0 needs about .*: use --batch-size [1-7] or less"),
    (["render", EMBEDDED, "blocks.0", "0", "--recipe", "maco", "--size", "1000", "--max-memory", "200M"],
     r"a 1000 px image of efficientnet-lite0 \(seen as 2 views of 160 px\) needs about .*: use --size \d+ or less"),
    (["layers", EMBEDDED, "--size", "1024", "--max-memory", "16M"],
     r"a 1024 px image of efficientnet-lite0 needs about .* at blocks.1.expand.conv \(a forward pass\), more than "
     r"the memory budget of 16.0 MiB \(--max-memory\): use --size \d+ or less"),
])
def test_too_large_for_the_memory_budget_is_refused_before_work(capsys, tmp_path, argv, expected, no_work):
    line = refused(capsys, tmp_path, *argv, *(["-o", tmp_path / "out.png"] if argv[0] != "layers" else []))
    assert re.search(expected, line), line


def test_layers_at_a_size_beyond_the_budget_is_refused_before_the_model_runs(capsys, tmp_path, embedded, monkeypatch):
    line = refused(capsys, tmp_path, "layers", EMBEDDED, "--size", "1024", "--max-memory", "16M")
    assert re.search(r"a 1024 px image of efficientnet-lite0 needs about .* at blocks.1.expand.conv \(a forward "
                     r"pass\), more than the memory budget of 16.0 MiB \(--max-memory\): use --size \d+ or less", line)
    monkeypatch.setattr(embedded, "max_memory", 16 * 2 ** 20)
    with pytest.raises(MemoryBudgetError, match=r"an 800 px image .* \(a forward pass up to blocks.3\)"):
        embedded.layer_info("blocks.3", 800)
    size = int(re.search(r"--size (\d+) or less", line).group(1))
    assert embedded.layers(size)  # the advice is taken: it runs


def test_an_atlas_checks_its_largest_render_task_and_its_dataset_scan(capsys, tmp_path, small_images, no_work):
    atlas = ["atlas", EMBEDDED, "-o", tmp_path / "atlas", "--layers", "stem.act,blocks.0", "--size", "64",
             "--steps", "1", "--max-memory", "4M"]
    line = refused(capsys, tmp_path, *atlas, "--chunk-size", "16")
    assert re.search(r"a batch of 16 images of 64 px of efficientnet-lite0 needs about .* at blocks.0, more than the "
                     r"memory budget of 4.0 MiB \(--max-memory\): use --chunk-size [1-9] or less", line), line
    line = refused(capsys, tmp_path, *atlas, "--chunk-size", "1", "--images", small_images)
    assert re.search(r"the dataset scan runs 16 images of 64 px at a time through efficientnet-lite0, keeping the "
                     r"outputs of 2 layers, which needs about .*, more than the memory budget of 4.0 MiB", line), line


def test_the_estimate_from_small_probes_is_close_to_a_measurement(embedded):
    def forward(pixels):
        return embedded.activations(pixels, "blocks.3")

    estimate = device.measure_saved_bytes(embedded, forward, 288, None)
    assert (estimate.low, estimate.high) == device.PROBE_SIDES
    measured = device.saved_bytes_per_image(embedded, forward, 288, None)
    assert 0.8 * measured <= estimate.at(288) <= 1.25 * measured


def test_the_advice_fits(embedded):
    budget = 8 * 2 ** 20
    with pytest.raises(MemoryBudgetError, match=r"use --size \d+ or less") as refusal:
        plan.check_render(embedded, ["channel:blocks.3:0"], size=400, max_memory=budget)
    size = int(re.search(r"--size (\d+) or less", str(refusal.value)).group(1))
    plan.check_render(embedded, ["channel:blocks.3:0"], size=size, max_memory=budget)  # no error
    with pytest.raises(MemoryBudgetError, match=r"use --batch-size (\d+) or less") as refusal:
        plan.check_render(embedded, ["channel:blocks.3:0"] * 8, size=size // 2, max_memory=budget, batch_size=8)
    batch = int(re.search(r"--batch-size (\d+) or less", str(refusal.value)).group(1))
    plan.check_render(embedded, ["channel:blocks.3:0"] * 8, size=size // 2, max_memory=budget, batch_size=batch)


# -- sizes of 1, 2 and 3 px, and no steps --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)).save(path)
    return path


@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_smallest_sizes_give_a_result_or_one_line(capsys, tmp_path, tiny_file, size):
    runs = [
        ["render", EMBEDDED, "blocks.0", "0", "--steps", "0"],
        ["render", EMBEDDED, "blocks.6", "3", "--steps", "1", "--recipe", "lucid"],
        ["render", EMBEDDED, "blocks.0", "0", "--steps", "1", "--recipe", "maco"],
        ["grid", EMBEDDED, "blocks.6", "--filters", "0-1", "--steps", "1"],
        ["grid", tiny_file, "features.1", "--filters", "0-1", "--steps", "0", "--preprocess", "unit"],
    ]
    # Without steps, a picture is its start image (each filter's seeded noise, as the float32 model holds
    # it), deprocessed: a grid of them, too.
    def start(filters: list[int]) -> list[np.ndarray]:
        return [filterviz.deprocess_image(noise.astype(np.float32).astype(np.float64))
                for noise in filterviz.params.classic_start(size, filters, seed=0)]

    known = {0: start([0])[0], 4: filterviz.make_grid(start([0, 1]))}
    for number, argv in enumerate(runs):
        out = tmp_path / f"run{number}.png"
        code = main([str(arg) for arg in argv] + ["--size", str(size), "--seed", "0", "-o", str(out), "-q"])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        if code == 0:
            assert out.is_file() and all(line.startswith("filterviz: warning: ") for line in err.splitlines()), err
            if number in known:
                assert np.array_equal(np.array(Image.open(out)), known.pop(number)), argv
        else:
            assert code == 2 and len(err.splitlines()) == 1 and err.startswith("filterviz: error: "), err
            assert not out.exists()
    assert not known  # both runs without steps gave a picture
    atlas = tmp_path / "atlas"
    works(capsys, "atlas", EMBEDDED, "-o", atlas, "--layers", "blocks.0", "--filters", "0-1", "--size", size,
          "--steps", "0", "-q")
    assert (atlas / "index.html").is_file()
    assert np.array_equal(np.array(Image.open(atlas / "img" / "blocks.0" / "1.png")), start([1])[0])
    line = refused(capsys, tmp_path, "render", tiny_file, "features.6", "0", "--size", size, "--preprocess", "unit",
                   "-o", tmp_path / "x.png")
    assert "size %d is too small for layer features.6 of tiny.pt" % size in line
