"""The command line, through main(argv): bad input gives one line and exit status 2, and no file."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from filterviz.cli import main

EMBEDDED = "efficientnet-lite0"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


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
                            r"argument --step/--learning-rate/--lr: invalid finite number value: 'nan'"),
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
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "11", "--size", "32", "--steps", "3",
                       "-o", str(tmp_path / "dead.png"))
    assert code == 0
    assert "warning: filter 11 of stem.act of efficientnet-lite0 is dead: it takes the same value on all" in err
    assert "probe images (natural photos and strong noise)" in err


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


def test_grid_default_takes_first_64_or_the_whole_smaller_layer(capsys, tmp_path):
    path = tmp_path / "grid.png"
    # stem.act has 32 filters: all of them, as 4 rows of 8.
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--size", "8", "--steps", "1", "--margin", "0", "-o", str(path),
               "-q")[0] == 0
    assert np.array(Image.open(path)).shape == (4 * 8, 8 * 8, 3)


def test_render_objectives_with_a_recipe_and_overrides(capsys, tmp_path):
    path = tmp_path / "pair.png"
    code, _, err = run(capsys, "render", EMBEDDED, "--objective", "channel:stem.act:3 - 0.3*channel:stem.act:5",
                       "--objective", "class:207", "--recipe", "lucid", "--steps", "2", "--size", "24",
                       "--jitter", "2", "--no-decorrelate", "--seed", "0", "-o", str(path))
    assert code == 0, err
    assert "channel(stem.act,3) - 0.3*channel(stem.act,5): " in err and "class(207): " in err
    assert np.array(Image.open(path)).shape == (24, 2 * 24 + 5, 3)  # two images, tiled in a row


def test_render_one_file_per_objective_and_importance(capsys, tmp_path):
    pattern = str(tmp_path / "{name}.png")
    code, _, err = run(capsys, "render", EMBEDDED, "--objective", "class:207", "--objective", "neuron:stem.act:1",
                       "--recipe", "maco", "--steps", "2", "--size", "32", "--importance",
                       str(tmp_path / "importance.png"), "-o", pattern, "-q")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_207.png", "importance.png", "neuron_stem.act_1.png"]


def test_grid_with_a_recipe_and_copies_with_diversity(capsys, tmp_path):
    assert run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-3", "--recipe", "lucid", "--steps", "1",
               "--size", "16", "--margin", "0", "-o", str(tmp_path / "g.png"), "-q")[0] == 0
    assert np.array(Image.open(tmp_path / "g.png")).shape == (16, 64, 3)
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "2", "--copies", "3", "--diversity", "stem.act",
                       "--steps", "1", "--size", "16", "-o", str(tmp_path / "d.png"), "-q")
    assert code == 0 and np.array(Image.open(tmp_path / "d.png")).shape == (16, 3 * 16 + 2 * 5, 3)


def test_recipes_command_shows_every_field(capsys):
    code, out, _ = run(capsys, "recipes", "lucid")
    assert code == 0 and out.splitlines()[0] == "[lucid]"
    assert "optimizer = 'adam'" in out and "learning_rate = 0.05" in out and "parameterization = 'fourier'" in out


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
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "1", "--precision", "fp16", "-o", out)
    assert code == 2 and "fp16 is for GPUs" in err and not os.path.exists(out)
    code, _, err = run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-1", "--max-memory", "2K",
                       "--size", "32", "-o", out)
    assert code == 2 and "more than the memory budget of 2.0 KiB" in err and not os.path.exists(out)
    code, _, err = run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-1", "--max-memory", "64M",
                       "--precision", "auto", "--size", "16", "--steps", "1", "-o", out, "-q")
    assert code == 0 and os.path.exists(out)


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
                       "stem.act", "--filters", "0-1", "-q")
    assert code == 0, err
    code, out, err = run(capsys, "layers", "--size", "32", EMBEDDED)
    assert code == 0 and "stem.act" in out, err
    code, _, err = run(capsys, "atlas", "--layers", "stem.act", "-o", str(tmp_path / "site"), EMBEDDED, "--filters",
                       "0", "--steps", "1", "--size", "16", "-q")
    assert code == 0 and (tmp_path / "site" / "index.html").exists(), err


def test_scales_none_switches_off_a_presets_zoom(capsys, tmp_path):
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "1", "--recipe", "lucid", "--scales", "none", "--angles",
                       "none", "--steps", "1", "--size", "16", "-o", str(tmp_path / "a.png"), "-q")
    assert code == 0, err


def test_name_with_copies_writes_one_file_each(capsys, tmp_path):
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "1", "--copies", "2", "--steps", "1", "--size", "16",
                       "-o", str(tmp_path / "{name}.png"), "-q")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["channel_stem.act_1_0.png", "channel_stem.act_1_1.png"]


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
