"""What a render makes and where it goes: copies of objectives, output file names, pictures.

The steps of ``filterviz render`` and ``filterviz grid`` besides the ascent, as functions a notebook
can call: ``with_copies`` (copies of each objective, made to differ by a diversity term),
``copy_keys`` (which noise each copy starts from), ``output_files`` (one file, or one per image from a
``{name}`` pattern, checked before any work), ``check_tiles`` (a tiled picture that can be written and
opened again), ``array_files`` (where every channel goes when a picture cannot show them all),
``importance_image``, ``beside_start`` (a picture beside the photo it started from) and ``save_render``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .ascent import Render
from .errors import FilterVizError
from .image import (SIDE_BY_SIDE_MARGIN, TEMP_NAME_EXTRA, array_file, check_image_size, check_path, check_shown,
                    check_writable, default_shown, make_grid, quote_path, save_array, save_image, show_channels,
                    side_by_side)
from .objectives import Objective, diversity

DIVERSITY_WEIGHT = 3.0  # in the objective's units; chosen by benchmarks/diversity.py
NAME = "{name}"  # in an output pattern: each objective's name (its slug), and the copy's number
TILES_PER_ROW = 8  # several images in one file: 8 to a row, 5 px apart
TILE_MARGIN = 5


def with_copies(objectives: Sequence[Objective], copies: int = 1, diversity_layer: str | None = None,
                diversity_weight: float | None = None) -> list[Objective]:
    """Each objective ``copies`` times, in order (a, a, b, b). With ``diversity_layer``, each gets a
    diversity term there (weight ``diversity_weight``, default 3), so that its copies differ."""
    if diversity_layer is not None:
        if copies < 2:  # a diversity term compares an image with its copies: alone, it adds nothing
            raise FilterVizError(f"--diversity makes copies of an objective differ; add --copies 2 or more "
                                 f"(it has {copies})")
        weight = DIVERSITY_WEIGHT if diversity_weight is None else diversity_weight
        objectives = [objective + weight * diversity(diversity_layer) for objective in objectives]
    elif diversity_weight is not None:
        raise FilterVizError("--diversity-weight goes with --diversity LAYER (and --copies 2 or more)")
    return [objective for objective in objectives for _ in range(copies)]


def copy_keys(key: int, copies: int) -> list[int]:
    """The keys of ``copies`` copies of the image with ``key``: the first keeps its own noise (filter k's
    start, as the book's command has it), the others get starts of their own."""
    return [key + copy * 2 ** 32 for copy in range(copies)]


def output_files(pattern: str, objectives: Sequence[Objective], copies: int = 1,
                 importance: str | None = None) -> list[str]:
    """The files a render writes: ``pattern`` itself (the images tiled), or one per image where it holds
    ``{name}`` (the objective's slug, and ``_N`` for copy N). Refused before any work where one cannot
    be written, where two images would go to one file (the second would replace the first), or the
    importance map to an image's file."""
    if NAME not in pattern:
        outputs = [pattern]
    else:
        outputs = [pattern.replace(NAME, o.slug + (f"_{i % copies}" if copies > 1 else ""))
                   for i, o in enumerate(objectives)]
    for output in outputs + ([importance] if importance is not None else []):
        check_writable(output)
    written: dict[str, str] = {}  # file (as the system would find it) -> what goes there
    named = [(output, f"{objectives[i].name!r}" + (f" (copy {i % copies})" if copies > 1 else ""))
             for i, output in enumerate(outputs)] if len(outputs) > 1 else [(outputs[0], "the image")]
    if importance is not None:
        named.append((importance, "the importance map"))
    for output, what in named:
        key = os.path.normcase(os.path.realpath(output))
        if key in written:
            fix = ("give --importance a file of its own" if what == "the importance map" else
                   "give each objective once" if copies == 1 and NAME in pattern else
                   "give each its own file (-o with {name} names one per objective)")
            raise FilterVizError(f"{written[key]} and {what} would both be written to {quote_path(output)}, the "
                                 f"second replacing the first; {fix}")
        written[key] = what
    return outputs


def check_tiles(path: str | os.PathLike[str], count: int, side: int, per_row: int = TILES_PER_ROW,
                margin: int = TILE_MARGIN, hint: str = "", beside_start: bool = False) -> None:
    """Refuse, before any work, ``count`` tiles of ``side`` px that would make a picture too large to
    write or open again (``beside_start``: with the start photo to their left, as ``side_by_side``)."""
    rows, columns = -(-count // per_row), min(per_row, count)
    extra = side + SIDE_BY_SIDE_MARGIN if beside_start else 0
    check_image_size(path, columns * side + (columns - 1) * margin + extra, rows * side + (rows - 1) * margin, hint)


def beside_start(render: Render, picture: np.ndarray, shown: Sequence[int] | None = None) -> np.ndarray:
    """``picture`` (a render's image, or its images tiled) to the right of the photo the render started
    from (its first start image, as a picture of the ``shown`` channels)."""
    return side_by_side(show_channels(render.start_images[:1], shown)[0], picture)


def importance_image(render: Render) -> np.ndarray:
    """The importance maps as gray pictures (brighter: more important), tiled as the images are."""
    if render.importance is None:
        raise FilterVizError(f"recipe {render.recipe.name} keeps no importance map; use a parameterization that "
                             "does (maco)")
    maps = render.importance
    scaled = maps / (maps.reshape(len(maps), -1).max(axis=1).reshape(-1, 1, 1) + 1e-12)
    tiles = (np.repeat(scaled[..., None], 3, axis=3) * 255).astype(np.uint8)
    return tiles[0] if len(tiles) == 1 else make_grid(tiles, per_row=min(len(tiles), TILES_PER_ROW))


def shows_every_channel(channels: int, shown: Sequence[int] | None = None) -> bool:
    """Whether a picture showing ``shown`` (default ``default_shown``) holds every one of ``channels``."""
    return set(default_shown(channels) if shown is None else check_shown(shown, channels)) == set(range(channels))


def array_files(outputs: Sequence[str], channels: int, shown: Sequence[int] | None = None) -> list[Path]:
    """The ``.npy`` files beside ``outputs`` (same name) that hold every channel of the images, where the
    pictures cannot show them all (more than 3 channels, or 2, or ``shown`` leaves some out); none
    otherwise. Checked before any work: a path no file can have, or a folder in the way, is refused."""
    if shows_every_channel(channels, shown):
        return []
    files = [array_file(output) for output in outputs]
    for file in files:
        check_path(file, "output", extra=TEMP_NAME_EXTRA)
        if file.is_dir():
            raise FilterVizError(f"cannot write {quote_path(file)}, the file of every channel of the images: it is a "
                                 "folder; give -o another name")
    return files


def save_render(render: Render, outputs: Sequence[str], importance: str | None = None,
                shown: Sequence[int] | None = None, beside: bool = False) -> list[Path]:
    """Write a render's pictures: one file per image (``outputs`` from a ``{name}`` pattern), or all of
    them tiled into the one file; and its importance map, when asked. Returns the files written.
    ``beside``: each picture to the right of the photo it started from (``side_by_side``); images
    tiled into one file are put beside their photo when they share it, else tiled as pairs.

    An image of one channel is a gray picture; of 3, RGB; of another count, the ``shown`` channels (one,
    as gray, or three; default ``default_shown``: the first three), with every channel's pixels (the
    render's ``pixels``) in a ``.npy`` of the same name: (H, W, C) for one image, (N, H, W, C) for
    images tiled into one picture (see ``array_files``)."""
    images = show_channels(render.images, shown)
    photos = show_channels(render.start_images, shown) if beside else None
    arrays = array_files(outputs, render.pixels.shape[-1], shown)
    if len(outputs) > 1:
        pictures = images if photos is None else [side_by_side(p, i) for p, i in zip(photos, images)]
        written = [save_image(picture, output) for picture, output in zip(pictures, outputs)]
        written += [save_array(pixels, array) for pixels, array in zip(render.pixels, arrays)]
    else:
        tiled = images[0] if len(images) == 1 else make_grid(images, per_row=min(len(images), TILES_PER_ROW))
        if photos is not None:
            shared = all(np.array_equal(render.start[0], other) for other in render.start[1:])
            tiled = (side_by_side(photos[0], tiled) if shared else
                     make_grid([side_by_side(p, i) for p, i in zip(photos, images)],
                               per_row=min(len(images), TILES_PER_ROW // 2)))
        written = [save_image(tiled, outputs[0])]
        written += [save_array(render.pixels[0] if len(images) == 1 else render.pixels, array) for array in arrays]
    if importance is not None:
        written.append(save_image(importance_image(render), importance))
    return written
