"""A two-node Ray cluster on this machine (both nodes on 127.0.0.1) loses a node mid-atlas."""

from __future__ import annotations

import sys
import time

import pytest
import torch

from filterviz.atlas import LocalExecutor, RayExecutor, build_atlas
from filterviz.atlas import executors

from conftest import tiny_model
from test_atlas import site_files


def test_atlas_survives_a_node_removed_mid_run_and_says_what_it_ran_again(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    ray.cloudpickle.register_pickle_by_value(sys.modules["conftest"])  # workers cannot import the tests
    # Every node and every process Ray starts on 127.0.0.1, never the machine's network address: Ray's
    # processes read this setting when they start, this one through _single_machine.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with executors._single_machine(ray):
        _run(ray, cluster_utils, tmp_path)


def _run(ray, cluster_utils, tmp_path):
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": executors.LOOPBACK, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=1, node_ip_address=executors.LOOPBACK)
    try:
        cluster.wait_for_nodes()
        head_id = cluster.head_node.node_id

        def wait_off_the_head(boxed, task, settings):
            """Tasks on the second node wait there, so that they are running when the node goes away."""
            if ray.get_runtime_context().get_node_id() != head_id:
                time.sleep(60)  # removed long before this ends
            return executors.run_worker_task(boxed, task, settings)

        class NodeLosingExecutor(RayExecutor):
            """Removes the second node once the head has finished a task."""

            def run(self, model, tasks, settings):
                for index, result in enumerate(super().run(model, tasks, settings)):
                    if index == 0:  # the head has finished a task: the other node's task is under way
                        cluster.remove_node(doomed)
                    yield result

        model = tiny_model(dtype=torch.float32)
        options = dict(size=16, steps=3, chunk_size=3, threads=1)
        build_atlas(model, tmp_path / "local", executor=LocalExecutor(), **options)
        executor = NodeLosingExecutor(address=cluster.address, worker_task=wait_off_the_head)
        summary = build_atlas(model, tmp_path / "ray", executor=executor, **options)
        assert summary.rendered == 18 and executor.retried
        assert f"ran {len(executor.retried)} task" in str(summary) and "again after their worker or node died" in str(summary)
        assert site_files(tmp_path / "ray") == site_files(tmp_path / "local")
        assert cluster.address.startswith(executors.LOOPBACK + ":")
        for node in cluster.list_all_nodes():  # every node of the cluster is on loopback
            assert node.node_ip_address == executors.LOOPBACK
    finally:
        ray.shutdown()
        cluster.shutdown()
