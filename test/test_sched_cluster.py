"""Scheduling on a real cluster (master, agent, keeper): the reservation and backfill, the
pending reason codes in ``queue``/``show``/``--json``, ``mgpu explain``, ``mgpu queue
--start``, ``--priority``/``--nice``, and fair-share shares and usage across a restart.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from conftest import Cluster, wait_until


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_backfill_never_delays_the_reserved_job_and_says_why_each_waits(
        cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    hold = f"while [ ! -e {gate} ]; do sleep 0.05; done"
    first = cluster.submit(hold, "-G", "2", "-t", "10:00")  # runs: 2 of 4 GPUs, 600 s
    started = ts(cluster.wait_job(first, ("running",))["started_at"])
    big = cluster.submit("true", "-G", "4", "-t", "5:00")  # blocked: reserved from +600 s
    long = cluster.submit(hold, "-G", "2", "-t", "20:00")  # would outlast the reservation
    short = cluster.submit("true", "-G", "1", "-t", "1:00")  # ends before it: backfills
    cluster.wait_job(short, ("completed",))

    shown = {j: cluster.job(j) for j in (big, long)}
    assert shown[big]["state"] == shown[long]["state"] == "pending"
    assert shown[big]["pending_reason"] == "Resources"
    assert abs(ts(shown[big]["expected_start"]) - (started + 600)) < 2
    assert shown[long]["pending_reason"] == "Reserved" and f"job {big}" in shown[long]["reason"]
    assert shown[long]["expected_start"] is None

    table = cluster.mgpu("queue").stdout
    assert f"(Reserved) the free GPUs of node1 are held for job {big}" in table
    starts = {line.split()[0]: line for line in cluster.mgpu("queue", "--start").stdout
              .splitlines()[1:]}
    assert set(starts) == {str(big), str(long)}
    assert "N/A" in starts[str(long)] and "N/A" not in starts[str(big)]
    said = cluster.mgpu("explain", str(long)).stdout
    assert "is pending: Reserved" in said and f"job {big}" in said
    assert "Place in line: 2 of 2 pending (1 ahead)." in said
    why = json.loads(cluster.mgpu("explain", str(big), "--json").stdout)
    assert why["pending_reason"] == "Resources" and why["ahead"] == 0
    factors = why["priority"]
    assert abs(factors["priority"] - factors["age"] - factors["fair_share"] - factors["job"]
               ) < 0.01
    assert any(line.startswith("Expected start: ") and "on node1" in line
               for line in why["lines"])

    gate.touch()
    done = {j: cluster.wait_job(j, ("completed",)) for j in (first, big, long)}
    assert ts(done[big]["started_at"]) <= ts(done[long]["started_at"])  # the reserved job first
    assert done[big]["pending_reason"] is None and done[big]["expected_start"] is None


def test_usage_counts_and_survives_a_master_restart(cluster: Cluster) -> None:
    me = getpass.getuser()
    job = cluster.submit("sleep 1", "-G", "2")
    cluster.wait_job(job, ("completed",))

    def usage() -> float:
        rows = json.loads(cluster.mgpu("share", "list", "--json").stdout)["users"]
        return float(next((r["usage_gpu_hours"] for r in rows if r["user"] == me), 0.0))

    before = wait_until(usage, message="the job's GPU-seconds to count")
    assert 2 / 3600 * 0.9 <= before <= 2 * 30 / 3600  # two GPUs, about a second
    cluster.restart_master()
    assert abs(usage() - before) < 0.2 * before  # rebuilt from the job, barely decayed


def test_shares_priority_and_nice_on_a_cluster_without_nodes(
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    alice = {"MGPU_TOKEN": cluster.user_token("alice")}

    refused = cluster.mgpu("share", "set", "bob", "3", env=alice, check=False)
    assert refused.returncode != 0 and "admins" in refused.stderr
    table = cluster.mgpu("share", "set", "bob", "3").stdout
    assert any(line.split()[:2] == ["bob", "3"] for line in table.splitlines())

    refused = cluster.mgpu("submit", "--priority", "5", "true", env=alice, check=False)
    assert refused.returncode != 0 and "only an admin may set --priority" in refused.stderr
    refused = cluster.mgpu("submit", "--nice", "-5", "true", env=alice, check=False)
    assert refused.returncode != 0 and "negative --nice" in refused.stderr
    niced = cluster.submit("true", "--nice", "50")
    plain = cluster.submit("true")
    urgent = cluster.submit("true", "--priority", "500")
    shown = cluster.job(niced)
    assert (shown["nice"], shown["priority"], shown["pending_reason"]) == (50, 0, "NodeDown")
    places = {j: json.loads(cluster.mgpu("explain", str(j), "--json").stdout)["ahead"]
              for j in (niced, plain, urgent)}
    assert places == {urgent: 0, plain: 1, niced: 2}
    said = cluster.mgpu("explain", str(urgent)).stdout
    assert "is pending: NodeDown" in said and "--priority 500" in said

    cluster.restart_master(wait_nodes=False)
    rows = json.loads(cluster.mgpu("share", "list", "--json").stdout)["users"]
    assert {r["user"]: r["shares"] for r in rows}["bob"] == 3.0  # kept by the database
    events = cluster.mgpu("events", "--json").stdout
    assert "share.set" in events and "bob: 1 -> 3" in events
