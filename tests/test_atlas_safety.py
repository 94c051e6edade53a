"""The atlas's safety: it never deletes, writes or follows anything outside its folder, says what to do
about a damaged manifest and recovers with --rebuild, never reads its own files as dataset images, never
drops computed results without saying so, runs a local Ray on 127.0.0.1 without stray output, and
re-renders exactly what each input of a picture changes."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import filterviz.atlas.build as atlas_build
from filterviz.atlas import MANIFEST, build_atlas
from filterviz.cli import main
from filterviz.errors import OutputError
from filterviz.device import cpu_supports_bf16, resolve_precision

from conftest import TinyNet, tiny_model


def tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``, never following a link: file bytes, or where a link points."""
    found: dict[str, bytes | str] = {}
    for folder, folders, files in os.walk(root):  # os.walk does not enter linked folders
        for name in files + [f for f in folders if os.path.islink(os.path.join(folder, f))]:
            path = Path(folder, name)
            key = path.relative_to(root).as_posix()
            found[key] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes()
    return found


def site(root: Path) -> dict[str, bytes | str]:
    return {name: data for name, data in tree(root).items() if not name.startswith(MANIFEST)}


def _built(model, out: Path, options: dict) -> Path:
    build_atlas(model, out, **options)
    return out


def _model_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(path))
    return path


# Nothing outside the atlas's folder is deleted, written or followed; only recorded files are removed.

@pytest.mark.parametrize("linked", ["layers", "filters/features.3", "img/features.1"])
def test_a_linked_folder_in_an_atlas_is_refused_and_nothing_outside_changes(tmp_path, linked):
    model = tiny_model()
    out, outside = tmp_path / "atlas", tmp_path / "outside"
    options = dict(size=16, steps=1, layers=["features.1", "features.3"])
    build_atlas(model, out, **options)
    outside.mkdir()
    (out / linked).rename(outside / "moved")  # moved to another disk and linked back
    (outside / "moved" / "mine.txt").write_text("not the atlas's")
    (out / linked).symlink_to(outside / "moved", target_is_directory=True)
    before, inside = tree(outside), tree(out)
    # A run that would prune features.3's files and write features.1's anew (another seed).
    with pytest.raises(OutputError, match=f"{linked}' is a symbolic link") as error:
        build_atlas(model, out, **{**options, "layers": ["features.1"], "seed": 1})
    assert "\n" not in str(error.value)
    assert tree(outside) == before and tree(out) == inside  # refused before anything was written


def test_pruning_removes_only_recorded_files_and_never_enters_a_link(tmp_path, monkeypatch):
    model = tiny_model()
    out, outside = tmp_path / "atlas", tmp_path / "outside"
    options = dict(size=16, steps=1, layers=["features.1", "features.3"])
    build_atlas(model, out, **options)
    outside.mkdir()
    (out / "img" / "features.3").rename(outside / "moved")
    (out / "img" / "features.3").symlink_to(outside / "moved", target_is_directory=True)
    mine = {"img/features.1/notes.txt": "mine", "layers/extra.html": "<p>mine</p>", "filters/features.3/0.txt": "x",
            "img/features.1/.notes.txt.a1b2c3d4.part": "not a leftover of a file the atlas wrote"}
    for name, text in mine.items():
        (out / name).write_text(text)
    (out / "img" / "features.1" / ".0.png.a1b2c3d4.part").write_bytes(b"half a png")  # a killed write's leftover
    before = tree(outside)
    # The check at the start would refuse the link; without it, the pruning itself must still keep out of it.
    monkeypatch.setattr(atlas_build, "check_tree", lambda root, extra=(): None, raising=False)
    build_atlas(model, out, **{**options, "layers": ["features.1"]})
    assert tree(outside) == before
    assert (out / "img" / "features.3").is_symlink()  # the link stays, and what it points to
    for name, text in mine.items():
        assert (out / name).read_text() == text
    assert not (out / "img" / "features.1" / ".0.png.a1b2c3d4.part").exists()
    assert not (out / "layers" / "features.3.html").exists()
    assert sorted(p.name for p in (out / "filters" / "features.3").iterdir()) == ["0.txt"]
    assert not (out / "layers" / "features.1.html").is_symlink() and (out / "index.html").is_file()


def test_the_files_of_a_manifest_of_an_earlier_filterviz_stay_removable(tmp_path, photos):
    model = tiny_model()
    options = dict(size=16, steps=1, layers=["features.1", "features.3"], images=photos, top_k=1)
    build_atlas(model, tmp_path / "atlas", **options)
    with sqlite3.connect(tmp_path / "atlas" / MANIFEST) as sql:  # as an earlier filterviz left it: no list of files
        sql.execute("DROP TABLE files")
        for column in ("settings", "folder", "images"):
            sql.execute(f"ALTER TABLE example_layers DROP COLUMN {column}")
    sql.close()
    fewer = {**options, "layers": ["features.1"]}
    summary = build_atlas(model, tmp_path / "atlas", **fewer)
    assert (summary.rendered, summary.images) == (0, 0)
    assert site(tmp_path / "atlas") == site(_built(model, tmp_path / "clean", fewer))


