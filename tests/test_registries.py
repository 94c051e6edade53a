"""Registered parts: parameterizations, optimizers, transforms, objective terms and deprocess modes are
each one class (or instance) plus one registration, by a call or an entry point, and what a render does
with a registered part is what the part says (checked against the part's own arithmetic)."""

from __future__ import annotations

import importlib.metadata
import math
import sys
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import filterviz
from filterviz import image, objectives, optimizers, params, transforms
from filterviz.cli import main
from filterviz.errors import FilterVizError
from filterviz.plan import RenderParts, image_bytes
from filterviz.recipes import RECIPES, Recipe, get_recipe

from conftest import tiny_model

REGISTRIES = (params.PARAMETERIZATIONS, objectives.TERMS, transforms.TRANSFORMS, optimizers.OPTIMIZERS,
              image.DEPROCESS)


@pytest.fixture
def clean(monkeypatch):
    """What a test registers is gone after it; installed plugins are not read."""
    for registry in REGISTRIES:
        monkeypatch.setattr(registry, "_parts", dict(registry._parts))
        monkeypatch.setattr(registry, "_plugins_read", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [])


class Gray(filterviz.Parameterization):
    """A uniform image: one number per color, starting at mid-gray."""

    name = "gray"

    def create(self, size, keys, seed, start=None):
        return _GrayImage(len(keys), size)


class _GrayImage(torch.nn.Module):
    def __init__(self, count, size):
        super().__init__()
        self.color = torch.nn.Parameter(torch.zeros(count, 3, 1, 1, dtype=torch.float64))
        self.size = size

    def forward(self):
        return (torch.sigmoid(self.color) * 255).expand(-1, -1, self.size, self.size)


def test_a_registered_parameterization_is_used_by_name_and_as_an_object(clean):
    filterviz.register_parameterization(Gray)
    model = tiny_model()
    by_name = filterviz.render(model, ["channel:features.1:0"], parameterization="gray", size=8, steps=3, seed=0)
    by_object = filterviz.render(model, ["channel:features.1:0"], parameterization=Gray(), size=8, steps=3, seed=0)
    assert np.array_equal(by_name.pixels, by_object.pixels)
    # Every pixel of an image is the same color, and it started at mid-gray.
    assert np.ptp(by_name.pixels[0].reshape(-1, 3), axis=0).max() == 0
    with torch.no_grad(), model.truncated("features.1") as run:
        start = run(torch.full((1, 3, 8, 8), 127.5, dtype=torch.float64))[0, 0].mean().item()
    assert by_name.start_score[0] == pytest.approx(start)
    assert "gray" in Recipe(parameterization="gray").describe()


def test_names_are_checked_and_never_replaced(clean):
    with pytest.raises(FilterVizError, match="parameterization 'fourier' is already registered"):
        filterviz.register_parameterization(type("Fourier2", (filterviz.Parameterization,), {"name": "fourier"}))
    filterviz.register_parameterization(params.FourierParameterization)  # the same class again: harmless
    with pytest.raises(FilterVizError, match="must be lowercase letters"):
        filterviz.register_parameterization(type("Bad", (filterviz.Parameterization,), {"name": "Bad Name"}))
    with pytest.raises(FilterVizError, match="must be a Parameterization subclass, not a int"):
        filterviz.register_parameterization(3)
    with pytest.raises(FilterVizError, match="objective term 'channel' is already registered"):
        filterviz.register_term(type("Mine", (filterviz.Term,), {"syntax": ("channel:LAYER",)}))
    with pytest.raises(FilterVizError, match="parameterization must be pixel, fourier or maco"):
        Recipe(parameterization="nope")


def test_a_part_from_an_entry_point_shows_in_the_command_line(clean, monkeypatch, capsys):
    plugin = types.ModuleType("filterviz_gray_plugin")
    plugin.Gray = Gray
    monkeypatch.setitem(sys.modules, "filterviz_gray_plugin", plugin)
    point = importlib.metadata.EntryPoint("gray", "filterviz_gray_plugin:Gray", "filterviz.parameterizations")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [point] if group == "filterviz.parameterizations" else [])
    assert main(["render", "--help"]) == 0
    assert "gray" in capsys.readouterr().out.split("--parameterization")[1].split("}")[0]
    assert get_recipe("classic", parameterization="gray").parameterization == "gray"


def test_a_broken_plugin_is_one_line(clean, monkeypatch):
    point = importlib.metadata.EntryPoint("broken", "no_such_module_here:Part", "filterviz.transforms")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [point])
    with pytest.raises(FilterVizError, match=r"^the transform plugin 'broken' \(no_such_module_here:Part\) cannot be "
                                             r"loaded: No module named 'no_such_module_here'; reinstall"):
        transforms.parse_transform("jitter:1")


