"""The atlas: a correct static site, a manifest that matches its files, resuming after kill -9 to the
same bytes, redoing only what a change affects, dataset examples equal to brute force, Ray."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import filterviz
import filterviz.atlas.build as atlas_build
import filterviz.atlas.examples as atlas_examples
from filterviz.atlas import MANIFEST, LocalExecutor, build_atlas, default_layers
from filterviz.atlas.examples import crop_box, list_images, load_square, receptive_field
from filterviz.ascent import render_filters
from filterviz.cli import main

from conftest import TINY_SPEC, TinyNet, tiny_model

def site_files(root: Path) -> dict[str, bytes]:
    """Every file of a site except the manifest (whose rows, not bytes, are the record)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(MANIFEST)}


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.targets.append(value)


def test_atlas_site_links_images_and_manifest(tmp_path, photos):
    model = tiny_model()
    summary = build_atlas(model, tmp_path, size=16, steps=3, images=photos, top_k=3, chunk_size=3)
    assert (summary.layers, summary.units, summary.rendered) == (3, 4 + 6 + 8, 18)
    pages = sorted(tmp_path.rglob("*.html"))
    assert len(pages) == 1 + 3 + 18
    referenced = set()
    for page in pages:
        parser = Links()
        parser.feed(page.read_text())
        assert parser.targets, page
        for target in parser.targets:
            resolved = (page.parent / target).resolve()
            assert resolved.is_file(), f"{page.relative_to(tmp_path)} links to missing {target}"
            referenced.add(resolved.relative_to(tmp_path.resolve()).as_posix())
    # Every file of the site is reachable from a page, and every page from the index's links, in two steps.
    assert set(site_files(tmp_path)) - {"index.html"} <= referenced
    with sqlite3.connect(tmp_path / MANIFEST) as sql:
        units = sql.execute("SELECT layer, filter, file, bytes, sha256 FROM units").fetchall()
        examples = sql.execute("SELECT layer, filter, rank, file FROM examples").fetchall()
    assert sorted((layer, k) for layer, k, *_ in units) == sorted(
        [(layer, k) for layer, count in (("features.1", 4), ("features.3", 6), ("features.6", 8)) for k in range(count)])
    for _, _, file, size, sha in units:
        data = (tmp_path / file).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
    assert len(examples) == 18 * 3 and all((tmp_path / file).is_file() for *_, file in examples)
    assert {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "img").rglob("*.png")} == {u[2] for u in units}
    # Each filter's file holds its picture: the render of its chunk of 3 (the atlas's batch) with the
    # same recipe and the atlas's default seed, 0; its page shows that file and the scores of that render.
    for layer, count in (("features.1", 4), ("features.3", 6), ("features.6", 8)):
        for first in range(0, count, 3):
            chunk = list(range(first, min(first + 3, count)))
            expected = render_filters(model, layer, chunk, size=16, steps=3, seed=0)
            for k, image, before, after in zip(chunk, expected.images, expected.start_activation,
                                               expected.activation):
                assert np.array_equal(np.array(Image.open(tmp_path / "img" / layer / f"{k}.png")), image), (layer, k)
                page = (tmp_path / "filters" / layer / f"{k}.html").read_text()
                parser = Links()
                parser.feed(page)
                shown = [t for t in parser.targets if t.endswith(".png")]
                assert shown[0] == f"../../img/{layer}/{k}.png", shown
                assert f"{before:.4g} → {after:.4g}" in page


def test_default_layers_are_convolutions_after_their_activation_or_blocks(embedded):
    assert default_layers(tiny_model(), 16) == ["features.1", "features.3", "features.6"]
    chosen = default_layers(embedded, 224)
    assert chosen[0] == "stem.act" and chosen[-1] == "head.act"
    assert chosen[1:-1] == [f"blocks.{i}" for i in range(16)]


def _atlas_command(model_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "filterviz", "atlas", str(model_file), "--out", str(out), "--size", "32",
            "--steps", "80", "--chunk-size", "1", *extra]


def _units_done(out: Path) -> int:
    try:
        with sqlite3.connect(f"file:{out / MANIFEST}?mode=ro", uri=True, timeout=0.1) as sql:
            return sql.execute("SELECT COUNT(*) FROM units").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_9_then_resume_gives_the_same_bytes(tmp_path, photos):
    model_file = tmp_path / "tiny.pt"
    torch.manual_seed(0)
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 32, 32)), str(model_file))
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    subprocess.run(_atlas_command(model_file, clean, "--images", str(photos), "-q"), check=True)
    process = subprocess.Popen(_atlas_command(model_file, resumed, "--images", str(photos), "-q"))
    deadline = time.monotonic() + 120
    while _units_done(resumed) < 4 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the atlas finished before it could be killed; give it more work"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = _units_done(resumed)
    assert 4 <= killed_at < 18
    done = subprocess.run(_atlas_command(model_file, resumed, "--images", str(photos)), check=True,
                          capture_output=True, text=True)
    assert f"{18 - killed_at} rendered now, {killed_at} already done" in done.stderr
    assert site_files(resumed) == site_files(clean)


