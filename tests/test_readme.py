"""README's examples run as written, at tiny sizes and steps, and never render a dead unit.

Every ``filterviz ...`` line of README's command blocks runs through ``main()`` in-process, with its
output paths moved into a temporary folder, ``--size``/``--steps`` made tiny and atlases cut to two
filters per layer. Lines that need what this machine cannot have (pretrained weights from the
network, a cluster) are listed in SKIPPED with the reason; files a line names are made here.
The Python API block runs too, with its steps made small the same way.
"""

from __future__ import annotations

import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import filterviz
from filterviz.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"

# Lines that cannot run here, by a word they hold, and why.
SKIPPED = {
    "--executor ray": "starts a Ray cluster (tests/test_atlas.py runs one)",
    "--address": "needs a running Ray cluster",
    "vgg16_features-amdegroot": "a VGG16 checkpoint file the user downloaded",
    "timm:convnext_tiny stages": "pretrained timm weights from the network",
    "hf:google/vit-base-patch16-224": "a Hugging Face model from the network (tests/test_hf.py loads a folder)",
    "open_clip:ViT-B-32/openai": "pretrained CLIP weights from the network (tests/test_clip.py renders text:)",
    "render keras:VGG16": "pretrained Keras weights from the network",
    "atlas vgg16": "pretrained VGG16 weights from the network",
    "filterviz demo": "the demo's fallback is run by tests/test_book.py",
    "filterviz serve": "starts a server (tests/test_serve_live.py runs one, with README's curl examples)",
    "~/photos": "a user's photo folder (tests/test_atlas.py runs --images)",
    "my_model.keras": "a user's Keras file (tests/test_sources.py loads Keras files)",
    "whole_model.pth": "a user's pickled model (tests/test_sources.py loads one)",
    "weights.pth --arch": "a user's state dict (tests/test_sources.py loads one)",
}


def _commands(text: str) -> list[str]:
    """The ``filterviz`` lines of the plain fenced blocks, continuation lines joined, comments cut."""
    commands = []
    # Fences are paired with their language (```python ... ```), so that a closing fence never opens a block.
    for block in [body for language, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
                  if not language]:
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("filterviz "):
                commands.append(shlex.split(line, comments=True))
    return [" ".join(shlex.quote(word) for word in words) for words in commands]


def _tiny(command: str, folder: Path) -> list[str]:
    """The command with outputs in ``folder``, tiny sizes and steps, and atlases of two filters a layer
    (a grid keeps its filters, so every unit a grid line names is checked)."""
    words = shlex.split(command)[1:]
    out: list[str] = []
    skip_value = False
    for index, word in enumerate(words):
        if skip_value:
            skip_value = False
            continue
        if word in ("-o", "--output", "--out", "--importance"):
            out += [word, str(folder / Path(words[index + 1]).name)]
            skip_value = True
        elif word in ("--size", "--steps") and words[0] in ("render", "grid", "atlas", "activation-atlas"):
            skip_value = True  # replaced below
        elif word == "--filters" and words[0] == "atlas":
            skip_value = True
        else:
            out.append(word)
    if out[0] in ("render", "grid", "atlas", "activation-atlas"):
        out += ["--size", "32", "--steps", "3"]
    if out[0] == "atlas":
        out += ["--filters", "0-1"]
    return out


def test_readme_commands_are_all_accounted_for():
    commands = _commands(README.read_text())
    assert len(commands) > 20
    runnable = [c for c in commands if not any(word in c for word in SKIPPED)]
    assert len(runnable) >= 12, runnable


@pytest.fixture(scope="module")
def example_files(tmp_path_factory) -> Path:
    """The model files README's lines name, made small: a TorchScript file and a VGG exported to ONNX, and
    a gray (1-channel) TorchScript model and a 5-band ONNX model for "Inputs that are not RGB", a
    photo (scikit-image's cat) for --start, and a folder of photos."""
    folder = tmp_path_factory.mktemp("files")
    from conftest import save_bands, tiny_model

    torch.jit.trace(tiny_model(dtype=torch.float32).module, torch.zeros(1, 3, 16, 16)).save(str(folder / "traced.pt"))
    save_bands(folder / "gray.pt", 1)
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.chelsea()).save(folder / "photo.jpg")  # the photo of --start lines
    (folder / "photos").mkdir()  # README's `--images photos`: a few real photos, made small
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        image = Image.fromarray(getattr(skimage_data, name)())
        image.thumbnail((64, 64))
        image.save(folder / "photos" / f"{name}.png")
    pytest.importorskip("onnx2torch")
    save_bands(folder / "bands.onnx", 5)
    import torchvision

    vgg = torchvision.models.vgg11(weights=None).eval()
    torch.onnx.export(vgg, torch.zeros(1, 3, 224, 224), str(folder / "exported.onnx"), dynamo=False)
    return folder


@pytest.mark.parametrize("command", [c for c in _commands(README.read_text())
                                     if not any(word in c for word in SKIPPED)])
