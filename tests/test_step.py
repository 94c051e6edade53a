"""The ascent step's fast paths give the same bytes as the plain computations they replace.

Each fast path (a padded image's windows made in one step, mirrored rows copied row by row, noise drawn
into one tensor, a cached grid of pixel centers, each image scored on its own piece of a layer, the
redirected ReLU's test for blocked rows, the MACO phase's gradient alone, Adam's foreach step) is
checked against the plain form it replaces, on values and gradients, bit for bit; and whole renders
with the recipes' transforms, optimizer and scoring equal renders through the plain forms.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import filterviz
import filterviz.forward
from filterviz.objectives import batch_scores, channel, parse_objective
from filterviz.optimizers import TorchOptimizer
from filterviz.params import MacoImage
from filterviz.redirect import _all_zero_rows
from filterviz.transforms import (GRAY, Compose, Jitter, Noise, Pad, RandomCrop, RandomFlip, RandomRotate,
                                  RandomScale, Resize, affine_grid)

from conftest import tiny_model


def generators(count: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(count)]


def bits(x: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as integers, so that -0.0 and 0.0 (and NaNs) are told apart."""
    if not x.is_floating_point():
        return x
    return x.contiguous().reshape(-1).view(torch.int64 if x.dtype == torch.float64 else torch.int32)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(bits(a), bits(b))


