"""End-to-end smoke test: real master and node processes, ``mgpu`` run as a user would."""

from __future__ import annotations

import json

from conftest import Cluster


def test_submit_wait_logs(cluster: Cluster) -> None:
    job_id = cluster.submit("echo hi")
    cluster.mgpu("wait", str(job_id), "--timeout", "30")
    job = cluster.job(job_id)
    assert (job["state"], job["exit_code"]) == ("completed", 0)
    assert job["node"] == "node1"
    assert len(job["gpu_ids"]) == 1
    assert cluster.mgpu("logs", str(job_id)).stdout == "hi\n"


def test_nodes_and_show_as_json(cluster: Cluster) -> None:
    nodes = json.loads(cluster.mgpu("nodes", "--json").stdout)
    if isinstance(nodes, dict):  # {"nodes": [...]} or a bare list: both carry the contract
        nodes = nodes["nodes"]
    assert [(n["node_id"], n["state"], len(n["gpus"])) for n in nodes] == [("node1", "up", 4)]
    job_id = cluster.submit("exit 3", "-G", "2", "-J", "three")
    cluster.wait_job(job_id)
    shown = json.loads(cluster.mgpu("show", str(job_id), "--json").stdout)
    assert shown["id"] == job_id
    assert (shown["name"], shown["gpus"], shown["state"], shown["exit_code"]) == (
        "three",
        2,
        "failed",
        3,
    )
    assert shown["ended_at"].endswith("Z")
