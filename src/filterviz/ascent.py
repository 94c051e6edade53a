"""The ascent loop: optimize a batch of images, each for its own objective, with a recipe.

``render`` is the general loop (any objectives, any recipe); ``render_filters`` is the book's job on
top of it: many filters of one layer, one image each.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .channels import ConvTail, conv_input, find_conv_tail, selected_channels, single_channels
from .errors import FilterIndexError, FilterVizError, FilterVizWarning, InputSizeError
from .execution import auto_batch_size, autocast, autocast_dtype, channels_last
from .image import deprocess_image, stretch_image
from .liveness import flat_on_probe, probe_count
from .models.loaded import LoadedModel
from .objectives import IMAGE, Channel, Objective, Regularizer, batch_scores, channel, parse_objective
from .params import FourierImage, MacoImage, PixelImage, classic_start, load_spectrum
from .recipes import Recipe, get_recipe
from .redirect import Redirection, redirected


@dataclass
class Render:
    """The outcome of ``render``: one image per objective.

    ``model`` names the model that made it. ``pixels`` are the optimized images, (N, H, W, 3) in RGB
    pixel units; ``images`` their uint8 pictures (by the recipe's ``deprocess``). ``start_score`` and
    ``score`` are each objective at the start and final image (untransformed). ``stuck[i]`` is true when
    image ``i`` never left its start: its gradient stayed zero at every step, or its score never changed,
    so its picture shows only the start image. ``dead[i]`` (a stuck image only) is true when its
    objective is measured dead: the same value on every probe photo and noise image (see ``liveness``).
    ``importance`` (MACO) is the accumulated gradient magnitude per pixel, (N, H, W).
    """

    model: str
    objectives: list[Objective]
    recipe: Recipe
    pixels: np.ndarray
    start_score: np.ndarray
    score: np.ndarray
    stuck: np.ndarray
    dead: np.ndarray
    importance: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        """The pictures, (N, H, W, 3) uint8: the book's deprocessing, or the pixels as they are."""
        if self.recipe.deprocess == "book":
            return np.stack([deprocess_image(p) for p in self.pixels])
        if self.recipe.deprocess == "stretch":
            return np.stack([stretch_image(p) for p in self.pixels])
        return np.clip(np.rint(self.pixels), 0, 255).astype(np.uint8)


@dataclass
class FilterRender(Render):
    """A ``Render`` of filters of one layer (``render_filters``), with the book's names for scores."""

    layer: str = ""
    filters: list[int] | None = None

    @property
    def start_activation(self) -> np.ndarray:
        return self.start_score

    @property
    def activation(self) -> np.ndarray:
        return self.score


def check_filters(filters: Iterable[int], channels: int, layer: str, model_name: str) -> None:
    """Raise FilterIndexError, naming the valid range, if a filter index is outside ``0..channels-1``.

    A ``range`` is checked by its ends, so a huge one is never expanded."""
    indices = (filters[0], filters[-1]) if isinstance(filters, range) and filters else filters
    for index in indices:
        if not 0 <= index < channels:
            raise FilterIndexError(
                f"filter {index} is out of range for layer {layer} of {model_name}, which has "
                f"{channels} filters: use 0-{channels - 1}"
            )


def _generator(seed: int | None, key: int, salt: int) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(np.random.default_rng([seed, key, salt]).integers(2 ** 62)))
    return generator


def _parameterization(recipe: Recipe, size: int, keys: Sequence[int], seed: int | None,
                      start: np.ndarray | None, spectrum: np.ndarray | None) -> torch.nn.Module:
    if recipe.parameterization == "pixel":
        return PixelImage(start if start is not None else classic_start(size, keys, seed))
    if recipe.parameterization == "fourier":
        image = FourierImage(size, keys, seed, std=recipe.init_std, decorrelate=recipe.decorrelate)
        if start is not None:
            image.set_image(torch.as_tensor(start).permute(0, 3, 1, 2).clamp(0.5, 254.5))
        return image
    if start is not None:
        raise FilterVizError("a MACO image starts from a random phase; start images need pixel or fourier")
    return MacoImage(size, keys, seed, spectrum)


