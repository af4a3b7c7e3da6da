"""The seed's names in their rooms, the node and job state vocabularies, and the agent's
fencing rule (tier 1: no master; one test starts a real agent's health endpoint)."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

import mgpu
from mgpu.core import api_messages, messages
from mgpu.core.models import (
    NODE_TRANSITIONS,
    REGISTERED_STATES,
    EndCause,
    MessageType,
    NodeState,
)
from mgpu.node import fencing


def test_message_type_is_importable_from_models_where_the_seed_puts_it() -> None:
    assert MessageType is mgpu.MessageType is messages.MessageType
    assert MessageType("start_job") is MessageType.START_JOB


def test_messages_re_exports_every_api_message() -> None:
    own = api_messages.__name__
    public = [n for n, v in vars(api_messages).items()
              if n[0].isupper() and getattr(v, "__module__", own) == own and n != "Annotated"]
    assert {"HealthReply", "WhoAmIReply", "TokenCreated", "JobListReply"} <= set(public)
    for name in public:
        assert getattr(messages, name) is getattr(api_messages, name), name


def test_simple_node_and_node_manager_stay_importable_from_the_agent_module() -> None:
    from mgpu.node import agent, manager
    from mgpu.node.agent import NodeManager, SimpleNode

    assert SimpleNode is manager.SimpleNode is mgpu.SimpleNode
    assert NodeManager is manager.NodeManager is mgpu.NodeManager
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = agent.Nope


def test_node_states_are_the_strings_the_master_shows() -> None:
    assert [s.value for s in NodeState] == ["up", "degraded", "unreachable", "down"]
    assert [s for s in NodeState if s.takes_jobs] == [NodeState.UP]
    assert {NodeState.UP, NodeState.DEGRADED} == REGISTERED_STATES


def test_node_transitions_lead_only_towards_down_until_the_node_registers() -> None:
    moves = {(a.value, b.value) for a, targets in NODE_TRANSITIONS.items() for b in targets}
    assert moves == {
        ("up", "degraded"), ("up", "unreachable"), ("up", "down"),
        ("degraded", "up"), ("degraded", "unreachable"), ("degraded", "down"),
        ("unreachable", "down"),
    }
    assert set(NODE_TRANSITIONS) == set(NodeState)


def test_end_cause_crosses_the_node_link_and_may_be_absent() -> None:
    ended = messages.JobEnded(7, 0, "timeout", None, "time limit", 10,
                              end_cause=EndCause.TIME_LIMIT)
    [back] = messages.decode_node_frame(messages.node_encoder.encode(ended))
    assert isinstance(back, messages.JobEnded) and back.end_cause is EndCause.TIME_LIMIT
    raw = msgspec.msgpack.decode(messages.node_encoder.encode(ended))
    del raw["end_cause"]  # from a node that does not say why
    [old] = messages.decode_node_frame(msgspec.msgpack.encode(raw))
    assert isinstance(old, messages.JobEnded) and old.end_cause is None
    raw["end_cause"] = "bored"
    with pytest.raises(msgspec.ValidationError):
        messages.decode_node_frame(msgspec.msgpack.encode(raw))


@pytest.mark.parametrize(("configured", "node_timeout", "fence"), [
    (None, 10.0, 6.0),  # 0.6 of the master's node timeout
    (None, 0.2, 0.5),  # never below half a second
    (3.0, 10.0, 3.0),  # fence_timeout wins
])
def test_fence_time(configured: float | None, node_timeout: float, fence: float) -> None:
    assert fencing.fence_time(configured, node_timeout) == pytest.approx(fence)


@dataclass
class _Run:
    key: str
    ended: object | None = None


@dataclass
class _Jobs:
    """A stand-in for the node's job holder: records kills and forgets, as fencing asks."""

    fence: float | None
    jobs: dict[str, _Run]
    killed: list[tuple[str, str]] = field(default_factory=list)
    forgot: list[str] = field(default_factory=list)

    def kill(self, key: str, reason: str) -> None:
        self.killed.append((key, reason))

    def forget(self, key: str) -> None:
        self.forgot.append(key)


def test_watch_master_kills_each_running_job_once_when_the_master_is_silent() -> None:
    jobs = _Jobs(0.2, {"1.0": _Run("1.0"), "2.0": _Run("2.0", ended=object())})

    async def watch() -> float:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        task = asyncio.create_task(fencing.watch_master(lambda: jobs, lambda: heard,
                                                        logging.getLogger("test")))
        try:
            while not jobs.killed:
                await asyncio.sleep(0.02)
            waited = loop.time() - heard
            for _ in range(5):  # later looks kill nothing twice
                await asyncio.sleep(fencing.CHECK_INTERVAL)
        finally:
            task.cancel()
        return waited

    assert asyncio.run(asyncio.wait_for(watch(), 10)) >= 0.2  # not before the fence time
    assert [k for k, _ in jobs.killed] == ["1.0"]  # the ended run is left alone
    assert "fence_on_disconnect" in jobs.killed[0][1]


def test_runs_ended_while_apart_are_killed_and_forgotten() -> None:
    jobs = _Jobs(1.0, {})
    fencing.kill_ended_while_apart(jobs, ["3.1", "4.0"], logging.getLogger("test"))
    assert [k for k, _ in jobs.killed] == jobs.forgot == ["3.1", "4.0"]


@pytest.fixture
def health_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    import threading

    from mgpu.node.health import serve_health

    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []
    runner: list[object] = []

    async def start() -> None:
        r, p = await serve_health("127.0.0.1", 0, tmp_path, "n1", lambda: {"status": "ok"})
        runner.append(r)
        port.append(p)
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    assert started.is_set()
    try:
        yield port[0], tmp_path
    finally:
        from aiohttp import web

        r = runner[0]
        assert isinstance(r, web.AppRunner)
        asyncio.run_coroutine_threadsafe(r.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_health_endpoint_answers_and_says_its_port_in_node_json(
        health_server: tuple[int, Path]) -> None:
    port, data_dir = health_server
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as resp:
        assert json.load(resp) == {"status": "ok"}
    info = json.loads((data_dir / "node.json").read_text())
    assert info["port"] == port and info["node_id"] == "n1"


def test_a_port_in_use_names_the_fix(health_server: tuple[int, Path], tmp_path: Path) -> None:
    from mgpu.core.errors import MgpuError
    from mgpu.node.health import serve_health

    port, _ = health_server
    with pytest.raises(MgpuError, match=r"already in use: .* pass --port"):
        asyncio.run(serve_health("127.0.0.1", port, tmp_path, "n2", dict))
