"""Prometheus metrics: the master's ``/metrics``, each agent's, and who may scrape them.

A real master and real agents on loopback (``inproc``), scraped over HTTP and read with
prometheus-client's own parser; the values are checked against what the master's API says
of the same jobs and nodes. The real Prometheus is test_prometheus.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import mgpu
from inproc import InProcCluster, cluster, run, until
from mgpu.core.config import NodeConfig
from mgpu.core.errors import Forbidden, MgpuError, Unauthorized
from mgpu.core.models import ENDED_STATES, JobState, NodeState
from mgpu.node.agent import Agent
from mgpu.utils.gpu import FAKE_GPU_MEMORY_MIB, fake_gpus
from mgpu.utils.gpu_readings import (
    FAKE_MEMORY_USED_MIB,
    FAKE_TEMPERATURE_CELSIUS,
    FAKE_UTILIZATION_PERCENT,
    GpuReader,
)
from mgpu.utils.metrics_auth import check_scrape, is_loopback
from mgpu.utils.secretfile import write_secret

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    """(status, body) of ``GET url`` with ``token`` as a bearer token (None: no header)."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def parse(text: str) -> Series:
    """Every sample of a text exposition, keyed by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(series: Series, name: str, **labels: str) -> float:
    return series[name, frozenset(labels.items())]


async def master_series(c: InProcCluster, token: str | None = None) -> Series:
    status, body = await c.call(scrape, f"http://127.0.0.1:{c.port}/metrics", token)
    assert status == 200, body
    return parse(body)


async def ends_counted(c: InProcCluster, ended: int) -> Series:
    """The master's series once they count ``ended`` ends: a job's end is counted once it
    is saved, which may be just after a client sees the job ended."""
    seen: list[Series] = []

    def counted() -> bool:
        status, body = scrape(f"http://127.0.0.1:{c.port}/metrics")
        assert status == 200, body
        seen[:] = [parse(body)]
        return sum(v for (name, _), v in seen[0].items()
                   if name == "mgpu_jobs_ended_total") == ended

    await until(counted, what=f"{ended} ends counted", blocking=True)
    return seen[0]


# ---------------------------------------------------------------------- the master


def test_master_metrics_match_the_jobs_nodes_and_gpus_the_api_shows(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path, {"n1": 4, "n2": 2}) as c:
            assert c.master is not None
            client = c.client()
            gate = tmp_path / "gate"
            hold = f"while [ ! -e {gate} ]; do sleep 0.01; done"
            held = [await c.call(client.submit_job, gpus=g, cmd=hold) for g in (2, 1)]
            done = [await c.call(client.submit_job, gpus=1, cmd=cmd)
                    for cmd in ("true", "exit 3", "true")]
            await c.call(client.wait, *done, timeout=30)
            big = await c.call(client.submit_job, gpus=4, cmd="true")  # 3 GPUs held: pending
            await c.call(client.cancel, big)
            await until(lambda: all(c.master is not None and c.master.state.jobs[j].state
                                    is JobState.RUNNING for j in held))
            jobs = {j.id: j for j in await c.call(client.list_jobs, all=True)}
            series = await ends_counted(c, sum(j.state.ended for j in jobs.values()))
            nodes = {n.node_id: n for n in await c.call(client.nodes)}

            assert value(series, "mgpu_jobs_submitted_total") == len(jobs) == 6
            for state in ENDED_STATES:
                ended = sum(j.state is state for j in jobs.values())
                assert value(series, "mgpu_jobs_ended_total", state=state.value) == ended
            by_state_user: dict[tuple[str, str], int] = {}
            for j in jobs.values():
                key = (j.state.value, j.user)
                by_state_user[key] = by_state_user.get(key, 0) + 1
            shown = {(dict(labels)["state"], dict(labels)["user"]): v
                     for (name, labels), v in series.items() if name == "mgpu_jobs"}
            assert shown == by_state_user
            assert by_state_user[JobState.RUNNING.value, jobs[held[0]].user] == 2
            for s in NodeState:
                want = sum(n.state == s.value for n in nodes.values())
                assert value(series, "mgpu_nodes", state=s.value) == want
            for node_id, node in nodes.items():
                assert value(series, "mgpu_gpus", node=node_id) == len(node.gpus)
                assert value(series, "mgpu_gpus_used", node=node_id) == sum(
                    g.job_id is not None for g in node.gpus)
                assert value(series, "mgpu_gpus_busy_outside", node=node_id) == 0
            assert sum(value(series, "mgpu_gpus_used", node=n) for n in nodes) == 3
            # Every job that started waited once: the waits are the API's own times.
            started = [j for j in jobs.values() if j.started_at is not None]
            assert value(series, "mgpu_job_queue_wait_seconds_count") == len(started) == 5
            waits = sum((j.started_at - j.submitted_at).total_seconds() for j in started
                        if j.started_at is not None and j.submitted_at is not None)
            assert value(series, "mgpu_job_queue_wait_seconds_sum") == pytest.approx(waits)
            assert value(series, "mgpu_job_queue_wait_seconds_bucket", le="+Inf") == 5
            # Scheduling passes: as many as /api/v1/stats counts, as long in all.
            passes = c.master.scheduling.passes
            assert passes > 0
            assert value(series, "mgpu_scheduling_pass_seconds_count") == passes
            assert value(series, "mgpu_scheduling_pass_seconds_sum") == pytest.approx(
                c.master.scheduling.total_ms / 1000.0)
            # Commits: at least one a submit, each with a positive duration.
            commits = value(series, "mgpu_store_commit_seconds_count")
            assert commits >= 6
            assert value(series, "mgpu_store_commit_seconds_sum") > 0
            assert value(series, "mgpu_master_info", version=mgpu.__version__) == 1
            gate.touch()
            await c.call(client.wait, *held, timeout=30)
            after = await ends_counted(c, 6)
            assert value(after, "mgpu_jobs_ended_total", state="completed") == 4
            assert value(after, "mgpu_store_commit_seconds_count") > commits
            assert sum(value(after, "mgpu_gpus_used", node=n) for n in nodes) == 0

    run(main())


# ---------------------------------------------------------------------- who may scrape


def test_the_metrics_token_opens_metrics_and_nothing_else(tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    write_secret(token_file, "metrics-secret-1")

    async def main() -> None:
        async with cluster(tmp_path, {}, metrics_token_file=token_file) as c:
            url = f"http://127.0.0.1:{c.port}"
            status, body = await c.call(scrape, f"{url}/metrics")
            assert status == 401, body  # even from loopback, once a token is set
            error = json.loads(body)
            assert "Authorization: Bearer" in error["error"], error
            assert "credentials_file" in error["error"], error
            status, body = await c.call(scrape, f"{url}/metrics", "metrics-secret-2")
            assert status == 401 and "wrong metrics token" in json.loads(body)["error"], body
            status, body = await c.call(scrape, f"{url}/metrics", c.token)  # an admin's
            assert status == 401, body
            series = await master_series(c, "metrics-secret-1")
            assert value(series, "mgpu_nodes", state="up") == 0
            # The metrics token is no client token: the API refuses it.
            status, body = await c.call(scrape, f"{url}/api/v1/jobs", "metrics-secret-1")
            assert status == 401, body

    run(main())


def test_a_metrics_token_file_others_may_read_stops_the_master(tmp_path: Path) -> None:
    from mgpu.core.config import MasterConfig
    from mgpu.core.errors import ConfigError
    from mgpu.server.master import Master

    token_file = tmp_path / "metrics.token"
    write_secret(token_file, "metrics-secret")
    token_file.chmod(0o644)
    cfg = MasterConfig(port=0, data_dir=tmp_path / "m", metrics_token_file=token_file)
    with pytest.raises(ConfigError, match="chmod 600"):
        Master(cfg)
    with pytest.raises(ConfigError, match="does not exist"):
        Master(MasterConfig(port=0, data_dir=tmp_path / "m",
                            metrics_token_file=tmp_path / "missing"))


@pytest.mark.parametrize(("remote", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.1.2.3", False), ("192.0.2.2", False), ("::ffff:10.0.0.1", False),
    ("fe80::1%eth0", False), ("", False), (None, False), ("not-an-address", False),
])
def test_without_a_token_only_this_machine_may_scrape(remote: str | None,
                                                      loopback: bool) -> None:
    assert is_loopback(remote) is loopback
    if loopback:
        check_scrape(remote, None, None)
        check_scrape(remote, "Bearer anything", None)  # no token set: a header is ignored
    else:
        with pytest.raises(Forbidden, match="metrics_token_file"):
            check_scrape(remote, None, None)
    # With a token set, the address does not matter: the token does.
    check_scrape(remote, "Bearer t0k", "t0k")
    check_scrape(remote, "bearer  t0k ", "t0k")
    for header in (None, "Bearer t0", "Basic t0k", "t0k", "Bearer"):
        with pytest.raises(Unauthorized):
            check_scrape(remote, header, "t0k")


def _outside_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (None: it has none)."""
    import socket

    import psutil

    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not is_loopback(a.address):
                return str(a.address)
    return None