# A damaged manifest: one line that says what to do; --rebuild sets it aside and starts afresh.

@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_manifest_is_one_line_and_rebuild_recovers(tmp_path, capsys, damage):
    out = tmp_path / "atlas"
    args = ["atlas", str(_model_file(tmp_path)), "--out", str(out), "--size", "16", "--steps", "1", "-q",
            "--layers", "features.1"]
    assert main(args) == 0
    clean = site(out)
    (out / "notes.txt").write_text("mine")
    (out / "img" / "features.1" / "notes.txt").write_text("mine too")
    data = (out / MANIFEST).read_bytes()
    bad = data[:len(data) // 2] if damage == "truncated" else bytes(range(256)) * 16
    (out / MANIFEST).write_bytes(bad)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err and "--rebuild" in err, err
    assert main([*args, "--rebuild"]) == 0
    assert (out / f"{MANIFEST}.corrupt-1").read_bytes() == bad
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "img" / "features.1" / "notes.txt").read_text() == "mine too"
    assert main(args) == 0 and capsys.readouterr().err == ""
    assert {name: data for name, data in site(out).items() if ".corrupt-" not in name} == {
        **clean, "notes.txt": b"mine", "img/features.1/notes.txt": b"mine too"}
    with sqlite3.connect(out / MANIFEST) as sql:
        assert sql.execute("SELECT COUNT(*) FROM units").fetchone()[0] == 4


def test_rebuild_of_a_sound_atlas_renders_afresh_and_still_removes_its_old_files(tmp_path):
    model = tiny_model()
    options = dict(size=16, steps=1, layers=["features.1", "features.3"])
    build_atlas(model, tmp_path, **options)
    again = build_atlas(model, tmp_path, rebuild=True, **{**options, "layers": ["features.1"]})
    assert again.rendered == 4 and "started afresh" in str(again)
    assert sorted(name for name in site(tmp_path) if "features.3" in name) == []
    assert not list(tmp_path.glob(f"{MANIFEST}.corrupt-*"))


# An atlas inside its image folder never reads its own files as dataset images.

def test_an_atlas_inside_its_image_folder_skips_its_own_files(tmp_path, photos):
    images = tmp_path / "photos"
    shutil.copytree(photos, images)
    out = images / "atlas"
    options = dict(size=16, steps=1, layers=["features.1"], images=images, top_k=2)
    first = build_atlas(tiny_model(), out, **options)
    assert (first.images, first.examples) == (6, 8)
    again = build_atlas(tiny_model(), out, **options)
    assert (again.rendered, again.images, again.examples) == (0, 0, 8)  # nothing new to scan
    with sqlite3.connect(out / MANIFEST) as sql:
        shown = {image for (image,) in sql.execute("SELECT image FROM examples")}
    assert shown and not any(image.startswith("atlas/") for image in shown)


# A rerun never drops computed results without saying so.

def test_a_rerun_without_images_keeps_its_examples_and_says_so(tmp_path, photos):
    model = tiny_model()
    out = tmp_path / "atlas"
    options = dict(size=16, steps=1, layers=["features.1"], top_k=2)
    first = build_atlas(model, out, images=photos, **options)
    shown = site(out)
    kept = build_atlas(model, out, **options)
    assert kept.examples == first.examples == 8 and kept.images == 0
    assert "kept 8 dataset examples from an earlier run" in str(kept) and "--images" in str(kept)
    assert site(out) == shown  # the same pages, crops and copies
    dropped = build_atlas(model, out, **{**options, "top_k": 1})
    assert dropped.examples == 0 and "dropped 8 dataset examples" in str(dropped)
    assert "because" in str(dropped) and not list((out / "examples").rglob("*.png"))
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos / "chelsea.png", other / "cat.png")
    replaced = build_atlas(model, out, images=other, **options)
    assert (replaced.images, replaced.examples) == (1, 4)
    fewer = build_atlas(model, out, images=other, **{**options, "filters": [0, 1]})
    assert "removed 2 filters that this run no longer shows" in str(fewer)


# A local Ray listens on 127.0.0.1 only, and adds nothing of its own to stderr.

