"""Accounting (issue 13): a row for every run of every job, saved with the run's end and
kept through pruning; ``GET /api/v1/usage`` and ``mgpu usage`` add them up.

Tier 1-2: the state handlers' effects saved into a real SQLite store (no sockets), the
schema step from version 4, and the usage sums over hand-made runs. Tier 3: a real master
and node, ``mgpu usage`` as a user runs it, and who may see whose usage.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import Cluster
from mgpu.core import messages as m
from mgpu.core.errors import UsageError
from mgpu.core.models import GpuInfo, JobSpec, JobState, SimpleJob, utc
from mgpu.server.accounting import UsageQuery, UsageRow, usage_rows, usage_sql
from mgpu.server.api_usage import parse_when
from mgpu.server.effects import Effects
from mgpu.server.schema import MIGRATIONS, SCHEMA
from mgpu.server.state import ClusterState
from mgpu.server.store import Batch, RunRow, Store

DAY = 86400.0
T0 = datetime(2026, 11, 1, tzinfo=UTC).timestamp()  # a Sunday, midnight UTC


def _register(state: ClusterState, node_id: str, gpus: int, now: float) -> None:
    msg = m.Register(node_id=node_id, gpus=[
        GpuInfo(index=i, name="fake", memory_total_mib=1024) for i in range(gpus)])
    reply, _ = state.on_register(msg, now)
    assert reply.accepted


def _save(store: Store, *effects: Effects) -> None:
    batch = Batch()
    for e in effects:
        batch.merge(e.batch)
    store.write(batch)


def _runs(store_path: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(store_path)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY job_id, run")]
    finally:
        con.close()


# ------------------------------------------------------------------ recording runs


def test_each_run_of_a_requeued_job_is_saved_with_its_end(tmp_path: Path) -> None:
    """A job whose node is lost is requeued and runs again elsewhere: two rows, the first
    ended by the lost node, the second's wait counted from the first's end."""
    store = Store(tmp_path / "mgpu.db")
    try:
        state = ClusterState(node_timeout=5.0)
        _register(state, "n1", 2, T0)
        [job_id], submitted = state.on_submit(
            [JobSpec(command="train", gpus=2, user="alice")], T0 + 10, user="alice")
        placed = state.schedule(T0 + 30)
        assert state.jobs[job_id].node == "n1"
        _save(store, submitted, placed)
        lost = state.on_tick(T0 + 130)  # n1 silent for over 5 s: the job is requeued
        assert state.jobs[job_id].state is JobState.PENDING
        assert [r.run for r in lost.batch.runs] == [0]
        _save(store, lost)
        _register(state, "n2", 4, T0 + 200)
        again = state.schedule(T0 + 250)
        assert state.jobs[job_id].node == "n2" and state.jobs[job_id].requeues == 1
        _save(store, again)
        ended = state.on_job_ended("n2", m.JobEnded(
            job_id=job_id, run=1, state="completed", exit_code=0, reason=None,
            output_size=0), T0 + 400)
        _save(store, ended)
        assert store.last_run(job_id) is not None
    finally:
        store.close()
    first, second = _runs(tmp_path / "mgpu.db")
    assert (first["run"], first["user"], first["node"], first["gpu_ids"], first["gpus"]) == (
        0, "alice", "n1", "0,1", 2)
    assert (first["state"], first["end_cause"], first["exit_code"]) == (
        "node_fail", "node_lost", None)
    assert (first["queued"], first["started"], first["ended"]) == (T0 + 10, T0 + 30, T0 + 130)
    assert first["gpu_seconds"] == pytest.approx(2 * 100)
    assert first["peak_mem_mib"] is None  # the nodes do not measure it yet
    assert (second["run"], second["node"], second["state"], second["end_cause"],
            second["exit_code"]) == (1, "n2", "completed", "exited", 0)
    # The second run waited from the first's end (T0+130), not from the submit.
    assert (second["queued"], second["started"], second["ended"]) == (
        T0 + 130, T0 + 250, T0 + 400)
    assert second["gpu_seconds"] == pytest.approx(2 * 150)


def test_a_job_cancelled_while_pending_is_recorded_without_a_start(tmp_path: Path) -> None:
    store = Store(tmp_path / "mgpu.db")
    try:
        state = ClusterState()
        [job_id], submitted = state.on_submit([JobSpec(command="x", user="bob")], T0,
                                              user="bob")
        results, cancelled = state.on_cancel([job_id], T0 + 5)
        assert results[0].ok
        _save(store, submitted, cancelled)
        row = store.last_run(job_id)
    finally:
        store.close()
    assert row is not None
    assert (row.user, row.state, row.end_cause, row.started, row.node, row.gpu_seconds) == (
        "bob", "cancelled", "cancelled", None, None, 0.0)
    assert row.ended == T0 + 5


V4_ACCOUNTING = """
CREATE TABLE node_credentials (node_id TEXT PRIMARY KEY, digest TEXT NOT NULL,
                               created REAL NOT NULL);
