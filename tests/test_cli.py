"""The command line, through main(argv): bad input gives one line and exit status 2, and no file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import filterviz
from filterviz import deprocess_image, make_grid
from filterviz.cli import main
from filterviz.objectives import gram
from filterviz.params import classic_start

EMBEDDED = "efficientnet-lite0"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def picture(path) -> np.ndarray:
    """A written image, decoded: (H, W, 3) uint8."""
    return np.array(Image.open(path))


def tiles(image: np.ndarray, count: int, side: int, per_row: int = 8, margin: int = 5) -> list[np.ndarray]:
    """The tiles of a grid (a tiled render or ``grid``), in order."""
    step = side + margin
    return [image[(i // per_row) * step:(i // per_row) * step + side, (i % per_row) * step:(i % per_row) * step + side]
            for i in range(count)]


def gram_similarity(model, images: np.ndarray, layer: str) -> float:
    """Mean cosine similarity of the Gram matrices of ``images`` (N, H, W, 3) at ``layer``, over pairs."""
    pixels = torch.as_tensor(images, dtype=model.dtype).permute(0, 3, 1, 2)
    with torch.no_grad():
        unit = torch.nn.functional.normalize(gram(model.activations(pixels, layer)), dim=1)
    similarity = unit @ unit.T
    count = len(images)
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


def bad_inputs(tmp: str) -> dict[str, tuple[list[str], str]]:
    out = os.path.join(tmp, "out.png")
    garbage, small = os.path.join(tmp, "garbage.pth"), os.path.join(tmp, "small.pth")
    pickled = os.path.join(tmp, "whole.pth")
    return {
        "unknown model": (["render", "vgg61", "block1_conv1", "0", "-o", out],
                          r"unknown model 'vgg61' \(closest: .*vgg16.*\); `filterviz models` lists the names and the other sources"),
        "unknown layer": (["render", EMBEDDED, "blocks.3.depthwise.actt", "0", "-o", out],
                          r"unknown layer 'blocks.3.depthwise.actt' of efficientnet-lite0 \(closest: blocks.3.depthwise.act"),
        "filter out of range": (["render", EMBEDDED, "stem.act", "32", "-o", out],
                                r"filter 32 is out of range for layer stem.act .* has 32 filters: use 0-31"),
        "negative filter": (["render", EMBEDDED, "stem.act", "-3", "-o", out], r"filter -3 is out of range.*use 0-31"),
        "size too small": (["render", "vgg16", "block5_conv3", "0", "--weights", "random", "--size", "8", "-o", out],
                           r"size 8 is too small for layer block5_conv3 of vgg16: it has no spatial output below 16 px; "
                           r"use --size 16 or more"),
        "missing weights": (["render", "vgg16", "block1_conv1", "0", "--weights", os.path.join(tmp, "no.pth"), "-o", out],
                            r"weights file .*no.pth' does not exist"),
        "unreadable weights": (["render", "vgg16", "block1_conv1", "0", "--weights", garbage, "-o", out],
                               r"cannot read weights file .*garbage.pth': it is not a PyTorch checkpoint; give a file written by "
                               r"torch.save\(model.state_dict\(\), path\)"),
        "pickled whole model": (["render", "vgg16", "block1_conv1", "0", "--weights", pickled, "-o", out],
                                r"weights file .*whole.pth' holds pickled Python objects \(torch.nn.modules.linear.Linear\)"
                                r", not only tensors, .* save model.state_dict\(\)"),
        "unknown weights name": (["render", "vgg16", "block1_conv1", "0", "--weights", "IMAGENET1K_V9", "-o", out],
                                 r"unknown weights 'IMAGENET1K_V9' for vgg16: .*use one of IMAGENET1K_V1, "),
        "weights of another architecture": (["render", "vgg16", "block1_conv1", "0", "--weights", small, "-o", out],
                                            r"weights file .*small.pth' does not fit vgg16: \d+ missing"),
        "output folder missing": (["render", EMBEDDED, "stem.act", "0", "-o", os.path.join(tmp, "nope", "a.png")],
                                  r"cannot write .*a.png': folder .*nope' does not exist"),
        "output is a folder": (["render", EMBEDDED, "stem.act", "0", "-o", tmp], r"it is a folder"),
        "unknown image type": (["render", EMBEDDED, "stem.act", "0", "-o", os.path.join(tmp, "a.xyz")],
                               r"unknown image type '.xyz'; use .png"),
        "bad filter list": (["grid", EMBEDDED, "stem.act", "--filters", "3-1", "-o", out],
                            r"cannot read filters '3-1': range 3-1 runs backwards \(write 1-3\); use .* such as 0-63"),
        "grid filter out of range": (["grid", EMBEDDED, "stem.act", "--filters", "0-40", "-o", out],
                                     r"filter 40 is out of range.*use 0-31"),
        "bad device": (["render", EMBEDDED, "stem.act", "0", "--device", "gpu0", "-o", out], r"unknown device 'gpu0'"),
        "device of another kind": (["render", EMBEDDED, "stem.act", "0", "--device", "meta", "-o", out],
                                   r"unknown device 'meta'; use auto, cpu, cuda, cuda:N or mps"),
        "device not here": (["render", EMBEDDED, "stem.act", "0", "--device", "cuda:7", "-o", out],
                            r"device 'cuda:7' (asked for, but CUDA is not available here|does not exist)"),
        "step not finite": (["render", EMBEDDED, "stem.act", "0", "--step", "nan", "-o", out],
                            r"argument --learning-rate/--lr/--step: invalid finite number value: 'nan'"),
        "negative margin": (["grid", EMBEDDED, "stem.act", "--margin", "-5", "-o", out],
                            r"argument --margin: invalid non-negative integer value: '-5'"),
        "huge filter range": (["grid", EMBEDDED, "stem.act", "--filters", "0-999999999999", "-o", out],
                              r"filter 999999999999 is out of range for layer stem.act .*use 0-31"),
        "layers at too small a size": (["layers", "vgg16", "--size", "8"],
                                       r"vgg16 cannot run at size 8: it needs 32 px or more; use --size 32"),
        "demo with bad weights makes no folder": (["demo", "-o", os.path.join(tmp, "figures"), "--weights", garbage],
                                                  r"cannot read weights file .*garbage.pth'"),
        "negative seed": (["render", EMBEDDED, "stem.act", "0", "--seed", "-1", "-o", out],
                          r"argument --seed: invalid non-negative integer seed value: '-1'"),
        "zero size": (["render", EMBEDDED, "stem.act", "0", "--size", "0", "-o", out],
                      r"argument --size: invalid image side \(1 to 8192 px\) value: '0'"),
        "demo into a file": (["demo", "-o", garbage], r"cannot write figures into .*garbage.pth': it is a file"),
    }


@pytest.mark.parametrize("case", list(bad_inputs("/tmp")))
def test_bad_input_is_one_line_exit_2_and_no_file(capsys, tmp_path, case):
    (tmp_path / "garbage.pth").write_bytes(b"\x00" * 100)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "small.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    argv, expected = bad_inputs(str(tmp_path))[case]
    before = sorted(os.listdir(tmp_path))
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expected, lines[0]), lines[0]
    assert sorted(os.listdir(tmp_path)) == before  # no output file, not even a partial one


def test_same_seed_same_bytes(capsys, tmp_path):
    paths = [tmp_path / f"{name}.png" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("3", "3", "4")):
        code, _, _ = run(capsys, "render", EMBEDDED, "blocks.1.depthwise.act", "2", "--size", "48", "--steps", "5",
                         "--seed", seed, "-o", str(path), "--quiet")
        assert code == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_grid_tiles_equal_single_renders(capsys, tmp_path):
    grid_path, single_path = tmp_path / "grid.png", tmp_path / "one.png"
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-2,5", "--per-row", "2", "--size", "24",
               "--steps", "4", "--seed", "1", "-o", str(grid_path), "-q")[0] == 0
    assert run(capsys, "render", EMBEDDED, "stem.act", "5", "--size", "24", "--steps", "4", "--seed", "1",
               "-o", str(single_path), "-q")[0] == 0
    grid = np.array(Image.open(grid_path))
    assert grid.shape == (2 * 24 + 5, 2 * 24 + 5, 3)
    tile = grid[29:53, 29:53].astype(int)
    assert np.abs(tile - np.array(Image.open(single_path)).astype(int)).max() <= 1  # batch rounding at most


def test_dead_filter_is_warned_about(capsys, tmp_path):
    # Filter 11 of the embedded model's stem never responds (its batch norm pins it below zero).
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "11", "--size", "32", "--steps", "3", "--seed", "0",
                       "-o", str(tmp_path / "dead.png"))
    assert code == 0
    assert "warning: filter 11 of stem.act of efficientnet-lite0 is dead: it takes the same value on all" in err
    assert "probe images (natural photos and strong noise)" in err
    # Its picture is the start image (filter 11's seeded noise, as the float32 model holds it), deprocessed.
    start = classic_start(32, [11], seed=0)[0].astype(np.float32).astype(np.float64)
    assert np.array_equal(picture(tmp_path / "dead.png"), deprocess_image(start))


def test_layers_lists_names_kinds_channels_and_aliases(capsys):
    code, out, _ = run(capsys, "layers", "vgg16", "--size", "150")  # needs no weights, so works offline
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("features.11 "))
    assert row.split() == ["features.11", "ReLU", "nchw", "37x37,", "256", "block3_conv1"]


def test_models_lists_embedded_default(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and out.splitlines()[0].startswith(EMBEDDED) and "vgg16" in out.split()


def test_quiet_silences_all_but_warnings(capsys, tmp_path):
    argv = ["render", EMBEDDED, "stem.act", "3", "--size", "24", "--steps", "2", "--seed", "0"]
    code, out, err = run(capsys, *argv, "-o", str(tmp_path / "loud.png"))
    assert code == 0 and out == "" and err.startswith("filterviz: wrote ") and len(err.splitlines()) == 1
    code, out, err = run(capsys, *argv, "-o", str(tmp_path / "quiet.png"), "--quiet")
    assert code == 0 and out == "" and err == ""
    assert (tmp_path / "loud.png").read_bytes() == (tmp_path / "quiet.png").read_bytes()


def test_grid_default_takes_first_64_or_the_whole_smaller_layer(capsys, tmp_path, embedded):
    path = tmp_path / "grid.png"
    # stem.act has 32 filters: all of them, as 4 rows of 8.
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--size", "8", "--steps", "1", "--margin", "0", "--seed", "0",
               "-o", str(path), "-q")[0] == 0
    assert np.array(Image.open(path)).shape == (4 * 8, 8 * 8, 3)
    explicit = tmp_path / "explicit.png"
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--size", "8", "--steps", "1", "--margin", "0", "--seed", "0",
               "--filters", "0-31", "-o", str(explicit), "-q")[0] == 0
    assert path.read_bytes() == explicit.read_bytes()
    # The book's grid, every option left to its default (64 px tiles, 8 a row, 5 px margins, the book's
    # recipe), is the API's render of filters 0-31 laid out by make_grid's defaults.
    default = tmp_path / "default.png"
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--steps", "1", "--seed", "0", "-o", str(default), "-q")[0] == 0
    rendered = filterviz.render_filters(embedded, "stem.act", range(32), size=64, steps=1, seed=0)
    assert np.array_equal(picture(default), make_grid(rendered.images, crossed=rendered.stuck))
    assert rendered.stuck[11]  # filter 11 is dead: the grid crosses it out, so the comparison covers that too


def test_render_objectives_with_a_recipe_and_overrides(capsys, tmp_path, embedded):
    path = tmp_path / "pair.png"
    code, _, err = run(capsys, "render", EMBEDDED, "--objective", "channel:stem.act:3 - 0.3*channel:stem.act:5",
                       "--objective", "class:207", "--recipe", "lucid", "--steps", "2", "--size", "24",
                       "--jitter", "2", "--no-decorrelate", "--seed", "0", "-o", str(path))
    assert code == 0, err
    assert "channel(stem.act,3) - 0.3*channel(stem.act,5): " in err and "class(207): " in err
    assert np.array(Image.open(path)).shape == (24, 2 * 24 + 5, 3)  # two images, tiled in a row
    # The picture and the scores said are the API's render with the preset's fields overridden.
    recipe = filterviz.RECIPES["lucid"].replace(steps=2, size=24, jitter=2, decorrelate=False)
    api = filterviz.render(embedded, ["channel:stem.act:3 - 0.3*channel:stem.act:5", "class:207"], recipe, seed=0)
    assert np.array_equal(picture(path), make_grid(api.images, per_row=2))
    for objective, before, after in zip(api.objectives, api.start_score, api.score):
        assert f"{objective.name}: {before:.3g} -> {after:.3g}" in err
    preset = filterviz.render(embedded, ["channel:stem.act:3 - 0.3*channel:stem.act:5", "class:207"], "lucid",
                              steps=2, size=24, seed=0)
    assert not np.array_equal(preset.images, api.images)  # the overrides took effect


def test_render_one_file_per_objective_and_importance(capsys, tmp_path, embedded):
    pattern = str(tmp_path / "{name}.png")
    code, _, err = run(capsys, "render", EMBEDDED, "--objective", "class:207", "--objective", "neuron:stem.act:1",
                       "--recipe", "maco", "--steps", "2", "--size", "32", "--seed", "0", "--importance",
                       str(tmp_path / "importance.png"), "-o", pattern, "-q")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_207.png", "importance.png", "neuron_stem.act_1.png"]
    # Each file holds its own objective's picture: the API's render of the same list, image by image,
    # and class:207's file the picture that class:207 rendered alone gives.
    api = filterviz.render(embedded, ["class:207", "neuron:stem.act:1"], "maco", steps=2, size=32, seed=0)
    assert np.array_equal(picture(tmp_path / "class_207.png"), api.images[0])
    assert np.array_equal(picture(tmp_path / "neuron_stem.act_1.png"), api.images[1])
    alone = tmp_path / "alone" / "a.png"
    alone.parent.mkdir()
    assert run(capsys, "render", EMBEDDED, "--objective", "class:207", "--recipe", "maco", "--steps", "2", "--size",
               "32", "--seed", "0", "-o", str(alone), "-q")[0] == 0
    assert np.abs(picture(alone).astype(int) - api.images[0].astype(int)).max() <= 1  # batch rounding at most
    assert np.abs(api.images[0].astype(int) - api.images[1].astype(int)).max() > 50
    # The importance map: each image's accumulated gradient magnitude over its maximum, as gray tiles.
    maps = api.importance / api.importance.max(axis=(1, 2), keepdims=True)
    gray = (np.repeat(maps[..., None], 3, axis=3) * 255).astype(np.uint8)
    assert np.abs(picture(tmp_path / "importance.png").astype(int) - make_grid(gray, per_row=2).astype(int)).max() <= 1


def test_grid_with_a_recipe_and_copies_with_diversity(capsys, tmp_path):
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-3", "--recipe", "lucid", "--steps", "1",
               "--size", "16", "--margin", "0", "--seed", "0", "-o", str(tmp_path / "g.png"), "-q")[0] == 0
    grid = picture(tmp_path / "g.png")
    assert grid.shape == (16, 64, 3)
    assert run(capsys, "render", EMBEDDED, "stem.act", "3", "--recipe", "lucid", "--steps", "1", "--size", "16",
               "--seed", "0", "-o", str(tmp_path / "three.png"), "-q")[0] == 0
    tile = grid[:, 48:64].astype(int)  # filter 3's tile is filter 3 rendered alone with the same recipe and seed
    assert np.abs(tile - picture(tmp_path / "three.png").astype(int)).max() <= 1  # batch rounding at most
    copies = ["stem.act", "2", "--copies", "3", "--diversity", "stem.act", "--steps", "1", "--size", "16", "--seed", "0"]
    code, _, err = run(capsys, "render", EMBEDDED, *copies, "-o", str(tmp_path / "d.png"), "-q")
    tiled = picture(tmp_path / "d.png")
    assert code == 0 and tiled.shape == (16, 3 * 16 + 2 * 5, 3)
    folder = tmp_path / "copies"
    folder.mkdir()
    assert run(capsys, "render", EMBEDDED, *copies, "-o", str(folder / "{name}.png"), "-q")[0] == 0
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == [f"channel_stem.act_2_+3x_diversity_stem.act_{i}.png" for i in range(3)]
    for tile, file in zip(tiles(tiled, 3, 16), files):  # the tiles, in order, are the copies' files
        assert np.array_equal(tile, picture(file))
    assert all(not np.array_equal(picture(a), picture(b)) for a, b in [files[:2], files[1:], files[::2]])


def test_recipes_command_shows_every_field(capsys):
    code, out, _ = run(capsys, "recipes", "lucid")
    assert code == 0 and out.splitlines()[0] == "[lucid]"
    assert "optimizer = 'adam'" in out and "learning_rate = 0.05" in out and "parameterization = 'fourier'" in out
    # Read back, the fields shown (and the defaults of those not shown) are the recipe that --recipe lucid
    # renders with.
    import ast

    shown = dict(line.split(" = ", 1) for line in out.splitlines()[1:] if line)
    assert filterviz.Recipe(**{name: ast.literal_eval(value) for name, value in shown.items()}) == \
        filterviz.RECIPES["lucid"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["stem.act", "1", "--crop", "0.9,0.1"], "recipe classic: crop must be 0 < low <= high <= 1"),
    (["--crop", "0.5"], "argument --crop: invalid pair of numbers LOW,HIGH value"),
    (["--objective", "fourier:3"], "cannot read objective term 'fourier:3'"),
    (["stem.act", "1", "--objective", "class:1"], "give either LAYER FILTER or --objective, not both"),
    ([], "say what to render: LAYER FILTER, or --objective"),
    (["--objective", "class:1000"], "class 1000 is out of range: the model has 1000 classes, 0-999"),
    (["--objective", "channel:stem.act:99"], "channel 99 is out of range for layer stem.act of efficientnet-lite0, "
                                              "which has 32 channels: use 0-31"),
])
def test_bad_recipe_or_objective_is_one_line(capsys, tmp_path, argv, expected):
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "render", EMBEDDED, *argv, "--steps", "1", "--size", "16", "-o", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(expected, err), err
    assert not out.exists()


def test_precision_and_memory_options(capsys, tmp_path):
    out = str(tmp_path / "p.png")
    plain = str(tmp_path / "plain.png")
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "1", "--precision", "fp16", "-o", out)
    assert code == 2 and "fp16 is for GPUs" in err and not os.path.exists(out)
    code, _, err = run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-1", "--max-memory", "2K",
                       "--size", "32", "-o", out)
    assert code == 2 and "more than the memory budget of 2.0 KiB" in err and not os.path.exists(out)
    code, _, err = run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-1", "--max-memory", "64M",
                       "--precision", "auto", "--size", "16", "--steps", "1", "--seed", "0", "-o", out, "-q")
    assert code == 0 and os.path.exists(out)
    # On a CPU, auto is fp32, and a budget that holds the batch changes nothing: the same bytes as without them.
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-1", "--size", "16", "--steps", "1", "--seed", "0",
               "-o", plain, "-q")[0] == 0
    assert Path(out).read_bytes() == Path(plain).read_bytes()


@pytest.mark.parametrize("argv", [
    ["render", EMBEDDED, "stem.act", "3", "--size", "16", "--steps", "1", "--seed", "0", "-q", "-o", "{out}"],
    ["render", EMBEDDED, "--size", "16", "stem.act", "3", "--steps", "1", "--seed", "0", "-q", "-o", "{out}"],
    ["render", "--size", "16", "-o", "{out}", EMBEDDED, "--steps", "1", "stem.act", "-q", "--seed", "0", "3"],
    ["render", "-q", "--device", "cpu", EMBEDDED, "--seed=0", "stem.act", "--steps", "1", "3", "--size", "16",
     "-o", "{out}"],
])
def test_options_may_come_before_between_and_after_positionals(capsys, tmp_path, argv):
    # The book's command with options first: `filterviz render vgg11 --weights random features.1 0` read
    # "features.1 0" as unrecognized arguments, as argparse fills optional positionals from the first run.
    out = tmp_path / "order.png"
    reference = tmp_path / "reference.png"
    assert run(capsys, "render", EMBEDDED, "stem.act", "3", "--size", "16", "--steps", "1", "--seed", "0", "-q",
               "-o", str(reference))[0] == 0
    code, _, err = run(capsys, *[str(out) if arg == "{out}" else arg for arg in argv])
    assert code == 0, err
    assert out.read_bytes() == reference.read_bytes()


def test_options_anywhere_in_grid_layers_and_atlas(capsys, tmp_path):
    code, _, err = run(capsys, "grid", "-o", str(tmp_path / "g.png"), "--size", "8", EMBEDDED, "--steps", "1",
                       "stem.act", "--filters", "0-1", "--seed", "0", "-q")
    assert code == 0, err
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-1", "--size", "8", "--steps", "1", "--seed", "0",
               "-q", "-o", str(tmp_path / "in-order.png"))[0] == 0
    assert (tmp_path / "g.png").read_bytes() == (tmp_path / "in-order.png").read_bytes()
    code, out, err = run(capsys, "layers", "--size", "32", EMBEDDED)
    assert code == 0 and "stem.act" in out, err
    code, _, err = run(capsys, "atlas", "--layers", "stem.act", "-o", str(tmp_path / "site"), EMBEDDED, "--filters",
                       "0", "--steps", "1", "--size", "16", "-q")
    assert code == 0 and (tmp_path / "site" / "index.html").exists(), err
    # Its one picture is filter 0 of stem.act at the atlas's default seed, 0, in the book's recipe.
    assert run(capsys, "render", EMBEDDED, "stem.act", "0", "--steps", "1", "--size", "16", "--seed", "0", "-q",
               "-o", str(tmp_path / "zero.png"))[0] == 0
    assert np.array_equal(picture(tmp_path / "site" / "img" / "stem.act" / "0.png"), picture(tmp_path / "zero.png"))


def test_scales_none_switches_off_a_presets_zoom(capsys, tmp_path, embedded):
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "1", "--recipe", "lucid", "--scales", "none", "--angles",
                       "none", "--steps", "1", "--size", "16", "--seed", "0", "-o", str(tmp_path / "a.png"), "-q")
    assert code == 0, err
    # The picture is the one of a recipe with no scales and no angles (filter 1's start, key 1), and not
    # the preset's.
    recipe = filterviz.RECIPES["lucid"].replace(scales=(), angles=(), steps=1, size=16)
    without = filterviz.render(embedded, ["channel:stem.act:1"], recipe, seed=0, keys=[1]).images[0]
    assert np.array_equal(picture(tmp_path / "a.png"), without)
    preset = filterviz.render(embedded, ["channel:stem.act:1"], "lucid", steps=1, size=16, seed=0, keys=[1]).images[0]
    assert not np.array_equal(preset, without)


def test_name_with_copies_writes_one_file_each(capsys, tmp_path):
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "1", "--copies", "2", "--steps", "1", "--size", "16",
                       "--seed", "0", "-o", str(tmp_path / "{name}.png"), "-q")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channel_stem.act_1_0.png", "channel_stem.act_1_1.png"]
    first, second = (picture(tmp_path / f"channel_stem.act_1_{i}.png").astype(int) for i in range(2))
    # Copy 0 keeps filter 1's start (README): it is the book's command's picture; copy 1 starts elsewhere.
    alone = tmp_path / "alone" / "one.png"
    alone.parent.mkdir()
    assert run(capsys, "render", EMBEDDED, "stem.act", "1", "--steps", "1", "--size", "16", "--seed", "0", "-q",
               "-o", str(alone))[0] == 0
    assert np.abs(first - picture(alone).astype(int)).max() <= 1  # batch rounding at most
    assert np.abs(first - second).max() > 20


def test_copies_with_diversity_differ_more_in_style(capsys, tmp_path, embedded):
    # The README's command (--copies, --diversity LAYER, -o "{name}.png"), small: the written copies'
    # Gram matrices at the layer must be further apart than those of copies written without --diversity.
    common = ["render", EMBEDDED, "stem.act", "2", "--copies", "3", "--size", "32", "--steps", "5", "--seed", "0", "-q"]
    runs = {"plain": [], "diverse": ["--diversity", "stem.act"],
            "weight 3": ["--diversity", "stem.act", "--diversity-weight", "3"],
            "weight 1": ["--diversity", "stem.act", "--diversity-weight", "1"]}
    written = {}
    for label, extra in runs.items():
        folder = tmp_path / label.replace(" ", "-")
        folder.mkdir()
        code, _, err = run(capsys, *common, *extra, "-o", str(folder / "{name}.png"))
        assert code == 0, err
        written[label] = sorted(folder.iterdir())
    assert [p.name for p in written["plain"]] == [f"channel_stem.act_2_{i}.png" for i in range(3)]
    assert [p.name for p in written["diverse"]] == [f"channel_stem.act_2_+3x_diversity_stem.act_{i}.png"
                                                     for i in range(3)]
    images = {label: np.stack([picture(path) for path in paths]) for label, paths in written.items()}
    before = gram_similarity(embedded, images["plain"], "stem.act")
    after = gram_similarity(embedded, images["diverse"], "stem.act")
    assert before > 0.99 and after < before - 0.2, (before, after)
    # The default weight is 3: the same bytes as --diversity-weight 3, and not those of weight 1.
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(written["diverse"], written["weight 3"]))
    assert not np.array_equal(images["diverse"], images["weight 1"])


def test_render_without_options_is_the_books_recipe(capsys, tmp_path):
    # No --size, --steps, --step or --recipe: the book's 150 px, 40 steps of 1, as if each were given;
    # one step less is another picture.
    common = ["render", EMBEDDED, "stem.act", "3", "--seed", "0", "-q", "-o"]
    assert run(capsys, *common, str(tmp_path / "default.png"))[0] == 0
    assert run(capsys, *common, str(tmp_path / "explicit.png"), "--recipe", "classic", "--size", "150",
               "--steps", "40", "--step", "1.0")[0] == 0
    assert run(capsys, *common, str(tmp_path / "39.png"), "--steps", "39")[0] == 0
    default = (tmp_path / "default.png").read_bytes()
    assert picture(tmp_path / "default.png").shape == (150, 150, 3)
    assert default == (tmp_path / "explicit.png").read_bytes()
    assert default != (tmp_path / "39.png").read_bytes()


def test_closed_pipe_ends_quietly(tmp_path):
    # `filterviz layers vgg16 | head -1`: the reader is gone before the listing is written.
    import subprocess
    import sys

    import filterviz

    source = str(Path(filterviz.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-m", "filterviz", "layers", EMBEDDED, "--size", "32"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141 and err == ""  # 128 + SIGPIPE, as a tool killed by it
