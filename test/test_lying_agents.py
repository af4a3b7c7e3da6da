"""Agents that lie: a client with the right join secret that sends what no honest agent
would is cut off, and the master's state stays as it was (tiers 2 and 3).

The liar is a hand-written aiohttp WebSocket client speaking the node protocol against a
real master process; a real node runs the jobs it tries to forge messages about.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from conftest import Cluster, wait_until
from mgpu.core import messages as m
from mgpu.core.models import GpuInfo
from mgpu.utils.gpu import fake_gpus

Script = Callable[[aiohttp.ClientWebSocketResponse, m.Registered], Awaitable[None]]
_credentials: dict[tuple[str, str], str] = {}  # (master, node id) -> its credential


class Closed(msgspec.Struct):
    code: int | None
    why: str


async def _liar(cluster: Cluster, register: m.Register | bytes, script: Script | None,
                secret: str | None = None) -> tuple[m.Registered | None, Closed]:
    """Connect as a node, register, run ``script``, and wait for the master to close."""
    secret = secret or cluster.join_token_file.read_text().strip()
    if isinstance(register, m.Register):  # a node id's credential, from its first join
        register = msgspec.structs.replace(
            register, credential=_credentials.get((cluster.url, register.node_id)))
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{cluster.url}/api/v1/node/ws", headers={"Authorization": f"Bearer {secret}"},
    ) as ws:
        raw = register if isinstance(register, bytes) else m.node_encoder.encode(register)
        await ws.send_bytes(raw)
        reply: m.Registered | None = None
        first = await ws.receive(timeout=10)
        if first.type is aiohttp.WSMsgType.BINARY:
            decoded = m.master_message_decoder.decode(first.data)
            assert isinstance(decoded, m.Registered)
            reply = decoded
            if reply.credential is not None and isinstance(register, m.Register):
                _credentials[cluster.url, register.node_id] = reply.credential
            if reply.accepted and script is not None:
                await script(ws, reply)
        while first.type is aiohttp.WSMsgType.BINARY:  # until the master closes
            first = await ws.receive(timeout=10)
        why = "" if first.type is aiohttp.WSMsgType.ERROR else str(first.extra or "")
        return reply, Closed(ws.close_code, why)


def liar(cluster: Cluster, script: Script | None, *, node_id: str = "liar",
         gpus: list[GpuInfo] | None = None,
         register: bytes | None = None) -> tuple[m.Registered | None, Closed]:
    reg = register or m.Register(node_id=node_id, gpus=fake_gpus(1) if gpus is None else gpus,
                                 hostname="liar")
    return asyncio.run(_liar(cluster, reg, script))


def send(*msgs: Any) -> Script:
    async def script(ws: aiohttp.ClientWebSocketResponse, _: m.Registered) -> None:
        for msg in msgs:
            await ws.send_bytes(msg if isinstance(msg, bytes) else m.node_encoder.encode(msg))
    return script


def send_too_big(size: int) -> Script:
    """One frame of ``size`` bytes; the master may close before it has all gone out."""
    async def script(ws: aiohttp.ClientWebSocketResponse, _: m.Registered) -> None:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError):
            await ws.send_bytes(b"\x00" * size)
    return script


def nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n["node_id"]: n for n in cluster.api("/api/v1/nodes")["nodes"]}


def still_consistent(cluster: Cluster, job_id: int, out: str) -> None:
    """The real node's job runs on, with its GPU and output; a new job still runs."""
    job = cluster.job(job_id)
    assert (job["state"], job["node"]) == ("running", "node1"), job
    [gpu] = nodes(cluster)["node1"]["gpus"]
    assert gpu["job_id"] == job_id
    assert cluster.mgpu("logs", str(job_id)).stdout == out
    wait_until(lambda: nodes(cluster).get("liar", {}).get("state") != "up", 10,
               message="the master to mark the liar's node as gone")


