"""The master's hardening (issue 9): bounded query parameters, node credentials, secrets at
rest and job retention, a full master disk. Each test runs a real master (and real agents
where nodes matter) and fails on the code before its fix."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conftest import Cluster, wait_until
from mgpu.core import messages as m
from mgpu.utils.gpu import fake_gpus

# ---------------------------------------------------------------- query parameters


@pytest.mark.cluster(nodes=0)
def test_every_numeric_query_parameter_is_bounded_and_named(cluster: Cluster) -> None:
    """A long digit string (``limit=000…01``, or 10**25) was a 500; now every numeric or
    switch parameter answers 400 naming itself and what it may be."""
    job = cluster.submit("true")
    long_one = "0" * 5000 + "1"
    cases = [
        ("/api/v1/events?limit=" + "0" * 5 + "1" + "0" * 19, "limit", "from 1 to 10000"),
        ("/api/v1/events?limit=" + long_one, "limit", "from 1 to 10000"),
        ("/api/v1/events?limit=0", "limit", "from 1 to 10000"),
        ("/api/v1/events?limit=-1", "limit", "from 1 to 10000"),
        (f"/api/v1/jobs/{job}/output?offset=" + "9" * 30, "offset", "from 0 to"),
        (f"/api/v1/jobs/{job}/output?offset=" + long_one, "offset", "from 0 to"),
        (f"/api/v1/jobs/{job}/output?follow=maybe", "follow", "1 or 0"),
        ("/api/v1/jobs?all=yes", "all", "1 or 0"),
        ("/api/v1/jobs?state=" + "pending," * 100, "state", "at most"),
        ("/api/v1/jobs?user=" + "u" * 1000, "user", "at most"),
    ]
    for path, name, allowed in cases:
        status, reply = cluster.status_of(path, token=cluster.token)
        assert status == 400, (path[:80], status, reply)
        assert reply["error"].startswith(name) and allowed in reply["error"], reply
    # In range, with leading zeros, still works.
    status, reply = cluster.status_of("/api/v1/events?limit=" + "0" * 10 + "7",
                                      token=cluster.token)
    assert status == 200 and len(reply["events"]) <= 7
    assert cluster.status_of("/api/v1/jobs?all=true", token=cluster.token)[0] == 200


# ---------------------------------------------------------------- node credentials


def _events(cluster: Cluster, action: str) -> list[dict[str, Any]]:
    return [e for e in cluster.api("/api/v1/events?limit=10000")["events"]
            if e["action"] == action]


def _agent(cluster: Cluster, name: str, node_id: str, data_dir: Path) -> Any:
    """Start a real agent named ``name`` that registers as ``node_id`` (not waited for)."""
    comp = cluster._spawn(name, [
        "node", "--node-id", node_id, "--master-host", "127.0.0.1", "--master-port",
        str(cluster.port), "--port", "0", "--fake-gpus", "1", "--data-dir", str(data_dir),
        "--join-token-file", str(cluster.join_token_file)], None)
    cluster.stopped.append(comp)  # torn down with the cluster
    return comp


async def _register(cluster: Cluster, node_id: str, credential: str | None) -> m.Registered:
    """Register as ``node_id`` with the join secret over a raw WebSocket; the reply."""
    secret = cluster.join_token_file.read_text().strip()
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"{cluster.url}/api/v1/node/ws", headers={"Authorization": f"Bearer {secret}"},
    ) as ws:
        await ws.send_bytes(m.node_encoder.encode(m.Register(
            node_id=node_id, gpus=fake_gpus(1), hostname="raw", credential=credential)))
        first = await ws.receive(timeout=10)
        reply = m.master_message_decoder.decode(first.data)
        assert isinstance(reply, m.Registered)
        return reply


@pytest.mark.cluster(nodes=1, gpus=1)
def test_the_join_secret_alone_cannot_take_over_a_live_node(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    """Before: a second agent registering as node1 replaced its link, and node1's job was
    requeued and given to the impostor. Now node1 has a credential of its own (0600 in its
    data dir); the impostor is refused and stops, the live node keeps its link and its job,
    and a second connection even with the right credential is refused: all audited."""
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo real; while [ ! -e {gate} ]; do sleep 0.05; done")
    cluster.wait_job(job_id, ("running",))
    kept = cluster.tmp / "node1" / "node.credential"
    assert kept.stat().st_mode & 0o777 == 0o600
    owner, credential = kept.read_text().split()
    assert owner == "node1" and len(credential) >= 43
    assert not any(credential in p.read_text(errors="replace")  # only its digest is saved
                   for p in cluster.master_dir.iterdir() if p.is_file())

    impostor = _agent(cluster, "impostor", "node1", tmp_path / "impostor")
    assert impostor.proc.wait(30) != 0, "the impostor must be refused and stop"
    impostor.expected_exit = True
    assert "node1 has its own credential" in impostor.log_path.read_text()

    second = asyncio.run(_register(cluster, "node1", credential))
    assert not second.accepted and second.retry and "already connected" in (second.error or "")

    job = cluster.job(job_id)
    assert (job["state"], job["node"], job["requeues"]) == ("running", "node1", 0), job
    assert "lost the master" not in cluster.nodes["node1"].log_path.read_text()
    gate.touch()
    assert cluster.wait_job(job_id)["state"] == "completed"
    assert cluster.mgpu("logs", str(job_id)).stdout == "real\n"
    refused = [e["detail"] for e in _events(cluster, "node.refused")]
    assert any("has its own credential" in d for d in refused), refused
    assert any("already connected" in d for d in refused), refused
    assert next(e["detail"] for e in _events(cluster, "node.credential")).startswith(
        "made the credential of node node1")


@pytest.mark.cluster(nodes=1, gpus=1)
def test_an_admin_resets_the_credential_of_a_node_that_lost_it(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    cluster.kill_node("node1")
    fresh = tmp_path / "new-disk"  # node1's machine, its data dir lost
    lost = _agent(cluster, "node1-again", "node1", fresh)
    assert lost.proc.wait(30) != 0
    lost.expected_exit = True
    assert "mgpu nodes --reset-credential node1" in lost.log_path.read_text()

    path = "/api/v1/nodes/node1/credential"
    user = cluster.user_token("bob")
    assert _delete(cluster, path, user)[0] == 403  # admins only
    assert _delete(cluster, "/api/v1/nodes/nosuch/credential", cluster.token)[0] == 404
    out = cluster.mgpu("nodes", "--reset-credential", "node1").stdout
    assert out.startswith("node1: credential forgotten")
    assert _delete(cluster, path, cluster.token)[0] == 404  # (none now)
    assert [e["user"] for e in _events(cluster, "node.credential.reset")] != []

    again = _agent(cluster, "node1-third", "node1", fresh)
    cluster.wait_nodes_up(["node1"])
    wait_until(lambda: (fresh / "node.credential").exists(), 10)  # (kept once received)
    assert (fresh / "node.credential").read_text().split()[0] == "node1"
    assert cluster.wait_job(cluster.submit("true"))["state"] == "completed"
    assert again.running()


def _delete(cluster: Cluster, path: str, token: str) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(cluster.url + path, method="DELETE",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


# ---------------------------------------------------------------- secrets and retention


def _db_rows(cluster: Cluster, query: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"file:{cluster.master_dir / 'mgpu.db'}?mode=ro", uri=True)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


def _db_bytes(cluster: Cluster) -> bytes:
    return b"".join(p.read_bytes() for p in cluster.master_dir.glob("mgpu.db*"))


@pytest.mark.cluster(nodes=1, gpus=1)
def test_mgpu_secrets_are_neither_saved_nor_passed_to_jobs(cluster: Cluster) -> None:
    """Before: ``--export=ALL`` put MGPU_TOKEN and MGPU_JOIN_TOKEN into the job's
    environment and into mgpu.db for good. The master strips them whatever a client sends,
    and scrubs a database written before."""
    import dataclasses

    from mgpu.core.config import SECTIONS
    from mgpu.utils.secretenv import is_secret
    declared = {f.metadata["env"] for cls in SECTIONS for f in dataclasses.fields(cls)
                if f.metadata.get("secret")}
    assert declared and all(map(is_secret, declared | {"MGPU_TOKEN"}))
    join = cluster.join_token_file.read_text().strip()
    user = cluster.token  # (jobs run as its user: one that exists here)
    env = {"MGPU_TOKEN": user, "MGPU_JOIN_TOKEN": join, "MGPU_OTHER_SECRET": join,
           "KEEP_ME": "yes", "MGPU_TOKEN_FILE": "/kept/a/path"}
    by_cli = int(cluster.mgpu("submit", "--parsable", "--export=ALL", "env",
                              env=env).stdout.split(";")[0])
    status, reply = cluster.status_of("/api/v1/jobs", {"jobs": [
        {"command": "env", "gpus": 1, "env": env}]}, token=user)
    assert status == 201, reply
    [by_api] = reply["job_ids"]
    for job_id in (by_cli, by_api):
        assert cluster.wait_job(job_id)["state"] == "completed"
        out = cluster.mgpu("logs", str(job_id)).stdout
        assert "KEEP_ME=yes" in out
        assert "MGPU_TOKEN=" not in out and "MGPU_JOIN_TOKEN=" not in out
        assert user not in out and join not in out
    [(saved,)] = _db_rows(cluster, f"SELECT env FROM jobs WHERE id={by_api}")
    assert json.loads(saved) == {"KEEP_ME": "yes", "MGPU_TOKEN_FILE": "/kept/a/path"}
    assert user.encode() not in _db_bytes(cluster) and join.encode() not in _db_bytes(cluster)

    # A database written by an older master: scrubbed at start-up.
    cluster.kill_master(signal.SIGTERM)
    con = sqlite3.connect(cluster.master_dir / "mgpu.db")
    with con:
        con.execute("UPDATE jobs SET env=? WHERE id=?",
                    (json.dumps({"MGPU_TOKEN": "old-secret", "A": "1"}), by_cli))
    con.close()
    cluster.start_master()
    [(saved,)] = _db_rows(cluster, f"SELECT env FROM jobs WHERE id={by_cli}")
    assert json.loads(saved) == {"A": "1"}


RETAIN_DAYS = 4 / 86400  # four seconds


@pytest.mark.cluster(nodes=1, gpus=2)
def test_ended_jobs_are_pruned_after_the_retention_keeping_their_accounting(
        cluster: Cluster, tmp_path: Path) -> None:
    """With ``job_retention_days``, an ended job leaves memory, the jobs table and its output
    after that long; its accounting row stays, and asking for it says it was pruned."""
    cluster.kill_master(signal.SIGTERM)
    cluster.start_master(env={"MGPU_JOB_RETENTION_DAYS": f"{RETAIN_DAYS:.10f}"})
    cluster.wait_nodes_up()
    gate = tmp_path / "gate"
    running = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done")
    done = cluster.submit("echo bye; exit 3")
    ended = cluster.wait_job(done)
    assert (ended["state"], ended["exit_code"]) == ("failed", 3)
    assert list((cluster.master_dir / "output").glob(f"{done}.*"))
    wait_until(lambda: cluster.status_of(f"/api/v1/jobs/{done}", token=cluster.token)[0]
               == 404, 30, message="the ended job to be pruned")
    _status, reply = cluster.status_of(f"/api/v1/jobs/{done}", token=cluster.token)
    assert "was pruned" in reply["error"] and "job_retention_days" in reply["error"]
    shown = cluster.mgpu("show", str(done), check=False)
    assert shown.returncode != 0 and "was pruned" in shown.stderr
    listed = cluster.mgpu("queue", "--all", "--json").stdout
    assert f'"id": {done},' not in listed.replace('"id":', '"id": ').replace("  ", " ")
    assert not _db_rows(cluster, f"SELECT id FROM jobs WHERE id={done}")
    assert not list((cluster.master_dir / "output").glob(f"{done}.*"))
    [row] = _db_rows(cluster, "SELECT job_id, user, gpus, node, started, ended, state, "
                     f"exit_code FROM runs WHERE job_id={done}")
    assert row[:4] == (done, ended["user"], 1, "node1") and row[6:] == ("failed", 3)
    assert row[4] is not None and row[5] is not None and row[4] <= row[5]
    assert cluster.job(running)["state"] == "running"  # not ended: kept
    gate.touch()
    cluster.wait_job(running)


# ---------------------------------------------------------------- a full master disk


def _fill(db: Path, pages: int) -> None:
    """Fill the database ``db`` up to ``pages`` pages, as a full disk would leave it:
    audit rows by "filler" until SQLite answers "database or disk is full"."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute(f"PRAGMA max_page_count={pages}")
        for size in (2000, 200, 20, 1):
            with pytest.raises(sqlite3.OperationalError, match="full"):
                while True:
                    con.execute("INSERT INTO audit(ts, user, action, detail) VALUES "
                                "(strftime('%s','now'), 'filler', 'fill', ?)", ("x" * size,))
    finally:
        con.close()