CREATE TABLE accounting (id INTEGER PRIMARY KEY, user TEXT NOT NULL, gpus INTEGER NOT NULL,
                         node TEXT, started REAL, ended REAL, state TEXT NOT NULL,
                         exit_code INTEGER);
"""


def test_version_4_accounting_and_ended_jobs_become_runs(tmp_path: Path) -> None:
    """Opening a version 4 database moves its accounting rows (pruned jobs) and the ended
    jobs still in ``jobs`` into ``runs``; pending and running jobs wait for their end."""
    path = tmp_path / "mgpu.db"
    con = sqlite3.connect(path)
    con.executescript(SCHEMA)
    for step in (2, 3):
        con.executescript(MIGRATIONS[step])
    con.executescript(V4_ACCOUNTING + "PRAGMA user_version=4;")
    con.execute("INSERT INTO accounting VALUES (1, 'alice', 2, 'n1', ?, ?, 'completed', 0)",
                (T0, T0 + 3600))
    ended = SimpleJob(id=2, name="t", user="bob", state=JobState.FAILED, gpus=3, command="t",
                      cwd="/", node="n2", gpu_ids=[1, 2, 3], exit_code=4, requeues=1,
                      submitted_at=utc(T0), started_at=utc(T0 + 60), ended_at=utc(T0 + 660))
    running = SimpleJob(id=3, name="r", user="bob", state=JobState.RUNNING, gpus=1,
                        command="r", cwd="/", node="n2", started_at=utc(T0))
    for job in (ended, running):
        con.execute("INSERT INTO jobs(id, state, user, data, env) VALUES (?,?,?,?,'{}')",
                    (job.id, job.state.value, job.user, msgspec.json.encode(job)))
    con.commit()
    con.close()
    Store(path).close()
    rows = _runs(path)
    assert [(r["job_id"], r["run"], r["user"], r["node"], r["state"], r["exit_code"])
            for r in rows] == [(1, 0, "alice", "n1", "completed", 0),
                               (2, 1, "bob", "n2", "failed", 4)]
    assert rows[0]["gpu_seconds"] == pytest.approx(2 * 3600)
    assert rows[1]["gpu_ids"] == "1,2,3" and rows[1]["gpu_seconds"] == pytest.approx(3 * 600, abs=1)
    assert rows[1]["queued"] == pytest.approx(T0, abs=0.01)
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    finally:
        con.close()
    assert "accounting" not in tables and {"runs_ended", "runs_user_ended"} <= tables


# ------------------------------------------------------------------ the sums


def _run(job_id: int, user: str, node: str | None, gpus: int, queued: float,
         started: float | None, ended: float, run: int = 0) -> RunRow:
    return RunRow(job_id=job_id, run=run, user=user, name="j", gpus=gpus, gpu_ids="",
                  node=node, queued=queued, started=started, ended=ended, state="completed",
                  exit_code=0, end_cause="exited",
                  gpu_seconds=0.0 if started is None else gpus * (ended - started))


@pytest.fixture
def history(tmp_path: Path) -> Any:
    """A month's runs: alice 2 GPUs x 2 h on day 1 (waited 10 min); bob 1 GPU from 22:00
    on day 1 to 02:00 on day 2 (across midnight, waited 1 h); carol's job cancelled while
    pending on day 2; a run of alice's before the window."""
    store = Store(tmp_path / "mgpu.db")
    store.write(Batch(runs=[
        _run(1, "alice", "n1", 2, T0 + 3000, T0 + 3600, T0 + 3 * 3600),
        _run(2, "bob", "n2", 1, T0 + 21 * 3600, T0 + 22 * 3600, T0 + 26 * 3600),
        _run(3, "carol", None, 4, T0 + 27 * 3600, None, T0 + 28 * 3600),
        _run(4, "alice", "n1", 1, T0 - 7200, T0 - 7000, T0 - 3600),
    ]))
    yield store
    store.close()