def test_a_local_ray_listens_on_loopback_only_and_prints_nothing(tmp_path, capfd):
    ray = pytest.importorskip("ray")
    import psutil  # a dependency of Ray (which ships a copy of it)

    from filterviz.atlas import RayExecutor

    listening: list[tuple[str, str]] = []

    class Probe(RayExecutor):
        """Notes where Ray's processes (this one and all it started) listen, while they run."""

        def run(self, model, tasks, settings):
            yield from super().run(model, tasks, settings)
            me = psutil.Process()
            for process in [me, *me.children(recursive=True)]:
                try:
                    listening.extend((process.name(), c.laddr.ip) for c in process.net_connections(kind="tcp")
                                     if c.status == psutil.CONN_LISTEN)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass

    ray.cloudpickle.register_pickle_by_value(sys.modules["conftest"])  # workers cannot import the tests
    capfd.readouterr()
    summary = build_atlas(tiny_model(dtype=torch.float32), tmp_path, size=16, steps=1, layers=["features.1"],
                          executor=Probe(init_options={"num_cpus": 2}))
    err = capfd.readouterr().err
    assert summary.rendered == 4 and not ray.is_initialized()
    assert {"gcs_server", "raylet"} <= {name for name, _ in listening}, listening
    assert all(ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for _, ip in listening), listening
    assert err == "", err


def test_a_local_ray_starts_anew_and_joins_no_cluster_a_stale_file_names():
    """A process killed while its Ray ran leaves ``ray_current_cluster`` behind, naming a dead address;
    Ray, given no address, would try to join it. Without --address filterviz starts its own Ray."""
    ray = pytest.importorskip("ray")
    from filterviz.atlas import RayExecutor

    # Ray's sockets live under its temp folder, whose path must stay short.
    temp = Path(tempfile.mkdtemp(prefix="fvray", dir="/tmp"))
    try:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{free.getsockname()[1]}"
        (temp / "ray_current_cluster").write_text(dead)
        executor = RayExecutor(init_options={"_temp_dir": str(temp), "num_cpus": 1})
        try:
            executor.open()
            joined = ray.get_runtime_context().gcs_address
        finally:
            executor.close()
        assert joined != dead and not ray.is_initialized()
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.parametrize("given_as", ["--address", "RAY_ADDRESS"])
def test_an_address_nothing_answers_at_is_one_line_in_seconds(tmp_path, capsys, monkeypatch, given_as):
    """Ray itself would retry for minutes; an address from RAY_ADDRESS is checked as one given."""
    pytest.importorskip("ray")
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{free.getsockname()[1]}"
    extra = ["--address", dead]
    if given_as == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", dead)
        extra = []
    model_file = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.trace(TinyNet().eval(), torch.rand(1, 3, 16, 16)), str(model_file))
    capsys.readouterr()
    code = main(["atlas", str(model_file), "--out", str(tmp_path / "site"), "--size", "16", "--executor", "ray",
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"cannot reach the Ray cluster at {dead}" in err and f"leave out {given_as}" in err, err
    assert not (tmp_path / "site").exists()


# Each input of a picture, changed alone, re-renders exactly the pictures (and scans) it changes.

@pytest.mark.parametrize("change", ["seed", "size", "precision", "device"])
def test_each_input_of_a_picture_rerenders_what_it_changes(tmp_path, photos, change):
    model = tiny_model(dtype=torch.float32)
    options = dict(size=16, steps=1, layers=["features.1", "features.3"], filters=[0, 1, 2], chunk_size=2,
                   images=photos, top_k=1)
    if change == "seed":
        changed, scans = {**options, "seed": 1}, 0  # examples never depend on the seed
    elif change == "size":
        changed, scans = {**options, "size": 20}, 6  # they do on the size
    elif change == "precision":  # the other of fp32 and what the default (auto) chooses here
        other = "fp32" if resolve_precision("auto", torch.device("cpu")) != "fp32" else "bf16"
        if other == "bf16" and not cpu_supports_bf16():
            pytest.skip("this CPU has no native bf16")
        changed, scans = {**options, "precision": other}, 0
    else:
        if not torch.cuda.is_available():
            pytest.skip("no second device here")
        changed, scans = options, None
    first = build_atlas(model, tmp_path, **options)
    before = site(tmp_path)
    if change == "device":
        model.module.to("cuda")
    again = build_atlas(model, tmp_path, **changed)
    assert again.rendered == first.rendered == 6 and (scans is None or again.images == scans)
    assert build_atlas(model, tmp_path, **changed).rendered == 0  # recorded under the new input
    assert site(tmp_path) != before
    if change == "device":
        model.module.to("cpu")
    back = build_atlas(model, tmp_path, **options)
    assert back.rendered == 6 and site(tmp_path) == before


def test_an_executor_without_the_protocol_is_one_line_and_writes_nothing(tmp_path):
    from filterviz.atlas import build_atlas
    from filterviz.errors import FilterVizError

    class RunOnly:
        def run(self, model, tasks, settings):
            return iter(())

    with pytest.raises(FilterVizError, match="executor RunOnly lacks open, close, retried"):
        build_atlas(tiny_model(), tmp_path / "atlas", executor=RunOnly(), size=16, steps=1)
    assert not (tmp_path / "atlas").exists()