def test_a_scan_interrupted_midway_continues_to_the_same_examples(tmp_path, photos, monkeypatch):
    model = tiny_model()
    build_atlas(model, tmp_path / "clean", size=16, steps=1, images=photos, top_k=2, scan_batch_size=2)
    monkeypatch.setattr(atlas_build, "CHECKPOINT_SECONDS", 0.0)
    loads = {"count": 0}
    real_load = atlas_examples.load_square

    def dying_load(path, side, *channels):  # the process "dies" on the fifth image
        loads["count"] += 1
        if loads["count"] == 5:
            raise KeyboardInterrupt
        return real_load(path, side, *channels)

    monkeypatch.setattr(atlas_examples, "load_square", dying_load)
    with pytest.raises(KeyboardInterrupt):
        build_atlas(model, tmp_path / "resumed", size=16, steps=1, images=photos, top_k=2, scan_batch_size=2)
    monkeypatch.setattr(atlas_examples, "load_square", real_load)
    summary = build_atlas(model, tmp_path / "resumed", size=16, steps=1, images=photos, top_k=2, scan_batch_size=2)
    assert summary.images == 2  # only the last batch was scanned again
    assert site_files(tmp_path / "resumed") == site_files(tmp_path / "clean")


def test_a_change_redoes_only_what_it_changes(tmp_path, photos):
    model = tiny_model()
    options = dict(size=16, steps=2, layers=["features.1", "features.3"], images=photos, top_k=2)
    first = build_atlas(model, tmp_path, **options)
    assert (first.rendered, first.images) == (10, 6)
    before = site_files(tmp_path)
    again = build_atlas(model, tmp_path, **options)
    assert (again.rendered, again.images) == (0, 0) and site_files(tmp_path) == before
    more = build_atlas(model, tmp_path, **{**options, "layers": ["features.1", "features.3", "features.6"]})
    assert (more.rendered, more.images) == (8, 6)  # only the new layer; the scan for its examples alone
    assert all(site_files(tmp_path)[name] == data for name, data in before.items() if name.startswith("img/"))
    changed = build_atlas(model, tmp_path, **{**options, "steps": 3})
    assert (changed.rendered, changed.images) == (10, 0)  # examples do not depend on the recipe
    assert not (tmp_path / "img" / "features.6").exists()  # a layer no longer shown leaves the site
    with torch.no_grad():
        model.module.features[0].bias += 0.01
    retrained = build_atlas(model, tmp_path, **{**options, "steps": 3})
    assert (retrained.rendered, retrained.images) == (10, 6)
    assert site_files(tmp_path) == site_files(_clean_copy(tmp_path.parent / "clean", model, {**options, "steps": 3}))


def _clean_copy(out: Path, model, options) -> Path:
    build_atlas(model, out, **options)
    return out


