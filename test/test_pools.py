"""Draining nodes, and node pools that grow and shrink with the queue.

The pool tests give the master a pools file whose commands start and stop real
``mgpu node`` processes on this machine (``launcher.py`` below), the way an operator's
cloud or ``systemctl`` commands would; the decision rule is also checked on its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core.errors import ConfigError
from mgpu.core.models import GpuInfo
from mgpu.server.node_events import Node
from mgpu.server.pools import Demand, PoolSpec, PoolState, ShellOperator, decide, read_pools

# ------------------------------------------------------------------ the rule, on its own


def spec(**kw: Any) -> PoolSpec:
    base: dict[str, Any] = dict(name="p", gpus_per_node=4, max_nodes=3, scale_up="true",
                                scale_down="true", scale_up_after=60, scale_down_after=600)
    return PoolSpec(**{**base, **kw})


def node(node_id: str, gpus: int = 4, busy: int = 0, **kw: Any) -> Node:
    n = Node(node_id, [GpuInfo(index=i, name="g", memory_total_mib=1) for i in range(gpus)],
             pool="p", **kw)
    for g in n.gpus[:busy]:
        g.job_id = 1
    return n


def pool_of(s: PoolSpec) -> PoolState:
    return PoolState(s, ShellOperator(s))


def test_a_pool_asks_for_the_nodes_that_waiting_jobs_fill_up_to_its_max() -> None:
    p = pool_of(spec())
    jobs = [Demand(gpus=2, waited=100)] * 5 + [Demand(gpus=8, waited=100)]  # 8 > a node
    assert decide(p, [], jobs, now=1000).request == 3  # 10 GPUs: 3 nodes, max 3
    p = pool_of(spec())
    assert decide(p, [], [Demand(2, 100)] * 3, now=1000).request == 2
    assert decide(p, [], [Demand(2, 100)] * 3, now=1001).request == 0  # not twice
    assert decide(p, [], [Demand(2, 30)] * 3, now=1000).request == 0  # not waited enough


def test_asked_for_nodes_count_until_they_join_or_the_request_expires() -> None:
    p = pool_of(spec(request_timeout=100))
    p.requested = [0.0, 10.0, 50.0]
    d = decide(p, [node("a")], [Demand(4, 100)] * 4, now=120)
    assert d.expired == 1  # node a answers the oldest request; the one at 10 is too old
    assert d.request == 1  # 4 nodes' worth: 1 up, 1 still coming, max 3
    assert p.requested == [50.0, 120.0]


def test_min_nodes_are_kept_and_idle_nodes_beyond_them_released() -> None:
    p = pool_of(spec(min_nodes=1, scale_down_after=10))
    assert decide(p, [], [], now=0).request == 1  # min_nodes, whatever the queue
    p = pool_of(spec(min_nodes=1, scale_down_after=10))
    nodes = [node("a"), node("b"), node("c", busy=1)]
    assert decide(p, nodes, [], now=0).release == []  # idle from now
    assert decide(p, nodes, [], now=10).release == ["a", "b"]  # busy c counts for min
    p = pool_of(spec(min_nodes=1, scale_down_after=10))
    decide(p, nodes[:2], [], now=0)
    assert decide(p, nodes[:2], [], now=10).release == ["a"]  # b stays for min_nodes
    drained = [node("a"), node("b", drain_reason="x")]
    assert decide(pool_of(spec(scale_down_after=0)), drained, [], now=0).release == ["a"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[pool.a]\ngpus_per_node = 1\nmax_nodes = 1\nscale_up = 'x'\n", "scale_down"),
        ("[pool.a]\ngpus_per_node = 1\nmax_nodes = 1\nscale_upp = 'x'\n", "unknown setting"),
        ("[pool.a]\ngpus_per_node = 0\nmax_nodes = 1\nplugin = 'x'\n", "gpus_per_node"),
        ("[pool.a]\ngpus_per_node = 1\nmax_nodes = 1\nmin_nodes = 2\nplugin = 'x'\n",
         "min_nodes"),
        ("[pools.a]\n", "[pool.NAME]"),
        ("[pool.a]\nmax_nodes = 1\nplugin = 'x'\n", "gpus_per_node"),
    ],
)
def test_a_wrong_pools_file_is_refused_by_name(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "pools.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace(".", r"\.")):
        read_pools(path)


# ------------------------------------------------------------------ drain, for real


def node_row(cluster: Cluster, node_id: str) -> dict[str, Any]:
    for n in json.loads(cluster.mgpu("nodes", "--json").stdout):
        if n["node_id"] == node_id:
            return dict(n)
    raise AssertionError(f"{node_id} not listed")


def test_a_drained_node_gets_no_new_jobs_and_its_running_job_finishes(
    make_cluster: Any,
) -> None:
    cluster = make_cluster(nodes=2, gpus=2)
    first = cluster.submit("sleep 600", "-G", "2")
    there = cluster.wait_job(first, ("running",))["node"]
    other = "node2" if there == "node1" else "node1"
    out = cluster.mgpu("drain", there, "--reason", "disk swap").stdout
    assert "draining" in out and "1 running job" in out
    row = node_row(cluster, there)
    assert row["draining"] and row["drain_reason"] == "disk swap"
    table = cluster.mgpu("nodes").stdout
    assert "up,draining" in table and "disk swap" in table
    second = cluster.submit("sleep 600", "-G", "2")
    assert cluster.wait_job(second, ("running",))["node"] == other
    third = cluster.submit("true", "-G", "2")
    assert cluster.job(first)["state"] == "running"  # the drained node's job runs on
    cluster.mgpu("cancel", str(first))
    cluster.wait_job(first)
    assert cluster.job(third)["state"] == "pending"  # its GPUs are free, but drained
    assert "up,drained" in cluster.mgpu("nodes").stdout
    assert "resumed" in cluster.mgpu("resume", there).stdout
    assert cluster.wait_job(third)["node"] == there
    cluster.mgpu("cancel", str(second))


def test_a_drain_outlasts_a_master_restart_and_is_for_admins(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=1, gpus=1)
    cluster.mgpu("drain", "node1")
    cluster.mgpu("drain", "later-node")  # not joined yet: it will join drained
    cluster.restart_master()
    assert node_row(cluster, "node1")["draining"]
    job = cluster.submit("true", "-G", "1")
    cluster.add_node("later-node", 1)
    assert node_row(cluster, "later-node")["draining"]
    assert cluster.job(job)["state"] == "pending"
    alice = {"MGPU_TOKEN": cluster.user_token("alice")}
    refused = cluster.mgpu("resume", "node1", env=alice, check=6)
    assert "admins" in refused.stderr
    unknown = cluster.mgpu("resume", "no-such-node", check=4)
    assert "mgpu nodes" in unknown.stderr
    cluster.mgpu("resume", "node1")
    cluster.wait_job(job)
    events = cluster.mgpu("events").stdout
    assert "node.drain" in events and "node.resume" in events


# ------------------------------------------------------------------ pools, for real

LAUNCHER = '''
"""A pool's operator commands: start or stop real `mgpu node` processes here."""
import json, os, signal, subprocess, sys, uuid
from pathlib import Path