def _optimizer(recipe: Recipe, parameters: list[torch.nn.Parameter]) -> torch.optim.Optimizer | None:
    if recipe.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=recipe.learning_rate, maximize=True)
    if recipe.optimizer == "nadam":
        return torch.optim.NAdam(parameters, lr=recipe.learning_rate, maximize=True)
    return None  # the book's normalized ascent, done in place


def _with_regularizers(objective: Objective, recipe: Recipe) -> Objective:
    penalties = [(-weight, Regularizer(name)) for name, weight in
                 (("tv", recipe.tv), ("l1", recipe.l1), ("l2", recipe.l2), ("blur", recipe.blur)) if weight]
    return objective + Objective(penalties) if penalties else objective


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """Scores leave an autocast region in fp32 (and a float64 model's stay float64)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


Scorer = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]  # (images, views, views per image) -> (N,)


def _layout(views: torch.Tensor, nhwc: bool) -> torch.Tensor:
    return views.contiguous(memory_format=torch.channels_last) if nhwc and views.ndim == 4 else views


def _scorer(run: Callable[[torch.Tensor], dict[str, torch.Tensor]], objectives: list[Objective], nhwc: bool
            ) -> Scorer:
    def score(pixels: torch.Tensor, views: torch.Tensor, count: int) -> torch.Tensor:
        data = run(_layout(views, nhwc))
        data[IMAGE] = pixels
        return _full_precision(batch_scores(objectives, data, count))
    return score


def _selected_scorer(run: Callable[[torch.Tensor], torch.Tensor], conv_tail: ConvTail, channels: torch.Tensor,
                     nhwc: bool) -> Scorer:
    """Scores of single-channel objectives from the selected channels alone (see ``channels``)."""
    def score(pixels: torch.Tensor, views: torch.Tensor, count: int) -> torch.Tensor:
        picked = selected_channels(conv_tail, run(_layout(views, nhwc)), channels.repeat_interleave(count))
        return _full_precision(picked.flatten(1)).mean(dim=1).view(-1, count).mean(dim=1)
    return score


def _check_layers_and_channels(model: LoadedModel, objectives: list[Objective], size: int) -> None:
    """Resolve every layer name and check every channel index before any work, with one-line errors."""
    channels: dict[str, int] = {}
    for objective in objectives:
        for _, term in objective.terms:
            if term.layer.startswith("<"):  # the image or the model's output
                continue
            if term.layer not in channels:
                channels[term.layer] = model.layer_info(term.layer, size).channels
            index = getattr(term, "channel", None)
            if index is not None and not 0 <= index < channels[term.layer]:
                raise FilterIndexError(
                    f"channel {index} is out of range for layer {term.layer} of {model.name}, which has "
                    f"{channels[term.layer]} channels: use 0-{channels[term.layer] - 1}")


def plan_batches(objectives: Sequence[Objective], batch: int) -> list[list[int]]:
    """Which images share each batch, in order. Images whose objective reads the other images with the
    same objective (a diversity term) all share one batch, even one larger than ``batch``."""
    units: list[list[int]] = []
    groups: dict[Objective, list[int]] = {}
    for index, objective in enumerate(objectives):
        if not objective.batchwise:
            units.append([index])
        elif objective in groups:
            groups[objective].append(index)
        else:
            groups[objective] = [index]
            units.append(groups[objective])
    batches: list[list[int]] = []
    for unit in units:
        if batches and len(batches[-1]) + len(unit) <= batch:
            batches[-1].extend(unit)
        else:
            batches.append(list(unit))
    return batches


def describe_objective(objective: Objective) -> str:
    """How a message names an objective: ``filter 3 of blocks.5`` for a single channel, else its name."""
    if len(objective.terms) == 1 and objective.terms[0][0] == 1.0 and type(objective.terms[0][1]) is Channel:
        term = objective.terms[0][1]
        return f"filter {term.channel} of {term.layer}"
    return objective.name


def _progress_label(objectives: Sequence[Objective]) -> str:
    """What a progress bar says it renders: ``filter 3 of L``, ``64 filters of L`` or ``5 objectives``."""
    if len(objectives) == 1:
        return describe_objective(objectives[0])
    terms = [o.terms[0][1] for o in objectives if len(o.terms) == 1 and o.terms[0][0] == 1.0]
    if len(terms) == len(objectives) and all(type(t) is Channel for t in terms) and len({t.layer for t in terms}) == 1:
        return f"{len(objectives)} filters of {terms[0].layer}"
    return f"{len(objectives)} objectives"


def _warn_stuck(result: "Render", redirection: Redirection | None, probe_count: int) -> None:
    """One warning per image that never left its start, saying whether its unit is dead or only stuck."""
    recipe = result.recipe
    for objective, stuck, dead in zip(result.objectives, result.stuck, result.dead):
        if not stuck:
            continue
        what = describe_objective(objective)
        if dead:
            message = (f"{what} of {result.model} is dead: it takes the same value on all {probe_count} probe "
                       "images (natural photos and strong noise), so no picture can show it")
        elif recipe.escape_steps == 0:
            message = (f"{what} of {result.model} is stuck at its start image (the gradient was zero at every "
                       "step), though it responds to photos; its picture shows only the start image; "
                       "--escape-steps 16 (escape_steps=16) keeps this recipe and lets the gradient through "
                       "switched-off units for the first steps, as --recipe lucid and maco do")
        elif redirection is not None and redirection.modules == 0:
            message = (f"{what} of {result.model} is stuck at its start image, though it responds to photos, and "
                       "this model has no ReLU modules to let the gradient through; try another --seed or a "
                       "recipe that starts elsewhere (--recipe maco)")
        else:
            message = (f"{what} of {result.model} stayed stuck at its start image through "
                       f"{recipe.escape_steps} escape steps, though it responds to photos; try another --seed "
                       "or more --escape-steps")
        warnings.warn(message, FilterVizWarning, stacklevel=3)


def render(
    model: LoadedModel,
    objectives: Sequence[Objective | str],
    recipe: Recipe | str = "classic",
    *,
    seed: int | None = None,
    keys: Sequence[int] | None = None,
    start: np.ndarray | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    precision: str = "fp32",
    max_memory: int | None = None,
    select_channels: bool = True,
    memory_format: str = "channels_last",
    **overrides: Any,
) -> Render:
    """Optimize one image per objective with ``recipe`` (a preset name or a Recipe).

    ``overrides`` change recipe fields (``steps=128``, ``size=224``...). With a ``seed``, image ``i``'s
    start and random transforms come from ``(seed, keys[i])`` alone (default key: its position), so an
    image is the same whether rendered alone or in a batch. ``start`` (N, H, W, 3) replaces the start
    image (pixel and fourier parameterizations).

    How it runs, which never changes what is computed beyond rounding: ``precision`` (``fp32``,
    ``bf16``, ``fp16`` or ``auto``; see ``execution.autocast_dtype``), ``batch_size`` (default: the
    device's, capped so a batch fits in ``max_memory`` bytes, default a safe share of free memory),
    ``select_channels`` (when every image is scored on one channel of a convolution layer, compute
    only those channels), and ``memory_format`` (``channels_last`` or ``contiguous``).
    """
    recipe = get_recipe(recipe, **overrides)
    targets = [parse_objective(o) if isinstance(o, str) else o for o in objectives]
    if not targets:
        raise FilterVizError("nothing to render; give at least one objective")
    keys = list(range(len(targets))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(targets):
        raise FilterVizError(f"{len(keys)} keys for {len(targets)} objectives")
    size = recipe.size
    if start is not None:
        if start.ndim != 4 or start.shape[0] != len(targets) or start.shape[3] != 3:
            raise FilterVizError(f"start must have shape ({len(targets)}, H, W, 3), not {start.shape}")
        size = start.shape[1]
    if size is None:
        size = model.spec.fixed_size[0] if model.spec.fixed_size else 150
    if model.spec.min_size and size < model.spec.min_size and not model.spec.fixed_size:
        raise InputSizeError(f"{model.name} takes images of {model.spec.min_size} px or more, not {size}; "
                             f"use --size {model.spec.min_size} or more")
    _check_layers_and_channels(model, targets, size)
    targets = [_with_regularizers(objective, recipe) for objective in targets]
    layers = sorted({layer for objective in targets for layer in objective.layers} - {IMAGE})
    spectrum = load_spectrum(recipe.spectrum) if recipe.parameterization == "maco" else None
    transforms = recipe.transforms()

    dtype = autocast_dtype(precision, model.device)
    selection = single_channels(targets) if select_channels else None
    conv_tail = find_conv_tail(model, selection[0]) if selection else None
    parts: list[list[torch.Tensor | None]] = []
    if memory_format not in ("channels_last", "contiguous"):
        raise FilterVizError(f"memory_format must be channels_last or contiguous, not {memory_format!r}")
    together = max([len(group) for group in plan_batches(targets, len(targets))
                    if targets[group[0]].batchwise] or [1])
    with contextlib.ExitStack() as stack:
        nhwc = stack.enter_context(channels_last(model.module, memory_format == "channels_last"))
        redirection = stack.enter_context(redirected(model.module)) if recipe.escape_steps else None
        if conv_tail is not None:
            conv_run = stack.enter_context(conv_input(model, conv_tail.conv))
            forward: Callable[[torch.Tensor], object] = conv_run
        else:
            run = stack.enter_context(model.capture(layers))
            forward = run
        view_side = recipe.view_size or size + 2 * recipe.pad  # what the model sees at each step
        batch = batch_size or auto_batch_size(model, forward, view_side, recipe.views, max_memory, dtype, together)
        chunks = plan_batches(targets, batch)
        description = _progress_label(targets)
        bar = stack.enter_context(tqdm(total=recipe.steps * len(chunks), desc=f"{model.name} {description}",
                                       unit="step", disable=None if progress else True, leave=False))
        for chunk in chunks:
            if conv_tail is not None:
                picked = torch.tensor([selection[1][i] for i in chunk], device=model.device)
                score = _selected_scorer(conv_run, conv_tail, picked, nhwc)
            else:
                score = _scorer(run, [targets[i] for i in chunk], nhwc)
            with autocast(model.device, dtype):
                parts.append(_render_chunk(model, score, [keys[i] for i in chunk], recipe, size, seed,
                                           None if start is None else start[chunk], spectrum,
                                           transforms, bar.update, redirection))
    order = np.argsort([index for chunk in chunks for index in chunk], kind="stable")  # back to input order
    pixels, before, after, alive, importance = (
        torch.cat(column)[torch.as_tensor(order)] if column[0] is not None else None for column in zip(*parts))
    start_score, final_score = before.double().numpy(), after.double().numpy()
    stuck = ~alive.numpy() | ((start_score == final_score) & (recipe.steps > 0))
    dead = np.zeros_like(stuck)
    if stuck.any():  # only now is it worth asking whether the unit responds to anything at all
        indices = np.flatnonzero(stuck)
        dead[indices] = flat_on_probe(model, [targets[i] for i in indices], size)
    result = Render(
        model=model.name, objectives=targets, recipe=recipe,
        pixels=pixels.permute(0, 2, 3, 1).double().numpy(),
        start_score=start_score, score=final_score, stuck=stuck, dead=dead,
        importance=None if importance is None else importance.double().numpy(),
    )
    _warn_stuck(result, redirection, probe_count())
    return result


def _render_chunk(model: LoadedModel, score: Scorer, keys: list[int], recipe: Recipe, size: int,
                  seed: int | None, start: np.ndarray | None, spectrum: np.ndarray | None,
                  transforms: torch.nn.Module, on_step: Callable[[], None],
                  redirection: Redirection | None = None) -> list[torch.Tensor | None]:
    image = _parameterization(recipe, size, keys, seed, start, spectrum).to(model.device, model.dtype)
    parameters = list(image.parameters())
    optimizer = _optimizer(recipe, parameters)
    generators = [_generator(seed, key, 3) for key in keys for _ in range(recipe.views)]
    count = len(keys)
    alive = torch.full((count,), recipe.steps == 0, dtype=torch.bool)
    importance = torch.zeros(count, size, size, dtype=torch.float64) if recipe.parameterization == "maco" else None
    first = None
    if recipe.has_transforms:
        with torch.no_grad():
            pixels = image()
            first = score(pixels, pixels, 1).detach().cpu()
    for step in range(recipe.steps):
        if redirection is not None:
            redirection.active = step < recipe.escape_steps
        pixels = image()
        views = pixels.repeat_interleave(recipe.views, dim=0) if recipe.views > 1 else pixels
        scores = score(pixels, transforms(views, generators), recipe.views)
        first = scores.detach().cpu() if first is None else first
        wanted = [*parameters, pixels] if importance is not None else parameters
        grads = torch.autograd.grad(scores.sum(), wanted)
        if importance is not None:
            importance += grads[-1].detach().abs().sum(dim=1).double().cpu()
        with torch.no_grad():
            for parameter, grad in zip(parameters, grads):
                rms = grad.square().flatten(1).mean(dim=1).sqrt()
                alive |= (rms > 0).cpu()
                if optimizer is None:  # the book: x += step * g / (sqrt(mean(g**2)) + 1e-5), per image
                    parameter += grad / (rms.view(-1, *[1] * (grad.ndim - 1)) + 1e-5) * recipe.learning_rate
                else:
                    parameter.grad = grad
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        on_step()
    if redirection is not None:
        redirection.active = False
    with torch.no_grad():
        pixels = image()
        final = score(pixels, pixels, 1).detach().cpu()
    return [pixels.detach().cpu(), final if first is None else first, final, alive, importance]


def render_filters(
    model: LoadedModel,
    layer: str,
    filters: Sequence[int],
    *,
    size: int | None = None,
    steps: int | None = None,
    step: float | None = None,
    seed: int | None = None,
    start: np.ndarray | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    recipe: Recipe | str = "classic",
    precision: str = "fp32",
    max_memory: int | None = None,
    select_channels: bool = True,
    memory_format: str = "channels_last",
    **overrides: Any,
) -> FilterRender:
    """Render many filters of one layer, a batch of images at a time (by default the book's recipe).

    ``start`` (N, H, W, 3) replaces the book's noise start; each filter's result equals its
    one-at-a-time result from the same start image. ``size`` defaults to the model's fixed input
    size if it has one, else the book's 150; ``step`` is the book's name for the learning rate.
    """
    filters = [int(f) for f in filters]
    if not filters:
        raise FilterVizError("no filters to render; give at least one filter index")
    if steps is not None and steps < 0:
        raise FilterVizError(f"steps must be 0 or more, not {steps}")
    if step is not None and not math.isfinite(step):
        raise FilterVizError(f"step must be a finite number, not {step}")
    chosen = get_recipe(recipe, steps=steps, learning_rate=step, size=size, **overrides)
    side = start.shape[1] if start is not None else chosen.size or (
        model.spec.fixed_size[0] if model.spec.fixed_size else 150)
    if side < 1:
        raise FilterVizError(f"size must be at least 1 px, not {side}")
    info = model.layer_info(layer, side)
    check_filters(filters, info.channels, layer, model.name)
    result = render(model, [channel(layer, f) for f in filters], chosen.replace(size=side), seed=seed,
                    keys=filters, start=start, batch_size=batch_size, progress=progress, precision=precision,
                    max_memory=max_memory, select_channels=select_channels, memory_format=memory_format)
    return FilterRender(**vars(result), layer=layer, filters=filters)