def _saved_state(cluster: Cluster, job_id: int) -> str:
    [(state,)] = _db_rows(cluster, f"SELECT state FROM jobs WHERE id={job_id}")
    return str(state)


def _capped_master(cluster: Cluster) -> int:
    """Restart the master with its database capped at its size and packed full; the cap."""
    cluster.kill_master(signal.SIGTERM)
    db = cluster.master_dir / "mgpu.db"
    con = sqlite3.connect(db)
    (pages,) = con.execute("PRAGMA page_count").fetchone()
    con.close()
    pages += 4
    _fill(db, pages)
    cluster.start_master(env={"MGPU_DB_MAX_PAGES": str(pages)})
    cluster.wait_nodes_up()
    return int(pages)


def _link_kept(cluster: Cluster, since: int) -> None:
    """Node1 has not lost its link to the master since its log was ``since`` long."""
    assert "lost the master" not in cluster.nodes["node1"].log_path.read_text()[since:]
    assert cluster.master is not None
    assert "node node1 disconnected" not in cluster.master.log_path.read_text()


@pytest.mark.cluster(nodes=1, gpus=1)
def test_a_full_master_disk_refuses_submits_and_still_records_job_ends(
        cluster: Cluster, tmp_path: Path) -> None:
    """A full disk, for real and without root: the database is capped (``db_max_pages``,
    SQLite's ``max_page_count``) and packed full, so writes that need room fail with
    SQLite's own "database or disk is full". Before: the error was masked ("cannot rollback
    - no transaction is active"). Now: a submit gets a 507 that says the disk is full and
    to free space, the running job's end is still recorded, the node keeps its link."""
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; "
                            "echo after")
    cluster.wait_job(job_id, ("running",))
    _capped_master(cluster)
    seen = len(cluster.nodes["node1"].log_path.read_text())  # (it lost the old master)
    status, reply = cluster.status_of("/api/v1/jobs", {"jobs": [
        {"command": "true", "gpus": 1, "env": {"PAD": "x" * 100_000}}]}, token=cluster.token)
    assert status == 507, reply
    assert "disk is full" in reply["error"] and "free space" in reply["error"], reply
    gate.touch()
    wait_until(lambda: _saved_state(cluster, job_id) == "completed", 30,
               message="the job's end to be saved on the full disk")
    assert cluster.mgpu("logs", str(job_id)).stdout == "before\nafter\n"
    _link_kept(cluster, seen)


