"""The ascent loop: optimize a batch of images, each for its own objective, with a recipe.

``render`` is the general loop (any objectives, any recipe); ``render_filters`` is the book's job on
top of it: many filters of one layer, one image each.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .channels import ConvTail, conv_input, find_conv_tail, selected_channels, single_channels
from .errors import FilterIndexError, FilterVizError, FilterVizWarning, InputSizeError, MemoryBudgetError, first_line
from .execution import SavedBytes, auto_batch_size, autocast, autocast_dtype, channels_last, measure_saved_bytes
from .layers import OUTPUT
from .image import deprocess_image, stretch_image
from .liveness import flat_on_probe, probe_count
from .memory import article, budget_words, largest, memory_budget, more_memory, readable
from .models.loaded import LoadedModel
from .objectives import (IMAGE, ClassScore, Direction, Objective, Regularizer, batch_scores, channel,
                         parse_objective)
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
    """Resolve every layer name and check every channel index, class index and direction length before
    any work, with one-line errors."""
    channels: dict[str, int] = {}
    for objective in objectives:
        for _, term in objective.terms:
            if term.layer == IMAGE:
                continue
            if term.layer not in channels:
                channels[term.layer] = (_output_width(model, size) if term.layer == OUTPUT
                                        else model.layer_info(term.layer, size).channels)
            count = channels[term.layer]
            what = "the model's output" if term.layer == OUTPUT else f"layer {term.layer}"
            index = getattr(term, "channel", None)
            if index is not None and not 0 <= index < count:
                raise FilterIndexError(
                    f"channel {index} is out of range for {what} of {model.name}, which has {count} channels: "
                    f"use 0-{count - 1}")
            if isinstance(term, ClassScore) and not 0 <= term.index < count:
                raise FilterIndexError(f"class {term.index} is out of range: the model has {count} classes, "
                                       f"0-{count - 1}")
            if isinstance(term, Direction) and len(term.vector) != count:
                source = f" {term.source!r}" if term.source else ""
                raise FilterVizError(f"direction{source} has {len(term.vector)} numbers, but {what} of {model.name} "
                                     f"has {count} channels; give a vector of {count} numbers, one per channel")


def _output_width(model: LoadedModel, size: int) -> int:
    """How many numbers per image the model's output has (its classes), from one small forward pass."""
    side = min(size, model.spec.default_size)
    pixels = torch.full((1, 3, side, side), 128.0, dtype=model.dtype, device=model.device)
    try:
        with torch.no_grad():
            output = model.logits(pixels)
    except (RuntimeError, ValueError) as exc:
        raise InputSizeError(f"{model.name} cannot run at size {side} ({first_line(exc)})") from None
    return int(output.shape[1]) if output.ndim > 1 else int(output.numel())


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
    selection = single_channels([objective])
    return f"filter {selection[1][0]} of {selection[0]}" if selection else objective.name


def _progress_label(objectives: Sequence[Objective]) -> str:
    """What a progress bar says it renders: ``filter 3 of L``, ``64 filters of L`` or ``5 objectives``."""
    if len(objectives) == 1:
        return describe_objective(objectives[0])
    selection = single_channels(objectives)
    return f"{len(objectives)} filters of {selection[0]}" if selection else f"{len(objectives)} objectives"


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


@dataclass
class _Pass:
    """A model made ready for ascent steps: ``run`` (a capture, or the selected convolution's input),
    whether its weights are channels-last, and the redirection of its ReLUs (None: none)."""

    run: Callable[[torch.Tensor], Any]
    nhwc: bool
    redirection: Redirection | None


@contextlib.contextmanager
def _forward_pass(model: LoadedModel, layers: list[str], conv_tail: ConvTail | None, nhwc: bool,
                  escape: bool) -> Iterator[_Pass]:
    """The model ready to run ``layers`` (or the selected convolution's input), as ascent steps and the
    memory measurement before them both need it; everything is undone at the end."""
    with contextlib.ExitStack() as stack:
        on = stack.enter_context(channels_last(model.module, nhwc))
        redirection = stack.enter_context(redirected(model.module)) if escape else None
        if conv_tail is not None:
            run = stack.enter_context(conv_input(model, conv_tail.conv))
        else:
            run = stack.enter_context(model.capture(layers))
        yield _Pass(run, on, redirection)