def test_readme_command_runs_and_renders_no_dead_unit(command, tmp_path, capsys, monkeypatch, example_files):
    monkeypatch.chdir(example_files)  # the file names README uses are found there
    argv = _tiny(command, tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, (argv, captured.err)
    assert "is dead" not in captured.err, (argv, captured.err)
    if argv[0] == "activation-atlas":
        out = Path(argv[argv.index("--out") + 1])
        assert (out / "activations").is_dir() and list((out / "activations").glob("*/index.html")), argv
    if argv[0] in ("render", "grid", "atlas"):
        # It wrote what it said: each file or folder it names, and for -o NAME_{name}.png, files of that pattern.
        named = [Path(argv[i + 1]) for i, word in enumerate(argv) if word in ("-o", "--output", "--out", "--importance")]
        assert named, argv
        for path in named:
            found = list(path.parent.glob(path.name.replace("{name}", "*"))) if "{name}" in path.name else [path]
            assert found and all(p.exists() for p in found), (argv, path)
            if path.suffix == ".png":
                assert all(min(Image.open(p).size) >= 32 for p in found), argv  # images of the --size given, or grids
            else:
                assert (path / "index.html").is_file(), argv


def test_readme_python_block_runs(tmp_path, monkeypatch):
    text = README.read_text()
    block = re.search(r"^## Python API\n\n```python\n(.*?)^```", text, flags=re.S | re.M).group(1)
    block = re.sub(r"steps=\d+", "steps=3", block)
    monkeypatch.chdir(tmp_path)
    # The book's defaults (40 steps at 150 px) made small, as in the command lines above.
    for name, recipe in list(filterviz.RECIPES.items()):
        monkeypatch.setitem(filterviz.RECIPES, name, recipe.replace(steps=3))
    monkeypatch.setattr(filterviz.book.generate_pattern, "__defaults__", (48, 3, 1.0, None))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    said = [str(w.message) for w in caught if issubclass(w.category, filterviz.FilterVizWarning)]
    # The one dead unit README shows on purpose: the demo's grid, the book's layer choice (its second picture).
    documented = "filter 61 of blocks.3.depthwise.act of efficientnet-lite0 is dead"
    assert not [m for m in said if "is dead" in m and not m.startswith(documented)], said
    assert (tmp_path / "filter.png").exists() and (tmp_path / "atlas" / "index.html").exists()
    # filter.png is filter 0 of blocks.3.depthwise.act at seed 0, at the (here made small) defaults.
    model = filterviz.load_model("efficientnet-lite0", device="cpu")
    expected = filterviz.render_filters(model, "blocks.3.depthwise.act", [0], size=48, steps=3, learning_rate=1.0,
                                         seed=0, precision="fp32")  # generate_pattern is the book's: fp32
    assert np.array_equal(np.array(Image.open(tmp_path / "filter.png")), expected.images[0])


def test_readme_extending_blocks_run(monkeypatch, tmp_path):
    """The Extending section's blocks run, and each part they register is what the render used: the
    scores are recomputed here from the parts' own definitions, and the command line knows them."""
    import numpy as np
    from PIL import Image

    from filterviz import image, objectives, optimizers, params
    from filterviz import transforms as transforms_module
    from filterviz.models import sources

    monkeypatch.setattr(sources, "_added", [])  # what the blocks register is gone after the test
    for registry in (params.PARAMETERIZATIONS, objectives.TERMS, transforms_module.TRANSFORMS,
                     optimizers.OPTIMIZERS, image.DEPROCESS):
        monkeypatch.setattr(registry, "_parts", dict(registry._parts))
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    section = re.search(r"^## Extending\n(.*?)^## ", text, flags=re.S | re.M).group(1)
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)
    assert len(blocks) == 4
    namespace: dict[str, object] = {"__name__": "readme_extending"}
    for block in blocks:
        exec(compile(block, "README.md", "exec", dont_inherit=True), namespace)
    render = namespace["render"]
    assert render.model == "zoo:resnet18" and (render.activation > render.start_activation).all()
    assert any(type(s).__name__ == "RandomZoo" for s in filterviz.model_sources())

    model, layer = namespace["model"], "blocks.3.depthwise.act"
    with torch.no_grad(), model.truncated(layer) as run:
        # The parameterization: the render started from the image that Coarse makes.
        start = namespace["Coarse"]().create(64, [0], 0)().to(model.dtype)
        assert namespace["smooth"].start_score[0] == pytest.approx(run(start)[0, 5].mean().item(), rel=1e-5)
        # The term: its score is the central half of the channel's map, less 0.1 of the total variation.
        centered = namespace["centered"]
        pixels = torch.as_tensor(centered.pixels).permute(0, 3, 1, 2).to(model.dtype)
        maps = run(pixels)[0, 5]
        side = maps.shape[-1]
        x = pixels / 255
        tv = ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()).item()
        expected = maps[side // 4: side - side // 4, side // 4: side - side // 4].mean().item() - 0.1 * tv
        assert centered.score[0] == pytest.approx(expected, rel=1e-4)
    # The transform and the objects: each changes the picture from the recipe's own.
    plain = filterviz.render(model, [f"channel:{layer}:5"], "lucid", size=64, steps=16, seed=0)
    assert not np.array_equal(plain.pixels, namespace["shifted"].pixels)
    assert not np.array_equal(plain.pixels, namespace["own"].pixels)
    # The command line takes the registered names, and draws the same picture as the API.
    command = ["render", "efficientnet-lite0", "--objective", f"center:{layer}:5", "--recipe", "lucid",
               "--parameterization", "coarse", "--transform", "colorshift:20", "--size", "32", "--steps", "3",
               "--seed", "0", "-q", "-o", str(tmp_path / "f.png")]
    assert main(command) == 0
    same = filterviz.render(model, [f"center:{layer}:5"], "lucid", parameterization="coarse",
                            extra_transforms=("colorshift:20",), size=32, steps=3, seed=0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f.png")), same.images[0])
    assert "center:LAYER:K" in filterviz.objectives.objective_help()