def test_a_scrape_from_another_address_without_a_token_is_refused(tmp_path: Path) -> None:
    """The master listening on a real interface, scraped through it: the peer is not
    loopback, so with no metrics token the scrape is refused with what to set."""
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no network interface besides loopback")

    async def main() -> None:
        async with cluster(tmp_path, {}, host=address) as c:
            status, body = await c.call(scrape, f"http://{address}:{c.port}/metrics")
            assert status == 403, body
            error = json.loads(body)["error"]
            assert f"came from {address}" in error and "metrics_token_file" in error, error

    run(main())


# ---------------------------------------------------------------------- an agent


async def start_agent(c: InProcCluster, node_id: str, gpus: int, **options: Any) -> Agent:
    """An agent whose GPUs are detected as fake ones (``--fake-gpus``), as ``mgpu node``
    makes them (``InProcCluster.add_node`` hands them over as given GPUs instead)."""
    assert c.master is not None
    cfg = NodeConfig(node_id=node_id, master_port=c.port, port=0, fake_gpus=gpus,
                     data_dir=c.tmp / node_id, join_token=c.master.join.secret,
                     allow_root_jobs=True, allow_other_users=True, **options)
    agent = Agent(cfg)
    await agent.start()
    c.agents[node_id] = agent
    await asyncio.wait_for(agent.registered.wait(), 10)
    return agent