def test_the_book_step_and_torch_optimizers_do_their_own_arithmetic():
    torch.manual_seed(0)
    start = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    grad = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    # The book: each image's gradient over its own RMS, times the step.
    x = torch.nn.Parameter(start.clone())
    optimizers.OPTIMIZERS.get("ascent").start([x], 0.5)([grad])
    rms = grad.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
    assert torch.equal(x.detach(), start + grad / (rms + 1e-5) * 0.5)
    # Adam, maximizing: one step moves each number by the rate, uphill (Adam's first step is lr * sign).
    y = torch.nn.Parameter(start.clone())
    optimizers.OPTIMIZERS.get("adam").start([y], 0.1)([grad])
    assert torch.allclose(y.detach() - start, 0.1 * grad.sign(), atol=1e-6)
    # A torch.optim class is taken as it is, made to maximize.
    z = torch.nn.Parameter(start.clone())
    optimizers.as_optimizer(torch.optim.SGD).start([z], 0.1)([grad])
    assert torch.allclose(z.detach(), start + 0.1 * grad)
    with pytest.raises(FilterVizError, match="optimizer must be a name"):
        optimizers.as_optimizer(3)


def test_a_registered_optimizer_and_deprocess_mode_are_used(clean):
    filterviz.register_optimizer(filterviz.TorchOptimizer("sgd", torch.optim.SGD, moments=0))
    filterviz.register_deprocess(filterviz.Deprocess("negative", lambda p: 255 - np.clip(np.rint(p), 0, 255)
                                                     .astype(np.uint8)))
    model = tiny_model()
    result = filterviz.render(model, ["channel:features.1:0"], optimizer="sgd", deprocess="negative", size=8,
                              steps=2, seed=0, learning_rate=0.5)
    assert np.array_equal(result.images[0], 255 - np.clip(np.rint(result.pixels[0]), 0, 255).astype(np.uint8))
    assert result.recipe.optimizer == "sgd"
    filterviz.register_deprocess(filterviz.Deprocess("broken", lambda p: p))  # float64, not uint8
    with pytest.raises(FilterVizError, match="deprocess mode 'broken' gave a float64 array"):
        _ = filterviz.render(model, ["channel:features.1:0"], deprocess="broken", size=8, steps=1, seed=0).images


