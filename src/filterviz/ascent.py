"""The ascent loop: optimize a batch of images, each for its own objective, with a recipe.

``render`` is the general loop (any objectives, any recipe or parts); ``render_filters`` is the book's
job on top of it: many filters of one layer, one image each. A render is three steps, each decided
once: its plan (``plan.plan_render``: size, parts, checks, regularizers, memory), its forward strategy
(``forward``: full capture or the one-channel fast path), and the optimization of each batch
(``optimize_batch``, which returns a ``BatchResult``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .fastpath import single_channels
from .errors import FilterVizError, FilterVizWarning, RenderCancelled
from .device import DEFAULT_PRECISION, auto_batch_size, autocast
from .forward import Scorer
from .image import DEPROCESS, SIDE_BY_SIDE_MARGIN, Deprocess, as_is, side_by_side
from .liveness import flat_on_probe, probe_count
from .models.loaded import LoadedModel
from .objectives import Objective, channel
from .params import Parameterization, create_images
from .plan import RenderParts, RenderPlan, check_filters, plan_batches, plan_render
from .recipes import Recipe, get_recipe, render_size
from .redirect import Redirection
from .starts import start_size


@dataclass
class Render:
    """The outcome of ``render``: one image per objective.

    ``model`` names the model that made it. ``pixels`` are the optimized images, (N, H, W, C) in pixel
    units (0..255): C = 3 in RGB, or the model's own channels (1 for gray; see ``InputSpec.channels``);
    ``images`` their uint8 pictures (by the recipe's ``deprocess``), of the same shape. ``start_score`` and
    ``score`` are each objective at the start and final image (untransformed). ``stuck[i]`` is true when
    image ``i`` never left its start: its gradient stayed zero at every step, or its score never changed,
    so its picture shows only the start image. ``dead[i]`` (a stuck image only) is true when its
    objective is measured dead: the same value on every probe photo and noise image (see ``liveness``).
    ``importance`` (a parameterization with ``importance``: MACO) is the accumulated gradient magnitude
    per pixel, (N, H, W). ``deprocess`` is the mode that makes ``images`` (default: the recipe's).
    ``start`` holds the start images it was given (a photo), (N, H, W, C) pixels; ``side_by_side()``
    puts each picture beside its photo.
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
    deprocess: Deprocess | None = None
    precision: str = "fp32"  # the arithmetic it ran in (what ``auto`` chose)
    start: np.ndarray | None = None  # the start images given (a photo), (N, H, W, C) pixels; None: noise

    @property
    def images(self) -> np.ndarray:
        """The pictures, (N, H, W, C) uint8 (C = 3 for RGB; the model's channels), by the deprocess mode (the
        recipe's, unless one was given). ``show_channels`` makes of them what a picture file shows: one
        channel as gray (N, H, W), and 3 chosen of more than three."""
        mode = self.deprocess or DEPROCESS.get(self.recipe.deprocess)
        return np.stack([mode(p) for p in self.pixels])

    def picture(self) -> np.ndarray:
        """The pictures as one image, as a notebook shows them: the picture itself, or a grid of them
        (8 to a row; a stuck image crossed out)."""
        from .notebook import render_picture
        return render_picture(self)

    def _repr_png_(self) -> bytes:  # Jupyter: the pictures
        from .image import png_bytes
        return png_bytes(self.picture())

    def _repr_html_(self) -> str:  # Jupyter: the pictures with their objectives and scores
        from .notebook import render_html
        return render_html(self)

    @property
    def start_images(self) -> np.ndarray:
        """The start images (the photo) as pictures, (N, H, W, C) uint8: their pixels as they are,
        rounded and clipped to 0..255. A render that started from noise has none (FilterVizError)."""
        if self.start is None:
            raise FilterVizError("this render started from noise, not from a photo; render with start=PHOTO to "
                                 "show the photo beside it")
        return np.stack([as_is(p) for p in self.start])

    def side_by_side(self, margin: int = SIDE_BY_SIDE_MARGIN) -> np.ndarray:
        """Each picture to the right of the photo it started from, ``margin`` black pixels apart:
        (N, H, 2W + margin, C) uint8 (``show_channels`` makes pictures of them for other channel counts)."""
        return np.stack([side_by_side(photo, image, margin) for photo, image in zip(self.start_images, self.images)])


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



def _generator(seed: int | None, key: int, salt: int) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(np.random.default_rng([seed, key, salt]).integers(2 ** 62)))
    return generator



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


def _warn_stuck(result: Render, redirection: Redirection | None, probe_count: int) -> None:
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
class BatchResult:
    """One batch's images after ``optimize_batch``: their pixels (N, C, H, W), each objective at the start
    and at the end (untransformed), whether each ever had a gradient (``alive``), and the accumulated
    per-pixel gradient magnitude (None unless the parameterization asks for it)."""

    pixels: torch.Tensor
    start_score: torch.Tensor
    score: torch.Tensor
    alive: torch.Tensor
    importance: torch.Tensor | None


def _exact(model: LoadedModel, reduced: bool) -> contextlib.AbstractContextManager[None]:
    """Autocast switched off (when it was on): the model in its own precision."""
    return torch.autocast(device_type=model.device.type, enabled=False) if reduced else contextlib.nullcontext()


StepWatcher = Callable[[int, torch.Tensor, torch.Tensor], None]
"""Told after a step of a batch: the step (1..steps), the batch's pixels after it (N, C, H, W) and each
image's objective at that step (N,), as the ascent computed it (transformed views, before the step)."""


def _twin(generator: torch.Generator) -> torch.Generator:
    """A generator in the same state: it draws what ``generator`` will draw next."""
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return twin


def optimize_batch(model: LoadedModel, score: Scorer, keys: list[int], recipe: Recipe, parts: RenderParts, size: int,
                   seed: int | None, start: np.ndarray | None, on_step: Callable[[], None] = lambda: None,
                   redirection: Redirection | None = None, compare_start: bool = False,
                   watch: StepWatcher | None = None, watch_every: int = 1) -> BatchResult:
    """Optimize one batch of images (one per key) for ``recipe.steps`` steps with the parts; ``watch``
    (when given) is told every ``watch_every``-th step and the last one. With ``compare_start`` (an
    objective compares the image with its start), the start images are scored too, each view through
    the same random transforms as the image's (twin generators), so that the two are compared position
    for position."""
    image = create_images(parts.parameterization, size, keys, seed, start, model.spec.channels)
    image = image.to(model.device, model.dtype)
    photo = photo_views = None
    if compare_start and start is not None:  # a fixed target: no gradient
        photo = torch.as_tensor(start).permute(0, 3, 1, 2).to(model.device, model.dtype)
        photo_views = photo.repeat_interleave(recipe.views, dim=0) if recipe.views > 1 else photo

    def scored(pixels: torch.Tensor, views: torch.Tensor, count: int,
               start_views: torch.Tensor | None) -> torch.Tensor:
        return score(pixels, views, count) if photo is None else score(pixels, views, count, (photo, start_views))

    parameters = list(image.parameters())
    step_parameters = parts.optimizer.start(parameters, recipe.learning_rate)
    generators = [_generator(seed, key, 3) for key in keys for _ in range(recipe.views)]
    count = len(keys)
    alive = torch.full((count,), recipe.steps == 0, dtype=torch.bool)
    all_alive = recipe.steps == 0  # once every image has had a gradient, nothing more is asked of them
    importance = (torch.zeros(count, size, size, dtype=torch.float64, device=_accumulator_device(model.device))
                  if parts.parameterization.importance else None)
    first = None
    # Under bf16 or fp16 the steps run in that precision, but the scores a render reports (and from
    # which a stuck image is told) are measured in the model's own precision, so that they are the
    # numbers anyone measuring the unit on these pixels gets.
    reduced = torch.is_autocast_enabled(model.device.type)
    if parts.transformed(recipe) or reduced:
        with torch.no_grad(), _exact(model, reduced):
            pixels = image().to(model.dtype)
            first = scored(pixels, pixels, 1, photo).detach().cpu()
    for step in range(recipe.steps):
        if redirection is not None:
            redirection.active = step < recipe.escape_steps
        pixels = image()
        views = pixels.repeat_interleave(recipe.views, dim=0) if recipe.views > 1 else pixels
        twins = [_twin(generator) for generator in generators] if photo is not None else []
        transformed = parts.transforms(views, generators)
        start_views = parts.transforms(photo_views, twins) if photo is not None else None
        scores = scored(pixels, transformed, recipe.views, start_views)
        first = scores.detach().cpu() if first is None else first
        wanted = [*parameters, pixels] if importance is not None else parameters
        grads = torch.autograd.grad(scores.sum(), wanted)
        if importance is not None:  # float32 into float64: the same sums as converting first
            importance += grads[-1].detach().abs().sum(dim=1).to(importance.device)
        if not all_alive:
            with torch.no_grad():
                for grad in grads[:len(parameters)]:
                    alive |= (grad.square().flatten(1).mean(dim=1).sqrt() > 0).cpu()
            all_alive = bool(alive.all())
        step_parameters(grads[:len(parameters)])
        on_step()
        if watch is not None and ((step + 1) % watch_every == 0 or step + 1 == recipe.steps):
            with torch.no_grad():
                watch(step + 1, image().detach(), scores.detach())
    if redirection is not None:
        redirection.active = False
    with torch.no_grad(), _exact(model, reduced):
        pixels = image().to(model.dtype)
        final = scored(pixels, pixels, 1, photo).detach().cpu()
    return BatchResult(pixels.detach().cpu(), final if first is None else first, final, alive,
                       None if importance is None else importance.cpu())


def _accumulator_device(device: torch.device) -> torch.device:
    """Where a float64 sum over the steps is kept: on the device when it has float64 (no copy to the
    host at every step), else on the CPU."""
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def render(
    model: LoadedModel,
    objectives: Sequence[Objective | str],
    recipe: Recipe | str = "classic",
    *,
    parameterization: Parameterization | str | None = None,
    transforms: Sequence[torch.nn.Module] | None = None,
    optimizer: Any = None,
    deprocess: Deprocess | str | None = None,
    seed: int | None = None,
    keys: Sequence[int] | None = None,
    start: np.ndarray | str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    precision: str = DEFAULT_PRECISION,
    max_memory: int | None = None,
    select_channels: bool = True,
    memory_format: str = "channels_last",
    fold_batchnorm: bool = False,
    callback: Callback | None = None,
    callback_every: int = 1,
    **overrides: Any,
) -> Render:
    """Optimize one image per objective with ``recipe`` (a preset name or a Recipe).

    ``overrides`` change recipe fields (``steps=128``, ``size=224``...). Parts may be given as objects,
    replacing the recipe's: a ``parameterization`` (a ``params.Parameterization``), a list of
    ``transforms`` (each called as ``t(x, generators)``), an ``optimizer`` (an ``optimizers.Optimizer``
    or a ``torch.optim.Optimizer`` class) and a ``deprocess`` mode; a name there is a recipe override.
    With a ``seed``, image ``i``'s start and random transforms come from ``(seed, keys[i])`` alone
    (default key: its position), so an image is the same whether rendered alone or in a batch.
    ``start`` replaces the start noise: a photo file (read at the render's size, its middle square, in
    the model's channels: see ``starts``), one image (H, W, C) for every objective, or one per objective
    (N, H, W, C), in pixels 0..255. Pixel and fourier images start as it exactly (fourier within
    0.5..254.5, where its sigmoid is invertible); maco from its phase, with maco's own magnitude.
    Objectives that compare the image with its start (``caricature:LAYER``, ``close:LAYER``) need one.

    How it runs, which never changes what is computed beyond rounding: ``precision`` (``fp32``,
    ``bf16``, ``fp16`` or ``auto``, the default: the fastest that keeps quality on this machine,
    see ``device.choose_precision``; ``Render.precision`` says what it ran in), ``batch_size`` (default: the
    device's, capped so a batch fits in ``max_memory`` bytes, default the model's ``max_memory``, else a
    safe share of free memory), ``select_channels`` (when every image is scored on one channel of a
    convolution layer, compute only those channels), and ``memory_format`` (``channels_last`` or
    ``contiguous``). Everything is checked before the first step (see ``plan.check_render``): a batch
    that would not fit the memory budget is refused with the figures, before anything runs at its size.
    ``fold_batchnorm`` (off by default) folds each batch norm into the convolution before it while the
    render runs (``forward.folded_batchnorm``; a layer an objective reads is left as it is): fewer
    passes over the activations (EfficientNet-Lite0's step about a third faster on a CPU), the same
    result up to float rounding, not byte for byte.

    ``callback(step, images, scores)``, when given, watches the render: it is called after every
    ``callback_every``-th step of each batch and after each batch's last step, with ``step`` the steps run
    so far (up to ``steps`` times the number of batches), ``images`` the pictures of every objective so far,
    (N, H, W, C) uint8 by the deprocess mode (mid-gray for a batch not yet started, the final picture for a
    finished one), and ``scores`` (N,) each objective at that step (NaN before its batch starts). It
    changes nothing that is computed; returning ``False`` stops the render (``RenderCancelled``).
    """
    if callback_every < 1:
        raise FilterVizError(f"callback_every must be a whole number of steps, at least 1, not {callback_every}")
    plan = plan_render(model, objectives, recipe, parameterization=parameterization, transforms=transforms,
                       optimizer=optimizer, deprocess=deprocess, keys=keys, start=start, batch_size=batch_size,
                       precision=precision, max_memory=max_memory, select_channels=select_channels,
                       memory_format=memory_format, **overrides)
    results: list[BatchResult] = []
    with contextlib.ExitStack() as stack:
        step = stack.enter_context(plan.forward.open(model, plan.nhwc, bool(plan.recipe.escape_steps),
                                                     fold_batchnorm=fold_batchnorm))
        batch = batch_size or auto_batch_size(model, step.run, plan.view, plan.recipe.views, plan.max_memory,
                                              plan.dtype, plan.together, extra=plan.batch_extra(), saved=plan.saved)
        chunks = plan_batches(plan.objectives, batch)
        bar = stack.enter_context(tqdm(total=plan.recipe.steps * len(chunks),
                                       desc=f"{model.name} {_progress_label(plan.objectives)}", unit="step",
                                       disable=None if progress else True, leave=False))
        watcher = None if callback is None else _Watcher(callback, plan)
        for chunk in chunks:
            compare_start = any(plan.objectives[i].start_layers for i in chunk)
            with autocast(model.device, plan.dtype):
                results.append(optimize_batch(model, plan.forward.scorer(step, chunk), [plan.keys[i] for i in chunk],
                                              plan.recipe, plan.parts, plan.size, seed,
                                              None if plan.start is None else plan.start[chunk], bar.update,
                                              step.redirection, compare_start,
                                              None if watcher is None else watcher.batch(chunk), callback_every))
    order = torch.as_tensor(np.argsort([index for chunk in chunks for index in chunk], kind="stable"))
    result = _assemble(model, plan, results, order)
    _warn_stuck(result, step.redirection, probe_count())
    return result


Callback = Callable[[int, np.ndarray, np.ndarray], "bool | None"]


class _Watcher:
    """Keeps every objective's latest picture and score, and tells ``callback`` after a batch's steps."""

    def __init__(self, callback: Callback, plan: RenderPlan) -> None:
        self.callback, self.steps, self.done = callback, plan.recipe.steps, 0
        self.mode = plan.parts.deprocess
        self.count = len(plan.objectives)
        self.images: np.ndarray | None = None  # made at the first step, when the pictures' shape is known
        self.scores = np.full(self.count, np.nan)

    def batch(self, chunk: Sequence[int]) -> StepWatcher:
        rows = np.asarray(chunk)

        def watch(step: int, pixels: torch.Tensor, scores: torch.Tensor) -> None:
            pictures = np.stack([self.mode(p) for p in pixels.permute(0, 2, 3, 1).double().cpu().numpy()])
            if self.images is None:
                self.images = np.full((self.count, *pictures.shape[1:]), 128, dtype=np.uint8)
            self.images[rows] = pictures
            self.scores[rows] = scores.double().cpu().numpy()
            if self.callback(self.done + step, self.images.copy(), self.scores.copy()) is False:
                raise RenderCancelled(f"the render was cancelled at step {self.done + step} by its callback")
            if step == self.steps:
                self.done += self.steps
        return watch


def _assemble(model: LoadedModel, plan: RenderPlan, results: list[BatchResult], order: torch.Tensor) -> Render:
    """The batches' results as one Render, back in the objectives' order; stuck images are told from
    dead units by the probe (only now is it worth asking whether a unit responds to anything)."""
    def joined(name: str) -> torch.Tensor | None:
        column = [getattr(result, name) for result in results]
        return None if column[0] is None else torch.cat(column)[order]

    start_score, final_score = joined("start_score").double().numpy(), joined("score").double().numpy()
    stuck = ~joined("alive").numpy() | ((start_score == final_score) & (plan.recipe.steps > 0))
    dead = np.zeros_like(stuck)
    if stuck.any():
        indices = np.flatnonzero(stuck)
        dead[indices] = flat_on_probe(model, [plan.objectives[i] for i in indices], plan.size,
                                      max_memory=plan.max_memory)
    importance = joined("importance")
    return Render(
        model=model.name, objectives=plan.objectives, recipe=plan.recipe,
        pixels=joined("pixels").permute(0, 2, 3, 1).double().numpy(),
        start_score=start_score, score=final_score, stuck=stuck, dead=dead,
        importance=None if importance is None else importance.double().numpy(),
        deprocess=plan.parts.deprocess if not _named(plan.parts.deprocess, plan.recipe.deprocess) else None,
        precision=plan.precision, start=plan.start,
    )


def _named(mode: Deprocess, name: str) -> bool:
    return name in DEPROCESS and DEPROCESS.get(name) is mode


def render_filters(
    model: LoadedModel,
    layer: str,
    filters: Sequence[int],
    *,
    seed: int | None = None,
    start: np.ndarray | str | os.PathLike[str] | None = None,
    recipe: Recipe | str = "classic",
    **options: Any,
) -> FilterRender:
    """Render many filters of one layer, a batch of images at a time (by default the book's recipe).

    ``start`` replaces the book's noise start (a photo file, one image (H, W, C) for every filter, or
    (N, H, W, C), one per filter; see ``render``); each filter's result equals its one-at-a-time result
    from the same start image. Filter ``k`` starts from the noise of
    ``(seed, k)``, whatever else is rendered with it. Every other option is ``render``'s (``size``
    defaults to the recipe's, else the model's fixed input size, else the book's 150).
    """
    filters = [int(f) for f in filters]
    if not filters:
        raise FilterVizError("no filters to render; give at least one filter index")
    names = {item.name for item in fields(Recipe)}
    chosen = get_recipe(recipe, **{k: v for k, v in options.items() if k in names})
    rest = {k: v for k, v in options.items() if k not in names}
    side = start_size(start, options.get("size")) or render_size(chosen, model.spec.fixed_size)
    # Channels only: ``render`` checks the layer at the full side once its memory is known to fit.
    info = model.layer_info(layer, min(side, model.spec.default_size))
    check_filters(filters, info.channels, layer, model.name)
    result = render(model, [channel(layer, f) for f in filters], chosen.replace(size=side), seed=seed,
                    keys=filters, start=start, **rest)
    return FilterRender(**vars(result), layer=layer, filters=filters)
