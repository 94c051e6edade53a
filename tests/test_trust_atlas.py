"""The atlas's trust scores: each the measure of filterviz.trust on the filter's own picture, examples
and random images of the folder; shown on the pages and in the summary; kept by a resumed run (an
interrupted one measures only what is missing and ends as a clean run does); dropped when stale."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import filterviz
import filterviz.atlas.trust as atlas_trust
from filterviz.atlas import MANIFEST, build_atlas
from filterviz.atlas.examples import list_images, load_square
from filterviz.trust import FrechetDistance, ProjectedFeatures, path_similarity, plausibility

from conftest import tiny_model
from test_atlas import site_files

OPTIONS = dict(size=16, steps=3, top_k=3, chunk_size=3)


def _rows(root: Path) -> dict[tuple[str, int], tuple[float, float, dict]]:
    with sqlite3.connect(root / MANIFEST) as sql:
        return {(layer, k): (score, plausible, json.loads(path))
                for layer, k, score, plausible, path in sql.execute("SELECT layer, filter, score, plausibility, path "
                                                                    "FROM trust")}


def test_atlas_scores_are_the_measures_of_each_filters_picture_and_examples(tmp_path, photos):
    model = tiny_model()
    summary = build_atlas(model, tmp_path, images=photos, **OPTIONS)
    rows = _rows(tmp_path)
    alive = [(layer, k) for layer, count in (("features.1", 4), ("features.3", 6), ("features.6", 8))
             for k in range(count)]
    with sqlite3.connect(tmp_path / MANIFEST) as sql:
        stuck = {(layer, k) for layer, k in sql.execute("SELECT layer, filter FROM units WHERE dead != 0")}
    assert set(rows) == set(alive) - stuck and summary.measured == len(rows) > 0
    flagged = sorted(f"{layer} {k}" for (layer, k), (score, *_) in rows.items() if score < 0)
    assert sorted(summary.unnatural) == flagged
    assert f"path similarity of {len(rows)} pictures: {len(flagged)} take an unnatural path" in str(summary)
    # Each score is path_similarity and plausibility of the picture on disk against its own dataset
    # examples (the photos seen at the atlas's size) and every pair of the folder's images.
    files = list_images(photos)
    seen = {f.relative_to(photos).as_posix(): load_square(f, 16) for f in files}
    with sqlite3.connect(tmp_path / MANIFEST) as sql:
        examples = sql.execute("SELECT layer, filter, image FROM examples ORDER BY rank").fetchall()
    for (layer, k), (score, plausible, path) in rows.items():
        picture = np.asarray(Image.open(tmp_path / "img" / layer / f"{k}.png"))
        top = np.stack([seen[image] for name, f, image in examples if (name, f) == (layer, k)])
        expected = path_similarity(model, layer, picture, top, np.stack(list(seen.values())))
        assert score == pytest.approx(expected.score, abs=1e-12) and path["layers"] == list(expected.layers)
        assert plausible == pytest.approx(plausibility(model, picture, top), abs=1e-12)
        page = (tmp_path / "filters" / layer / f"{k}.html").read_text()
        assert f"{score:+.3f}" in page and ("less like its 3 dataset examples" in page) == (score < 0)
    layer_page = (tmp_path / "layers" / "features.3.html").read_text()
    flagged_here = [name for name in flagged if name.startswith("features.3 ")]
    assert f"{len(flagged_here)} take an unnatural path" in layer_page
    for name in flagged_here:
        assert f'href="../filters/features.3/{name.split()[1]}.html"' in layer_page
    assert "Fréchet distance: needs more than 8 images in the folder; it has 6" in layer_page  # too few for 8 dims
    index = (tmp_path / "index.html").read_text()
    assert index.count('<a href="layers/features.') == 2 * 3  # the table's link and the trust line's, per layer


def test_a_resumed_atlas_keeps_its_scores_and_an_interrupted_one_measures_only_what_is_missing(
        tmp_path, photos, monkeypatch):
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    build_atlas(tiny_model(), clean, images=photos, **OPTIONS)
    original = atlas_trust._measure_layer
    measured: list[str] = []

    def interrupted(model, root, plan, *args, **kwargs):
        if measured:  # the second layer: killed after the first layer's scores were stored
            raise KeyboardInterrupt
        measured.append(plan.layer.name)
        return original(model, root, plan, *args, **kwargs)

    monkeypatch.setattr(atlas_trust, "_measure_layer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(tiny_model(), resumed, images=photos, **OPTIONS)
    assert {layer for layer, _ in _rows(resumed)} == {"features.1"}

    def counted(model, root, plan, *args, **kwargs):
        measured.append(plan.layer.name)
        return original(model, root, plan, *args, **kwargs)

    monkeypatch.setattr(atlas_trust, "_measure_layer", counted)
    measured.clear()
    summary = build_atlas(tiny_model(), resumed, images=photos, **OPTIONS)
    assert measured == ["features.3", "features.6"]
    assert site_files(resumed) == site_files(clean) and _rows(resumed) == _rows(clean)
    # Again, with or without the images: nothing is measured, the same scores are shown.
    measured.clear()
    again = build_atlas(tiny_model(), resumed, images=photos, **OPTIONS)
    kept = build_atlas(tiny_model(), resumed, **OPTIONS)
    assert measured == [] and site_files(resumed) == site_files(clean)
    assert (again.measured, again.unnatural) == (kept.measured, kept.unnatural) == (summary.measured, summary.unnatural)
    # Pictures rendered anew (another step count), without images to measure them by: their scores go.
    changed = build_atlas(tiny_model(), resumed, **{**OPTIONS, "steps": 4})
    assert changed.measured == 0 and _rows(resumed) == {}
    assert any("dropped the path similarity of" in note for note in changed.notes), changed.notes
    assert "its picture changed since; run with --images DIR" in (resumed / "filters/features.6/0.html").read_text()


def test_a_layers_frechet_distance_is_its_pictures_against_the_folder(tmp_path, embedded):
    pytest.importorskip("torchmetrics")
    data = pytest.importorskip("skimage.data")
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket", "camera", "immunohistochemistry", "hubble_deep_field",
                 "coins", "moon", "page", "retina", "horse"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((48, 48))
        image.save(photos / f"{name}.png")
    out = tmp_path / "atlas"
    build_atlas(embedded, out, layers=["blocks.1"], filters=range(10), size=32, steps=2, top_k=2, images=photos)
    with sqlite3.connect(out / MANIFEST) as sql:
        (frechet, note, pictures, images), = sql.execute("SELECT frechet, note, pictures, images FROM trust_layers")
        measured = [k for (k,) in sql.execute("SELECT filter FROM trust ORDER BY filter")]
    assert (note, pictures, images) == ("", len(measured), 12) and pictures > 8
    shown = [np.asarray(Image.open(out / "img" / "blocks.1" / f"{k}.png")) for k in measured]
    folder = [load_square(f, 32) for f in list_images(photos)]
    expected = FrechetDistance(folder, ProjectedFeatures(filterviz.load_model("efficientnet-lite0", device="cpu"),
                                                         "head.act", 8, size=32))(shown)
    assert frechet == pytest.approx(expected, rel=1e-9)
    page = (out / "layers" / "blocks.1.html").read_text()
    assert f"{frechet:.4g}" in page and "No Inception weights are reachable" in page
