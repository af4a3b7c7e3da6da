"""The founding entry points, run for real (tier 3): ``SimpleMaster(...).start_server()``,
``SimpleNode(...).start_agent()``, ``NodeManager`` and ``python src/mgpu_node.py``, each as a
process of its own that serves a master or joins one, runs a job, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import SRC, Cluster, Component, wait_until
from mgpu import SimpleClient


def spawn(cluster: Cluster, name: str, argv: list[str], env: dict[str, str] | None = None
          ) -> Component:
    """Start ``python ARGV`` as a component of ``cluster`` (its own session, its log, and
    stopped by the cluster's teardown): a node when ``name`` is a node id, else the master."""
    log_path = cluster.log_dir / f"{name}.log"
    cmd = [sys.executable, *argv]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env={**cluster.base_env, **(env or {})},
                                cwd=cluster.tmp, start_new_session=True)
    comp = Component(name, cmd, proc, log_path)
    if name.startswith("node"):
        cluster.nodes[name] = comp
    else:
        cluster.master = comp
    return comp


def start_simple_master(cluster: Cluster) -> Component:
    """``SimpleMaster('127.0.0.1', 0, data_dir=...).start_server()`` in a process of its own."""
    code = ("from mgpu import SimpleMaster; "
            f"SimpleMaster('127.0.0.1', 0, data_dir={str(cluster.master_dir)!r}).start_server()")
    master = spawn(cluster, "master", ["-c", code])
    info_path = cluster.master_dir / "master.json"

    def listening() -> dict[str, Any] | None:
        assert master.running(), master.log_tail()
        try:
            info: dict[str, Any] = json.loads(info_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return info if info.get("pid") == master.pid else None

    info = wait_until(listening, 30, message=master.log_tail)
    cluster.port = int(info["port"])
    return master


def run_a_job(cluster: Cluster, node_id: str) -> None:
    client = SimpleClient("127.0.0.1", cluster.port, token=cluster.token)
    try:
        job_id = client.submit_job(gpus=1, cmd="echo seed-$MGPU_JOB_ID")
        (job,) = client.wait(job_id, timeout=30)
        assert job.state.value == "completed", job
        assert job.node == node_id
        assert client.logs(job_id) == f"seed-{job_id}\n"
    finally:
        client.close()


def stop(comp: Component) -> None:
    """SIGTERM its group; it must exit cleanly (status 0) on its own."""
    comp.expected_exit = True
    comp.signal_group(15)
    assert comp.proc.wait(30) == 0, comp.log_tail()


def test_simple_master_and_simple_node_run_a_job_and_stop(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "seed")
    try:
        master = start_simple_master(cluster)
        node_code = (
            "from mgpu import SimpleNode; "
            f"SimpleNode('node1', 'localhost', {cluster.port}, 0, fake_gpus=2, "
            f"data_dir={str(cluster.tmp / 'node1')!r}, "
            f"join_token_file={str(cluster.join_token_file)!r}).start_agent()")
        node = spawn(cluster, "node1", ["-c", node_code])
        cluster.wait_nodes_up(["node1"])
        run_a_job(cluster, "node1")
        stop(node)
        stop(master)
    finally:
        problems = cluster.close()
    assert problems == []


def test_the_founding_node_script_joins_a_master(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    node = spawn(cluster, "node1",
                 [str(SRC / "mgpu_node.py"), "--node-id", "node1", "--master-host", "localhost"],
                 env={"MGPU_MASTER_PORT": str(cluster.port), "MGPU_FAKE_GPUS": "2",
                      "MGPU_JOIN_TOKEN_FILE": str(cluster.join_token_file),
                      "MGPU_NODE_PORT": "0", "MGPU_NODE_DATA_DIR": str(cluster.tmp / "node1")})
    cluster.wait_nodes_up(["node1"])
    run_a_job(cluster, "node1")
    stop(node)


def test_the_founding_classes_take_their_settings_as_the_commands_do(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mgpu import NodeManager, SimpleMaster, SimpleNode
    from mgpu.core.errors import ConfigError

    monkeypatch.setenv("MGPU_KILL_GRACE", "7")
    node = SimpleNode("n1", "localhost", 9000, 0, data_dir=str(tmp_path), fake_gpus="2")
    assert node.config.data_dir == tmp_path and node.config.fake_gpus == 2
    assert node.config.kill_grace == 7.0  # the environment applies, as for `mgpu node`
    assert SimpleMaster("127.0.0.1", 0, data_dir=str(tmp_path)).config.data_dir == tmp_path
    agent = NodeManager("localhost", 9000).add_node("n2", fake_gpus=1, data_dir=str(tmp_path))
    assert agent.cfg.data_dir == tmp_path
    with pytest.raises(ConfigError, match=r"no setting 'fake_gpu'.*fake_gpus"):
        SimpleNode("n1", fake_gpu=2)
    with pytest.raises(ConfigError, match="--port: 'x' is not a valid int"):
        SimpleMaster("127.0.0.1", "x")  # type: ignore[arg-type]


def test_a_node_manager_runs_many_nodes_in_one_process(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    ids = [f"node{i}" for i in range(1, 5)]
    code = (
        "from mgpu import NodeManager; "
        f"m = NodeManager('127.0.0.1', {cluster.port}); "
        f"[m.add_node(n, fake_gpus=1, port=0, data_dir={str(cluster.tmp)!r} + '/' + n, "
        f"join_token_file={str(cluster.join_token_file)!r}) for n in {ids!r}]; "
        "m.run()")
    manager = spawn(cluster, "node1", ["-c", code])  # (its teardown stops them all)
    for node_id in ids[1:]:
        cluster.nodes[node_id] = manager
    cluster.wait_nodes_up(ids)
    gate = cluster.tmp / "gate"
    jobs = [cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done") for _ in ids]
    running = [cluster.wait_job(j, ("running",)) for j in jobs]
    assert sorted(j["node"] for j in running) == ids  # one GPU each: every node holds one
    gate.touch()
    assert all(cluster.wait_job(j)["state"] == "completed" for j in jobs)
    for node_id in ids[1:]:
        del cluster.nodes[node_id]
    stop(manager)