def _usage(store: Store, q: UsageQuery) -> list[UsageRow]:
    q.check()
    sql, args = usage_sql(q)
    return usage_rows(store.query(sql, args))


@pytest.mark.parametrize(("by", "user", "since", "until", "want"), [
    # key, GPU-hours, jobs, runs, average wait (s)
    ("user", None, T0, T0 + 3 * DAY, [("alice", 4.0, 1, 1, 600.0), ("bob", 4.0, 1, 1, 3600.0),
                                      ("carol", 0.0, 1, 1, None)]),
    ("user", "bob", T0, T0 + 3 * DAY, [("bob", 4.0, 1, 1, 3600.0)]),
    # A window that cuts bob's run at midnight counts only his 2 h before it.
    ("user", None, T0, T0 + DAY, [("alice", 4.0, 1, 1, 600.0), ("bob", 2.0, 1, 1, 3600.0)]),
    ("node", None, T0, T0 + 3 * DAY, [("n1", 4.0, 1, 1, 600.0), ("n2", 4.0, 1, 1, 3600.0)]),
    ("total", None, T0 - DAY, T0 + 3 * DAY, [("total", 8.944444, 4, 4, 1466.666667)]),
    # By day: bob's run counts in both days, 2 h each; carol's (never ran) on day 2; a day
    # without runs is there with zeros.
    ("day", None, T0, T0 + 3 * DAY, [("2026-11-01", 6.0, 2, 2, 2100.0),
                                     ("2026-11-02", 2.0, 2, 2, None),
                                     ("2026-11-03", 0.0, 0, 0, None)]),
    ("day", "alice", T0 - DAY, T0 + DAY, [("2026-10-31", 0.944444, 1, 1, 200.0),
                                          ("2026-11-01", 4.0, 1, 1, 600.0)]),
])
def test_usage_sums_gpu_hours_jobs_and_wait_within_the_window(
        history: Store, by: str, user: str | None, since: float, until: float,
        want: list[tuple[str, float, int, int, float | None]]) -> None:
    got = _usage(history, UsageQuery(since, until, by, user))
    assert [(r.key, round(r.gpu_seconds / 3600, 6), r.jobs, r.runs,
             None if r.avg_wait is None else round(r.avg_wait, 6)) for r in got] == want


def test_usage_queries_are_checked() -> None:
    with pytest.raises(UsageError, match="--by takes one of user, node, day"):
        UsageQuery(T0, T0 + 1, "week").check()
    with pytest.raises(UsageError, match="later than --since"):
        UsageQuery(T0, T0).check()
    with pytest.raises(UsageError, match="at most 3700 days"):
        UsageQuery(0, T0, "day").check()


@pytest.mark.parametrize(("text", "want"), [
    ("2026-11-01", T0), ("2026-11-01T00:00:00Z", T0), ("2026-11-01T02:00:00+02:00", T0),
    ("2026-11-01T08:30", T0 + 8.5 * 3600), (str(T0), T0), ("0", 0.0),
])
def test_usage_windows_take_dates_times_and_seconds(text: str, want: float) -> None:
    assert parse_when(text, "since") == want