def view_side(recipe: Recipe, size: int) -> int:
    """The side of the views that the model sees at each step: the image padded and jittered (scales,
    turns, crops and flips keep the side), or resized to ``view_size``."""
    if recipe.view_size:
        return recipe.view_size
    return size + 2 * recipe.pad - recipe.jitter - recipe.final_jitter


def image_bytes(recipe: Recipe, size: int, element: int) -> int:
    """About how many bytes one image of ``size`` px needs outside the model: its parameters with their
    gradient and optimizer moments, and what its parameterization, transforms and penalties keep for
    the backward pass. Counted from the recipe, in numbers of ``element`` bytes: nothing is allocated
    to find out."""
    pixels = 3 * size * size
    half = 3 * size * (size // 2 + 1)  # a real spectrum's complex numbers
    parameters = {"pixel": pixels, "fourier": 2 * half, "maco": half}[recipe.parameterization]
    slots = 2 + (2 if recipe.optimizer in ("adam", "nadam") else 0)  # itself, its gradient, two moments
    # What the parameterization's forward pass keeps, in images: the spectrum, its inverse transform,
    # the colors and the sigmoid (fourier); MACO also standardizes its phase and its image.
    kept = {"pixel": 1, "fourier": 6, "maco": 10}[recipe.parameterization] * pixels
    side = size + 2 * recipe.pad
    stages = 1 + sum(bool(x) for x in (recipe.pad, recipe.jitter, recipe.scales, recipe.angles, recipe.crop,
                                       recipe.flip, recipe.final_jitter, recipe.noise))  # 1: the views' copy
    grids = sum(bool(x) for x in (recipe.scales, recipe.angles, recipe.crop))  # two numbers per pixel each
    views = recipe.views * (3 * stages + 2 * grids) * side * side
    penalties = 2 * pixels * sum(bool(w) for w in (recipe.tv, recipe.l1, recipe.l2, recipe.blur))
    importance = 8 * size * size if recipe.parameterization == "maco" else 0  # float64, per pixel
    return int((parameters * slots + kept + views + penalties) * element + importance)


def result_bytes(recipe: Recipe, size: int) -> int:
    """The bytes one finished image of ``size`` px is kept in until it is written: its pixels as the
    model computed them and in float64, its 8-bit picture and its tile in a grid (and MACO's importance
    map, in float64, twice)."""
    pixels = 3 * size * size
    importance = 16 * size * size if recipe.parameterization == "maco" else 0
    return (4 + 4 + 8 + 1 + 1) * pixels + importance


def _image_need(model: LoadedModel, recipe: Recipe, saved: SavedBytes) -> Callable[..., int]:
    """``need(size, view, **changes)``: the bytes one image needs (with recipe fields changed, such as
    ``views`` or ``pad``), the larger of an ascent step (its views' saved activations, times 1.5 for
    what the backward pass holds besides, and the image's own) and a scoring of the whole image without
    gradients (at its start and end), which holds at most what a pass with gradients would keep."""
    element = model.element_size

    def need(size: int, view: int, **changes: Any) -> int:
        changed = recipe.replace(**changes) if changes else recipe
        step = 1.5 * changed.views * saved.at(view) + image_bytes(changed, size, element)
        whole = saved.at(size) + 3 * size * size * element
        return int(max(step, whole))
    return need


def _where(layers: list[str]) -> str:
    """The layers a memory message names: the model's own, or the first and how many more."""
    names = ["the model's output" if layer == OUTPUT else layer for layer in layers]
    if not names:
        return "the image"
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more layers"


def _check_memory(model: LoadedModel, recipe: Recipe, size: int, layers: list[str], need: Callable[..., int],
                  max_memory: int | None, count: int, together: int, batch_size: int | None,
                  batch_option: str = "--batch-size") -> None:
    """Refuse, before anything runs at ``size``, a render whose smallest batch does not fit the budget
    (one image, the copies that must share a batch (``together``), or a given ``batch_size``), or whose
    ``count`` finished images, kept until they are written, do not fit beside a batch. The message
    gives the figures and the largest size, view size, pad, views, copies or batch that fit."""
    budget = memory_budget(model.device, max_memory)
    view = view_side(recipe, size)
    checks = [(1, "image")]
    if together > 1:
        checks.append((together, "copies"))
    if batch_size is not None and min(batch_size, count) > 1:
        checks.append((min(batch_size, count), "batch"))
    for images, kind in checks:
        total = images * need(size, view)
        if total <= budget:
            continue
        if kind == "image":
            what = f"{article(size)} {size} px image of {model.name}"
            verb = "needs"
        elif kind == "copies":
            what = (f"{images} copies compared with each other (a diversity term) must share one batch: "
                    f"{images} images of {size} px of {model.name}")
            verb = "need"
        else:
            what = f"a batch of {images} images of {size} px of {model.name}"
            verb = "needs"
        if view != size:
            what += f" (seen as {recipe.views} view{'s' * (recipe.views > 1)} of {view} px)"
        options = _memory_options(recipe, size, need, budget, images)
        fit = budget // max(need(size, view), 1)
        if kind == "copies" and fit >= 1:
            options.insert(0, f"--copies {fit} or less")
        elif kind == "batch" and fit >= 1:
            options.insert(0, f"{batch_option} {fit} or less")
        options.append(more_memory(total, model.device))
        raise MemoryBudgetError(f"{what} {verb} about {readable(total)} at {_where(layers)}, "
                                f"{budget_words(budget, max_memory, model.device)}: use {', or '.join(options)}")
    kept = count * result_bytes(recipe, size)
    if count > 1 and kept + need(size, view) > budget:
        fit = max(int((budget - need(size, view)) // result_bytes(recipe, size)), 0)
        best = largest(lambda side: count * result_bytes(recipe, side) + need(side, view_side(recipe, side)) <= budget,
                       size)
        options = [f"at most {fit} images at a time (fewer --copies, --objective or --filters)"] if fit else []
        options += [f"--size {best} or less"] if best and best < size else []
        options.append(more_memory(kept + need(size, view), model.device))
        raise MemoryBudgetError(f"{count} images of {size} px of {model.name} are kept as results until they are "
                                f"written, which with a batch needs about {readable(kept + need(size, view))}, "
                                f"{budget_words(budget, max_memory, model.device)}: use {', or '.join(options)}")


def _memory_options(recipe: Recipe, size: int, need: Callable[..., int], budget: int, images: int) -> list[str]:
    """The changes that would let ``images`` images fit, each alone: the largest size, view size, pad
    or views that fit with everything else as it is."""
    def fits(side: int, view: int, **changes: Any) -> bool:
        return images * need(side, view, **changes) <= budget

    options = []
    smallest = max(1, recipe.jitter + recipe.final_jitter - 2 * recipe.pad + 1)  # a smaller one leaves no view
    best = largest(lambda side: fits(side, view_side(recipe, side)), size, low=min(smallest, size))
    if best is not None and best < size:
        options.append(f"--size {best} or less")
    view = view_side(recipe, size)
    if recipe.view_size:
        best = largest(lambda side: fits(size, side), recipe.view_size)
        if best is not None and best < recipe.view_size:
            options.append(f"--view-size {best} or less")
    elif recipe.pad:
        low = max(0, (recipe.jitter + recipe.final_jitter - size) // 2 + 1)
        best = largest(lambda pad: fits(size, view_side(recipe.replace(pad=pad), size), pad=pad), recipe.pad,
                       low=low)
        if best is not None and best < recipe.pad:
            options.append(f"--pad {best} or less")
    if recipe.views > 1:
        best = largest(lambda views: fits(size, view, views=views), recipe.views)
        if best is not None and best < recipe.views:
            options.append(f"--views {best}" + (" or less" if best > 1 else ""))
    return options


@dataclass
class _RenderPlan:
    """A render, checked: everything it runs with, and what it knows of its memory."""

    recipe: Recipe
    targets: list[Objective]
    keys: list[int]
    size: int
    view: int
    layers: list[str]
    spectrum: np.ndarray | None
    dtype: torch.dtype | None
    selection: tuple[str, list[int]] | None
    conv_tail: ConvTail | None
    nhwc: bool
    together: int
    max_memory: int | None
    saved: SavedBytes
    need: Callable[..., int]


def _plan(model: LoadedModel, objectives: Sequence[Objective | str], recipe: Recipe | str, *,
          keys: Sequence[int] | None, start: np.ndarray | None, batch_size: int | None, precision: str,
          max_memory: int | None, select_channels: bool, memory_format: str, batch_option: str = "--batch-size",
          **overrides: Any) -> _RenderPlan:
    """Check a render before any work: its objectives, sizes, transforms, layers, channels and direction
    vectors, its spectrum, and that its smallest batch fits the memory budget (estimated at small
    sides). Only then is the model run at the render's own sizes (to check the layers there)."""
    recipe = get_recipe(recipe, **overrides)
    targets = [parse_objective(o) if isinstance(o, str) else o for o in objectives]
    if not targets:
        raise FilterVizError("nothing to render; give at least one objective")
    keys = list(range(len(targets))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(targets):
        raise FilterVizError(f"{len(keys)} keys for {len(targets)} objectives")
    if batch_size is not None and batch_size < 1:
        raise FilterVizError(f"batch size must be 1 or more, not {batch_size}")
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
    recipe.check_sizes(size)
    if memory_format not in ("channels_last", "contiguous"):
        raise FilterVizError(f"memory_format must be channels_last or contiguous, not {memory_format!r}")
    dtype = autocast_dtype(precision, model.device)
    view = view_side(recipe, size)  # what the model sees at each step; whole images are scored too
    # The model runs at both sides. Small ones are checked as they are; a side beyond the model's own
    # is checked there first (names, channels), and at itself only once its memory is known to fit.
    own = model.spec.default_size
    for side in sorted({min(size, own), min(view, own)}):
        _check_layers_and_channels(model, targets, side)
    targets = [_with_regularizers(objective, recipe) for objective in targets]
    layers = sorted({layer for objective in targets for layer in objective.layers} - {IMAGE})
    spectrum = load_spectrum(recipe.spectrum) if recipe.parameterization == "maco" else None
    selection = single_channels(targets) if select_channels else None
    conv_tail = find_conv_tail(model, selection[0]) if selection else None
    nhwc = memory_format == "channels_last"
    # The largest set of copies that read each other (a diversity term): they must share one batch.
    together = max(Counter(o for o in targets if o.batchwise).values(), default=1)
    budget = max_memory if max_memory is not None else model.max_memory
    with _forward_pass(model, layers, conv_tail, nhwc, escape=False) as probe:
        saved = measure_saved_bytes(model, probe.run, view, dtype)  # at small sides, then scaled
    need = _image_need(model, recipe, saved)
    _check_memory(model, recipe, size, layers, need, budget, len(targets), together, batch_size, batch_option)
    for side in sorted({size, view}):
        if side > own:
            _check_layers_and_channels(model, targets, side)
    return _RenderPlan(recipe, targets, keys, size, view, layers, spectrum, dtype, selection, conv_tail, nhwc,
                       together, budget, saved, need)


def check_render(
    model: LoadedModel,
    objectives: Sequence[Objective | str],
    recipe: Recipe | str = "classic",
    *,
    batch_size: int | None = None,
    precision: str = "fp32",
    max_memory: int | None = None,
    select_channels: bool = True,
    memory_format: str = "channels_last",
    batch_option: str = "--batch-size",
    **overrides: Any,
) -> None:
    """Raise the error that ``render`` with these arguments would raise before its first step (a bad
    objective, size, transform, layer, channel, direction or spectrum, or a batch beyond the memory
    budget), without rendering: what an atlas checks before it writes anything. ``batch_option`` is
    how the message names the batch size's option."""
    _plan(model, objectives, recipe, keys=None, start=None, batch_size=batch_size, precision=precision,
          max_memory=max_memory, select_channels=select_channels, memory_format=memory_format,
          batch_option=batch_option, **overrides)


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
    device's, capped so a batch fits in ``max_memory`` bytes, default the model's ``max_memory``, else a
    safe share of free memory), ``select_channels`` (when every image is scored on one channel of a
    convolution layer, compute only those channels), and ``memory_format`` (``channels_last`` or
    ``contiguous``). Everything is checked before the first step (see ``check_render``): a batch that
    would not fit the memory budget is refused with the figures, before anything runs at its size.
    """
    plan = _plan(model, objectives, recipe, keys=keys, start=start, batch_size=batch_size, precision=precision,
                 max_memory=max_memory, select_channels=select_channels, memory_format=memory_format, **overrides)
    recipe, targets, keys, size, view, dtype = plan.recipe, plan.targets, plan.keys, plan.size, plan.view, plan.dtype
    transforms = recipe.transforms()
    parts: list[list[torch.Tensor | None]] = []
    with contextlib.ExitStack() as stack:
        step = stack.enter_context(_forward_pass(model, plan.layers, plan.conv_tail, plan.nhwc,
                                                 bool(recipe.escape_steps)))
        image_part = plan.need(size, view) - int(1.5 * recipe.views * plan.saved.at(view))
        batch = batch_size or auto_batch_size(model, step.run, view, recipe.views, plan.max_memory, dtype,
                                              plan.together, extra=max(image_part, 0), saved=plan.saved)
        chunks = plan_batches(targets, batch)
        description = _progress_label(targets)
        bar = stack.enter_context(tqdm(total=recipe.steps * len(chunks), desc=f"{model.name} {description}",
                                       unit="step", disable=None if progress else True, leave=False))
        for chunk in chunks:
            if plan.conv_tail is not None:
                picked = torch.tensor([plan.selection[1][i] for i in chunk], device=model.device)
                score = _selected_scorer(step.run, plan.conv_tail, picked, step.nhwc)
            else:
                score = _scorer(step.run, [targets[i] for i in chunk], step.nhwc)
            with autocast(model.device, dtype):
                parts.append(_render_chunk(model, score, [keys[i] for i in chunk], recipe, size, seed,
                                           None if start is None else start[chunk], plan.spectrum,
                                           transforms, bar.update, step.redirection))
    order = np.argsort([index for chunk in chunks for index in chunk], kind="stable")  # back to input order
    pixels, before, after, alive, importance = (
        torch.cat(column)[torch.as_tensor(order)] if column[0] is not None else None for column in zip(*parts))
    start_score, final_score = before.double().numpy(), after.double().numpy()
    stuck = ~alive.numpy() | ((start_score == final_score) & (recipe.steps > 0))
    dead = np.zeros_like(stuck)
    if stuck.any():  # only now is it worth asking whether the unit responds to anything at all
        indices = np.flatnonzero(stuck)
        dead[indices] = flat_on_probe(model, [targets[i] for i in indices], size, max_memory=plan.max_memory)
    result = Render(
        model=model.name, objectives=targets, recipe=recipe,
        pixels=pixels.permute(0, 2, 3, 1).double().numpy(),
        start_score=start_score, score=final_score, stuck=stuck, dead=dead,
        importance=None if importance is None else importance.double().numpy(),
    )
    _warn_stuck(result, step.redirection, probe_count())
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
    # Channels only: ``render`` checks the layer at the full side once its memory is known to fit.
    info = model.layer_info(layer, min(side, model.spec.default_size))
    check_filters(filters, info.channels, layer, model.name)
    result = render(model, [channel(layer, f) for f in filters], chosen.replace(size=side), seed=seed,
                    keys=filters, start=start, batch_size=batch_size, progress=progress, precision=precision,
                    max_memory=max_memory, select_channels=select_channels, memory_format=memory_format)
    return FilterRender(**vars(result), layer=layer, filters=filters)
