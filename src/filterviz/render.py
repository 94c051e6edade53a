"""The ascent loop: gradient ascent on the input image, the book's way, for a batch of filters at once."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import FilterIndexError, FilterVizError, InputSizeError
from .image import deprocess_image
from .models.loaded import LoadedModel
from .objectives import ChannelObjective
from .params import classic_start

Objective = Callable[[torch.Tensor], torch.Tensor]  # activations -> one score per image


@dataclass
class FilterRender:
    """The outcome of rendering filters of one layer.

    ``pixels`` are the raw optimized images, (N, H, W, 3) in RGB pixel units; ``images`` their
    deprocessed uint8 form. ``start_activation`` and ``activation`` are each filter's objective at
    the start image and at the final image. ``dead[i]`` is true when filter ``i``'s gradient stayed
    zero at every step, so its image is just the start noise.
    """

    model: str
    layer: str
    filters: list[int]
    pixels: np.ndarray
    start_activation: np.ndarray
    activation: np.ndarray
    dead: np.ndarray

    @property
    def images(self) -> np.ndarray:
        """The deprocessed images, (N, H, W, 3) uint8, as the book saves them."""
        return np.stack([deprocess_image(p) for p in self.pixels])


def objective_gradient(
    run: Callable[[torch.Tensor], torch.Tensor], objective: Objective, pixels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image objective values and their gradient with respect to the pixels."""
    pixels = pixels.detach().requires_grad_(True)
    values = objective(run(pixels))
    (grad,) = torch.autograd.grad(values.sum(), pixels)
    return values.detach(), grad


def ascend(
    run: Callable[[torch.Tensor], torch.Tensor],
    objective: Objective,
    start: torch.Tensor,
    steps: int = 40,
    step: float = 1.0,
    on_step: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The book's ascent: ``x += step * g / (sqrt(mean(g**2)) + 1e-5)``, ``steps`` times, per image.

    Returns (final pixels, objective at start, objective at the final pixels, alive), where
    ``alive[i]`` says whether image ``i`` ever had a nonzero gradient (true for all when ``steps`` is 0).
    """
    pixels = start.detach().clone()
    # With no steps taken, nothing can be judged dead.
    alive = torch.full((pixels.shape[0],), steps == 0, dtype=torch.bool, device=pixels.device)
    first = None
    for _ in range(steps):
        values, grad = objective_gradient(run, objective, pixels)
        first = values if first is None else first
        rms = grad.square().mean(dim=(1, 2, 3), keepdim=True).sqrt()
        alive |= rms.flatten() > 0
        pixels += grad / (rms + 1e-5) * step
        if on_step is not None:
            on_step()
    with torch.no_grad():
        final = objective(run(pixels))
    return pixels, (final if first is None else first), final, alive


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


def default_batch_size(device: torch.device) -> int:
    """Filters per batch: small on CPUs, where larger batches fall out of cache; large on GPUs."""
    return 64 if device.type == "cuda" else 8


def render_filters(
    model: LoadedModel,
    layer: str,
    filters: Sequence[int],
    *,
    size: int | None = None,
    steps: int = 40,
    step: float = 1.0,
    seed: int | None = None,
    start: np.ndarray | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> FilterRender:
    """Render many filters of one layer with the book's recipe, a batch of images at a time.

    ``start`` (N, H, W, 3) replaces the book's noise start; each filter's result equals its
    one-at-a-time result from the same start image. ``size`` defaults to the model's fixed input
    size if it has one, else the book's 150.
    """
    filters = [int(f) for f in filters]
    if not filters:
        raise FilterVizError("no filters to render; give at least one filter index")
    if steps < 0:
        raise FilterVizError(f"steps must be 0 or more, not {steps}")
    if start is not None:
        if start.ndim != 4 or start.shape[0] != len(filters) or start.shape[3] != 3:
            raise FilterVizError(f"start must have shape ({len(filters)}, H, W, 3), not {start.shape}")
        size = start.shape[1]
    if size is None:
        size = model.spec.fixed_size[0] if model.spec.fixed_size else 150
    if size < 1:
        raise FilterVizError(f"size must be at least 1 px, not {size}")
    if model.spec.min_size and size < model.spec.min_size and not model.spec.fixed_size:
        raise InputSizeError(f"{model.name} takes images of {model.spec.min_size} px or more, not {size}; "
                             f"use --size {model.spec.min_size} or more")
    if not math.isfinite(step):
        raise FilterVizError(f"step must be a finite number, not {step}")
    info = model.layer_info(layer, size)
    check_filters(filters, info.channels, layer, model.name)
    if start is None:
        start = classic_start(size, filters, seed)

    batch = batch_size or default_batch_size(model.device)
    results = []
    with tqdm(total=steps * -(-len(filters) // batch), desc=f"{model.name} {layer}", unit="step",
              disable=None if progress else True, leave=False) as bar, model.truncated(info.name) as run:
        for first in range(0, len(filters), batch):
            chunk = filters[first:first + batch]
            pixels = torch.as_tensor(start[first:first + batch], dtype=model.dtype, device=model.device)
            out = ascend(run, ChannelObjective(layer, chunk), pixels.permute(0, 3, 1, 2), steps, step,
                         on_step=bar.update)
            results.append([t.detach().cpu() for t in out])
    pixels, before, after, alive = (torch.cat(parts) for parts in zip(*results))
    return FilterRender(
        model=model.name,
        layer=layer,
        filters=filters,
        pixels=pixels.permute(0, 2, 3, 1).double().numpy(),
        start_activation=before.double().numpy(),
        activation=after.double().numpy(),
        dead=~alive.numpy(),
    )