@pytest.mark.cluster(nodes=1, gpus=1)
def test_forged_and_malformed_messages_cut_the_liar_off(cluster: Cluster, tmp_path: Path
                                                        ) -> None:
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo real; while [ ! -e {gate} ]; do sleep 0.02; done")
    cluster.wait_job(job_id, ("running",))
    wait_until(lambda: cluster.mgpu("logs", str(job_id)).stdout == "real\n", 10)
    forged: list[tuple[str, Script]] = [
        ("the end of run 1.0, which it was never given",
         send(m.JobEnded(job_id, 0, "completed", 0, None, 0))),
        ("output of run 1.0, which it was never given",
         send(m.JobOutput(job_id, 0, 0, m.frame(1, b"forged\n")))),
        ("started, which it was never given", send(m.JobStarted(job_id, 4242))),
        ("the end of run 1.0, which it was never given",  # inside a batch frame
         send([m.Heartbeat(), m.JobEnded(job_id, 0, "completed", 0, None, 0)])),
        ("malformed message", send([m.Heartbeat()] * (m.MAX_BATCH + 1))),
        ("second register message",
         send(m.Register(node_id="liar", gpus=fake_gpus(1)))),
        ("malformed message", send(b"\xc1 not msgpack")),
        ("malformed message", send(m.node_encoder.encode(  # an absurd offset
            {"type": "job_output", "job_id": job_id, "run": 0, "offset": 2**60,
             "data": b""}))),
        ("malformed message", send(m.node_encoder.encode(
            {"type": "job_ended", "job_id": -1, "run": 0, "state": "completed",
             "exit_code": 0, "reason": None, "output_size": 0}))),
    ]
    for why, script in forged:
        reply, closed = liar(cluster, script)
        assert reply is not None and reply.accepted
        assert closed.code == 1008 and why in closed.why, (why, closed)
        still_consistent(cluster, job_id, "real\n")
    # A frame over the WebSocket limit (16 MiB): closed as too big.
    _, closed = liar(cluster, send_too_big(17 * 1024 * 1024))
    assert closed.code in (1009, 1006), closed  # 1006: reset while it was still sending
    still_consistent(cluster, job_id, "real\n")
    log = cluster.master.log_path.read_text() if cluster.master else ""
    assert "exceeds limit" in log
    log = cluster.master.log_path.read_text() if cluster.master else ""
    assert log.count("node liar (127.0.0.1): it sent") >= 3
    assert "cut off" in log
    gate.touch()
    assert cluster.wait_job(job_id)["state"] == "completed"
    assert cluster.mgpu("logs", str(job_id)).stdout == "real\n"
    again = cluster.submit("echo after")
    assert cluster.wait_job(again)["state"] == "completed"  # the real node still works


@pytest.mark.cluster(nodes=0)
def test_registrations_that_cannot_be_true_are_refused(cluster: Cluster) -> None:
    cases: list[tuple[str, dict[str, Any]]] = [
        ("the same GPU index twice", {"gpus": fake_gpus(1) * 2}),
        ("offers no GPUs", {"gpus": []}),
        ("node id", {"node_id": "../../etc"}),
    ]
    for why, fields in cases:
        reply, _ = liar(cluster, None, **fields)
        assert reply is not None and not reply.accepted and why in (reply.error or ""), reply
    too_many = m.node_encoder.encode({"type": "register", "node_id": "big", "hostname": "x",
                                      "gpus": [msgspec.to_builtins(g) for g in
                                               fake_gpus(1)] * 5000})
    absurd = m.node_encoder.encode({"type": "register", "node_id": "big", "gpus": [
        {"index": 0, "name": "x" * 10_000, "memory_total_mib": -1}]})
    for raw in (too_many, absurd, b"\x00garbage"):
        reply, closed = liar(cluster, None, register=raw)
        assert reply is None and closed.code == 1008, closed
    assert nodes(cluster) == {}
    log = cluster.master.log_path.read_text() if cluster.master else ""
    assert "refused node" in log and "malformed register message" in log
    events = cluster.mgpu("events", "--json").stdout
    assert events.count('"node.refused"') >= 3


@pytest.mark.cluster(nodes=0)
def test_a_liar_that_was_given_a_job_cannot_end_it_twice_or_after_its_end(
    cluster: Cluster,
) -> None:
    """Output after a run's end, and an end that is no ended state, cut the node off; the
    master keeps the output it had and the job ends or is requeued as usual."""
    job_id = cluster.submit("echo hi", "--no-requeue")

    async def end_then_talk(ws: aiohttp.ClientWebSocketResponse, _: m.Registered) -> None:
        while True:  # the master places the pending job here at once
            msg = m.master_message_decoder.decode((await ws.receive(timeout=10)).data)
            if isinstance(msg, m.StartJob):
                break
        data = m.frame(1, b"hi\n")
        await send(m.JobStarted(job_id, 1), m.JobOutput(job_id, 0, 0, data),
                   m.JobEnded(job_id, 0, "completed", 0, None, len(data)),
                   m.JobOutput(job_id, 0, len(data), m.frame(1, b"late\n")))(ws, _)

    _, closed = liar(cluster, end_then_talk)
    assert closed.code == 1008 and "after that run's end" in closed.why, closed
    job = cluster.wait_job(job_id)
    assert (job["state"], job["exit_code"]) == ("completed", 0)
    assert cluster.mgpu("logs", str(job_id)).stdout == "hi\n"

    other = cluster.submit("echo hi", "--no-requeue")

    async def weird_end(ws: aiohttp.ClientWebSocketResponse, _: m.Registered) -> None:
        while True:
            msg = m.master_message_decoder.decode((await ws.receive(timeout=10)).data)
            if isinstance(msg, m.StartJob):
                break
        await send(m.JobEnded(other, 0, "running", 0, None, 0))(ws, _)

    _, closed = liar(cluster, weird_end, node_id="liar2")
    assert closed.code == 1008 and "not an ended state" in closed.why, closed
    assert cluster.job(other)["state"] == "running"  # until the master gives up on liar2
