"""A real network partition: an agent in its own network namespace, joined by a veth pair.

The link is taken down for less and for more than the node timeout. The addresses are
link-local ones on the veth pair that this test creates; no packet leaves the machine.
Needs root and iproute2; skipped with the reason where namespaces cannot be made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import MARKER, Cluster, wait_until

HOST_IP = "169.254.213.1"
NODE_IP = "169.254.213.2"


@dataclass
class Netns:
    name: str
    host_if: str

    @property
    def wrap(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    def link(self, up: bool) -> None:
        ip("link", "set", self.host_if, "up" if up else "down")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (ip)")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, node_if = f"mgpu{tag}", f"mgh{tag}", f"mgn{tag}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.decode().strip()}")
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", node_if)
        ip("link", "set", node_if, "netns", ns)
        ip("addr", "add", f"{HOST_IP}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{NODE_IP}/30", "dev", node_if)
        ip("netns", "exec", ns, "ip", "link", "set", node_if, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield Netns(ns, host_if)
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def start(make_cluster: Any, netns: Netns, **node_env: str) -> Cluster:
    cluster: Cluster = make_cluster(nodes=0, master_args=("--host", "0.0.0.0"),
                                    env={"MGPU_NODE_TIMEOUT": "3"})
    cluster.add_node("node1", 1, master_host=HOST_IP, wrap=netns.wrap, env=node_env)
    return cluster


def silent_for(cluster: Cluster, node_id: str) -> float:
    """Seconds since the master last heard from ``node_id``."""
    [node] = [n for n in cluster.api("/api/v1/nodes")["nodes"] if n["node_id"] == node_id]
    seen = datetime.fromisoformat(node["last_seen"].replace("Z", "+00:00"))
    return (datetime.now(UTC) - seen).total_seconds()


def job_pids(cluster: Cluster, job_id: int) -> list[int]:
    """The processes of ``cluster``'s job ``job_id`` (not another cluster's job of that id:
    tests may run side by side)."""
    return [p.pid for p in psutil.process_iter(["environ"])
            if (env := p.info["environ"] or {}).get("MGPU_JOB_ID") == str(job_id)
            and env.get(MARKER) == str(cluster.tmp)]


def alive(pids: list[int]) -> bool:
    """Whether any of ``pids`` runs (a zombie, or one gone while we look, does not)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:  # (gone, maybe between two reads of /proc)
            pass
    return False


def test_a_short_partition_loses_nothing(make_cluster: Any, netns: Netns,
                                         tmp_path: Path) -> None:
    cluster = start(make_cluster, netns)
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo a; while [ ! -e {gate} ]; do sleep 0.02; done; seq 1 500")
    cluster.wait_job(job_id, ("running",))
    netns.link(up=False)
    # The partition lasts until the master has heard nothing for a second (of the 3 s
    # timeout): it is real, and shorter than the timeout.
    wait_until(lambda: silent_for(cluster, "node1") > 1.0, 5)
    gate.touch()  # output written during the partition
    netns.link(up=True)
    job = cluster.wait_job(job_id, ("completed",), timeout=30)
    assert job["requeues"] == 0
    assert cluster.mgpu("logs", str(job_id)).stdout.split() == ["a", *map(str, range(1, 501))]


def test_long_partition_with_fence_on_disconnect_kills_before_requeue(
    make_cluster: Any, netns: Netns, tmp_path: Path
) -> None:
    cluster = start(make_cluster, netns, MGPU_FENCE_ON_DISCONNECT="1")
    runs = tmp_path / "runs"
    job_id = cluster.submit(f'echo "$$" >> {runs}; exec sleep 300')
    cluster.wait_job(job_id, ("running",))
    first = wait_until(lambda: job_pids(cluster, job_id), 10)
    netns.link(up=False)
    # The agent kills its job after the fence time (0.6 x the 3 s timeout)...
    wait_until(lambda: not alive(first), 10, message="the fenced job to die")
    # ...before the master gives the node up and requeues the job.
    wait_until(lambda: cluster.job(job_id)["state"] == "pending", 15)
    netns.link(up=True)
    job = cluster.wait_job(job_id, ("running",), timeout=30)
    assert job["requeues"] == 1
    wait_until(lambda: len(runs.read_text().split()) == 2, 15)
    assert not alive(first)
    cluster.mgpu("cancel", str(job_id))


def test_long_partition_without_fencing_keeps_the_job_until_the_link_heals(
    make_cluster: Any, netns: Netns, tmp_path: Path
) -> None:
    """The documented trade-off: the job runs on while apart; on return the node kills it."""
    cluster = start(make_cluster, netns)
    job_id = cluster.submit("exec sleep 300")
    cluster.wait_job(job_id, ("running",))
    first = wait_until(lambda: job_pids(cluster, job_id), 10)
    netns.link(up=False)
    wait_until(lambda: cluster.job(job_id)["state"] == "pending", 15)
    assert alive(first), "without fence_on_disconnect the job runs on during a partition"
    netns.link(up=True)
    # Back: the node learns the job was requeued, kills its old copy, then runs it again.
    wait_until(lambda: not alive(first), 30, message="the stale copy to be killed")
    job = cluster.wait_job(job_id, ("running",), timeout=30)
    assert job["requeues"] == 1
    cluster.mgpu("cancel", str(job_id))
