"""The command line imports torch only when a command needs it: help, `recipes`, `models` and usage errors
answer without torch (nor torchvision, numpy or Pillow), from declarations that say what the parts say;
`layers` builds a named model's architecture and reads no weights.

Each check runs a fresh Python process, as a user's command does, and reports the modules it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import filterviz
from filterviz import catalog
from filterviz.cli import main

HEAVY = ("torch", "torchvision", "numpy", "PIL")
MARK = "\n@@lazy-imports@@"
EMBEDDED = "efficientnet-lite0"
# What a process reports once its work is done: its exit status, the heavy modules it imported, and
# the weight files it opened and the connections it made (seen by an audit hook, set up first).
PROLOGUE = """
import json, os, sys
opened, connected = [], []
WEIGHTS = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar", ".h5", ".keras", ".onnx", ".npz")

def hook(event, args):
    if event == "open" and args and str(args[0]).lower().endswith(WEIGHTS):
        opened.append(str(args[0]))
    elif event == "socket.connect":
        connected.append(str(args[1:]))

sys.addaudithook(hook)
"""
EPILOGUE = """
sys.stdout.flush()
print({mark!r} + json.dumps({{"code": code, "heavy": [m for m in {heavy!r} if m in sys.modules],
                               "opened": opened, "connected": connected}}))
"""


def _env(*extra_paths: str) -> dict[str, str]:
    source = str(Path(filterviz.__file__).parents[1])
    paths = [source, *extra_paths, os.environ.get("PYTHONPATH")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))}


def _run(code: str, *extra_paths: str, cwd: Path | None = None) -> tuple[dict, str, str]:
    """Run ``code`` (which sets ``code``, an exit status) in a new process: its report, stdout and stderr."""
    script = PROLOGUE + code + EPILOGUE.format(mark=MARK, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env(*extra_paths),
                          cwd=cwd, timeout=600)
    out, _, report = done.stdout.rpartition(MARK)
    assert report, f"no report (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(report), out, done.stderr


def _cli(*argv: str, extra_paths: tuple[str, ...] = (), cwd: Path | None = None) -> tuple[dict, str, str]:
    return _run(f"from filterviz.cli import main\ncode = main({list(argv)!r})\n", *extra_paths, cwd=cwd)


def _in_process(capsys, *argv: str) -> tuple[int, str, str]:
    """The same command in this process, where torch and every part's module are imported."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_importing_the_command_line_or_the_package_imports_no_torch():
    report, _, _ = _run("import filterviz.cli, filterviz\n"
                        "assert filterviz.__version__ and filterviz.FilterVizError and filterviz.DEFAULT_MODEL\n"
                        "code = 0\n")
    assert report == {"code": 0, "heavy": [], "opened": [], "connected": []}


def test_the_api_is_there_when_used():
    report, out, _ = _run("import filterviz\n"
                          "from filterviz import *\n"
                          "names = [name for name in filterviz.__all__ if getattr(filterviz, name, None) is None]\n"
                          "print(names, filterviz.render.__module__, filterviz.book.__name__)\n"
                          "code = 0\n")
    assert report["code"] == 0 and "torch" in report["heavy"]
    assert out.strip() == "[] filterviz.ascent filterviz.book"


@pytest.mark.parametrize("command", [[], ["models"], ["layers"], ["render"], ["recipes"], ["grid"], ["atlas"], ["serve"],
                                     ["demo"]], ids=lambda command: " ".join(command) or "filterviz")
def test_help_imports_no_torch_and_says_what_the_parts_say(command, capsys):
    report, out, err = _cli(*command, "--help")
    assert report == {"code": 0, "heavy": [], "opened": [], "connected": []}
    # The help made from the declarations is the help made from the parts themselves.
    assert (0, out, err) == _in_process(capsys, *command, "--help")


