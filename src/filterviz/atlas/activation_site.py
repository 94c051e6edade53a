"""An activation atlas as static pages: the cells' pictures placed on their grid, and a page per cell
(its picture, the classes it supports, its sample count and its dataset patches).

The pages come from the templates ``activation_atlas.html`` and ``activation_cell.html`` (see
``filterviz.pages``), rooted at the folder's ``activations/`` folder, which holds their style sheet, so
that they look the same whatever an atlas in the same folder writes as its own. Like the atlas's, they
hold nothing that changes from run to run, so the same atlas always has the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..pages import render_page, style_sheet
from .files import (ACTIVATIONS, INDEX, activation_page, activation_style_sheet, cell_image, cell_page, read_regular,
                    write_file)


@dataclass(frozen=True)
class Patch:
    """A dataset patch of a cell: the crop's file, the image it comes from, the sample's position in
    the layer's grid, the crop's box in the image (top, left, side px) and its likeness to the cell's
    average (cosine similarity)."""

    file: str
    image: str
    y: int
    x: int
    box: tuple[int, int, int]
    similarity: float


@dataclass(frozen=True)
class SiteCell:
    """What a cell's page and its place on the grid show."""

    number: int
    row: int
    column: int
    samples: int
    start_score: float
    score: float
    stuck: bool
    classes: tuple[tuple[str, int, float], ...]  # (name, index, attribution), most supported first
    patches: tuple[Patch, ...]
    sources: tuple[tuple[str, int], ...]  # (image, samples from it), most first

    @property
    def label(self) -> str:
        return self.classes[0][0] if self.classes else ""


@dataclass(frozen=True)
class ActivationSiteInfo:
    """What every page of one layer's activation atlas says of how it was made."""

    model: str
    layer: str
    slug: str
    folder: str
    images: int
    samples: int
    per_image: int
    scan_size: int
    grid: int
    min_samples: int
    recipe: str
    recipe_fields: tuple[tuple[str, object], ...]
    size: int
    seed: int
    no_labels: str  # why no class is named ("" when classes are named)
    atlas: bool  # whether an atlas index in the same folder links here (and is linked back)


def _local(path: str) -> str:
    """A path relative to the atlas folder as one relative to the pages' root (``activations/``)."""
    return path.removeprefix(f"{ACTIVATIONS}/")


def site_files(slug: str, cells: Iterable[int]) -> list[str]:
    """The pages and style sheet that ``write_activation_site`` writes (relative to the atlas folder)."""
    return [activation_style_sheet(), activation_page(slug)] + [cell_page(slug, number) for number in cells]


def _write(out: Path, relative: str, text: str) -> None:
    if read_regular(out, relative) != text.encode("utf-8"):  # unchanged: a resumed atlas rewrites nothing
        write_file(out, relative, text)


def write_activation_site(out: Path, info: ActivationSiteInfo, cells: Sequence[SiteCell],
                          claim: Callable[[Iterable[str]], None] = lambda files: None) -> set[str]:
    """Write the grid page, each cell's page and the style sheet (their paths told to ``claim`` first);
    returns those paths."""
    numbers = [cell.number for cell in cells]
    files = site_files(info.slug, numbers)
    claim(files)
    _write(out, activation_style_sheet(), style_sheet())
    atlas_index = f"../{INDEX}" if info.atlas else None  # from the pages' root, the folder's atlas index
    grid_page = _local(activation_page(info.slug))
    shown = [{"number": cell.number, "row": cell.row, "column": cell.column, "label": cell.label,
              "samples": cell.samples, "page": _local(cell_page(info.slug, cell.number)),
              "image": _local(cell_image(info.slug, cell.number))} for cell in cells]
    _write(out, activation_page(info.slug),
           render_page("activation_atlas.html", title=f"{info.layer} · activation atlas · {info.model}",
                       page=grid_page, info=info, cells=shown, atlas_index=atlas_index))
    for position, cell in enumerate(cells):
        page = _local(cell_page(info.slug, cell.number))
        neighbours = {"previous": shown[position - 1] if position > 0 else None,
                      "next": shown[position + 1] if position + 1 < len(shown) else None}
        patches = [{"file": _local(patch.file), "image": patch.image, "y": patch.y, "x": patch.x,
                    "top": patch.box[0], "left": patch.box[1], "side": patch.box[2],
                    "similarity": patch.similarity} for patch in cell.patches]
        _write(out, cell_page(info.slug, cell.number),
               render_page("activation_cell.html", title=f"{info.layer} cell {cell.number} · {info.model}",
                           page=page, info=info, cell=cell, image=_local(cell_image(info.slug, cell.number)),
                           grid_page=grid_page, atlas_index=atlas_index, patches=patches, **neighbours))
    return set(files)
