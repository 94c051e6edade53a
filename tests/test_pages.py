"""The page templates: names are escaped, a missing name is an error, links are relative."""

from __future__ import annotations

import jinja2
import pytest

from filterviz.pages import relative_href, render_page, style_sheet


def test_names_are_escaped():
    text = render_page("base.html", title='<script>alert("x")</script> & \'q\'', page="index.html")
    assert "<script>" not in text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39;" in text


def test_a_missing_name_is_an_error():
    with pytest.raises(jinja2.UndefinedError):
        render_page("base.html", title="no page")


@pytest.mark.parametrize("page, target, expected", [
    ("index.html", "style.css", "style.css"),
    ("layers/a.html", "style.css", "../style.css"),
    ("filters/a/1.html", "filters/a/2.html", "2.html"),
    ("filters/a/1.html", "img/a/1.png", "../../img/a/1.png"),
    ("filters/a/1.html", "filters/b/1.html", "../b/1.html"),
])
def test_links_are_relative(page, target, expected):
    assert relative_href(page, target) == expected


def test_every_page_links_the_one_style_sheet():
    assert '<link rel="stylesheet" href="../style.css">' in render_page("base.html", title="t", page="layers/x.html")
    assert "body {" in style_sheet()
