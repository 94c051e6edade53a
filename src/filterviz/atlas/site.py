"""The atlas as a static site: an index of layers, a page per layer, a page per filter.

The pages come from the templates ``templates/atlas/*.html`` (see ``pages``); this module gathers what
each page shows. Plain HTML and one style sheet with relative links, so it works opened from disk
(file://) and from any static web server. Images below the fold load lazily, with their sizes given up front so that a
512-filter grid lays out at once. Pages hold nothing that changes from run to run (no times), so the
same atlas always has the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from markupsafe import Markup

from ..pages import render_page, style_sheet
from ..recipes import Recipe
from .files import (INDEX, STYLE_SHEET, filter_image, filter_page, layer_page, read_regular, source_image,
                    write_file)
from .manifest import Example, Unit
from .selection import AtlasLayer
from .trust import filter_html, index_html, layer_html


@dataclass
class SiteLayer:
    """One layer's content: its rendered units by filter, and dataset examples by filter."""

    layer: AtlasLayer
    units: dict[int, Unit]
    examples: dict[int, list[Example]] = field(default_factory=dict)
    trust: dict[str, Any] | None = None  # its trust scores, as atlas.trust reports them (None: none)


@dataclass
class SiteInfo:
    """What the whole atlas shows, for the pages' headers."""

    model: str
    recipe: Recipe
    seed: int
    size: int
    images: str | None = None  # the dataset folder's name, when there are examples
    image_count: int = 0
    top_k: int = 0


def _index(info: SiteInfo, layers: Sequence[SiteLayer], links: Mapping[str, str] = MappingProxyType({})) -> str:
    rows = [{"name": site_layer.layer.name, "page": layer_page(site_layer.layer.slug), "kind": site_layer.layer.kind,
             "channels": site_layer.layer.channels,
             "spatial": "-" if site_layer.layer.height is None else f"{site_layer.layer.height}×{site_layer.layer.width}",
             "dead": sum(unit.dead for unit in site_layer.units.values()),
             "strip": [_link(site_layer.layer.slug, k) for k in sorted(site_layer.units)[:8]]}
            for site_layer in layers]
    return render_page("atlas/index.html", title=f"{info.model}: atlas", page=INDEX, model=info.model, layers=rows,
                       units=sum(len(site_layer.units) for site_layer in layers), recipe=info.recipe.name,
                       size=info.size, seed=info.seed, images=info.images, top_k=info.top_k,
                       image_count=info.image_count,
                       extra=Markup(index_html([site_layer.trust for site_layer in layers], INDEX)
                                    + links_section(links)))


def _link(slug: str, k: int) -> dict[str, object]:
    """What a page needs to show and link filter ``k`` of a layer."""
    return {"k": k, "page": filter_page(slug, k), "image": filter_image(slug, k)}


def _layer(info: SiteInfo, site_layer: SiteLayer) -> str:
    layer = site_layer.layer
    units = [{**_link(layer.slug, k), "dead": unit.dead, "stuck": unit.stuck}
             for k, unit in sorted(site_layer.units.items())]
    return render_page("atlas/layer.html", title=f"{layer.name} · {info.model}", page=layer_page(layer.slug),
                       model=info.model, layer=layer, size=info.size, units=units,
                       extra=Markup(layer_html(site_layer.trust, layer_page(layer.slug))))


def _example(example: Example, size: int) -> dict[str, object]:
    """One dataset example as its figure shows it: the crop, the image it is from, where in it, and how much."""
    box = (f"top:{100 * example.top / size:.2f}%;left:{100 * example.left / size:.2f}%;"
           f"width:{100 * example.side / size:.2f}%;height:{100 * example.side / size:.2f}%")
    return {"file": example.file, "image": example.image, "source": source_image(example.image),
            "value": f"{example.value:.4g}", "x": f"{example.left}–{example.left + example.side}",
            "y": f"{example.top}–{example.top + example.side}", "box": box}


