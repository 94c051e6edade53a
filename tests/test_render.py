"""The ascent loop: gradients, exactness of the book's recipe, batching, truncation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_SPEC, tiny_model
from filterviz import render_filters
from filterviz.errors import FilterIndexError, FilterVizError, InputSizeError
from filterviz.objectives import batch_scores, channel
from filterviz.params import classic_start


def test_gradient_matches_finite_differences():
    model = tiny_model(nn.Softplus)  # smooth, so central differences are accurate
    pixels = torch.as_tensor(classic_start(12, [0, 1], seed=3)).permute(0, 3, 1, 2).contiguous()
    def objective(activations: torch.Tensor) -> torch.Tensor:  # image i is scored on its own channel
        return batch_scores([channel("features.5", 2), channel("features.5", 5)], {"features.5": activations}, 1)

    with model.truncated("features.5") as run:
        leaf = pixels.detach().requires_grad_(True)
        values = objective(run(leaf))
        (grad,) = torch.autograd.grad(values.sum(), leaf)
        rng = np.random.default_rng(0)
        for _ in range(12):
            n, c, y, x = (int(rng.integers(s)) for s in pixels.shape)
            eps = 1e-3  # pixel units: the function is smooth on this scale
            plus, minus = pixels.clone(), pixels.clone()
            plus[n, c, y, x] += eps
            minus[n, c, y, x] -= eps
            numeric = (objective(run(plus))[n] - objective(run(minus))[n]) / (2 * eps)
            assert grad[n, c, y, x].item() == pytest.approx(numeric.item(), rel=1e-6, abs=1e-12)
    assert values.shape == (2,)


def book_loop_reference(module: nn.Module, upto: int, filter_index: int, start: np.ndarray, steps: int) -> np.ndarray:
    """The book's loop written out plainly: preprocess, run features[:upto+1], mean of one channel,
    RMS-normalized gradient step of 1, ``steps`` times; one image (H, W, 3)."""
    x = torch.as_tensor(start[None].copy())
    mean = torch.tensor(TINY_SPEC.mean, dtype=x.dtype)
    std = torch.tensor(TINY_SPEC.std, dtype=x.dtype)
    for _ in range(steps):
        x.requires_grad_(True)
        bgr = x.flip(-1)
        model_input = ((bgr - mean) / std).permute(0, 3, 1, 2)
        loss = module.features[: upto + 1](model_input)[:, filter_index].mean()
        (grads,) = torch.autograd.grad(loss, x)
        grads = grads / (torch.sqrt(torch.mean(torch.square(grads))) + 1e-5)
        x = (x + grads * 1.0).detach()
    return x[0].numpy()


def test_render_equals_plain_book_loop():
    model = tiny_model()
    start = classic_start(16, [3], seed=7)
    expected = book_loop_reference(model.module, 3, 3, start[0], steps=40)
    result = render_filters(model, "features.3", [3], start=start)
    assert np.abs(result.pixels[0] - expected).max() < 1e-9
    assert not np.allclose(expected, start[0])  # the loop did move the image


def test_batched_equals_one_at_a_time():
    model = tiny_model()
    filters = [0, 1, 2, 3, 5, 4, 7]
    batched = render_filters(model, "features.6", filters, size=20, seed=11, batch_size=3)
    for i, f in enumerate(filters):
        alone = render_filters(model, "features.6", [f], size=20, seed=11)
        assert np.abs(batched.pixels[i] - alone.pixels[0]).max() < 1e-6
        assert batched.activation[i] == pytest.approx(alone.activation[0], rel=1e-6)


def test_given_start_images_are_used():
    model = tiny_model()
    start = np.random.default_rng(0).uniform(100, 150, size=(2, 16, 16, 3))
    together = render_filters(model, "features.1", [1, 2], start=start)
    first = render_filters(model, "features.1", [1], start=start[:1])
    assert np.abs(together.pixels[0] - first.pixels[0]).max() < 1e-6
    assert render_filters(model, "features.1", [1, 2], start=start, steps=0).pixels == pytest.approx(start)


def test_seeded_start_depends_on_seed_and_filter_only():
    alone = classic_start(10, [3], seed=5)
    in_batch = classic_start(10, [1, 3, 9], seed=5)
    assert np.array_equal(alone[0], in_batch[1])
    assert not np.array_equal(in_batch[0], in_batch[1])
    assert not np.array_equal(alone, classic_start(10, [3], seed=6))
    assert in_batch.min() >= 128 and in_batch.max() < 148  # uniform(0, 1) * 20 + 128


def test_forward_stops_at_target_and_leaves_no_trace():
    model = tiny_model()
    result = render_filters(model, "features.6", [0, 1], size=16, steps=3, seed=0)
    assert model.module.counter.calls == 0  # nothing after features.6 ran
    for sub in model.module.modules():
        assert not sub._forward_hooks and not sub._forward_pre_hooks
    for parameter in model.module.parameters():
        assert parameter.grad is None and not parameter.requires_grad
    assert (result.activation > result.start_activation).all()


def test_activation_rises():
    model = tiny_model()
    result = render_filters(model, "features.3", range(6), size=16, seed=1)
    alive = ~result.stuck
    assert alive.any()
    assert (result.activation[alive] > result.start_activation[alive]).all()


def test_dead_filter_is_flagged():
    model = tiny_model()
    conv = model.module.features[2]
    with torch.no_grad():  # filter 4 can never fire: zero weights, negative bias
        conv.weight[4] = 0
        conv.bias[4] = -1
    result = render_filters(model, "features.3", [3, 4], size=16, steps=5, seed=0)
    assert result.dead.tolist() == [False, True] and result.stuck.tolist() == [False, True]
    assert np.array_equal(result.pixels[1], classic_start(16, [4], seed=0)[0])


def test_no_steps_means_nothing_is_judged_dead():
    result = render_filters(tiny_model(), "features.3", [0, 1], size=16, steps=0, seed=0)
    assert not result.dead.any() and not result.stuck.any()
    assert np.array_equal(result.pixels, classic_start(16, [0, 1], seed=0))
    assert np.array_equal(result.activation, result.start_activation)


def test_learning_rate_must_be_finite():
    with pytest.raises(FilterVizError, match="learning_rate must be a finite number"):
        render_filters(tiny_model(), "features.3", [0], size=16, learning_rate=float("inf"))
    with pytest.raises(FilterVizError, match="unknown recipe field.s. step;"):  # one name for the knob
        render_filters(tiny_model(), "features.3", [0], size=16, step=1.0)


def test_filter_out_of_range_names_valid_range():
    with pytest.raises(FilterIndexError, match=r"has 6 filters: use 0-5"):
        render_filters(tiny_model(), "features.3", [6], size=16)


def test_too_small_size_names_smallest_size():
    model = tiny_model()
    # features.5 is a 3x3 conv without padding after a 2x pool: it needs 6 px.
    for size in range(1, 12):
        try:
            model.activations(torch.full((1, 3, size, size), 128.0, dtype=torch.float64), "features.5")
            smallest = size
            break
        except RuntimeError:
            continue
    assert smallest == 6
    with pytest.raises(InputSizeError, match=r"below 6 px; use --size 6 or more"):
        render_filters(model, "features.5", [0], size=5)
    assert render_filters(model, "features.5", [0], size=6, steps=1).pixels.shape == (1, 6, 6, 3)
