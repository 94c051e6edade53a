"""The book's recipe by its own names: ``generate_pattern``, ``deprocess_image`` and the demo figures.

Chollet, *Deep Learning with Python*, 5.4.2 "Visualizing convnet filters": filter 0 of
``block1_conv1`` ... ``block4_conv1`` of VGG16 saved as ``vggconv1.png`` ... ``vggconv4.png``, and an
8x8 grid of a layer's first 64 filters (64 px tiles, 5 px margins).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import FilterVizError, FilterVizWarning, OutputError, WeightsUnavailableError
from .image import deprocess_image, make_grid, save_image, show_channels
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .recipes import BEST_RECIPE, Recipe, get_recipe
from .ascent import FilterRender, render_filters

__all__ = ["DemoFigure", "book_layers", "deprocess_image", "generate_pattern", "run_demo"]

GRID_FILTERS = 64
GRID_TILE = 64
BOOK_FIGURES = 4  # vggconv1..4.png: the first activation layer at each of four strides
# Beside the book's figures, the demo shows the same filters with BEST_RECIPE, in a folder of that
# name, and the two side by side in one picture. Its grid's tiles are larger than the book's 64 px: a
# Fourier image needs room for its detail.
BEST_GRID_TILE = 96
SIDE_BY_SIDE = "side_by_side.png"


def generate_pattern(
    model: LoadedModel | str,
    layer_name: str,
    filter_index: int,
    size: int = 150,
    steps: int = 40,
    step: float = 1.0,
    seed: int | None = None,
) -> np.ndarray:
    """The image (size, size, 3) uint8 (C channels for a model of C, see ``InputSpec.channels``) that
    maximizes the mean activation of one filter, as in the book."""
    loaded = load_model(model) if isinstance(model, str) else model
    render = render_filters(loaded, layer_name, [filter_index], size=size, steps=steps, learning_rate=step,
                            seed=seed, precision="fp32")
    return render.images[0]


def book_layers(model: LoadedModel, count: int = 4) -> list[str]:
    """Layers comparable to the book's ``block1_conv1`` ... ``block4_conv1``: the first activation
    layer at each of the model's first ``count`` output strides (for VGG16, exactly those four).
    Names are given by alias where the model has one."""
    size = model.spec.default_size
    chosen: dict[int, str] = {}
    for info in model.layers(size):
        if model.is_activation(info.name) and info.height and size // info.height not in chosen:
            chosen[size // info.height] = info.aliases[0] if info.aliases else info.name
    return [chosen[stride] for stride in sorted(chosen)][:count]


@dataclass
class DemoFigure:
    """One figure written by ``run_demo``: where it is, and the render it shows."""

    path: Path
    render: FilterRender


def run_demo(
    out_dir: str | os.PathLike[str] = "out",
    model: LoadedModel | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    device: str = "auto",
    progress: bool = False,
    best: Recipe | str | None = BEST_RECIPE,
) -> list[DemoFigure]:
    """Write the book's figures into ``out_dir``: ``vggconv1..4.png`` and ``grid_<layer>.png``; then,
    unless ``best`` is None, the same four filters and grid with the recipe ``best`` (default: the
    preset with the most recognizable pictures per second) into ``out_dir/<best>/``, and both rows side
    by side in ``out_dir/side_by_side.png``.

    Without ``model``, uses VGG16 with ImageNet weights (cached, downloaded, or the local file
    ``weights``); when they cannot be had, a FilterVizWarning says why and the embedded model is used,
    with comparable layers (see ``book_layers``). Each figure's render names the model that made it.
    The book's figures are rendered in fp32, as the book; the other recipe's in ``auto`` precision.
    """
    beside = get_recipe(best) if best is not None else None  # an unknown recipe fails before any work
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write figures into {str(folder)!r}: it is a file; give a folder")
    if model is None:
        try:
            model = load_model("vgg16", weights, device, progress=progress)
        except WeightsUnavailableError as exc:
            warnings.warn(f"{exc}; using the embedded {DEFAULT_MODEL} instead", FilterVizWarning, stacklevel=2)
            model = load_model(DEFAULT_MODEL, device=device)
    layers = book_layers(model, BOOK_FIGURES)
    if len(layers) < BOOK_FIGURES:  # the figures are the book's four; fewer would not be its demo
        found = f": {', '.join(layers)}" if layers else ""
        raise FilterVizError(
            f"the demo shows filters of {BOOK_FIGURES} activation layers (ReLU and the like) at {BOOK_FIGURES} "
            f"different strides, as the book's block1_conv1 ... block4_conv1; {model.name} has "
            f"{len(layers) or 'no'} such layer{'s' * (len(layers) != 1)}{found}; use a deeper model, or show its "
            "layers with `filterviz render` or `filterviz grid`")
    grid_layer = layers[min(2, len(layers) - 1)]
    figures = _figures(model, layers, grid_layer, folder, GRID_TILE, seed, progress, precision="fp32")
    if beside is None:
        return figures
    figures += _figures(model, layers, grid_layer, folder / beside.name, BEST_GRID_TILE, seed, progress,
                        recipe=beside)
    rows = [[show_channels(f.render.images)[0] for f in figures[i:i + BOOK_FIGURES]]
            for i in (0, BOOK_FIGURES + 1)]
    side = max(image.shape[0] for row in rows for image in row)
    tiles = [_fit(image, side) for row in rows for image in row]
    save_image(make_grid(np.stack(tiles), per_row=BOOK_FIGURES, margin=5), folder / SIDE_BY_SIDE)
    return figures


def _figures(model: LoadedModel, layers: list[str], grid_layer: str, folder: Path, tile: int, seed: int | None,
             progress: bool, **options: Any) -> list[DemoFigure]:
    """The demo's four filters (``vggconv1..4.png``) and its grid of ``tile`` px tiles, rendered with
    ``options`` (the book's fp32, or another recipe), into ``folder``."""
    try:  # only now: a bad model or weights leaves no empty folder behind
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create folder {str(folder)!r}: {exc.strerror or exc}") from None
    figures = []
    for number, layer in enumerate(layers, start=1):
        render = render_filters(model, layer, [0], seed=seed, progress=progress, **options)
        figures.append(DemoFigure(save_image(show_channels(render.images)[0], folder / f"vggconv{number}.png"), render))
    channels = model.layer_info(grid_layer, tile).channels
    render = render_filters(model, grid_layer, range(min(GRID_FILTERS, channels)), size=tile, seed=seed,
                            progress=progress, **options)
    grid = make_grid(show_channels(render.images), crossed=render.stuck)  # gray, RGB, or a model's first 3 bands
    figures.append(DemoFigure(save_image(grid, folder / f"grid_{grid_layer}.png"), render))
    return figures


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled to ``side`` px (nearest neighbour: the book's small figures keep their pixels)."""
    if image.shape[0] == side:
        return image
    picture = Image.fromarray(image).resize((side, side), Image.NEAREST)
    return np.asarray(picture)
