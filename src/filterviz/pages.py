"""HTML pages from Jinja2 templates (``filterviz/templates``), shared by every page filterviz writes or
serves: the atlas, the activation atlas and ``filterviz serve``.

Autoescaping is on for every template, so a layer or file name can never become markup; undefined
names are errors, so a template that asks for something its caller forgot fails at once instead of
printing an empty string. A page that extends ``base.html`` gets the document head and the shared style
sheet (``style.css``, linked relative to the page, so pages work from disk and from any server).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2

STYLE_SHEET_TEMPLATE = "style.css"


def relative_href(page: str, target: str) -> str:
    """A relative link from ``page`` to ``target`` (both paths from one site root, with "/"): up out of
    the folders of ``page`` that ``target`` is not in, then down to it; so a site works from disk and
    from any server, at any mount point."""
    here, there = page.split("/")[:-1], target.split("/")
    common = 0
    while common < len(here) and common < len(there) - 1 and here[common] == there[common]:
        common += 1
    return "../" * (len(here) - common) + "/".join(there[common:])


@lru_cache(maxsize=None)
def environment() -> jinja2.Environment:
    """The one template environment (built once): package templates, autoescaping, strict names."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("filterviz", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.globals["href"] = relative_href
    return env


def render_page(template: str, **context: Any) -> str:
    """The text of ``template`` (a name under ``filterviz/templates``) with ``context``."""
    return environment().get_template(template).render(**context)


def style_sheet() -> str:
    """The shared style sheet's text."""
    return resources.files("filterviz").joinpath("templates", STYLE_SHEET_TEMPLATE).read_text(encoding="utf-8")