def values_and_gradient(function, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``function(x)`` and the gradient of a random weighting of it (so each output is told apart)."""
    x = x.detach().clone().requires_grad_(True)
    out = function(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    return out.detach(), grad


# -- the plain forms, as the transforms were written before their fast paths -----------------------------------


def plain_pad(pixels: int):
    return lambda x, gens: F.pad(x, (pixels,) * 4, value=GRAY) if pixels else x


def plain_jitter(pixels: int):
    def jitter(x, gens):
        if not pixels:
            return x
        height, width = x.shape[-2] - pixels, x.shape[-1] - pixels
        rows = []
        for row, generator in zip(x, gens):
            dy, dx = (int(v) for v in torch.randint(pixels + 1, (2,), generator=generator))
            rows.append(row[:, dy:dy + height, dx:dx + width])
        return torch.stack(rows)
    return jitter


def plain_flip(x, gens):
    flips = torch.tensor([bool(torch.rand((), generator=g) < 0.5) for g in gens], device=x.device)
    return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)


def plain_noise(std: float):
    def noise(x, gens):
        drawn = torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in gens])
        return x + drawn.to(x.device) * std
    return noise


def plain_affine(module):
    """A scale, rotate or crop transform resampling through ``F.affine_grid`` itself."""
    def transform(x, gens):
        original = filterviz.transforms.affine_grid
        filterviz.transforms.affine_grid = lambda matrices, height, width: F.affine_grid(
            matrices, [matrices.shape[0], 1, height, width], align_corners=False)
        try:
            return module(x, gens)
        finally:
            filterviz.transforms.affine_grid = original
    return transform


def image(count: int = 4, size: int = 12, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=dtype) * 255


# -- transforms ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pad,jitter", [(3, 2), (2, 4), (1, 6), (4, 9), (0, 5), (5, 0), (3, 6)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_pad_and_a_jitter_make_the_plain_windows(pad, jitter, dtype):
    x = image(dtype=dtype)
    fast = values_and_gradient(lambda v: Compose([Pad(pad), Jitter(jitter)])(v, generators(4)), x)
    plain = values_and_gradient(lambda v: plain_jitter(jitter)(plain_pad(pad)(v, generators(4)), generators(4)), x)
    assert all(same_bytes(a, b) for a, b in zip(fast, plain))
    # alone, a jitter is the same crop as before
    fast = values_and_gradient(lambda v: Jitter(jitter)(v, generators(4, 1)), x)
    plain = values_and_gradient(lambda v: plain_jitter(jitter)(v, generators(4, 1)), x)
    assert all(same_bytes(a, b) for a, b in zip(fast, plain))


def test_the_generators_are_left_where_the_plain_transforms_leave_them():
    x = image()
    for fast, plain in ((Compose([Pad(3), Jitter(4)]), [plain_pad(3), plain_jitter(4)]),
                        (Compose([RandomFlip()]), [plain_flip]), (Compose([Noise(2.0)]), [plain_noise(2.0)])):
        ours, theirs = generators(4), generators(4)
        fast(x, ours)
        Compose(plain)(x, theirs)
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("seed", range(6))
def test_flips_and_noise_are_the_plain_ones(seed):
    x = image(count=5)
    for fast, plain in ((RandomFlip(), plain_flip), (Noise(3.2), plain_noise(3.2))):
        ours = values_and_gradient(lambda v: fast(v, generators(5, seed)), x, seed)
        theirs = values_and_gradient(lambda v: plain(v, generators(5, seed)), x, seed)
        assert same_bytes(ours[0], theirs[0])
        assert torch.equal(ours[1], theirs[1])  # the plain gradient adds a +0.0 to each number, so -0.0 may differ


@pytest.mark.parametrize("height,width", [(240, 240), (7, 1), (1, 5), (9, 16), (2, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cached_grid_is_affine_grids(height, width, dtype):
    matrices = torch.rand(4, 2, 3, generator=torch.Generator().manual_seed(height), dtype=dtype) * 2 - 1
    for _ in range(2):  # made, then taken from the cache
        assert same_bytes(affine_grid(matrices, height, width),
                          F.affine_grid(matrices, [4, 3, height, width], align_corners=False))


def test_the_recipes_transforms_are_the_plain_ones():
    x = image(count=4, size=20)
    for module in (RandomScale([0.9, 1.0, 1.1]), RandomRotate([-10.0, 5.0]), RandomCrop((0.5, 1.0)),
                   RandomCrop((0.5, 1.0), size=9)):
        ours = values_and_gradient(lambda v: module(v, generators(4)), x)
        theirs = values_and_gradient(lambda v: plain_affine(module)(v, generators(4)), x)
        assert all(same_bytes(a, b) for a, b in zip(ours, theirs))
    lucid = filterviz.get_recipe("lucid", pad=4, jitter=3, final_jitter=2, flip=True, noise=1.0, view_size=15)
    plain = [plain_pad(4), plain_jitter(3), plain_affine(RandomScale(lucid.scales)),
             plain_affine(RandomRotate(lucid.angles)), plain_flip, plain_jitter(2), plain_noise(1.0), Resize(15)]
    ours = values_and_gradient(lambda v: lucid.transforms()(v, generators(4)), x)
    theirs = values_and_gradient(lambda v: Compose(plain)(v, generators(4)), x)
    assert same_bytes(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])


# -- scoring, redirection, MACO, Adam -----------------------------------------------------------------------------


OBJECTIVES = ["channel:L:1", "channel:L:3 - 0.5*channel:M:0", "neuron:L:2", "layer:M", "channel:L:0 + 0.1*tv",
              "l2 + 2*channel:M:2"]


@pytest.mark.parametrize("views", [1, 2])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
def test_each_image_scored_on_its_own_piece_is_scored_as_in_the_batch(views, layout):
    objectives = [parse_objective(text) for text in OBJECTIVES]
    count = len(objectives)
    generator = torch.Generator().manual_seed(views)
    leaves = {"L": torch.randn(count * views, 5, 6, 7, generator=generator).contiguous(memory_format=layout),
              "M": torch.randn(count * views, 3, 4, 4, generator=generator),
              "<image>": torch.rand(count, 3, 8, 8, generator=generator) * 255}

    def run(score):
        data = {name: value.clone().requires_grad_(True) for name, value in leaves.items()}
        scores = score(objectives, dict(data), views)
        grads = torch.autograd.grad((scores * torch.arange(1.0, count + 1)).sum(), list(data.values()))
        return scores.detach(), grads

    ours, theirs = run(filterviz.forward.per_image_scores), run(batch_scores)
    assert same_bytes(ours[0], theirs[0])
    assert all(same_bytes(a, b) for a, b in zip(ours[1], theirs[1]))


def test_a_batch_of_other_rows_is_scored_the_plain_way():
    objectives = [channel("L", 0), channel("L", 1)]
    assert filterviz.forward.per_image_scores(objectives, {"L": torch.randn(3, 2, 4, 4)}, 1) is None


def test_blocked_rows_are_all_zero_rows():
    def plain(x):
        rows = x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(-1, 1)
        return rows.eq(0).all(dim=1)
    x = torch.randn(5, 4, 6, 7)
    x[1] = 0.0
    x[2] = -0.0
    x[3, 2] = 0.0
    x[4] = 0.0
    x[4, 0, 0, 0] = math.nan
    for case in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3), x[:, 0], x[:, 0, 0, 0],
                 torch.tensor([0.0, -0.0, 1e-45, math.inf, math.nan]), torch.zeros(3, 0), torch.tensor(0.0)):
        assert torch.equal(_all_zero_rows(case), plain(case))


def test_the_maco_phase_gradient_is_polars():
    image = MacoImage(24, keys=[0, 1], seed=0).float()
    ours = values_and_gradient(lambda phase: _maco_pixels(image, phase), image.phase.detach())
    image.magnitude.requires_grad_(True)  # the plain torch.polar, which differentiates both
    theirs = values_and_gradient(lambda phase: _maco_pixels(image, phase), image.phase.detach())
    assert all(same_bytes(a, b) for a, b in zip(ours, theirs))


def _maco_pixels(image: MacoImage, phase: torch.Tensor) -> torch.Tensor:
    saved = image.phase
    del image.phase
    image.phase = phase
    try:
        return image()
    finally:
        del image.phase
        image.phase = saved


@pytest.mark.parametrize("maximize", [True, False])
def test_adam_foreach_is_the_single_tensor_step(maximize):
    start = torch.randn(3, 5, 7, 2, generator=torch.Generator().manual_seed(1)) * 0.1
    grads = [torch.randn(start.shape, generator=torch.Generator().manual_seed(2 + i)) * 0.01 for i in range(12)]
    results = []
    for foreach in (False, True):
        parameter = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.Adam([parameter], lr=0.05, maximize=maximize, foreach=foreach)
        for grad in grads:
            parameter.grad = grad.clone()
            optimizer.step()
        results.append(parameter.detach())
    assert same_bytes(*results)


# -- whole renders ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["lucid", "maco"])
def test_renders_equal_the_plain_paths(recipe, monkeypatch):
    model = tiny_model(dtype=torch.float32)
    options = dict(size=24, steps=6, escape_steps=3, seed=0, batch_size=3, select_channels=False, precision="fp32")
    if recipe == "lucid":
        options.update(pad=3, jitter=4, final_jitter=2)
    objectives = ["channel:features.1:0", "channel:features.3:2", "channel:features.1:3 + 0.1*tv"]
    fast = filterviz.render(model, objectives, recipe, **options)
    chosen = filterviz.get_recipe(recipe, **{k: v for k, v in options.items()
                                             if k in ("size", "steps", "escape_steps", "pad", "jitter", "final_jitter")})
    if recipe == "lucid":
        plain = [plain_pad(3), plain_jitter(4), plain_affine(RandomScale(chosen.scales)),
                 plain_affine(RandomRotate(chosen.angles)), plain_jitter(2)]
        optimizer = TorchOptimizer("adam", torch.optim.Adam)  # the single-tensor step
    else:
        plain = [plain_affine(RandomCrop(chosen.crop)), plain_flip, plain_noise(chosen.noise), Resize(chosen.view_size)]
        optimizer = None
    monkeypatch.setattr(filterviz.forward, "per_image_scores", lambda *args: None)  # the batch's own scoring
    slow = filterviz.render(model, objectives, recipe, transforms=plain, optimizer=optimizer,
                            **{k: v for k, v in options.items() if k not in ("pad", "jitter", "final_jitter")})
    assert fast.pixels.tobytes() == slow.pixels.tobytes()
    assert fast.score.tobytes() == slow.score.tobytes() and fast.start_score.tobytes() == slow.start_score.tobytes()
    assert np.array_equal(fast.stuck, slow.stuck)
    assert (fast.importance is None) == (slow.importance is None)
    if fast.importance is not None:
        assert fast.importance.tobytes() == slow.importance.tobytes()


# -- batch norms folded into their convolutions (opt-in: the same up to rounding) ---------------------------------


class BatchNormNet(torch.nn.Module):
    """conv bn relu | conv bn relu | weight-standardized conv bn relu, all in one Sequential."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, padding=1, bias=False), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
            torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            StandardizedConv(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        for module in self.features:
            if isinstance(module, torch.nn.BatchNorm2d):  # statistics of a trained network
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                torch.nn.init.uniform_(module.weight, 0.5, 1.5)
                torch.nn.init.uniform_(module.bias, -0.2, 0.4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class StandardizedConv(torch.nn.Conv2d):
    """A convolution that standardizes its weights in ``forward``: folding a scale into them is undone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = (self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)) / (
            self.weight.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return self._conv_forward(x, weight, self.bias)


def batchnorm_model():
    return filterviz.load_model(BatchNormNet(), spec=filterviz.InputSpec(default_size=16), name="bn", device="cpu")


def test_folded_batch_norms_give_the_same_outputs_up_to_rounding_and_come_back():
    model = batchnorm_model()
    before = {name: value.clone() for name, value in model.module.state_dict().items()}
    pixels = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    plain = {layer: model.activations(pixels, layer) for layer in ("features.2", "features.4", "features.8")}
    with filterviz.forward.folded_batchnorm(model.module, keep=[model.module.features[3]]) as folded:
        assert folded == 1  # the first pair; the second's convolution is kept, the standardized one refused
        for layer, expected in plain.items():  # within 1e-5 of the layer's largest magnitude
            torch.testing.assert_close(model.activations(pixels, layer), expected, rtol=0,
                                       atol=1e-5 * float(expected.abs().max()))
        assert not torch.equal(model.module.features[0].weight, before["features.0.weight"])
    after = model.module.state_dict()
    assert after.keys() == before.keys() and all(same_bytes(after[k], before[k]) for k in before)
    assert model.module.features[0].bias is None


@pytest.mark.parametrize("select_channels", [True, False])
def test_a_render_with_folded_batch_norms_starts_from_the_same_scores(select_channels):
    model = batchnorm_model()
    # features.3 (a convolution) and features.5 (behind the second batch norm): the fast path reads the
    # convolution and batch norm behind features.5 itself, and neither may be folded
    objectives = ["channel:features.5:1", "channel:features.5:6"] if select_channels else \
        ["channel:features.3:2", "channel:features.8:1 + channel:features.1:0"]
    options = dict(size=16, steps=2, seed=0, select_channels=select_channels, precision="fp32")
    plain = filterviz.render(model, objectives, "lucid", **options)
    folded = filterviz.render(model, objectives, "lucid", fold_batchnorm=True, **options)
    np.testing.assert_allclose(folded.start_score, plain.start_score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded.pixels, plain.pixels, rtol=0, atol=1e-2)


def test_the_gpu_forms_of_windows_and_flips_are_the_row_by_row_ones(monkeypatch):
    """A GPU makes windows with one gather and flips with one where: the same bytes (run here on the CPU)."""
    x = image(count=5, size=10)
    cases = [lambda v: Compose([Pad(3), Jitter(4)])(v, generators(5)), lambda v: Jitter(5)(v, generators(5)),
             lambda v: Compose([Pad(1), Jitter(6)])(v, generators(5)), lambda v: RandomFlip()(v, generators(5))]
    rows = [values_and_gradient(case, x) for case in cases]
    monkeypatch.setattr(filterviz.transforms, "ROW_LOOP_DEVICES", set())
    for case, expected in zip(cases, rows):
        assert all(same_bytes(a, b) for a, b in zip(values_and_gradient(case, x), expected))


def test_a_convolution_used_in_two_places_is_not_folded():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    root = torch.nn.Sequential(torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4)),
                               torch.nn.Sequential(torch.nn.Conv2d(4, 3, 1), conv, torch.nn.BatchNorm2d(4))).eval()
    with filterviz.forward.folded_batchnorm(root) as folded:
        assert folded == 0
