"""Every command refuses bad input the same way: one line on stderr, exit status 2, no traceback, and
nothing written. Plus property-based fuzzing of what reads user text: any text gives a result or one
FilterVizError, never another exception."""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from filterviz import cli
from filterviz.arguments import parse_filters
from filterviz.cli import main
from filterviz.errors import FilterVizError
from filterviz.objectives import Objective, parse_objective
from filterviz.recipes import RECIPES, Recipe, get_recipe

E = "efficientnet-lite0"  # the embedded model: offline, and quick to load
FAST = ["--steps", "1", "--size", "16", "-q"]  # a row that wrongly starts work still ends at once
LONG_NAME = "n" * 256 + ".png"  # one byte over the 255 that a name may have (plus the temporary file's)
LONG_PATH = "/".join(["d" * 200] * 21) + "/x.png"  # over the 4096 bytes a path may have


def unwritable_folder(tmp: Path) -> Path | None:
    """A folder that this process cannot write into: a locked one, or, for root (who may write into
    any folder), a folder of /proc; None where there is none."""
    if os.geteuid() != 0:
        locked = tmp / "locked"
        return locked
    for candidate in (Path("/proc/sys"), Path("/proc/1")):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
    return None


# id: (argv, the error line it must give (a regular expression)). In argv, "{tmp}" is the test's folder,
# which is also the current folder, and holds: file.txt, weights.pth (not a checkpoint), atlas-like/
# (a folder of other files), and locked/ (not writable, where the tests do not run as root).
ROWS: dict[str, tuple[list[str], str]] = {
    # -- options before positionals, and usage errors: one line each
    "unknown command": (["paint", E], r"^filterviz: error: argument COMMAND: invalid choice: 'paint'"),
    "no command": ([], r"^filterviz: error: the following arguments are required: COMMAND"),
    "render without -o": (["render", E, "stem.act", "0"], r"^filterviz render: error: .*required: -o/--output"),
    "extra positional": (["render", E, "stem.act", "0", "9", "-o", "a.png"], r"unrecognized arguments: 9"),
    "unknown option": (["render", E, "stem.act", "0", "--jiter", "3", "-o", "a.png"],
                       r"unrecognized arguments: --jiter 3"),
    "unknown recipe": (["render", E, "stem.act", "0", "--recipe", "deep", "-o", "a.png"],
                       r"argument --recipe: invalid choice: 'deep' "
                       r"\(choose from 'classic', 'lucid', 'maco', 'lucid-original'\)"),
    "unknown precision": (["grid", E, "stem.act", "--precision", "fp8", "-o", "a.png"],
                          r"argument --precision: invalid choice: 'fp8'"),
    "unknown recipe field value": (["render", E, "stem.act", "0", "--optimizer", "sgd", "-o", "a.png"],
                                   r"argument --optimizer: invalid choice: 'sgd'"),
    "recipes: unknown name": (["recipes", "fancy"], r"^filterviz recipes: error: argument name: invalid choice"),
    # -- models, layers, filters, devices, weights
    "unknown model": (["render", "vgg61", "block1_conv1", "0", "-o", "a.png"], r"unknown model 'vgg61'"),
    "empty model": (["render", "", "stem.act", "0", "-o", "a.png"], r"argument model: invalid path \(not empty\)"),
    "missing model file": (["layers", "{tmp}/no.onnx"], r"no.onnx"),
    "model file name too long": (["layers", "m" * 300 + ".onnx"],
                                 r"cannot use model 'm+\.\.\.m+\.onnx': the name .* is 305 bytes long, more than the "
                                 r"255 that this file system allows"),
    "--arch with a model name": (["render", E, "stem.act", "0", "--arch", "resnet18", "-o", "a.png", *FAST],
                                 r"--arch goes with a PyTorch model file \(.pt, .pth, .pts...\), and "
                                 r"'efficientnet-lite0' is not one; leave --arch out"),
    "--trust-pickle with an ONNX file": (["layers", "m.onnx", "--trust-pickle"],
                                         r"--trust-pickle goes with a PyTorch model file"),
    "demo: --arch": (["demo", "--arch", "vgg16", "-o", "figures"], r"the default model is not one"),
    "unknown layer": (["render", E, "stem.actt", "0", "-o", "a.png", *FAST], r"unknown layer 'stem.actt'"),
    "empty layer": (["render", E, "", "0", "-o", "a.png"], r"argument layer: invalid name \(not empty\)"),
    "filter out of range": (["render", E, "stem.act", "32", "-o", "a.png", *FAST], r"filter 32 is out of range"),
    "negative filter": (["render", E, "stem.act", "-1", "-o", "a.png", *FAST], r"filter -1 is out of range"),
    "filter not a number": (["render", E, "stem.act", "x", "-o", "a.png"], r"argument filter: invalid int value: 'x'"),
    "unknown device": (["render", E, "stem.act", "0", "--device", "tpu", "-o", "a.png"], r"unknown device 'tpu'"),
    "empty device": (["layers", E, "--device", " "], r"argument --device: invalid name \(not empty\) value: ' '"),
    "missing weights": (["render", "vgg16", "features.1", "0", "--weights", "no.pth", "-o", "a.png"],
                        r"weights file 'no.pth' does not exist"),
    "weights not a checkpoint": (["render", "vgg16", "features.1", "0", "--weights", "weights.pth", "-o", "a.png"],
                                 r"cannot read weights file 'weights.pth'"),
    "weights is a folder": (["render", "vgg16", "features.1", "0", "--weights", "atlas-like", "-o", "a.png"],
                            r"weights path 'atlas-like' is a folder"),
    "empty weights": (["render", E, "stem.act", "0", "--weights", "", "-o", "a.png"],
                      r"argument --weights: invalid path \(not empty\) value: ''"),
    "weights name too long": (["render", "vgg16", "features.1", "0", "--weights", "w" * 300 + ".pth", "-o", "a.png"],
                              r"cannot use weights .* is 304 bytes long"),
    "layers: size 0": (["layers", E, "--size", "0"], r"argument --size: invalid image side \(1 to 8192 px\) value"),
    "layers: unknown model": (["layers", "resnet5O"], r"unknown model 'resnet5O' \(closest: resnet50"),
    # -- sizes and steps
    "zero size": (["render", E, "stem.act", "0", "--size", "0", "-o", "a.png"], r"invalid image side .* value: '0'"),
    "negative size": (["render", E, "stem.act", "0", "--size", "-16", "-o", "a.png"], r"--size.* value: '-16'"),
    "huge size": (["render", E, "stem.act", "0", "--size", "100000000000", "-o", "a.png"],
                  r"argument --size: invalid image side \(1 to 8192 px\) value: '100000000000'"),
    "huge view size": (["render", E, "stem.act", "0", "--view-size", "99999", "-o", "a.png"], r"--view-size"),
    "negative steps": (["render", E, "stem.act", "0", "--steps", "-1", "-o", "a.png"],
                       r"recipe classic: steps must be 0 to 1000000"),
    "huge steps": (["render", E, "stem.act", "0", "--steps", "100000000000000000000", "-o", "a.png"],
                   r"recipe classic: steps must be 0 to 1000000"),
    "steps not a number": (["render", E, "stem.act", "0", "--steps", "ten", "-o", "a.png"], r"--steps: invalid int"),
    "zero step": (["render", E, "stem.act", "0", "--step", "0", "-o", "a.png"],
                  r"recipe classic: learning_rate must be more than 0"),
    "negative learning rate": (["render", E, "stem.act", "0", "--lr", "-1", "-o", "a.png"],
                               r"learning_rate must be more than 0"),
    "step not finite": (["render", E, "stem.act", "0", "--step", "inf", "-o", "a.png"], r"invalid finite number"),
    "zero copies": (["render", E, "stem.act", "0", "--copies", "0", "-o", "a.png"], r"--copies: invalid number"),
    "huge copies": (["render", E, "stem.act", "0", "--copies", "1000000000", "-o", "a.png"],
                    r"invalid number of copies \(1 to 1000\) value: '1000000000'"),
    "negative seed": (["render", E, "stem.act", "0", "--seed", "-1", "-o", "a.png"], r"--seed: invalid"),
    # -- recipe fields
    "empty scales": (["render", E, "stem.act", "0", "--scales", "", "-o", "a.png"],
                     r"argument --scales: invalid comma-separated list of numbers \(or none\) value: ''"),
    "empty angle between commas": (["render", E, "stem.act", "0", "--angles", "1,,2", "-o", "a.png"],
                                   r"argument --angles: .* value: '1,,2'"),
    "zero scale": (["render", E, "stem.act", "0", "--scales", "0,1", "-o", "a.png"], r"scales must be positive"),
    "backwards crop": (["render", E, "stem.act", "0", "--crop", "0.9,0.1", "-o", "a.png"],
                       r"crop must be 0 < low <= high <= 1"),
    "crop of one number": (["render", E, "stem.act", "0", "--crop", "0.5", "-o", "a.png"], r"--crop: invalid pair"),
    "negative noise": (["render", E, "stem.act", "0", "--noise", "-1", "-o", "a.png"], r"noise must be .* 0 or more"),
    "negative penalty": (["render", E, "stem.act", "0", "--tv", "-0.1", "-o", "a.png"],
                         r"tv, l1, l2 and blur must be finite numbers, 0 or more"),
    "zero views": (["render", E, "stem.act", "0", "--views", "0", "-o", "a.png"], r"views must be 1 or more"),
    "fourier field with pixels": (["render", E, "stem.act", "0", "--init-std", "0.1", "-o", "a.png"],
                                  r"--init-std goes with --parameterization fourier; recipe classic uses pixel"),
    "maco field with fourier": (["render", E, "stem.act", "0", "--recipe", "lucid", "--spectrum", "s.npy",
                                 "-o", "a.png"], r"--spectrum goes with --parameterization maco"),
    "empty spectrum": (["render", E, "stem.act", "0", "--recipe", "maco", "--spectrum", "", "-o", "a.png"],
                       r"argument --spectrum: invalid path"),
    # -- objectives
    "bad objective": (["render", E, "--objective", "fourier:3", "-o", "a.png"], r"cannot read objective term"),
    "empty objective": (["render", E, "--objective", "", "-o", "a.png"], r"cannot read objective term ''"),
    "objective that cancels": (["render", E, "--objective", "class:1 - class:1", "-o", "a.png", *FAST],
                               r"objective 'class:1 - class:1' has nothing to maximize"),
    "zero weight": (["render", E, "--objective", "0*class:1", "-o", "a.png", *FAST], r"has nothing to maximize"),
    "infinite weight": (["render", E, "--objective", "1e999*class:1", "-o", "a.png", *FAST],
                        r"weight 1e999 of objective term '1e999\*class:1' is too large"),
    "objective and layer": (["render", E, "stem.act", "0", "--objective", "class:1", "-o", "a.png"],
                            r"give either LAYER FILTER or --objective, not both"),
    "nothing to render": (["render", E, "-o", "a.png"], r"say what to render"),
    "class out of range": (["render", E, "--objective", "class:1000", "-o", "a.png", *FAST], r"class 1000 is out"),
    "channel index not a number": (["render", E, "--objective", "channel:stem.act:x", "-o", "a.png"],
                                   r"a channel index must be an integer, not 'x'"),
    "diversity without copies": (["render", E, "stem.act", "0", "--diversity", "stem.act", "-o", "a.png", *FAST],
                                 r"--diversity makes copies of an objective differ; add --copies 2 or more"),
    "diversity weight alone": (["render", E, "stem.act", "0", "--diversity-weight", "5", "-o", "a.png", *FAST],
                               r"--diversity-weight goes with --diversity LAYER"),
    "empty diversity layer": (["render", E, "stem.act", "0", "--diversity", "", "--copies", "2", "-o", "a.png"],
                              r"argument --diversity: invalid name"),
    # -- memory
    "memory not a size": (["render", E, "stem.act", "0", "--max-memory", "lots", "-o", "a.png"],
                          r"argument --max-memory: invalid memory size"),
    "zero memory": (["grid", E, "stem.act", "--max-memory", "0", "-o", "a.png"], r"--max-memory: invalid memory"),
    "too little memory": (["grid", E, "stem.act", "--filters", "0-1", "--max-memory", "2K", "-o", "a.png", *FAST],
                          r"more than the memory budget of 2.0 KiB"),
    # -- output files
    "output folder missing": (["render", E, "stem.act", "0", "-o", "nope/a.png", *FAST],
                              r"cannot write 'nope/a.png': folder 'nope' does not exist; create it first"),
    "output below a file": (["render", E, "stem.act", "0", "-o", "file.txt/a.png", *FAST],
                            r"cannot write 'file.txt/a.png': 'file.txt' is a file, not a folder"),
    "output is a folder": (["render", E, "stem.act", "0", "-o", "{tmp}", *FAST], r"it is a folder; give a file name"),
    "empty output": (["render", E, "stem.act", "0", "-o", ""], r"argument -o/--output: invalid path \(not empty\)"),
    "output without suffix": (["render", E, "stem.act", "0", "-o", "picture", *FAST],
                              r"cannot write 'picture': a file name without a type suffix; use .png \(or another "
                              r"type that Pillow writes: .jpg, .webp, "),
    "output of no image type": (["grid", E, "stem.act", "-o", "a.txt", *FAST],
                                r"unknown image type '.txt'; use .png \(or another type that Pillow writes: .jpg"),
    "output of a read-only type": (["render", E, "stem.act", "0", "-o", "a.psd", *FAST],
                                   r"Pillow reads .psd files here but cannot write a color picture as one; use .png"),
    "output of a type without color": (["render", E, "stem.act", "0", "-o", "a.xbm", *FAST],
                                       r"cannot write a color picture as one"),
    "output name too long": (["render", E, "stem.act", "0", "-o", LONG_NAME, *FAST],
                             r"the name 'n+\.\.\.n+\.png' is 275 bytes long \(with the 15 bytes that filterviz adds "
                             r"to name its temporary file while writing\), more than the 255"),
    "output path too long": (["render", E, "stem.act", "0", "-o", LONG_PATH, *FAST],
                             r"the path is 4226 bytes long, more than the 4095 this system allows"),
    "output with a NUL": (["render", E, "stem.act", "0", "-o", "a\0.png", *FAST],
                          r"a path cannot hold a NUL character"),
    "output in a folder not writable": (["render", E, "stem.act", "0", "-o", "{locked}/a.png", *FAST],
                                        r"folder '.*' is not writable"),
    "two objectives, one file": (["render", E, "--objective", "class:1", "--objective", "class:2",
                                  "--objective", "class:1", "-o", "{name}.png", *FAST],
                                 r"'class\(1\)' and 'class\(1\)' would both be written to 'class_1.png', the second "
                                 r"replacing the first; give each objective once"),
    "{name} copies onto the importance map": (["render", E, "stem.act", "0", "--recipe", "maco", "--copies", "2",
                                               "-o", "{name}.png", "--importance", "channel_stem.act_0_1.png", *FAST],
                                              r"'channel\(stem.act,0\)' \(copy 1\) and the importance map would both "
                                              r"be written to 'channel_stem.act_0_1.png'"),
    "importance onto the image": (["render", E, "stem.act", "0", "--recipe", "maco", "--importance", "a.png",
                                   "-o", "a.png", *FAST], r"the image and the importance map would both be written"),
    "importance without maco": (["render", E, "stem.act", "0", "--importance", "imp.png", "-o", "a.png", *FAST],
                                r"--importance writes maco's importance map, and recipe classic uses pixel; add "
                                r"--recipe maco"),
    "importance with lucid": (["render", E, "stem.act", "0", "--recipe", "lucid", "--importance", "i.png",
                               "-o", "a.png", *FAST], r"recipe lucid uses fourier"),
    "empty importance": (["render", E, "stem.act", "0", "--importance", "", "-o", "a.png"],
                         r"argument --importance: invalid path"),
    "importance of no image type": (["render", E, "stem.act", "0", "--recipe", "maco", "--importance", "i.txt",
                                     "-o", "a.png", *FAST], r"cannot write 'i.txt': unknown image type"),
    "tiled output too large": (["render", E, "--objective", "class:1", "--copies", "1000", "--size", "2000",
                                "-o", "a.png", "--steps", "1", "-q"],
                               r"the picture would be 16035x250620 px .* more than the 178956970 px that Pillow opens"),
    # -- grid
    "grid: empty filters": (["grid", E, "stem.act", "--filters", "", "-o", "a.png", *FAST],
                            r"cannot read filters '': it is empty"),
    "grid: blank filters": (["grid", E, "stem.act", "--filters", "  ", "-o", "a.png", *FAST], r"it is empty"),
    "grid: range without end": (["grid", E, "stem.act", "--filters", "0-", "-o", "a.png", *FAST],
                                r"'0-' is not an index or a range FIRST-LAST"),
    "grid: empty part": (["grid", E, "stem.act", "--filters", "0,,3", "-o", "a.png", *FAST], r"a part is empty"),
    "grid: backwards range": (["grid", E, "stem.act", "--filters", "3-1", "-o", "a.png", *FAST],
                              r"range 3-1 runs backwards \(write 1-3\)"),
    "grid: letters": (["grid", E, "stem.act", "--filters", "all", "-o", "a.png", *FAST], r"'all' is not an index"),
    "grid: underscores": (["grid", E, "stem.act", "--filters", "1_0", "-o", "a.png", *FAST], r"'1_0' is not an index"),
    "grid: filters out of range": (["grid", E, "stem.act", "--filters", "0-40", "-o", "a.png", *FAST],
                                   r"filter 40 is out of range"),
    "grid: huge margin": (["grid", E, "stem.act", "--filters", "0-1", "--margin", "100000000", "-o", "a.png", *FAST],
                          r"the picture would be 100000032x16 px \(4.5 GiB of pixels\), more than the 178956970 px "
                          r"that Pillow opens; use a smaller --margin"),
    "grid: huge margin down": (["grid", E, "stem.act", "--filters", "0-1", "--per-row", "1", "--margin", "100000000",
                                "-o", "a.png", *FAST], r"the picture would be 16x100000032 px"),
    "grid: too wide for JPEG": (["grid", E, "stem.act", "--filters", "0-1", "--margin", "70000", "-o", "a.jpg",
                                 *FAST], r"JPEG holds at most 65535 px a side"),
    "grid: zero per row": (["grid", E, "stem.act", "--per-row", "0", "-o", "a.png"], r"--per-row: invalid positive"),
    "grid: negative margin": (["grid", E, "stem.act", "--margin", "-5", "-o", "a.png"], r"--margin: invalid"),
    "grid: zero batch": (["grid", E, "stem.act", "--batch-size", "0", "-o", "a.png"], r"--batch-size: invalid"),
    "grid: missing layer": (["grid", E, "-o", "a.png"], r"required: layer"),
    # -- atlas
    "atlas: empty layers": (["atlas", E, "--layers", "", "-o", "site", *FAST],
                            r"--layers '' holds an empty name; give layer names separated by commas"),
    "atlas: only a comma": (["atlas", E, "--layers", ",", "-o", "site", *FAST], r"--layers ',' holds an empty name"),
    "atlas: trailing comma": (["atlas", E, "--layers", "stem.act,", "-o", "site", *FAST],
                              r"--layers 'stem.act,' holds an empty name"),
    "atlas: empty filters": (["atlas", E, "--layers", "stem.act", "--filters", "", "-o", "site", *FAST],
                             r"cannot read filters '': it is empty"),
    "atlas: unknown layer": (["atlas", E, "--layers", "stem.actt", "-o", "site", *FAST], r"unknown layer 'stem.actt'"),
    "atlas: into a file": (["atlas", E, "-o", "file.txt", *FAST], r"cannot write an atlas into 'file.txt': it is a file"),
    "atlas: below a file": (["atlas", E, "-o", "file.txt/site", *FAST],
                            r"cannot write an atlas into 'file.txt/site': 'file.txt' is a file, not a folder"),
    "atlas: into a folder of other files": (["atlas", E, "-o", "atlas-like", *FAST],
                                            r"folder 'atlas-like' is not empty and holds no atlas"),
    "atlas: name too long": (["atlas", E, "-o", "s" * 250, *FAST], r"cannot use folder 's+\.\.\.s+': the name 's+\.\.\.s+' is 265 bytes long"),
    "atlas: in a folder not writable": (["atlas", E, "-o", "{locked}/site", *FAST], r"is not writable"),
    "atlas: top-k without images": (["atlas", E, "--top-k", "3", "-o", "site", *FAST],
                                    r"--top-k says how many of the --images FOLDER to show"),
    "atlas: address without ray": (["atlas", E, "--address", "auto", "-o", "site", *FAST],
                                   r"--address and --gpus-per-task go with --executor ray"),
    "atlas: zero chunk": (["atlas", E, "--chunk-size", "0", "-o", "site"], r"--chunk-size: invalid positive"),
    "atlas: images name too long": (["atlas", E, "--images", "i" * 300, "-o", "site", *FAST],
                                    r"cannot use --images 'i+\.\.\.i+': the name"),
    "atlas: empty out": (["atlas", E, "-o", ""], r"argument -o/--out: invalid path"),
    # -- demo
    "demo: into a file": (["demo", "-o", "file.txt", "--model", E], r"cannot write figures into 'file.txt': it is a file"),
    "demo: below a file": (["demo", "-o", "file.txt/figures", "--model", E], r"'file.txt' is a file, not a folder"),
    "demo: empty model": (["demo", "--model", "", "-o", "figures"], r"argument --model: invalid path \(not empty\)"),
    "demo: bad weights": (["demo", "-o", "figures", "--weights", "weights.pth"], r"cannot read weights file"),
    "demo: name too long": (["demo", "-o", "f" * 250, "--model", E], r"cannot use folder 'f+\.\.\.f+': the name"),
    "demo: negative seed": (["demo", "--seed", "-3"], r"--seed: invalid"),
    "serve: missing model file": (["serve", "missing.onnx", "--cache", "{tmp}/cache"],
                                  r"model file 'missing.onnx': no such file"),
    "serve: not an atlas": (["serve", "--atlas", "atlas-like", "--cache", "{tmp}/cache"],
                            r"--atlas 'atlas-like' is not an atlas folder"),
    "serve: bad port": (["serve", "--port", "70000"], r"--port: invalid port '70000': use 0 to 65535"),
    "serve: cache is a file": (["serve", E, "--cache", "file.txt", "--port", "0"],
                               r"cannot create the cache folder 'file.txt'"),
    "serve: zero max size": (["serve", "--max-size", "0"], r"--max-size: invalid image side"),
    "serve: unknown model name": (["serve", "no_such_net", "--cache", "{tmp}/cache"], r"no_such_net"),
}