@pytest.mark.parametrize("command", [["recipes"], ["recipes", "maco"], ["models"]], ids=" ".join)
def test_recipes_and_models_import_no_torch(command, capsys):
    report, out, err = _cli(*command)
    assert report == {"code": 0, "heavy": [], "opened": [], "connected": []}
    assert (0, out, err) == _in_process(capsys, *command)
    if command == ["models"]:
        assert out.startswith(f"{EMBEDDED}  (embedded default, works offline)\nalexnet\n") and "\nvgg16\n" in out


@pytest.mark.parametrize("argv, message", [
    (["render", EMBEDDED, "-o", "x.png", "--bogus"], "filterviz: error: unrecognized arguments: --bogus (see filterviz "
                                                     "--help)"),
    (["render", EMBEDDED, "-o", "x.png", "--recipe", "nope"], "filterviz render: error: argument --recipe: invalid "
                                                              "choice: 'nope' (choose from 'classic', 'lucid', "
                                                              "'maco', 'lucid-original') (see filterviz render --help)"),
    (["layers", EMBEDDED, "--layout", "x=tokens:abc"], "filterviz layers: error: argument --layout: tokens takes the "
                                                       "number of prefix tokens (class, register tokens) before the "
                                                       "patches: tokens:1, not tokens:abc (see filterviz layers --help)"),
    (["render", EMBEDDED, "--objective", "chanel:3", "-o", "x.png"], "filterviz: error: cannot read objective term "
                                                                     "'chanel:3'; use channel:LAYER:K, "),
    (["render", EMBEDDED, "--objective", "class:abc", "--layout", "x=nhwc", "-o", "x.png"],
     "filterviz: error: a class index must be an integer, not 'abc'"),
    (["render", EMBEDDED, "--objective", "channel:stem:1 + 1e999*tv", "-o", "x.png"],
     "filterviz: error: weight 1e999 of objective term '1e999*tv' is too large; use a finite number such as 0.3"),
], ids=["bad option", "bad choice", "bad layout", "bad term", "bad number", "bad weight"])
def test_usage_errors_and_bad_objectives_are_one_line_without_torch(argv, message, tmp_path, capsys):
    report, out, err = _cli(*argv, cwd=tmp_path)
    assert report == {"code": 2, "heavy": [], "opened": [], "connected": []}
    assert out == "" and err.count("\n") == 1 and err.startswith(message)
    assert (2, out, err) == _in_process(capsys, *argv)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("model", [EMBEDDED, "resnet18"])
def test_layers_reads_no_weights_and_shows_the_same_table(model, capsys):
    report, out, err = _cli("layers", model, "--size", "64")
    assert report["code"] == 0 and report["opened"] == [] and report["connected"] == []
    assert "torch" in report["heavy"]  # the command needs it: imported when it runs
    assert (0, out, err) == _in_process(capsys, "layers", model, "--size", "64")
    lines = out.splitlines()
    if model == EMBEDDED:
        assert lines[0] == "input: RGB, (pixels - [127, 127, 127]) / [128, 128, 128], NCHW, any size (default 224)"
        assert lines[2].split() == ["stem.conv", "Conv2dDynamicSamePadding", "nchw", "32x32,", "32"]
        assert lines[-1].split() == ["classifier", "Linear", "vector", "1000"]
    else:
        assert lines[0] == ("input: RGB, (pixels - [123.67, 116.28, 103.53]) / [58.395, 57.12, 57.375], NCHW, any "
                            "size (default 224)")
        assert lines[2].split() == ["conv1", "Conv2d", "nchw", "32x32,", "64"]
        assert lines[-1].split() == ["fc", "Linear", "vector", "1000"]


def test_layers_with_the_weights_would_be_seen():
    """The audit hook above does see weights read: the same listing with the weights loaded opens the file."""
    report, out, _ = _run("from filterviz import cli\n"
                          "load = cli._load\n"
                          "cli._load = lambda args, load_weights=True: load(args, True)\n"
                          f"code = cli.main(['layers', {EMBEDDED!r}, '--size', '64'])\n")
    assert report["code"] == 0 and [Path(file).name for file in report["opened"]] == ["efficientnet-lite0-57934424.pth"]


