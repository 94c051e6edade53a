"""Results that show themselves in Jupyter, and ``show`` to lay out several.

A ``Render`` (and so a grid from ``render_filters``) and an ``AtlasSummary`` have ``_repr_png_`` /
``_repr_html_``, which call the functions here; ``show(...)`` returns an object that a notebook displays
as one figure. Nothing here opens a window or needs IPython: the HTML embeds its pictures (PNG data URIs),
so a saved notebook keeps them.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .image import png_bytes

if TYPE_CHECKING:
    from .ascent import Render
    from .atlas.build import AtlasSummary

MAX_FIGURES = 64  # a render of more images is shown as one grid picture, without a caption per image
THUMBNAIL = 48  # px: a filter's picture in an atlas's summary


def data_uri(picture: np.ndarray) -> str:
    """A picture (H, W, 3) or (H, W) uint8 as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def _img(picture: np.ndarray, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    small = picture.shape[0] < 112  # shown enlarged: keep its pixels sharp
    style = ' style="image-rendering: pixelated"' if small else ""
    return f'<img src="{data_uri(picture)}" alt="{html.escape(alt)}"{size}{style}>'


def render_picture(result: "Render") -> np.ndarray:
    """A render's pictures as one image: the picture itself, or a grid (stuck images crossed out)."""
    from .animation import tiled
    return tiled(result.images, crossed=result.stuck)


def render_html(result: "Render") -> str:
    """A render as HTML: each picture with its objective and score (start → end), or one grid beyond
    ``MAX_FIGURES`` images."""
    from .ascent import describe_objective
    from .image import show_channels

    pictures = show_channels(result.images)
    head = (f"<div><b>{html.escape(result.model)}</b>, recipe {html.escape(result.recipe.name)}, "
            f"{pictures.shape[2]}×{pictures.shape[1]} px, {len(pictures)} image{'s' * (len(pictures) > 1)}"
            f"{'' if result.precision == 'fp32' else ', in ' + html.escape(result.precision)}</div>")
    if len(pictures) > MAX_FIGURES:
        return head + _img(render_picture(result), f"{len(pictures)} pictures")
    width = max(96, min(pictures.shape[2], 256))
    figures = []
    for picture, objective, start, end, stuck, dead in zip(pictures, result.objectives, result.start_score,
                                                           result.score, result.stuck, result.dead):
        state = " (dead)" if dead else " (stuck)" if stuck else ""
        what = describe_objective(objective)
        figures.append(f'<figure style="margin:0;width:{width}px;font-size:0.8em">{_img(picture, what, width)}'
                       f"<figcaption>{html.escape(what)}: {start:.3g} → {end:.3g}{state}</figcaption></figure>")
    return head + '<div style="display:flex;flex-wrap:wrap;gap:8px">' + "".join(figures) + "</div>"


def atlas_html(summary: "AtlasSummary") -> str:
    """An atlas's summary as HTML: what it holds, where its index is, and each layer's first filters."""
    from .atlas.files import INDEX

    root = Path(summary.out)
    rows = []
    images = root / "img"
    for layer in sorted(p for p in images.iterdir() if p.is_dir() and not p.is_symlink()) if images.is_dir() else []:
        files = sorted((p for p in layer.glob("*.png") if p.stem.isdigit() and not p.is_symlink()),
                       key=lambda p: int(p.stem))[:8]
        strip = "".join(f'<img src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode("ascii")}" '
                        f'width="{THUMBNAIL}" height="{THUMBNAIL}" alt="filter {p.stem}">' for p in files)
        rows.append(f"<tr><td>{html.escape(layer.name)}</td><td>{strip}</td></tr>")
    index = (root / INDEX).resolve()
    return (f"<div>{html.escape(str(summary))}</div><div>open <code>{html.escape(str(index))}</code> in a browser"
            f"</div><table>{''.join(rows)}</table>")


class Shown:
    """Several results laid out as one figure in a notebook (what ``show`` returns)."""

    def __init__(self, items: Sequence[Any], titles: Sequence[str] | None, columns: int) -> None:
        self.items, self.titles, self.columns = list(items), titles, columns

    def _repr_html_(self) -> str:
        cells = []
        for number, item in enumerate(self.items):
            title = self.titles[number] if self.titles and number < len(self.titles) else ""
            caption = f"<figcaption>{html.escape(title)}</figcaption>" if title else ""
            cells.append(f'<figure style="margin:0">{_item_html(item)}{caption}</figure>')
        return (f'<div style="display:grid;grid-template-columns:repeat({self.columns},auto);gap:12px;'
                f'align-items:start">' + "".join(cells) + "</div>")


def _item_html(item: Any) -> str:
    if hasattr(item, "_repr_html_"):
        return item._repr_html_()
    if isinstance(item, (str, os.PathLike)):
        return _img(_read_picture(Path(item)), Path(item).name)
    if hasattr(item, "convert") and hasattr(item, "size"):  # a Pillow image
        return _img(np.asarray(item.convert("RGB")), "image")
    picture = np.asarray(item)
    if picture.dtype != np.uint8 or picture.ndim not in (2, 3):
        raise TypeError(f"show() takes renders, atlas summaries, image files, Pillow images or uint8 arrays "
                        f"(H, W, 3) or (H, W); not {type(item).__name__} of {picture.dtype} {picture.shape}")
    return _img(picture, "image")


def _read_picture(path: Path) -> np.ndarray:
    from .imagefiles import open_image  # the one reader of image files, with its one-line errors
    return np.asarray(open_image(path))


def show(*items: Any, titles: Sequence[str] | None = None, columns: int | None = None) -> Shown:
    """Lay out several results as one figure in a notebook: renders, grids, atlas summaries, image files,
    Pillow images or uint8 arrays, ``columns`` to a row (default: all in one row, at most 4), each with
    its title. Returns an object a notebook displays; outside a notebook it does nothing."""
    if not items:
        raise ValueError("show() needs at least one thing to show")
    return Shown(items, titles, columns or min(len(items), 4))