here = Path(__file__).parent
master = json.loads((Path(os.environ["TEST_MASTER_DIR"]) / "master.json").read_text())
pool = os.environ["MGPU_POOL"]
with open(here / "calls.log", "a") as log:
    if sys.argv[1] == "up":
        count = int(os.environ["MGPU_POOL_COUNT"])
        print("up", pool, count, file=log)
        for _ in range(count):
            node_id = f"{pool}-{uuid.uuid4().hex[:6]}"
            out = open(here / f"{node_id}.log", "ab")
            proc = subprocess.Popen(
                [sys.executable, "-m", "mgpu", "node", "--node-id", node_id, "--pool", pool,
                 "--master-host", "127.0.0.1", "--master-port", str(master["port"]),
                 "--port", "0", "--fake-gpus", os.environ["TEST_GPUS_" + pool],
                 # (under the cluster's dir: its teardown sweeps what is left there)
                 "--data-dir", str(Path(os.environ["TEST_MASTER_DIR"]).parent / node_id),
                 "--kill-jobs-on-exit",
                 "--join-token-file", os.environ["TEST_JOIN_TOKEN"]],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
            (here / f"{node_id}.pid").write_text(str(proc.pid))
    else:
        nodes = os.environ["MGPU_POOL_NODES"].split()
        print("down", pool, *nodes, file=log)
        for node_id in nodes:
            os.killpg(int((here / f"{node_id}.pid").read_text()), signal.SIGTERM)
'''


def test_a_pool_grows_for_waiting_jobs_and_shrinks_when_idle(
    make_cluster: Any, tmp_path: Path
) -> None:
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "launcher.py").write_text(LAUNCHER)
    run = f"{sys.executable} {ops / 'launcher.py'}"
    pools = tmp_path / "pools.toml"
    pools.write_text(textwrap.dedent(f"""
        [pool.burst]
        gpus_per_node = 2
        max_nodes = 2
        scale_up = "{run} up"
        scale_down = "{run} down"
        scale_up_after = 0
        scale_down_after = 1

        [pool.warm]
        gpus_per_node = 1
        min_nodes = 1
        max_nodes = 1
        scale_up = "{run} up"
        scale_down = "{run} down"
        scale_up_after = 3600
    """))
    cluster = Cluster(tmp_path / "c", {
        "TEST_GPUS_burst": "2", "TEST_GPUS_warm": "1",
        "TEST_JOIN_TOKEN": str(tmp_path / "c" / "master" / "join.token"),
        "TEST_MASTER_DIR": str(tmp_path / "c" / "master")})
    try:
        cluster.start_master("--pools", str(pools))
        calls = ops / "calls.log"
        # warm: min_nodes=1, asked for at once; burst: nothing waits yet.
        wait_until(lambda: calls.exists() and "up warm 1" in calls.read_text(), 30)
        jobs = [cluster.submit("sleep 600", "-G", "2") for _ in range(3)]

        def pool_nodes(name: str) -> list[dict[str, Any]]:
            return [n for n in json.loads(cluster.mgpu("nodes", "--json").stdout)
                    if n["pool"] == name and n["state"] == "up"]

        wait_until(lambda: len(pool_nodes("burst")) == 2, 60)
        asked = [int(line.split()[2]) for line in calls.read_text().splitlines()
                 if line.startswith("up burst")]
        assert sum(asked) == 2  # 3 jobs' worth, but max_nodes 2
        running = [cluster.wait_job(j, ("running",), timeout=30) for j in jobs[:2]]
        assert {r["node"] for r in running} == {n["node_id"] for n in pool_nodes("burst")}
        table = cluster.mgpu("nodes").stdout
        assert "pool burst: 2 node(s) of 2 GPUs (min 0, max 2), 0 requested" in table
        assert cluster.job(jobs[2])["state"] == "pending"
        for j in jobs:
            cluster.mgpu("cancel", str(j))
        # Idle for scale_down_after: drained, released, and forgotten once their agent went.
        wait_until(lambda: pool_nodes("burst") == [] and "down burst" in calls.read_text()
                   and not any(n["pool"] == "burst" for n in
                               json.loads(cluster.mgpu("nodes", "--json").stdout)), 60)
        assert len(pool_nodes("warm")) == 1  # min_nodes stays
        events = cluster.mgpu("events", "-n", "200").stdout
        assert "pool.scale_up" in events and "pool.scale_down" in events
    finally:
        # The master first (its pools would start a new node for min_nodes), then the nodes
        # the pools started, then whatever keepers they left.
        problems = cluster.close()
        for pid in ops.glob("*.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid.read_text()), signal.SIGKILL)
        Cluster._sweep_keepers(str(cluster.tmp))
        assert not problems, problems


def test_a_pool_counts_the_jobs_of_its_partition_and_whole_nodes_for_a_gang(
        tmp_path: Path) -> None:
    from mgpu.core.models import JobState, SimpleJob, utc
    from mgpu.server.pools import demand_of

    def job(job_id: int, gpus: int = 2, **kw: Any) -> SimpleJob:
        return SimpleJob(id=job_id, name="j", user="u", state=JobState.PENDING, gpus=gpus,
                         command="true", cwd="/", submitted_at=utc(900.0), **kw)

    jobs = {1: job(1), 2: job(2, partition="slurm"), 3: job(3, gpus=4, nodes=2),
            4: job(4, partition="cloud")}
    plain = list(demand_of(spec(), jobs, [1, 2, 3, 4], now=1000))
    assert [(d.gpus, d.nodes, d.waited) for d in plain] == [(2, 1, 100.0), (2, 2, 100.0)]
    cloud = list(demand_of(spec(partition="cloud"), jobs, [1, 2, 3, 4], now=1000))
    assert [(d.gpus, d.nodes) for d in cloud] == [(2, 1)]
    # A gang of 2 parts x 2 GPUs needs 2 nodes of its own; 2 GPUs of job 1 fit beside.
    assert decide(pool_of(spec()), [], plain, now=1000).request == 3
    assert decide(pool_of(spec()), [], plain[1:], now=1000).request == 2
    bad = tmp_path / "pools.toml"
    bad.write_text('[pool.p]\ngpus_per_node = 4\nmax_nodes = 1\nscale_up = "true"\n'
                   'scale_down = "true"\npartition = "no good"\n')
    with pytest.raises(ConfigError, match="partition is a partition name"):
        read_pools(bad)