@pytest.mark.cluster(nodes=1, gpus=1)
def test_job_ends_that_cannot_be_saved_are_held_and_saved_later(cluster: Cluster,
                                                                tmp_path: Path) -> None:
    """When even a job's end cannot be saved (here: another process holds the database's
    write lock, the surest way to make every write fail), the master holds the end, does
    not acknowledge it, refuses submits, keeps the node's link, and saves the end as soon
    as it can. Before: the end was dropped, the database said "running" for good."""
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done; echo done")
    cluster.wait_job(job_id, ("running",))
    seen = len(cluster.nodes["node1"].log_path.read_text())
    lock = sqlite3.connect(cluster.master_dir / "mgpu.db", isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # every write of the master now fails (locked)
        gate.touch()
        wait_until(lambda: cluster.job(job_id)["state"] == "completed", 30)
        assert _saved_state(cluster, job_id) == "running"  # held: not saved, not acked
        status, reply = cluster.status_of("/api/v1/jobs", {"jobs": [
            {"command": "true", "gpus": 1}]}, token=cluster.token, timeout=60)
        assert status == 507, reply
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    wait_until(lambda: _saved_state(cluster, job_id) == "completed", 30,
               message="the held end to be saved once it can be")
    assert cluster.mgpu("logs", str(job_id)).stdout == "done\n"
    assert cluster.wait_job(cluster.submit("echo again"))["state"] == "completed"
    _link_kept(cluster, seen)


@pytest.mark.cluster(nodes=1, gpus=1)
def test_output_that_does_not_fit_is_dropped_without_cutting_the_node_off(
        cluster: Cluster) -> None:
    """The master's copy of a job's output cannot grow (its files are limited to 1 MiB by
    ``ulimit -f``: EFBIG, as ENOSPC on a full disk, for a normal user). Before: the error
    cut the node's link, which reconnected and resent the same output for ever, and the
    job's end was never recorded. Now: what does not fit is dropped, the end is recorded,
    the link stays."""
    cluster.kill_master(signal.SIGTERM)
    spawn = cluster._spawn
    limit = ("bash", "-c", 'ulimit -f 1024 && exec "$@"', "ulimit")
    cluster._spawn = lambda name, args, env, wrap=(): spawn(  # type: ignore[method-assign]
        name, args, env, limit)
    try:
        cluster.start_master()
    finally:
        cluster._spawn = spawn  # type: ignore[method-assign]
    cluster.wait_nodes_up()
    seen = len(cluster.nodes["node1"].log_path.read_text())
    job_id = cluster.submit("head -c 3000000 /dev/zero | tr '\\0' x; echo; echo end")
    job = cluster.wait_job(job_id, timeout=60)
    assert (job["state"], job["exit_code"]) == ("completed", 0), job
    kept = cluster.mgpu("logs", str(job_id)).stdout
    assert 500_000 < len(kept) < 1_100_000 and not kept.endswith("end\n")
    assert cluster.master is not None
    assert "cannot keep its output" in cluster.master.log_path.read_text()
    _link_kept(cluster, seen)
    assert cluster.wait_job(cluster.submit("echo small"))["state"] == "completed"
