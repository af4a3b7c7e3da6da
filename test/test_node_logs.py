"""Centralised logging: an operator on the master reads what each node logged (warnings and
errors), with ``mgpu events --node NODE`` or ``mgpu nodes --log NODE``; a node's flood of
records is bounded on the node and on the master.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import psutil

from conftest import Cluster, wait_until
from mgpu.core import messages as m
from mgpu.node.logship import LogShipper
from mgpu.server.effects import Effects
from mgpu.server.nodelog import NodeLogs


def _keeper(cluster: Cluster) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "mgpu.node.keeper" in cmd and any(str(cluster.tmp / "node1") in a for a in cmd):
            return proc
    raise AssertionError("node1's keeper is not running")


def _node_events(cluster: Cluster, *args: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads(cluster.mgpu(*args, "--json").stdout)
    return events


def test_a_nodes_warnings_reach_the_master(cluster: Cluster) -> None:
    _keeper(cluster).kill()  # the agent logs it, restarts it, and the master hears of it
    def shipped() -> list[dict[str, Any]]:
        return [e for e in _node_events(cluster, "events", "--node", "node1")
                if e["action"] in ("node.warning", "node.error") and "keeper" in e["detail"]]
    found = wait_until(shipped, 30, message="node1's warning about its keeper")
    assert all(e["user"] == "node:node1" for e in found)
    assert any(e["action"] == "node.join" for e in _node_events(
        cluster, "nodes", "--log", "node1"))  # the same entries, by another door
    assert cluster.mgpu("events", "--node", "nosuch", "--json").stdout.strip() == "[]"
    table = cluster.mgpu("nodes", "--log", "node1").stdout
    assert "keeper" in table


def test_the_node_keeps_a_bounded_queue_and_says_what_it_dropped() -> None:
    shipper = LogShipper("mgpu.node.n1", capacity=5)
    log = logging.getLogger("mgpu.node.n1")
    log.addHandler(shipper)
    try:
        log.info("not shipped")
        logging.getLogger("mgpu.node.n2").warning("another agent's")
        for i in range(8):
            log.warning("trouble %d", i)
    finally:
        log.removeHandler(shipper)
    first = shipper.take(3)
    assert first[0].message.startswith("3 earlier warnings or errors were dropped")
    assert [r.message for r in first[1:]] == ["trouble 3", "trouble 4"]
    assert [r.message for r in shipper.take()] == ["trouble 5", "trouble 6", "trouble 7"]
    assert shipper.take() == []


def test_the_master_keeps_a_budget_per_node_and_minute() -> None:
    logs = NodeLogs(per_minute=3)
    msg = m.NodeLog(records=[m.NodeLogRecord(time=0.0, level="error", logger="x",
                                             message=f"m{i}") for i in range(5)])
    effects = Effects()
    logs.keep("n1", msg, 100.0, effects)
    assert [a.detail for a in effects.batch.audit] == ["x: m0", "x: m1", "x: m2"]
    assert {a.action for a in effects.batch.audit} == {"node.error"}
    later = Effects()
    logs.keep("n1", msg, 161.0, later)  # a new minute: first, how many were not kept
    assert later.batch.audit[0].detail.startswith("2 more warnings or errors")
    assert len(later.batch.audit) == 4