@pytest.mark.parametrize("text", ["last tuesday", "inf", "nan", "-1", "1e300", "0001-01-01",
                                  "2026-13-01", ""])
def test_usage_windows_out_of_range_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="since takes a date or time like 2026-11-01"):
        parse_when(text, "since")


# ------------------------------------------------------------------ end to end


@pytest.mark.cluster(nodes=1, gpus=2)
def test_mgpu_usage_shows_each_user_their_own_and_admins_everyones(
        cluster: Cluster, tmp_path: Path) -> None:
    me = cluster.api("/api/v1/whoami")["user"]  # the admin token's user runs a real job
    bob = cluster.user_token("bob")
    gate = tmp_path / "gate"
    mine = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done", "-G", "2")
    cluster.wait_job(mine, ("running",))
    # bob's job waits for the busy GPUs, and bob cancels it: a job that never ran.
    status, reply = cluster.status_of("/api/v1/jobs", {"jobs": [
        {"command": "true", "gpus": 1, "cwd": "/", "user": "bob"}]}, token=bob)
    assert status == 201, reply
    [bobs] = reply["job_ids"]
    status, _ = cluster.status_of("/api/v1/jobs/cancel", {"job_ids": [bobs]}, token=bob)
    assert status == 200 and cluster.job(bobs)["state"] == "cancelled"
    gate.touch()
    job = cluster.wait_job(mine, ("completed",))
    # An admin sees everyone; GPU time is GPUs x the run's length.
    everyone = json.loads(cluster.mgpu("usage", "--json").stdout)
    by_user = {r["key"]: r for r in everyone["rows"]}
    assert set(by_user) == {me, "bob"} and everyone["user"] is None
    ran = (datetime.fromisoformat(job["ended_at"])
           - datetime.fromisoformat(job["started_at"])).total_seconds()
    assert by_user[me]["gpu_seconds"] == pytest.approx(2 * ran, abs=0.01)
    assert by_user[me]["gpu_hours"] == pytest.approx(2 * ran / 3600, abs=1e-5)
    assert (by_user[me]["jobs"], by_user[me]["runs"]) == (1, 1)
    assert by_user[me]["avg_wait_s"] >= 0
    assert (by_user["bob"]["gpu_seconds"], by_user["bob"]["jobs"],
            by_user["bob"]["avg_wait_s"]) == (0.0, 1, None)
    assert everyone["total"]["jobs"] == 2
    # A user sees only their own usage, and may not ask for another's.
    status, own = cluster.status_of("/api/v1/usage", token=bob)
    assert status == 200 and own["user"] == "bob" and [r["key"] for r in own["rows"]] == ["bob"]
    status, refused = cluster.status_of(f"/api/v1/usage?user={me}", token=bob)
    assert status == 403 and "only their own usage" in refused["error"]
    status, bad = cluster.status_of("/api/v1/usage?since=last+tuesday", token=bob)
    assert status == 400 and "2026-11-01" in bad["error"]
    # The table, CSV, and per-node and per-day views.
    table = cluster.mgpu("usage", "--by", "node").stdout
    assert "NODE" in table and "node1" in table and "TOTAL" in table
    csv = cluster.mgpu("usage", "--csv", "--user", "bob").stdout.splitlines()
    assert csv == ["user,gpu_hours,jobs,runs,avg_wait_s", "bob,0.0,1,1,", "total,0.0,1,1,"]
    days = json.loads(cluster.mgpu("usage", "--by", "day", "--json").stdout)["rows"]
    assert days[-1]["key"] == datetime.now(UTC).strftime("%Y-%m-%d")
    assert days[-1]["jobs"] == 2
    future = cluster.mgpu("usage", "--since", "2099-01-01", "--until", "2099-02-01",
                          "--json").stdout
    assert json.loads(future)["total"]["jobs"] == 0
    bad_cli = cluster.mgpu("usage", "--json", "--csv", check=False)
    assert bad_cli.returncode != 0 and "one of --json and --csv" in bad_cli.stderr