def test_dataset_examples_equal_brute_force(tmp_path, photos):
    model = tiny_model()
    layers = ["features.1", "features.3", "features.6"]
    build_atlas(model, tmp_path, size=24, steps=1, images=photos, top_k=4, scan_batch_size=4)
    files = list_images(photos)
    pixels = torch.from_numpy(np.stack([load_square(path, 24) for path in files])).permute(0, 3, 1, 2).double()
    with torch.no_grad(), model.capture(layers) as run:
        activations = run(pixels)
    with sqlite3.connect(tmp_path / MANIFEST) as sql:
        rows = sql.execute("SELECT layer, filter, rank, image, value, top, left, side FROM examples").fetchall()
    stored = {(layer, k, rank): rest for layer, k, rank, *rest in rows}
    assert len(stored) == (4 + 6 + 8) * 4
    for layer in layers:
        act = activations[layer]
        height, width = act.shape[2:]
        field = max(receptive_field(model, layer, 24), 16)
        for k in range(act.shape[1]):
            flat = act[:, k].reshape(len(files), -1)
            peaks = flat.max(dim=1).values.numpy()
            order = np.lexsort((np.arange(len(files)), -peaks))[:4]
            for rank, image in enumerate(order):
                name, value, top, left, side = stored[layer, k, rank]
                assert name == files[image].relative_to(photos).as_posix()
                assert value == pytest.approx(peaks[image], rel=1e-12)
                where = int(flat[image].argmax())
                assert (top, left, side) == crop_box(where // width, where % width, (height, width), field, 24)
                # The crop's file holds that region of the image, as the atlas sees it (24 px square).
                crop = np.array(Image.open(tmp_path / "examples" / layer / f"{k}-{rank}.png"))
                square = load_square(files[image], 24)
                assert np.array_equal(crop, square[top:top + side, left:left + side]), (layer, k, rank)


def test_atlas_defaults_are_those_it_documents(tmp_path):
    # build_atlas without recipe, seed, top_k or chunk_size is build_atlas with classic, 0, 8 and 16 given,
    # byte for byte; another seed and top-k change what they should.
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for number in range(10):  # more than 8, so that the top 8 is a choice
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"{number}.png")
    model = tiny_model()
    options = dict(size=16, steps=2, layers=["features.6"], images=folder)
    default = build_atlas(model, tmp_path / "default", **options)
    build_atlas(model, tmp_path / "explicit", recipe="classic", seed=0, top_k=8, chunk_size=16, **options)
    assert site_files(tmp_path / "default") == site_files(tmp_path / "explicit")
    assert default.examples == 8 * 8
    other = build_atlas(model, tmp_path / "other", seed=1, top_k=7, **options)
    assert other.examples == 8 * 7
    changed = site_files(tmp_path / "other")
    assert all(changed[name] != data for name, data in site_files(tmp_path / "default").items()
               if name.startswith("img/"))
    # Chunks of 16 filters by default: a layer of 20 is rendered as tasks of 16 and 4.
    seen = []

    class Recording(LocalExecutor):
        def run(self, model, tasks, settings):
            seen.extend(task.filters for task in tasks)
            yield from super().run(model, tasks, settings)

    torch.manual_seed(0)
    wide = filterviz.load_model(torch.nn.Sequential(torch.nn.Conv2d(3, 20, 3), torch.nn.ReLU()), spec=TINY_SPEC,
                                device="cpu", name="wide")
    build_atlas(wide, tmp_path / "wide", size=8, steps=1, layers=["1"], executor=Recording())
    assert seen == [tuple(range(16)), tuple(range(16, 20))]


def test_receptive_field_of_stacked_convolutions():
    # 3x3 conv, 3x3 conv, 2x2 pool, 3x3 conv: 1 + 2 + 2 = 5 px, then the pool doubles the last conv's 2.
    assert receptive_field(tiny_model(), "features.1", 16) == 3
    assert receptive_field(tiny_model(), "features.3", 16) == 5
    assert receptive_field(tiny_model(), "features.6", 16) == 10


