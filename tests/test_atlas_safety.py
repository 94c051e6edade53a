"""The atlas's safety: it never reads its own files as dataset images, and runs a local Ray on 127.0.0.1
without stray output."""

from __future__ import annotations

import shutil
import sqlite3
import sys

import pytest
import torch

from filterviz.atlas import MANIFEST, build_atlas

from conftest import tiny_model


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
