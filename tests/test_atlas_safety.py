"""The atlas's safety: it runs a local Ray on 127.0.0.1 without stray output."""

from __future__ import annotations

import sys

import pytest
import torch

from filterviz.atlas import build_atlas

from conftest import tiny_model


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