def test_atlas_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "site"
    cases = [
        (["--layers", "features.99"], "unknown layer 'features.99'"),
        (["--images", str(tmp_path / "none")], "image folder"),
        (["--filters", "50"], "no filters to show in layer"),
        (["--address", "auto"], "--address and --gpus-per-task go with --executor ray"),
        (["--executor", "ray", "--gpus-per-task", "64"], "no node of the Ray cluster has 64 GPUs for a task"),
    ]
    model_file = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(model_file))
    capsys.readouterr()
    for extra, message in cases:
        code = main(["atlas", str(model_file), "--out", str(out), "--size", "16", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()


def test_ray_executor_equals_local_and_survives_a_killed_worker(tmp_path):
    ray = pytest.importorskip("ray")
    from filterviz.atlas import RayExecutor
    from filterviz.atlas import executors

    marker = str(tmp_path / "killed")

    def run_or_die(boxed, task, settings):
        """The first task kills the worker process running it (SIGKILL), once."""
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return executors.run_worker_task(boxed, task, settings)

    ray.cloudpickle.register_pickle_by_value(sys.modules["conftest"])  # workers cannot import the tests
    model = tiny_model(dtype=torch.float32)
    options = dict(size=16, steps=5, chunk_size=4)
    build_atlas(model, tmp_path / "local", executor=LocalExecutor(), **options)
    executor = RayExecutor(init_options={"num_cpus": 2}, worker_task=run_or_die)
    summary = build_atlas(model, tmp_path / "ray", executor=executor, **options)
    assert os.path.exists(marker) and summary.rendered == 18
    assert "ran 1 task again after their worker or node died (features.1 0-3)" in str(summary)
    assert not ray.is_initialized()
    assert site_files(tmp_path / "ray") == site_files(tmp_path / "local")


def test_a_task_renders_on_the_settings_thread_count_and_restores_it(monkeypatch):
    from filterviz.atlas import executors
    from filterviz.atlas.executors import RenderSettings, RenderTask, run_task
    from filterviz.recipes import get_recipe

    seen = []
    real = executors.render_filters
    monkeypatch.setattr(executors, "render_filters", lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    before = torch.get_num_threads()
    settings = RenderSettings(get_recipe("classic", size=16, steps=1), 0, threads=before + 1)
    result = run_task(tiny_model(), RenderTask("features.1", (0, 1)), settings)
    assert seen == [before + 1] and torch.get_num_threads() == before and len(result.pngs) == 2
    # Its PNGs are the pictures of the filters' render as one batch, in order, with its scores.
    expected = render_filters(tiny_model(), "features.1", [0, 1], size=16, steps=1, seed=0)
    for data, image in zip(result.pngs, expected.images):
        assert np.array_equal(np.array(Image.open(io.BytesIO(data))), image)
    assert result.scores == pytest.approx(tuple(expected.activation), rel=1e-12)
    assert result.start_scores == pytest.approx(tuple(expected.start_activation), rel=1e-12)


def test_layer_slugs_depend_on_the_name_alone_and_never_collide():
    from filterviz.atlas.selection import layer_slug

    assert layer_slug("features.1") == "features.1"
    names = ["a#2", "a_2", "A_2", "a/2", "a 2", "a:2"]
    slugs = [layer_slug(name) for name in names]
    assert slugs[1] == "a_2" and len({slug.lower() for slug in slugs}) == len(names)
    assert all(re.fullmatch(r"[a-z0-9_.-]+", slug) for slug in slugs)


def test_what_shares_a_batch_or_a_thread_count_is_part_of_a_render(tmp_path):
    model = tiny_model(dtype=torch.float32)
    options = dict(size=16, steps=2, layers=["features.3"], chunk_size=3)
    assert build_atlas(model, tmp_path, **options).rendered == 6
    assert build_atlas(model, tmp_path, **{**options, "chunk_size": 2}).rendered == 6  # every batch changed
    assert build_atlas(model, tmp_path, **{**options, "chunk_size": 2, "filters": [0, 1, 4, 5]}).rendered == 0
    assert build_atlas(model, tmp_path, **{**options, "chunk_size": 2, "filters": [1, 4, 5]}).rendered == 1
    threads = torch.get_num_threads()
    assert build_atlas(model, tmp_path, **{**options, "threads": threads + 1}).rendered == 6


def test_an_interrupted_change_never_leaves_files_the_manifest_vouches_for(tmp_path, photos, monkeypatch):
    model = tiny_model()
    other = tmp_path / "other"  # the same file names, other pictures
    other.mkdir()
    for path in list_images(photos):
        Image.fromarray(255 - load_square(path, 40)).save(other / path.name)
    options = dict(size=16, steps=2, top_k=2, layers=["features.3"])
    build_atlas(model, tmp_path / "clean", images=photos, **options)
    build_atlas(model, tmp_path / "site", images=photos, **options)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(atlas_build.Manifest, "put_examples", killed)
    with pytest.raises(KeyboardInterrupt):  # dies after rewriting the crops, before recording them
        build_atlas(model, tmp_path / "site", images=other, **{**options, "steps": 3})
    monkeypatch.undo()
    build_atlas(model, tmp_path / "site", images=photos, **options)
    assert site_files(tmp_path / "site") == site_files(tmp_path / "clean")


def test_an_atlas_never_takes_over_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.svg").write_text("<svg/>")
    model_file = tmp_path.parent / f"{tmp_path.name}-tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(model_file))
    capsys.readouterr()
    code = main(["atlas", str(model_file), "--out", str(tmp_path), "--size", "16", "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "is not empty and holds no atlas" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["img", "logo.svg"]


def test_atlas_cli_late_errors_come_early(tmp_path, capsys, photos):
    model_file = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(model_file))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "fine.png").write_bytes((photos / "chelsea.png").read_bytes())
    (broken / "bad.jpg").write_bytes(b"not a picture")
    out = tmp_path / "site"
    capsys.readouterr()
    for extra, message in [(["--precision", "fp16"], "fp16"), (["--images", str(broken)], "bad.jpg"),
                           (["--gpus-per-task", "-1"], "invalid non-negative number value")]:
        code = main(["atlas", str(model_file), "--out", str(out), "--size", "16", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    started = time.monotonic()  # a huge range is clipped to each layer, never expanded
    assert main(["atlas", str(model_file), "--out", str(out), "--size", "16", "--steps", "1", "-q",
                 "--layers", "features.1", "--filters", "0-99999999999"]) == 0
    assert time.monotonic() - started < 30 and len(list((out / "img" / "features.1").iterdir())) == 4