def _listing(folder: Path) -> list[str]:
    """Every file and folder below ``folder``, so that an empty folder left behind is seen too."""
    return sorted(str(Path(root, name).relative_to(folder)) for root, folders, files in os.walk(folder)
                  for name in folders + files)


@pytest.mark.parametrize("case", list(ROWS))
def test_bad_input_is_one_line_exit_2_and_nothing_written(capsys, tmp_path, monkeypatch, case):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "weights.pth").write_bytes(b"\x00" * 64)
    (tmp_path / "atlas-like").mkdir()
    (tmp_path / "atlas-like" / "notes.txt").write_text("someone's files")
    locked = unwritable_folder(tmp_path)
    if locked is not None and locked.parent == tmp_path:
        locked.mkdir()
        locked.chmod(0o555)
    argv, expected = ROWS[case]
    if any("{locked}" in arg for arg in argv) and locked is None:
        pytest.skip("no folder here that this process cannot write into")
    argv = [arg.replace("{tmp}", str(tmp_path)).replace("{locked}", str(locked)) for arg in argv]
    monkeypatch.chdir(tmp_path)
    before = _listing(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.match(r"filterviz( \w+)?: error: ", lines[0]), lines[0]
    assert expected is None or re.search(expected, lines[0]), lines[0]
    assert out == ""
    assert _listing(tmp_path) == before  # no file, no folder, no temporary file


def test_there_are_many_rows():
    assert len(ROWS) >= 50 and {argv[0] for argv, _ in ROWS.values() if argv} >= {
        "render", "grid", "atlas", "demo", "layers", "recipes"}


# -- property-based fuzzing: any text is read, or refused in one FilterVizError ----------------------

FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

_KINDS = ["channel", "neuron", "layer", "class", "logprob", "diversity", "tv", "l1", "l2", "blur", "fourier"]
_pieces = st.one_of(st.sampled_from(_KINDS), st.sampled_from([":", "+", "-", "*", " ", ".", "e", "e-", "1e999"]),
                    st.integers(-3, 2000).map(str), st.floats(allow_nan=True).map(str), st.text(max_size=3))
# Near-valid objectives, term by term: [WEIGHT*]KIND[:LAYER][:INDEX...], joined by + and -. Weights
# and indices reach their edges (0, 1e999, huge, negative), and terms repeat, so that they cancel.
_weight = st.one_of(st.just(""), st.sampled_from(["0", "1e999", "1e308", ".5", "0.3", "2e-400"]),
                    st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(repr),
                    st.integers(0, 10 ** 30).map(str)).map(lambda w: f"{w}*" if w else "")
_index = st.one_of(st.integers(-5, 10 ** 30).map(str), st.sampled_from(["", "x", "1.5", "٣"]))
_term = st.builds(lambda w, k, layer, idx: w + k + "".join(f":{part}" for part in [layer, *idx] if part is not None),
                  _weight, st.sampled_from(_KINDS), st.sampled_from([None, "stem.act", "a:b", "", "x-y"]),
                  st.lists(_index, max_size=3))
objective_like = st.one_of(st.lists(_pieces, max_size=12).map("".join),
                           st.lists(st.tuples(st.sampled_from([" + ", " - ", "+", "-"]), _term), min_size=1,
                                    max_size=4).map(lambda terms: "".join(sign + term for sign, term in terms)),
                           st.builds(lambda term, sign: f"{term}{sign}{term}", _term, st.sampled_from([" - ", "-"])))


@pytest.fixture(scope="module")
def empty_folder(tmp_path_factory):
    """An empty current folder: a fuzzed direction:LAYER:FILE must find no file to read."""
    folder = tmp_path_factory.mktemp("fuzz")
    before = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(before)


def _one_error(function, *args, **kwargs):
    """Call ``function``: its result, or None where it raised a FilterVizError with a one-line message."""
    try:
        return function(*args, **kwargs)
    except FilterVizError as exc:
        message = str(exc)
        assert message and "\n" not in message, repr(message)
        return None


@FUZZ
@given(text=st.one_of(st.text(), objective_like))
# What the fuzzing found once (kept, as random search may miss them another time):
@example(text="1e999*class:1")  # an infinite weight: a TypeError from Objective's algebra
@example(text="channel:a:0-channel:a:0")  # terms that cancel: nothing to maximize, no gradient
@example(text="1e308*tv + 1e308*tv")  # finite weights that add up to infinity
def test_parse_objective_reads_or_refuses_any_text(empty_folder, text):
    objective = _one_error(parse_objective, text)
    if objective is not None:
        assert isinstance(objective, Objective) and objective.terms
        assert all(weight == weight and abs(weight) != float("inf") for weight, _ in objective.terms)
        assert objective.name and objective.slug is not None


_filter_like = st.lists(st.one_of(st.integers(0, 10 ** 30).map(str), st.sampled_from([",", "-", " ", "", "_"]),
                                  st.text(max_size=2)), max_size=10).map("".join)


_FILTER_PART = re.compile(r" *[0-9]+ *(- *[0-9]+ *)?")  # what a part must be, to be read at all


@FUZZ
@given(text=st.one_of(st.text(), _filter_like))
@example(text="9- ")  # a range without an end was read as one index
@example(text="1_0")  # int() takes underscores...
@example(text="٣")  # ...and other scripts' digits
@example(text="0,")  # an empty part was an error, but "" too must be one, not the default filters
def test_parse_filters_reads_or_refuses_any_text(text):
    ranges = _one_error(parse_filters, text)
    if ranges is not None:  # read only if every part is an index or a range: nothing skipped or guessed
        assert ranges and all(isinstance(r, range) and 0 <= r.start < r.stop for r in ranges)
        assert len(ranges) == text.count(",") + 1
        assert all(_FILTER_PART.fullmatch(part) for part in text.split(",")), text


def _values_of(name: str, kind: str) -> st.SearchStrategy:
    """Random values of a recipe field's type, its edges included (nan, infinities, huge, negative)."""
    from filterviz.recipes import field_registry

    numbers = st.one_of(st.floats(), st.integers(-10 ** 20, 10 ** 20))
    registry = field_registry(name)
    choices = registry.names() if registry is not None else ()
    transforms = st.sampled_from(["jitter:", "pad:3", "scale:", "rotate:5,", "crop:0.5,1", "flip", "noise:-1",
                                  "resize:0", "resize:8", "nope"])
    by_kind = {
        "int": st.integers(-10 ** 20, 10 ** 20), "int | None": st.none() | st.integers(-10 ** 20, 10 ** 20),
        "float": st.floats(), "bool": st.booleans(), "str": st.text(), "str | None": st.none() | st.text(),
        "tuple[float, ...]": st.lists(numbers, max_size=5).map(tuple),
        "tuple[float, float] | None": st.none() | st.tuples(numbers, numbers),
        "tuple[str, ...]": st.lists(transforms | (transforms.flatmap(lambda t: st.text(max_size=4).map(t.__add__))),
                                    max_size=3).map(tuple),
    }
    if choices:
        return st.sampled_from(choices) | st.text()
    return by_kind[kind]


_FIELDS = {item.name: str(item.type) for item in fields(Recipe)}


@FUZZ
@given(data=st.data(), name=st.sampled_from(list(RECIPES)), field=st.sampled_from(sorted(_FIELDS)))
def test_recipe_overrides_give_a_recipe_or_one_error(data, name, field):
    value = data.draw(_values_of(field, _FIELDS[field]), label=field)
    recipe = _one_error(get_recipe, name, **{field: value})
    if recipe is not None:  # a recipe that can run: finite numbers, positive where they must be
        assert isinstance(recipe, Recipe)
        numbers = [getattr(recipe, f) for f in ("learning_rate", "init_std", "noise", "tv", "l1", "l2", "blur")]
        numbers += [*recipe.scales, *recipe.angles, *(recipe.crop or ())]
        assert all(math.isfinite(n) for n in numbers), recipe
        assert recipe.learning_rate > 0 and min(recipe.noise, recipe.init_std, recipe.tv, recipe.l1) >= 0, recipe
        assert recipe.steps <= 10 ** 6 and (recipe.size or 1) <= 8192
        recipe.transforms()
        recipe.describe()


@pytest.mark.parametrize(("field", "value"), [
    # What the fuzzing found: values of the right type that gave a recipe that cannot run.
    ("noise", float("nan")), ("init_std", -1.0), ("tv", -0.5), ("learning_rate", 0.0), ("scales", (float("inf"),)),
    ("angles", (float("nan"),)), ("size", 8193), ("steps", 10 ** 20),
])
def test_recipe_values_found_by_fuzzing_are_refused(field, value):
    with pytest.raises(FilterVizError, match=f"recipe lucid: .*{field.split('_')[0]}"):
        get_recipe("lucid", **{field: value})


@FUZZ
@given(overrides=st.dictionaries(st.sampled_from(sorted(_FIELDS)),
                                 st.one_of(st.text(), st.floats(), st.integers(), st.booleans(),
                                           st.lists(st.floats(), max_size=3), st.none()), max_size=4))
@example(overrides={"steps": "40"})  # found: a TypeError from comparing text with 0
@example(overrides={"crop": (0.5,)})  # found: an IndexError
@example(overrides={"scales": 1.1})  # found: a TypeError from iterating a number
def test_recipe_overrides_of_any_type_give_one_error(overrides):
    """A value of the wrong type (from Python: ``steps="40"``) is one FilterVizError, not a TypeError."""
    _one_error(get_recipe, "lucid", **overrides)


_SIZE_COMMANDS = [["layers", E], ["render", E, "stem.act", "0", "-o", "a.png"], ["grid", E, "stem.act", "-o", "a.png"],
                  ["atlas", E, "-o", "site"]]


@FUZZ
@given(text=st.one_of(st.text(), st.integers(-10 ** 12, 10 ** 12).map(str)), command=st.sampled_from(_SIZE_COMMANDS))
def test_size_option_reads_or_refuses_any_text(capsys, text, command):
    parser = cli.build_parser()
    try:
        args = parser.parse_args([*command, "--size", text])
    except SystemExit as exc:
        assert exc.code == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and ": error: argument --size: " in err, err
        return
    assert isinstance(args, argparse.Namespace) and 1 <= args.size <= 8192 and args.size == int(text)


@pytest.fixture(scope="module")
def tiny_module():
    from conftest import tiny_model

    return tiny_model()


@settings(max_examples=50, deadline=None)  # each size probes the model: a forward pass or a few
@given(size=st.integers(1, 64))
def test_any_size_gives_layers_or_one_size_error(tiny_module, size):
    layers = _one_error(tiny_module.layers, size)
    if layers is not None:
        assert [info.name for info in layers]
        info = _one_error(tiny_module.layer_info, "features.6", size)
        assert info is None or info.channels == 8


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(1, 40))
def test_layers_command_at_any_size_lists_or_says_one_line(capsys, size):
    code = main(["layers", E, "--size", str(size)])
    out, err = capsys.readouterr()
    assert (code == 0 and out and not err) or (code == 2 and len(err.splitlines()) == 1 and not out), err