def test_a_plugin_from_an_entry_point_shows_in_the_help(tmp_path):
    (tmp_path / "fv_invert.py").write_text(
        "import numpy as np\nfrom filterviz import Deprocess\n\n"
        "INVERT = Deprocess('invert', lambda p: 255 - np.clip(np.rint(p), 0, 255).astype(np.uint8))\n")
    info = tmp_path / "fv_invert-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fv-invert\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[filterviz.deprocess]\ninvert = fv_invert:INVERT\n")
    report, out, _ = _cli("render", "--help", extra_paths=(str(tmp_path),))
    assert report["code"] == 0 and "torch" not in report["heavy"]
    assert "--deprocess {book,none,stretch,invert}" in " ".join(out.split())


# -- the declarations say what the parts say ------------------------------------------------------
REGISTRIES = {"parameterization": "PARAMETERIZATIONS", "optimizer": "OPTIMIZERS", "transform": "TRANSFORMS",
              "deprocess mode": "DEPROCESS"}


def test_every_built_in_part_is_declared():
    """What filterviz's own modules register, in a process where they are all imported and no plugin is read,
    is what the catalog declares, in the same order."""
    report, out, _ = _run("import importlib.metadata\n"
                          "importlib.metadata.entry_points = lambda group=None: []\n"
                          "import filterviz.ascent, filterviz.image\n"
                          "from filterviz import catalog\n"
                          f"print(json.dumps({{kind: list(getattr(catalog, name).parts()) for kind, name in "
                          f"{REGISTRIES!r}.items()}}))\n"
                          "code = 0\n")
    registered = json.loads(out)
    for kind, name in REGISTRIES.items():
        assert registered[kind] == list(getattr(catalog, name).declarations()), f"declare each {kind} in catalog.py"


@pytest.mark.parametrize("registry", [getattr(catalog, name) for name in REGISTRIES.values()],
                         ids=lambda registry: registry.kind)
def test_each_declared_part_says_what_the_part_says(registry):
    import filterviz.ascent  # noqa: F401 - every part's module

    for name, declaration in registry.declarations().items():
        part = registry.get(name)
        assert declaration.part is part and declaration.module == (part if isinstance(part, type)
                                                                    else type(part)).__module__
        for fact, value in declaration.facts.items():
            assert getattr(part, fact) == value, (name, fact)


def test_each_declared_source_is_what_its_module_registers():
    from filterviz.models.sources import model_sources
    from filterviz.models.sources.torchvision_zoo import torchvision_model_names

    builtin = [source for source in model_sources() if type(source).__module__.startswith("filterviz.")]
    assert [(type(s).__module__, type(s).__qualname__) for s in builtin] == [(d.module, d.qualname)
                                                                            for d in catalog.SOURCES]
    for source, declaration in zip(builtin, catalog.SOURCES):
        assert (source.usage, source.description, source.extra) == (declaration.usage, declaration.description,
                                                                     declaration.extra)
        assert list(source.names()) == list(declaration.names())
    assert catalog.torchvision_names() == torchvision_model_names()


def test_torchvision_names_are_listed_for_the_installed_release():
    """`filterviz models` lists torchvision's names without importing it only for the release they were
    taken from; after an upgrade, refresh TORCHVISION_RELEASE and TORCHVISION_NAMES in catalog.py."""
    from filterviz.models.sources.torchvision_zoo import torchvision_model_names

    assert catalog.torchvision_release() == catalog.TORCHVISION_RELEASE
    assert list(catalog.TORCHVISION_NAMES) == torchvision_model_names()


def test_the_names_the_parser_shows_are_the_ones_used():
    from filterviz import device
    from filterviz.models.sources import embedded, torch_files

    assert device.PRECISIONS is catalog.PRECISIONS and torch_files.SUFFIXES is catalog.TORCH_SUFFIXES
    assert embedded.NAME == catalog.DEFAULT_MODEL == filterviz.DEFAULT_MODEL
