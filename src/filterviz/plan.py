"""Planning a render: everything decided once, before the first step.

``plan_render`` resolves the parts a render runs with (``RenderParts``: the parameterization,
transforms, optimizer and deprocess mode, from the recipe or given as objects), its size (the one
place the default is decided, ``recipes.render_size``), the objectives with the recipe's regularizers
added as terms, the checks of every layer, channel, class and direction, the forward strategy (full
capture or the one-channel fast path), and the memory that a batch needs, refused with the figures
when even the smallest batch would not fit.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .errors import FilterIndexError, FilterVizError, InputSizeError, MemoryBudgetError, first_line
from .device import DEFAULT_PRECISION, SavedBytes, autocast_dtype, measure_saved_bytes, resolve_precision
from .forward import FullCapture, SelectedChannels, choose_forward
from .image import DEPROCESS, Deprocess
from .layers import OUTPUT
from .memory import article, budget_words, largest, memory_budget, more_memory, readable
from .models.loaded import LoadedModel
from .objectives import IMAGE, ClassScore, Direction, Objective, Regularizer, parse_objective
from .optimizers import Optimizer, as_optimizer
from .params import PARAMETERIZATIONS, Parameterization, parameterization_fields
from .recipes import Recipe, get_recipe, render_size
from .starts import require_start, start_images, start_size
from .transforms import Compose


@dataclass(frozen=True)
class RenderParts:
    """The parts a render runs with. Each comes from the recipe's field of the same name unless it was
    given as an object; ``recipe_transforms`` says whether the transforms are the recipe's own (then a
    changed recipe field, such as ``pad``, changes them)."""

    parameterization: Parameterization
    transforms: Compose
    optimizer: Optimizer
    deprocess: Deprocess
    recipe_transforms: bool = True

    @classmethod
    def resolve(cls, recipe: Recipe, parameterization: Parameterization | None = None,
                transforms: Sequence[torch.nn.Module] | None = None, optimizer: Any = None,
                deprocess: Deprocess | None = None) -> "RenderParts":
        """The parts for ``recipe``: each object given replaces the part that the recipe's field names
        (a list of transforms replaces all of the recipe's transforms)."""
        if parameterization is not None and not isinstance(parameterization, Parameterization):
            raise FilterVizError(f"parameterization must be a name or a filterviz Parameterization, not "
                                 f"{type(parameterization).__name__}")
        if deprocess is not None and not isinstance(deprocess, Deprocess):
            raise FilterVizError(f"deprocess must be a name or a filterviz Deprocess, not {type(deprocess).__name__}")
        if transforms is not None and not all(callable(t) for t in transforms):
            raise FilterVizError("transforms must be a list of transforms, each called as t(x, generators)")
        return cls(
            parameterization or PARAMETERIZATIONS.get(recipe.parameterization).from_recipe(recipe),
            recipe.transforms() if transforms is None else Compose(list(transforms)),
            as_optimizer(recipe.optimizer if optimizer is None else optimizer),
            deprocess or DEPROCESS.get(recipe.deprocess),
            transforms is None,
        )

    def for_recipe(self, recipe: Recipe) -> "RenderParts":
        """These parts with a changed recipe's transforms (when they are the recipe's own)."""
        if not self.recipe_transforms:
            return self
        return RenderParts(self.parameterization, recipe.transforms(), self.optimizer, self.deprocess)

    def view_side(self, size: int) -> int:
        """The side of the views that the model sees at each step for an image of ``size`` px."""
        return self.transforms.output_side(size)

    def transformed(self, recipe: Recipe) -> bool:
        """Whether the images are changed before the model sees them (then the untransformed image is
        scored on its own at the start)."""
        return recipe.has_transforms if self.recipe_transforms else bool(recipe.views > 1 or len(self.transforms.transforms))


def check_filters(filters: Iterable[int], channels: int, layer: str, model_name: str, unit: str = "filter") -> None:
    """Raise FilterIndexError, naming the valid range, if a filter (``unit``) index is outside
    ``0..channels-1``: the one check of filter and channel indices. A ``range`` is checked by its ends,
    so a huge one is never expanded."""
    indices = (filters[0], filters[-1]) if isinstance(filters, range) and filters else filters
    what = "the model's output" if layer == OUTPUT else f"layer {layer}"
    for index in indices:
        if not 0 <= index < channels:
            raise FilterIndexError(
                f"{unit} {index} is out of range for {what} of {model_name}, which has "
                f"{channels} {unit}s: use 0-{channels - 1}"
            )


def with_regularizers(objective: Objective, recipe: Recipe) -> Objective:
    """The objective with the recipe's penalties (``tv``, ``l1``, ``l2``, ``blur`` weights) subtracted as
    regularizer terms."""
    penalties = [(-weight, Regularizer(name)) for name, weight in
                 (("tv", recipe.tv), ("l1", recipe.l1), ("l2", recipe.l2), ("blur", recipe.blur)) if weight]
    return objective + Objective(penalties) if penalties else objective


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
            if index is not None:
                check_filters([index], count, term.layer, model.name, unit="channel")
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
    pixels = torch.full((1, model.spec.channels, side, side), 128.0, dtype=model.dtype, device=model.device)
    try:
        with torch.no_grad():
            output = model.logits(pixels)
    except (RuntimeError, ValueError, AssertionError) as exc:
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


def _per_channel(count: int, channels: int) -> int:
    """A count the parts give for an RGB image (3 channels), for ``channels`` channels."""
    return count if channels == 3 else -(-count * channels // 3)


def image_bytes(parts: RenderParts, recipe: Recipe, size: int, element: int, channels: int = 3) -> int:
    """About how many bytes one image of ``size`` px and ``channels`` channels needs outside the model:
    its parameters with their gradient and optimizer moments, and what its parameterization, transforms
    and penalties keep for the backward pass. Counted from the parts (which count RGB images: other
    channel counts scale them), in numbers of ``element`` bytes: nothing is allocated to find out."""
    pixels = channels * size * size
    parameters, kept = (_per_channel(n, channels) for n in parts.parameterization.numbers(size))
    slots = 2 + parts.optimizer.moments  # itself, its gradient, the optimizer's buffers
    views = _per_channel(parts.transforms.kept_numbers(size, recipe.views), channels)
    penalties = 2 * pixels * sum(bool(w) for w in (recipe.tv, recipe.l1, recipe.l2, recipe.blur))
    importance = 8 * size * size if parts.parameterization.importance else 0  # float64, per pixel
    return int((parameters * slots + kept + views + penalties) * element + importance)


def result_bytes(parts: RenderParts, size: int, channels: int = 3) -> int:
    """The bytes one finished image of ``size`` px and ``channels`` channels is kept in until it is
    written: its pixels as the model computed them and in float64, its 8-bit picture and its tile in a
    grid (and the importance map, in float64, twice)."""
    pixels = channels * size * size
    importance = 16 * size * size if parts.parameterization.importance else 0
    return (4 + 4 + 8 + 1 + 1) * pixels + importance


def _image_need(model: LoadedModel, parts: RenderParts, recipe: Recipe, saved: SavedBytes) -> Callable[..., int]:
    """``need(size, view, **changes)``: the bytes one image needs (with recipe fields changed, such as
    ``views`` or ``pad``), the larger of an ascent step (its views' saved activations, times 1.5 for
    what the backward pass holds besides, and the image's own) and a scoring of the whole image without
    gradients (at its start and end), which holds at most what a pass with gradients would keep."""
    element, channels = model.element_size, model.spec.channels

    def need(size: int, view: int, **changes: Any) -> int:
        changed = recipe.replace(**changes) if changes else recipe
        step = 1.5 * changed.views * saved.at(view) + image_bytes(parts.for_recipe(changed), changed, size, element,
                                                                  channels)
        whole = saved.at(size) + channels * size * size * element
        return int(max(step, whole))
    return need


def _where(layers: list[str]) -> str:
    """The layers a memory message names: the model's own, or the first and how many more."""
    names = ["the model's output" if layer == OUTPUT else layer for layer in layers]
    if not names:
        return "the image"
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more layers"


def _check_memory(model: LoadedModel, parts: RenderParts, recipe: Recipe, size: int, layers: list[str],
                  need: Callable[..., int],
                  max_memory: int | None, count: int, together: int, batch_size: int | None,
                  batch_option: str = "--batch-size") -> None:
    """Refuse, before anything runs at ``size``, a render whose smallest batch does not fit the budget
    (one image, the copies that must share a batch (``together``), or a given ``batch_size``), or whose
    ``count`` finished images, kept until they are written, do not fit beside a batch. The message
    gives the figures and the largest size, view size, pad, views, copies or batch that fit."""
    budget = memory_budget(model.device, max_memory)
    view = parts.view_side(size)
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
        options = _memory_options(parts, recipe, size, need, budget, images)
        fit = budget // max(need(size, view), 1)
        if kind == "copies" and fit >= 1:
            options.insert(0, f"--copies {fit} or less")
        elif kind == "batch" and fit >= 1:
            options.insert(0, f"{batch_option} {fit} or less")
        options.append(more_memory(total, model.device))
        raise MemoryBudgetError(f"{what} {verb} about {readable(total)} at {_where(layers)}, "
                                f"{budget_words(budget, max_memory, model.device)}: use {', or '.join(options)}")
    channels = model.spec.channels
    kept = count * result_bytes(parts, size, channels)
    if count > 1 and kept + need(size, view) > budget:
        fit = max(int((budget - need(size, view)) // result_bytes(parts, size, channels)), 0)
        best = largest(lambda side: count * result_bytes(parts, side, channels) + need(side, parts.view_side(side))
                       <= budget * ADVICE_SHARE,
                       size)
        options = [f"at most {fit} images at a time (fewer --copies, --objective or --filters)"] if fit else []
        options += [f"--size {best} or less"] if best and best < size else []
        options.append(more_memory(kept + need(size, view), model.device))
        raise MemoryBudgetError(f"{count} images of {size} px of {model.name} are kept as results until they are "
                                f"written, which with a batch needs about {readable(kept + need(size, view))}, "
                                f"{budget_words(budget, max_memory, model.device)}: use {', or '.join(options)}")


# The advice a memory refusal gives is computed from the need estimated at the refused size; a rerun at
# the advised size estimates it afresh there (measured directly below the probe sides, where saved
# tensors of mixed precision make the need not quite linear in the pixel count), which can come out a
# percent or two higher. Advice that keeps this share of the budget stays true when followed.
ADVICE_SHARE = 0.97


def _memory_options(parts: RenderParts, recipe: Recipe, size: int, need: Callable[..., int], budget: int,
                    images: int) -> list[str]:
    """The changes that would let ``images`` images fit, each alone: the largest size, view size, pad
    or views that fit with everything else as it is."""
    def fits(side: int, view: int, **changes: Any) -> bool:
        return images * need(side, view, **changes) <= budget * ADVICE_SHARE

    options = []
    smallest = max(1, recipe.jitter + recipe.final_jitter - 2 * recipe.pad + 1)  # a smaller one leaves no view
    best = largest(lambda side: fits(side, parts.view_side(side)), size, low=min(smallest, size))
    if best is not None and best < size:
        options.append(f"--size {best} or less")
    view = parts.view_side(size)
    if recipe.view_size and parts.recipe_transforms:
        best = largest(lambda side: fits(size, side), recipe.view_size)
        if best is not None and best < recipe.view_size:
            options.append(f"--view-size {best} or less")
    elif recipe.pad and parts.recipe_transforms:
        low = max(0, (recipe.jitter + recipe.final_jitter - size) // 2 + 1)
        best = largest(lambda pad: fits(size, parts.for_recipe(recipe.replace(pad=pad)).view_side(size), pad=pad),
                       recipe.pad,
                       low=low)
        if best is not None and best < recipe.pad:
            options.append(f"--pad {best} or less")
    if recipe.views > 1:
        best = largest(lambda views: fits(size, view, views=views), recipe.views)
        if best is not None and best < recipe.views:
            options.append(f"--views {best}" + (" or less" if best > 1 else ""))
    return options



@dataclass
class RenderPlan:
    """A render, checked: everything it runs with, and what it knows of its memory."""

    recipe: Recipe
    parts: RenderParts
    objectives: list[Objective]
    keys: list[int]
    size: int
    view: int
    forward: FullCapture | SelectedChannels
    dtype: torch.dtype | None
    nhwc: bool
    together: int
    max_memory: int | None
    saved: SavedBytes
    need: Callable[..., int]
    precision: str = "fp32"  # what the render runs in: fp32, bf16 or fp16 (``auto`` resolved)
    start: np.ndarray | None = None  # the start images, (N, H, W, C) pixels, when the render has a start

    def batch_extra(self) -> int:
        """What one image needs besides its views' saved activations, for the batch size."""
        return max(self.need(self.size, self.view) - int(1.5 * self.recipe.views * self.saved.at(self.view)), 0)


# The recipe fields that build the transforms: a list of transforms given as objects replaces them.
TRANSFORM_FIELDS = ("pad", "jitter", "scales", "angles", "crop", "flip", "final_jitter", "noise", "view_size",
                    "extra_transforms")


def _refuse_ignored(overrides: dict[str, Any], parameterization: object, transforms: object) -> None:
    """Refuse a recipe field that a part given as an object would leave unread: transform fields beside
    a list of transforms, a parameterization's own fields (``init_std``...) beside a parameterization."""
    given = {name for name, value in overrides.items() if value is not None}
    ignored = sorted(given & set(TRANSFORM_FIELDS)) if transforms is not None else []
    if ignored:
        raise FilterVizError(f"{', '.join(ignored)} would be ignored: the transforms given as a list replace the "
                             "recipe's; add such a transform to the list instead")
    if parameterization is not None and not isinstance(parameterization, str):
        ignored = sorted(given & set(parameterization_fields()))
        if ignored:
            raise FilterVizError(f"{', '.join(ignored)} would be ignored: the parameterization given as an object "
                                 "has its own settings; set them on that object instead")


def plan_render(model: LoadedModel, objectives: Sequence[Objective | str], recipe: Recipe | str = "classic", *,
                parameterization: Parameterization | str | None = None,
                transforms: Sequence[torch.nn.Module] | None = None, optimizer: Any = None,
                deprocess: Deprocess | str | None = None, keys: Sequence[int] | None = None,
                start: np.ndarray | str | os.PathLike[str] | None = None, batch_size: int | None = None,
                precision: str = DEFAULT_PRECISION,
                max_memory: int | None = None, select_channels: bool = True, memory_format: str = "channels_last",
                batch_option: str = "--batch-size", **overrides: Any) -> RenderPlan:
    """Check a render before any work: its objectives, parts, sizes, transforms, layers, channels and
    direction vectors, and that its smallest batch fits the memory budget (estimated at small sides).
    Only then is the model run at the render's own sizes (to check the layers there). Parts given by
    name are recipe overrides; parts given as objects replace the recipe's."""
    for name, value in (("parameterization", parameterization), ("optimizer", optimizer), ("deprocess", deprocess)):
        if isinstance(value, str):
            overrides[name] = value
    _refuse_ignored(overrides, parameterization, transforms)
    recipe = get_recipe(recipe, **overrides)
    parts = RenderParts.resolve(recipe, *(None if isinstance(v, str) else v
                                          for v in (parameterization, transforms, optimizer, deprocess)))
    targets = [parse_objective(o) if isinstance(o, str) else o for o in objectives]
    if not targets:
        raise FilterVizError("nothing to render; give at least one objective")
    if not all(isinstance(o, Objective) for o in targets):
        bad = next(o for o in targets if not isinstance(o, Objective))
        raise FilterVizError(f"objectives must be Objectives or text such as 'channel:LAYER:K', not {type(bad).__name__}")
    targets = [objective.bind(model) for objective in targets]
    keys = list(range(len(targets))) if keys is None else [int(k) for k in keys]
    if len(keys) != len(targets):
        raise FilterVizError(f"{len(keys)} keys for {len(targets)} objectives")
    if batch_size is not None and batch_size < 1:
        raise FilterVizError(f"batch size must be 1 or more, not {batch_size}")
    channels = model.spec.channels
    parts.parameterization.check_channels(channels)
    require_start(targets, start is not None)
    side = start_size(start, overrides.get("size"))  # an array's side; a photo file is read at the render's size
    if side is not None:
        recipe = recipe.replace(size=side)
    size = render_size(recipe, model.spec.fixed_size)
    if start is not None:
        start = start_images(start, len(targets), size, channels)
    if model.spec.min_size and size < model.spec.min_size and not model.spec.fixed_size:
        raise InputSizeError(f"{model.name} takes images of {model.spec.min_size} px or more, not {size}; "
                             f"use --size {model.spec.min_size} or more")
    if parts.recipe_transforms:
        recipe.check_sizes(size)
    elif parts.view_side(size) < 1:
        raise FilterVizError(f"the transforms leave no image of a {size} px image; use a larger size")
    if memory_format not in ("channels_last", "contiguous"):
        raise FilterVizError(f"memory_format must be channels_last or contiguous, not {memory_format!r}")
    dtype = autocast_dtype(precision, model.device, model.dtype)
    view = parts.view_side(size)  # what the model sees at each step; whole images are scored too
    # The model runs at both sides. Small ones are checked as they are; a side beyond the model's own
    # is checked there first (names, channels), and at itself only once its memory is known to fit.
    own = model.spec.default_size
    for side in sorted({min(size, own), min(view, own)}):
        _check_layers_and_channels(model, targets, side)
    targets = [with_regularizers(objective, recipe) for objective in targets]
    layers = sorted({layer for objective in targets for layer in objective.layers} - {IMAGE})
    forward = choose_forward(model, targets, layers, select_channels)
    nhwc = memory_format == "channels_last"
    # The largest set of copies that read each other (a diversity term): they must share one batch.
    together = max(Counter(o for o in targets if o.batchwise).values(), default=1)
    budget = max_memory if max_memory is not None else model.max_memory
    with forward.open(model, nhwc, escape=False) as probe:
        saved = measure_saved_bytes(model, probe.run, view, dtype)  # at small sides, then scaled
    need = _image_need(model, parts, recipe, saved)
    _check_memory(model, parts, recipe, size, layers, need, budget, len(targets), together, batch_size, batch_option)
    for side in sorted({size, view}):
        if side > own:
            _check_layers_and_channels(model, targets, side)
    if start is not None:
        _check_start_activations(model, targets, start)
    return RenderPlan(recipe, parts, targets, keys, size, view, forward, dtype, nhwc, together, budget, saved, need,
                      resolve_precision(precision, model.device, model.dtype), start)


def _check_start_activations(model: LoadedModel, objectives: list[Objective], start: np.ndarray) -> None:
    """Refuse a start photo that gives all zeros at a layer an objective compares it at: a caricature or
    a closeness in units of the photo's activations has no units there (and nothing to show)."""
    layers = sorted({layer for objective in objectives for layer in objective.start_layers} - {IMAGE})
    if not layers:
        return
    shared = all(np.array_equal(start[0], other) for other in start[1:])
    images = [0] if shared else range(len(start))
    with torch.no_grad(), model.capture(layers) as run:
        for index in images:
            pixels = torch.as_tensor(start[index:index + 1]).permute(0, 3, 1, 2).to(model.device, model.dtype)
            data = run(pixels)
            for layer in layers:
                if not bool(data[layer].any()):
                    which = "the start photo" if shared else f"start image {index}"
                    raise FilterVizError(f"{which} gives nothing but zeros at {layer}, so there is nothing of it to "
                                         "compare with there; compare at another layer (an earlier one, or one "
                                         "before its activation)")


def check_render(model: LoadedModel, objectives: Sequence[Objective | str], recipe: Recipe | str = "classic",
                 **options: Any) -> None:
    """Raise the error that ``render`` with these arguments would raise before its first step (a bad
    objective, part, size, transform, layer, channel, direction or spectrum, or a batch beyond the
    memory budget), without rendering: what an atlas checks before it writes anything. Takes
    ``plan_render``'s arguments; ``batch_option`` is how the message names the batch size's option."""
    plan_render(model, objectives, recipe, **options)