def test_an_agent_serves_its_gpus_and_running_jobs(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as c:
            agent = await start_agent(c, "n1", 3, metrics_port=0)
            assert agent.metrics is not None and agent.metrics.port > 0
            info = json.loads((tmp_path / "n1" / "node.json").read_text())
            assert info["metrics_port"] == agent.metrics.port
            url = f"http://127.0.0.1:{agent.metrics.port}/metrics"
            client = c.client()
            gate = tmp_path / "gate"
            job = await c.call(client.submit_job, gpus=2,
                               cmd=f"while [ ! -e {gate} ]; do sleep 0.01; done")
            await until(lambda: agent.supervisor is not None
                        and agent.supervisor.running_count() == 1)
            status, body = await c.call(scrape, url)
            assert status == 200, body
            series = parse(body)
            assert value(series, "mgpu_node_jobs_running", node="n1") == 1
            for g in range(3):
                labels = {"node": "n1", "gpu": str(g)}
                assert value(series, "mgpu_node_gpu_memory_total_bytes", **labels) == (
                    FAKE_GPU_MEMORY_MIB * 2**20)
                assert value(series, "mgpu_node_gpu_memory_used_bytes", **labels) == (
                    FAKE_MEMORY_USED_MIB * 2**20)
                assert value(series, "mgpu_node_gpu_utilization_percent", **labels) == (
                    FAKE_UTILIZATION_PERCENT)
                assert value(series, "mgpu_node_gpu_temperature_celsius", **labels) == (
                    FAKE_TEMPERATURE_CELSIUS)
            assert not any(dict(labels).get("gpu") == "3" for _, labels in series)
            gate.touch()
            await c.call(client.wait, job, timeout=30)
            await until(lambda: agent.supervisor is not None
                        and agent.supervisor.running_count() == 0)
            status, body = await c.call(scrape, url)
            assert value(parse(body), "mgpu_node_jobs_running", node="n1") == 0

    run(main())


def test_agent_metrics_are_off_unless_asked_and_checked_like_the_masters(
        tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    write_secret(token_file, "node-metrics-secret")

    async def main() -> None:
        async with cluster(tmp_path) as c:
            off = await start_agent(c, "off", 1)
            assert off.metrics is None
            assert "metrics_port" not in json.loads((tmp_path / "off" / "node.json").read_text())
            on = await start_agent(c, "on", 1, metrics_port=0, metrics_token_file=token_file)
            assert on.metrics is not None
            url = f"http://127.0.0.1:{on.metrics.port}/metrics"
            status, body = await c.call(scrape, url)
            assert status == 401 and "metrics token" in body, body
            status, body = await c.call(scrape, url, "wrong")
            assert status == 401 and "wrong metrics token" in body, body
            status, body = await c.call(scrape, url, "node-metrics-secret")
            assert status == 200
            assert value(parse(body), "mgpu_node_jobs_running", node="on") == 0

    run(main())


def test_gpus_nvml_cannot_read_report_their_total_memory_only(tmp_path: Path) -> None:
    """GPUs that are not fake are read through NVML; these (fake UUIDs, and on this
    machine maybe no NVML at all) cannot be, so only what detection said is reported."""
    gpus = fake_gpus(2)
    reader = GpuReader(gpus, "nvml")
    try:
        readings = reader.read()
        assert readings == reader.read()  # NVML is tried once, not at every scrape
    finally:
        reader.close()
    assert [(r.index, r.memory_total_bytes) for r in readings] == [
        (g.index, g.memory_total_mib * 2**20) for g in gpus]
    assert all(r.utilization_percent is None and r.memory_used_bytes is None
               and r.temperature_celsius is None for r in readings)


# ---------------------------------------------------------------------- the dashboard

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-mgpu.json"


def dashboard_exprs() -> list[str]:
    """The PromQL of every panel of docs/grafana-mgpu.json."""
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def test_the_grafana_dashboard_uses_only_series_mgpu_serves(tmp_path: Path) -> None:
    """Every series a panel of docs/grafana-mgpu.json names is one the master or an agent
    serves (a renamed series would leave a panel empty without a word)."""
    exprs = dashboard_exprs()
    wanted = {name for e in exprs for name in re.findall(r"\bmgpu_[a-z_]+\b", e)}
    assert len(exprs) >= 10 and len(wanted) >= 14, (exprs, wanted)

    async def main() -> set[str]:
        async with cluster(tmp_path) as c:
            agent = await start_agent(c, "n1", 1, metrics_port=0)
            assert agent.metrics is not None
            client = c.client()  # a job, so that mgpu_jobs has a series
            await c.call(client.wait, await c.call(client.submit_job, gpus=1, cmd="true"))
            served = {name for name, _ in await master_series(c)}
            status, body = await c.call(scrape, f"http://127.0.0.1:{agent.metrics.port}/metrics")
            assert status == 200, body
            return served | {name for name, _ in parse(body)}

    served = run(main())
    assert wanted <= served, sorted(wanted - served)


def test_a_metrics_port_in_use_says_so_and_leaves_no_listener(tmp_path: Path) -> None:
    async def main() -> None:
        async with cluster(tmp_path) as c:
            assert c.master is not None
            with socket.socket() as held:
                held.bind(("127.0.0.1", 0))
                held.listen()
                busy = held.getsockname()[1]
                base = {"master_port": c.port, "join_token": c.master.join.secret,
                        "fake_gpus": 1, "allow_root_jobs": True, "allow_other_users": True}
                # Its metrics port taken: the error names the flag that picks another.
                agent = Agent(NodeConfig(node_id="a", port=0, data_dir=tmp_path / "a",
                                         metrics_port=busy, **base))
                with pytest.raises(MgpuError, match="--metrics-port"):
                    await agent.start()
                await agent.stop()
                # Its health port taken: the metrics listener, already up, is closed again.
                free = socket.socket()
                free.bind(("127.0.0.1", 0))
                port = free.getsockname()[1]
                free.close()
                agent = Agent(NodeConfig(node_id="b", port=busy, data_dir=tmp_path / "b",
                                         metrics_port=port, **base))
                with pytest.raises(MgpuError, match="already in use"):
                    await agent.start()
                with socket.socket() as again:  # free at once (no stop() is owed to an
                    again.bind(("127.0.0.1", port))  # agent that did not start)
                await agent.stop()  # (its keeper, which did start)

    run(main())


def test_with_authentication_off_metrics_are_open_like_the_api(tmp_path: Path) -> None:
    """``auth = false`` (benchmarks only) opens everything, /metrics included."""
    token_file = tmp_path / "metrics.token"
    write_secret(token_file, "unused-metrics-secret")

    async def main() -> None:
        async with cluster(tmp_path, {}, auth=False, metrics_token_file=token_file) as c:
            series = await master_series(c)  # no token sent, none asked for
            assert value(series, "mgpu_jobs_submitted_total") == 0

    run(main())
