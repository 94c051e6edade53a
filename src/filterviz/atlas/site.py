"""The atlas as a static site: an index of layers, a page per layer, a page per filter.

Plain HTML and one style sheet with relative links, so it works opened from disk (file://) and from
any static web server. Images below the fold load lazily, with their sizes given up front so that a
512-filter grid lays out at once. Pages hold nothing that changes from run to run (no times), so the
same atlas always has the same bytes.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from ..recipes import Recipe
from .files import (INDEX, STYLE_SHEET, filter_image, filter_page, href, layer_page, read_regular, source_image,
                    write_file)
from .manifest import Example, Unit
from .selection import AtlasLayer

STYLE = """\
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem;
       color: #1d1d1f; background: #fafafa; }
a { color: #0b57d0; text-decoration: none; }
a:hover { text-decoration: underline; }
nav { font-size: 0.9rem; margin-bottom: 0.5rem; }
h1 { font-size: 1.5rem; margin: 0.3rem 0 0.5rem; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 0.5rem; }
.meta { color: #555; }
table.layers { border-collapse: collapse; width: 100%; }
table.layers td, table.layers th { padding: 6px 8px; border-bottom: 1px solid #e3e3e3; text-align: left;
                                   vertical-align: middle; }
.strip img { width: 48px; height: 48px; margin-right: 2px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; }
.grid figure { margin: 0; text-align: center; font-size: 0.8rem; color: #555; }
.grid img { width: 96px; height: 96px; display: block; }
.dead img { opacity: 0.35; }
.dead figcaption { color: #b3261e; }
.unit { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
.unit > img { width: min(448px, 90vw); height: auto; }
.unit > img.small { image-rendering: pixelated; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; margin: 0; }
dt { color: #555; }
dd { margin: 0; }
.examples { display: flex; flex-wrap: wrap; gap: 14px; }
.examples figure { margin: 0; width: 112px; font-size: 0.78rem; color: #444; overflow-wrap: anywhere; }
.examples .crop { width: 112px; height: 112px; image-rendering: pixelated; display: block; }
.where { position: relative; width: 64px; height: 64px; margin-top: 4px; }
.where img { width: 64px; height: 64px; display: block; }
.where span { position: absolute; border: 2px solid #e8710a; box-sizing: border-box; }
table.recipe td { padding: 0 10px 0 0; font-family: ui-monospace, monospace; font-size: 0.8rem; }
"""


@dataclass
class SiteLayer:
    """One layer's content: its rendered units by filter, and dataset examples by filter."""

    layer: AtlasLayer
    units: dict[int, Unit]
    examples: dict[int, list[Example]] = field(default_factory=dict)


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


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _page(title: str, page: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_e(title)}</title>\n<link rel=\"stylesheet\" href=\"{href(page, STYLE_SHEET)}\">\n</head>\n"
            f"<body>\n{body}</body>\n</html>\n")


def _score(unit: Unit) -> str:
    return f"{unit.start_score:.4g} → {unit.score:.4g}"


def _index(info: SiteInfo, layers: Sequence[SiteLayer], links: Mapping[str, str] = MappingProxyType({})) -> str:
    rows = []
    for site_layer in layers:
        layer = site_layer.layer
        strip = "".join(
            f'<a href="{_e(href(INDEX, filter_page(layer.slug, k)))}"><img loading="lazy" '
            f'src="{_e(href(INDEX, filter_image(layer.slug, k)))}" '
            f'width="48" height="48" alt="filter {k}"></a>' for k in sorted(site_layer.units)[:8])
        dead = sum(unit.dead for unit in site_layer.units.values())
        spatial = "-" if layer.height is None else f"{layer.height}×{layer.width}"
        rows.append(f'<tr><td><a href="{_e(href(INDEX, layer_page(layer.slug)))}">{_e(layer.name)}</a></td>'
                    f"<td>{_e(layer.kind)}</td>"
                    f"<td>{layer.channels}</td><td>{spatial}</td><td>{dead}</td>"
                    f'<td class="strip">{strip}</td></tr>')
    units = sum(len(site_layer.units) for site_layer in layers)
    body = (f"<h1>{_e(info.model)}</h1>\n<p class=\"meta\">{len(layers)} layers, {units} filters, recipe "
            f"{_e(info.recipe.name)} at {info.size} px, seed {info.seed}"
            + (f"; dataset examples: the top {info.top_k} of {info.image_count} images in {_e(info.images)}"
               if info.images else "") + "</p>\n"
            "<table class=\"layers\">\n<tr><th>layer</th><th>kind</th><th>channels</th><th>size</th>"
            "<th>dead</th><th>filters</th></tr>\n" + "\n".join(rows) + "\n</table>\n")
    return _page(f"{info.model}: atlas", INDEX, body + links_section(links))


def _layer(info: SiteInfo, site_layer: SiteLayer) -> str:
    layer = site_layer.layer
    page = layer_page(layer.slug)
    cells = []
    for k, unit in sorted(site_layer.units.items()):
        mark = ' class="dead"' if unit.stuck else ""
        state = " (dead)" if unit.dead else " (stuck)" if unit.stuck else ""
        cells.append(f'<figure{mark}><a href="{_e(href(page, filter_page(layer.slug, k)))}">'
                     f'<img loading="lazy" decoding="async" src="{_e(href(page, filter_image(layer.slug, k)))}" '
                     f'width="96" height="96" alt="filter {k}"></a><figcaption>{k}{state}'
                     "</figcaption></figure>")
    body = (f'<nav><a href="{_e(href(page, INDEX))}">{_e(info.model)}</a> › {_e(layer.name)}</nav>\n'
            f"<h1>{_e(layer.name)}</h1>\n<p class=\"meta\">{_e(layer.kind)}, {layer.channels} channels"
            + ("" if layer.height is None else f", {layer.height}×{layer.width} at {info.size} px")
            + (f" (module {_e(layer.path)})" if layer.path != layer.name else "") + "</p>\n"
            "<div class=\"grid\">\n" + "\n".join(cells) + "\n</div>\n")
    return _page(f"{layer.name} · {info.model}", page, body)


def _examples(page: str, examples: Sequence[Example], info: SiteInfo) -> str:
    if not examples:
        return ""
    figures = []
    for example in examples:
        box = (f"top:{100 * example.top / info.size:.2f}%;left:{100 * example.left / info.size:.2f}%;"
               f"width:{100 * example.side / info.size:.2f}%;height:{100 * example.side / info.size:.2f}%")
        figures.append(
            f'<figure><img class="crop" loading="lazy" src="{_e(href(page, example.file))}" width="112" height="112" '
            f'alt="crop of {_e(example.image)}"><figcaption>{_e(example.image)}: {example.value:.4g} at '
            f"x {example.left}–{example.left + example.side}, y {example.top}–{example.top + example.side}"
            f'<div class="where"><img loading="lazy" src="{_e(href(page, source_image(example.image)))}" width="64" '
            f'height="64" alt="{_e(example.image)}"><span style="{box}"></span></div></figcaption></figure>')
    return (f"<h2>Dataset examples</h2>\n<p class=\"meta\">The {len(examples)} images of {_e(info.images)} "
            f"that excite this filter most (its highest activation in each, and the region that unit sees), "
            f"at {info.size} px.</p>\n<div class=\"examples\">\n" + "\n".join(figures) + "\n</div>\n")


def _filter(info: SiteInfo, site_layer: SiteLayer, k: int, order: list[int]) -> str:
    layer, unit = site_layer.layer, site_layer.units[k]
    page = filter_page(layer.slug, k)
    position = order.index(k)
    nearby = order[max(0, position - 4):position] + order[position + 1:position + 5]
    links = []
    if position > 0:
        links.append(f'<a href="{_e(href(page, filter_page(layer.slug, order[position - 1])))}">← filter '
                     f'{order[position - 1]}</a>')
    if position + 1 < len(order):
        links.append(f'<a href="{_e(href(page, filter_page(layer.slug, order[position + 1])))}">filter '
                     f'{order[position + 1]} →</a>')
    neighbours = "".join(
        f'<figure><a href="{_e(href(page, filter_page(layer.slug, n)))}"><img loading="lazy" '
        f'src="{_e(href(page, filter_image(layer.slug, n)))}" width="96" '
        f'height="96" alt="filter {n}"></a><figcaption>{n}</figcaption></figure>' for n in nearby)
    recipe = "".join(f"<tr><td>{_e(name)}</td><td>{_e(repr(value))}</td></tr>"
                     for name, value in info.recipe.fields().items())
    small = ' class="small"' if info.size < 112 else ""  # shown enlarged: keep its pixels sharp
    dead = ("<dt>dead</dt><dd>it takes the same value on every probe image (natural photos and strong noise): "
            "no picture can show it</dd>" if unit.dead else
            "<dt>stuck</dt><dd>it responds to photos, but this recipe never left the start image: the picture "
            "is only the start image; a recipe with escape steps (lucid, maco) renders it</dd>"
            if unit.stuck else "")
    body = (f'<nav><a href="{_e(href(page, INDEX))}">{_e(info.model)}</a> › '
            f'<a href="{_e(href(page, layer_page(layer.slug)))}">'
            f"{_e(layer.name)}</a> › filter {k} &nbsp; {' · '.join(links)}</nav>\n"
            f"<h1>{_e(layer.name)}, filter {k}</h1>\n<div class=\"unit\">\n"
            f'<img{small} src="{_e(href(page, filter_image(layer.slug, k)))}" '
            f'width="{info.size}" height="{info.size}" '
            f'alt="{_e(layer.name)} filter {k}">\n<div>\n<dl><dt>model</dt><dd>{_e(info.model)}</dd>'
            f"<dt>layer</dt><dd>{_e(layer.name)} ({_e(layer.kind)})</dd><dt>filter</dt><dd>{k} of "
            f"{layer.channels}</dd><dt>mean activation</dt><dd>{_score(unit)}</dd>{dead}"
            f"<dt>seed</dt><dd>{info.seed}</dd><dt>recipe</dt><dd><details><summary>{_e(info.recipe.name)}"
            f"</summary><table class=\"recipe\">{recipe}</table></details></dd></dl>\n</div>\n</div>\n"
            + (f"<h2>Neighbours</h2>\n<div class=\"grid\">{neighbours}</div>\n" if nearby else "")
            + _examples(page, site_layer.examples.get(k, []), info))
    return _page(f"{layer.name} filter {k} · {info.model}", page, body)


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
    _write(out, STYLE_SHEET, STYLE, written)
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
    items = "".join(f'<li><a href="{_e(href(INDEX, page))}">{_e(label)}</a></li>\n'
                    for page, label in sorted(links.items()))
    return f"{LINKS_START}<h2>Activation atlases</h2>\n<ul class=\"links\">\n{items}</ul>\n{LINKS_END}"


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