def _old_image_bytes(recipe: Recipe, size: int, element: int) -> int:
    """The memory estimate as it was written before transforms and parameterizations declared their
    own figures: the new one must give the same numbers (batch sizes, and so bytes, depend on it)."""
    pixels = 3 * size * size
    half = 3 * size * (size // 2 + 1)
    parameters = {"pixel": pixels, "fourier": 2 * half, "maco": half}[recipe.parameterization]
    slots = 2 + (2 if recipe.optimizer in ("adam", "nadam") else 0)
    kept = {"pixel": 1, "fourier": 6, "maco": 10}[recipe.parameterization] * pixels
    side = size + 2 * recipe.pad
    stages = 1 + sum(bool(x) for x in (recipe.pad, recipe.jitter, recipe.scales, recipe.angles, recipe.crop,
                                       recipe.flip, recipe.final_jitter, recipe.noise))
    grids = sum(bool(x) for x in (recipe.scales, recipe.angles, recipe.crop))
    views = recipe.views * (3 * stages + 2 * grids) * side * side
    penalties = 2 * pixels * sum(bool(w) for w in (recipe.tv, recipe.l1, recipe.l2, recipe.blur))
    importance = 8 * size * size if recipe.parameterization == "maco" else 0
    return int((parameters * slots + kept + views + penalties) * element + importance)


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("changes", [{}, {"pad": 3, "tv": 0.1}, {"views": 3, "flip": True, "jitter": 0},
                                     {"view_size": 40, "noise": 1.0}])
def test_the_parts_memory_figures_equal_the_recipes_formula(name, changes):
    recipe = RECIPES[name].replace(**changes)
    parts = RenderParts.resolve(recipe)
    for size in (16, 64, 224):
        assert image_bytes(parts, recipe, size, 4) == _old_image_bytes(recipe, size, 4)
        old_view = (recipe.view_size or size + 2 * recipe.pad - recipe.jitter - recipe.final_jitter)
        assert parts.view_side(size) == old_view


@pytest.mark.parametrize(("text", "kind", "side"), [
    ("pad:3", transforms.Pad, 16), ("jitter:2", transforms.Jitter, 8), ("scale:0.9,1.1", transforms.RandomScale, 10),
    ("rotate:-5,5", transforms.RandomRotate, 10), ("crop:0.5,1", transforms.RandomCrop, 10),
    ("flip", transforms.RandomFlip, 10), ("noise:2", transforms.Noise, 10), ("resize:7", transforms.Resize, 7),
])
def test_transforms_read_their_syntax_and_say_their_side(text, kind, side):
    transform = transforms.parse_transform(text)
    assert type(transform) is kind
    generators = [torch.Generator().manual_seed(i) for i in range(2)]
    out = transform(torch.full((2, 3, 10, 10), 100.0, dtype=torch.float64), generators)
    assert out.shape[-1] == transform.output_side(10) == side


@pytest.mark.parametrize("text", ["jitter:x", "pad:-1", "scale:", "scale:0", "crop:0.5", "noise:-1", "resize:0",
                                  "flip:2", "nope", "rotate:nan"])
def test_bad_transform_text_is_one_line(text):
    with pytest.raises(FilterVizError) as caught:
        transforms.parse_transform(text)
    assert "\n" not in str(caught.value) and ("transform" in str(caught.value))


def test_extra_transforms_run_after_the_recipes_own_and_change_the_picture(capsys, tmp_path):
    model = tiny_model()
    plain = filterviz.render(model, ["channel:features.1:0"], "lucid", size=16, steps=3, seed=0)
    flipped = filterviz.render(model, ["channel:features.1:0"], "lucid", extra_transforms=("flip",), size=16,
                               steps=3, seed=0)
    assert not np.array_equal(plain.pixels, flipped.pixels)
    composed = RECIPES["maco"].replace(extra_transforms=("flip",)).transforms().transforms
    assert [type(t).__name__ for t in composed][-2:] == ["RandomFlip", "Resize"]  # before the resize
    assert main(["render", "efficientnet-lite0", "stem.act", "0", "--transform", "jitter:x", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "transform jitter needs a whole number of px" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@dataclass(frozen=True)
class Brightness(filterviz.Term):
    """The mean of the image itself, in 0..1."""

    layer: str = objectives.IMAGE
    syntax = ("brightness",)

    @classmethod
    def parse(cls, kind, args):
        return cls()

    def score(self, data, rows):
        return data[rows.image].mean() / 255

    def label(self):
        return "brightness"


def test_a_registered_term_is_read_from_text_and_scored(clean):
    filterviz.register_term(Brightness)
    objective = filterviz.parse_objective("channel:features.1:0 - 0.5*brightness")
    assert objective.name == "channel(features.1,0) - 0.5*brightness"
    assert "brightness" in objectives.objective_help()
    result = filterviz.render(tiny_model(), [objective], size=8, steps=2, seed=0)
    with torch.no_grad(), tiny_model().truncated("features.1") as run:
        pixels = torch.as_tensor(result.pixels).permute(0, 3, 1, 2)
        expected = run(pixels)[0, 0].mean().item() - 0.5 * pixels.mean().item() / 255
    assert math.isclose(result.score[0], expected, rel_tol=1e-9)
    with pytest.raises(FilterVizError, match="use channel:LAYER:K, .*blur or brightness"):
        filterviz.parse_objective("brightnes")


def test_a_plain_function_is_a_transform_in_a_list():
    """render(transforms=[...]) takes functions as well as modules: here a fixed brightening, whose
    effect is checked against the same render with the image brightened by a Transform class."""
    model = tiny_model()

    def brighter(x, generators):
        return x + 10.0

    class Brighter(filterviz.Transform):
        def forward(self, x, generators):
            return x + 10.0

    by_function = filterviz.render(model, ["channel:features.1:0"], transforms=[brighter], size=8, steps=3, seed=0)
    by_module = filterviz.render(model, ["channel:features.1:0"], transforms=[Brighter()], size=8, steps=3, seed=0)
    plain = filterviz.render(model, ["channel:features.1:0"], size=8, steps=3, seed=0)
    assert np.array_equal(by_function.pixels, by_module.pixels)
    assert not np.array_equal(by_function.pixels, plain.pixels)


def test_recipe_fields_that_a_part_given_as_an_object_would_ignore_are_refused():
    model = tiny_model()
    with pytest.raises(FilterVizError, match=r"^jitter would be ignored: the transforms given as a list"):
        filterviz.render(model, ["channel:features.1:0"], "lucid", transforms=[transforms.Jitter(2)], jitter=4,
                         size=8, steps=1)
    with pytest.raises(FilterVizError, match=r"^init_std would be ignored: the parameterization given as an object"):
        filterviz.render(model, ["channel:features.1:0"], "lucid", parameterization=params.FourierParameterization(),
                         init_std=0.5, size=8, steps=1)
    # By name, a parameterization still takes its fields as overrides.
    filterviz.render(model, ["channel:features.1:0"], "lucid", parameterization="fourier", init_std=0.5, size=8,
                     steps=1)