def _filter(info: SiteInfo, site_layer: SiteLayer, k: int, order: list[int]) -> str:
    layer, unit = site_layer.layer, site_layer.units[k]
    position = order.index(k)
    links = []
    if position > 0:
        links.append({"page": filter_page(layer.slug, order[position - 1]), "label": f"← filter {order[position - 1]}"})
    if position + 1 < len(order):
        links.append({"page": filter_page(layer.slug, order[position + 1]), "label": f"filter {order[position + 1]} →"})
    nearby = order[max(0, position - 4):position] + order[position + 1:position + 5]
    return render_page(
        "atlas/filter.html", title=f"{layer.name} filter {k} · {info.model}", page=filter_page(layer.slug, k),
        model=info.model, layer=layer, layer_page=layer_page(layer.slug), k=k, unit=unit, links=links,
        image=filter_image(layer.slug, k), size=info.size,
        small=info.size < 112,  # shown enlarged: keep its pixels sharp
        score=f"{unit.start_score:.4g} → {unit.score:.4g}", seed=info.seed, recipe=info.recipe.name,
        recipe_fields=[(name, repr(value)) for name, value in info.recipe.fields().items()],
        neighbours=[_link(layer.slug, n) for n in nearby], images=info.images,
        examples=[_example(example, info.size) for example in site_layer.examples.get(k, [])],
        extra=Markup(filter_html(site_layer.trust, k, filter_page(layer.slug, k))))


def _write(out: Path, relative: str, text: str, written: set[str]) -> None:
    written.add(relative)
    if read_regular(out, relative) == text.encode("utf-8"):
        return  # unchanged: a resumed atlas rewrites only what changed
    write_file(out, relative, text)  # never through a link (see files.py)


def site_pages(layers: Sequence[SiteLayer]) -> list[str]:
    """The paths of every page and the style sheet, as ``write_site`` writes them."""
    pages = [STYLE_SHEET, INDEX]
    for site_layer in layers:
        pages.append(layer_page(site_layer.layer.slug))
        pages.extend(filter_page(site_layer.layer.slug, k) for k in sorted(site_layer.units))
    return pages


def write_site(out: Path, info: SiteInfo, layers: Sequence[SiteLayer],
               claim: Callable[[Iterable[str]], None] = lambda pages: None,
               links: Mapping[str, str] = MappingProxyType({})) -> set[str]:
    """Write every page (index, layers, filters) and the style sheet, after telling ``claim`` their
    paths (the manifest records them before they exist); returns those paths under ``out``. ``links``:
    other pages of the folder that the index links to (see ``links_section``)."""
    claim(site_pages(layers))
    written: set[str] = set()
    _write(out, STYLE_SHEET, style_sheet(), written)
    _write(out, INDEX, _index(info, layers, links), written)
    for site_layer in layers:
        _write(out, layer_page(site_layer.layer.slug), _layer(info, site_layer), written)
        order = sorted(site_layer.units)
        for k in order:
            _write(out, filter_page(site_layer.layer.slug, k), _filter(info, site_layer, k, order), written)
    return written


# -- links from the index to other pages of the folder (activation atlases) ------------------------
# Kept apart from the index's own content, between two markers, so that a command that writes such a
# page into an atlas folder can add its link to an index it did not write (``add_links``), giving the
# bytes the atlas itself writes with the same links. An index without links is as it always was.

LINKS_START, LINKS_END = "<!-- filterviz: links -->\n", "<!-- /filterviz: links -->\n"


def links_section(links: Mapping[str, str]) -> str:
    """The index's section of links to ``links`` ({page: label}, pages relative to the atlas folder),
    "" when there are none."""
    if not links:
        return ""
    return render_page("atlas/links.html", page=INDEX, links=sorted(links.items()))


def with_links(index: str, links: Mapping[str, str]) -> str | None:
    """An atlas index's text with its links section replaced by one of ``links``; None when the text
    is not an atlas index this module wrote (nothing to add a link to)."""
    start, end = index.find(LINKS_START), index.find(LINKS_END)
    if start >= 0 and end > start:
        index = index[:start] + index[end + len(LINKS_END):]
    tail = "</body>\n</html>\n"
    if not index.endswith(tail):
        return None
    return index[:-len(tail)] + links_section(links) + tail


def add_links(out: Path, links: Mapping[str, str]) -> bool:
    """Give the atlas index in ``out`` (if there is one, never read or written through a link) the
    section of ``links``; returns whether there was an index to link from."""
    data = read_regular(out, INDEX)
    text = None if data is None else with_links(data.decode("utf-8", errors="replace"), links)
    if text is None:
        return False
    if text.encode("utf-8") != data:
        write_file(out, INDEX, text)
    return True
