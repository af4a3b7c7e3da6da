"""Hardening of the node side (issue 9): a dead keeper, a stopping agent, whose jobs a node
runs, and bounded memory and disk for output and input. Every test runs a real cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Cluster, wait_until
from mgpu.core.errors import ConfigError
from mgpu.core.scheduler import JobSnapshot, NodeSnapshot, Placement, schedule
from mgpu.node.users import own_user, served_users

MIB = 1024 * 1024


def _alive(proc: psutil.Process) -> bool:
    """Still running, and the very process it was (pids are soon reused here)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _health(cluster: Cluster, node_id: str = "node1") -> dict[str, Any]:
    """The agent's /health (its port is in DATA/node.json)."""
    info = json.loads((cluster.tmp / node_id / "node.json").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{info['port']}/health", timeout=5) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def _keeper(cluster: Cluster, node_id: str = "node1") -> psutil.Process:
    """The keeper process of the node's data dir."""
    data_dir = str(cluster.tmp / node_id)
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "mgpu.node.keeper" in cmd and cmd[-1] == data_dir and _alive(proc):
            return proc
    raise LookupError(f"no keeper for {data_dir}")


def _pid_of(path: Path) -> psutil.Process:
    """The process whose pid a running job wrote to ``path``."""
    return psutil.Process(int(wait_until(lambda: path.read_text().strip(), ignore=(OSError,))))


def _pid_of_new(path: Path, old: int) -> int:
    return int(wait_until(lambda: (t := path.read_text().strip()) and int(t) != old and t,
                          ignore=(OSError, ValueError)))


def _node(cluster: Cluster, node_id: str = "node1") -> dict[str, Any]:
    nodes: list[dict[str, Any]] = json.loads(cluster.mgpu("nodes", "--json").stdout)
    return next(n for n in nodes if n["node_id"] == node_id)


# ---------------------------------------------------------------- 9: a stopping agent


def test_sigterm_to_the_agent_leaves_its_job_to_the_next_agent(cluster: Cluster) -> None:
    gate, pid_file = cluster.tmp / "gate", cluster.tmp / "job.pid"
    job_id = cluster.submit(
        f"echo $$ > {pid_file}; while [ ! -e {gate} ]; do sleep 0.01; done; exit 7")
    cluster.wait_job(job_id, ("running",))
    pid = _pid_of(pid_file)
    cluster.kill_node("node1", signal.SIGTERM)
    assert _alive(pid), "the agent's SIGTERM killed its job"
    cluster.restart_node("node1")  # within the fence time: it re-adopts the job
    gate.touch()
    job = cluster.wait_job(job_id)
    assert (job["state"], job["exit_code"], job["requeues"]) == ("failed", 7, 0), job


def test_kill_jobs_on_exit_ends_the_jobs_with_the_agent(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0)
    cluster.add_node("node1", 1, "--kill-jobs-on-exit")
    pid_file = cluster.tmp / "job.pid"
    job_id = cluster.submit(f"echo $$ > {pid_file}; exec sleep 600")
    cluster.wait_job(job_id, ("running",))
    pid = _pid_of(pid_file)
    cluster.kill_node("node1", signal.SIGTERM)
    assert not _alive(pid)
    # The next agent has no such job: the master requeues it, as for a lost node.
    cluster.restart_node("node1")
    wait_until(lambda: cluster.job(job_id)["requeues"] == 1, message="the job to be requeued")
    assert _pid_of_new(pid_file, pid.pid) != pid.pid


# ---------------------------------------------------------------- 2: a keeper that dies


def test_a_dead_keepers_job_is_killed_before_its_end_and_a_new_keeper_runs_jobs(
        cluster: Cluster) -> None:
    pid_file = cluster.tmp / "job.pid"
    # A main process and a child in its own session: both must be gone when the end is.
    job_id = cluster.submit(f"setsid sleep 600 & echo $$ $! > {pid_file}; wait")
    cluster.wait_job(job_id, ("running",))
    def both() -> list[str]:
        words = pid_file.read_text().split()
        return words if len(words) == 2 else []

    pids = [psutil.Process(int(p)) for p in wait_until(both, ignore=(OSError,))]
    keeper = _keeper(cluster)
    keeper.kill()
    job = cluster.wait_job(job_id)
    alive = [p.pid for p in pids if _alive(p)]  # right after the master heard of the end
    assert not alive, f"job {job_id} was reported {job['state']} while {alive} still ran"
    assert job["state"] == "node_fail" and "keeper died" in job["reason"], job
    assert job["end_cause"] == "keeper_died", job
    new = wait_until(lambda: _keeper(cluster), ignore=(LookupError,))
    assert new.pid != keeper.pid
    done = cluster.wait_job(cluster.submit("echo after"))
    assert (done["state"], done["node"]) == ("completed", "node1")
    assert cluster.mgpu("logs", str(done["id"])).stdout == "after\n"


def test_a_new_agent_kills_what_a_keeper_that_died_without_an_agent_left(
        cluster: Cluster) -> None:
    pid_file = cluster.tmp / "job.pid"
    job_id = cluster.submit(f"echo $$ >> {pid_file}; exec sleep 600")
    cluster.wait_job(job_id, ("running",))
    pid = _pid_of(pid_file)
    keeper = _keeper(cluster)
    cluster.kill_node("node1", signal.SIGKILL)
    keeper.kill()
    keeper.wait(10)
    assert _alive(pid)  # unwatched now
    cluster.restart_node("node1")
    assert not _alive(pid), "the new agent left the dead keeper's job running"
    job = cluster.wait_job(job_id, ("running",))  # requeued, and started again
    assert job["requeues"] == 1, job


def test_a_node_without_a_keeper_is_degraded_and_gets_no_jobs(cluster: Cluster) -> None:
    sock = cluster.tmp / "node1" / "run" / "keeper.sock"
    keeper = _keeper(cluster)
    # No new keeper can start while a directory takes its socket's name; the one that
    # runs keeps the socket it has bound.
    sock.rename(sock.with_name("keeper.sock.moved"))
    sock.mkdir()
    keeper.kill()
    node = wait_until(lambda: (n := _node(cluster))["state"] == "degraded" and n,
                      message="node1 to be degraded")
    assert "keeper" in node["reason"], node
    table = cluster.mgpu("nodes").stdout
    assert "degraded" in table and "keeper" in table, table
    job_id = cluster.submit("echo later")
    pending = cluster.job(job_id)
    assert pending["state"] == "pending" and "degraded" in pending["reason"], pending
    sock.rmdir()  # the next attempt starts a keeper
    job = cluster.wait_job(job_id)
    assert job["state"] == "completed", job
    assert _node(cluster)["state"] == "up"


# ---------------------------------------------------------------- 4: whose jobs a node runs


def test_who_a_node_serves_by_default() -> None:
    assert served_users(None, False, 1000, "alice") == ["alice"]
    assert served_users(None, True, 1000, "alice") is None
    assert served_users(None, False, 0, "root") is None
    assert served_users("bob, carol", False, 0, "root") == ["bob", "carol"]
    assert served_users("alice", False, 1000, "alice") == ["alice"]
    with pytest.raises(ConfigError, match="MGPU_ALLOW_OTHER_USERS"):
        served_users("bob", False, 1000, "alice")


def test_the_scheduler_places_a_job_only_where_its_user_is_served() -> None:
    nodes = [NodeSnapshot("alices", 4, (0, 1, 2, 3), frozenset({"alice"})),
             NodeSnapshot("any", 4, (0, 1))]
    pending = [JobSnapshot(1, 2, "bob"), JobSnapshot(2, 1, "alice"), JobSnapshot(3, 4, "bob"),
               JobSnapshot(4, 2, "alice")]
    # bob's first job fits only on "any"; his 4-GPU job reserves "any" (not "alices",
    # which would never take it), so alice's last job still runs on hers.
    assert schedule(pending, nodes, 0.0) == [
        Placement(1, "any", (0, 1)), Placement(2, "alices", (0,)),
        Placement(4, "alices", (1, 2))]


def test_an_agent_that_is_not_root_serves_its_own_user(make_cluster: Any) -> None:
    """Root agents run jobs as their owners, so they serve everyone; any other agent
    serves its own user only unless allow_other_users."""
    me = own_user()
    cluster = make_cluster(nodes=0)
    cluster.add_node("node1", 1, env={"MGPU_ALLOW_OTHER_USERS": "0"})  # (the tests' is 1)
    cluster.add_node("node2", 1, env={"MGPU_ALLOW_OTHER_USERS": "1"})
    assert _node(cluster, "node1")["users"] == (None if os.geteuid() == 0 else [me])
    assert _node(cluster, "node2")["users"] is None


def test_a_node_runs_only_the_users_it_serves(make_cluster: Any) -> None:
    """A node limited to one user (here the tests' own, so that its jobs run whether the
    tests run as root or not; an agent that is not root is so by default) is not given
    another user's job, which waits with the reason."""
    me = own_user()
    cluster = make_cluster(nodes=0)
    cluster.add_node("node1", 1, env={"MGPU_NODE_USERS": me})
    assert _node(cluster)["users"] == [me]
    row = cluster.mgpu("nodes").stdout.splitlines()[1].split()
    assert row[6:8] == ["only", me], row  # (after NODE STATE GPUS USED FREE TYPE)
    reply = cluster.api("/api/v1/jobs", {"jobs": [{
        "command": "true", "gpus": 1, "cwd": "/", "env": {"PATH": os.environ["PATH"]},
    }]}, token=cluster.user_token("mallory"))
    theirs = reply["job_ids"][0]
    mine = cluster.submit("echo mine")
    assert cluster.wait_job(mine)["state"] == "completed"
    job = cluster.job(theirs)
    assert job["state"] == "pending", job
    assert "no node runs jobs of mallory" in job["reason"] and "node1" in job["reason"], job
    cluster.mgpu("cancel", str(theirs))


# ---------------------------------------------------------------- 6: output and disks


def test_a_jobs_spool_is_deleted_once_the_master_has_its_end(cluster: Cluster) -> None:
    job_id = cluster.submit("echo hello")
    assert cluster.wait_job(job_id)["state"] == "completed"
    spool = cluster.tmp / "node1" / "spool" / f"{job_id}.0.out"
    exit_file = cluster.tmp / "node1" / "jobs" / f"{job_id}.0.exit"
    wait_until(lambda: not spool.exists() and not exit_file.exists(),
               message=f"{spool} to be deleted")
    assert cluster.mgpu("logs", str(job_id)).stdout == "hello\n"  # the master's copy


def test_fast_output_waits_in_the_spool_not_in_the_agents_memory(cluster: Cluster) -> None:
    size = 50 * MIB
    gate = cluster.tmp / "gate"
    job_id = cluster.submit(
        f"while [ ! -e {gate} ]; do sleep 0.01; done; head -c {size} /dev/zero")
    cluster.wait_job(job_id, ("running",))
    agent = psutil.Process(cluster.nodes["node1"].pid)
    before = agent.memory_info().rss
    assert cluster.master is not None
    master = cluster.master.pid
    os.kill(master, signal.SIGSTOP)  # the link takes nothing: output must wait somewhere
    try:
        gate.touch()

        def agent_knows_it_all() -> bool:
            h = _health(cluster)
            grew = agent.memory_info().rss - before
            return grew > 2 * size // 3 or h.get("spooled_output", 0) >= size
        wait_until(agent_knows_it_all, 30, interval=0.05, message=lambda: (
            f"the agent to hold or know all output: {_health(cluster)}, grew "
            f"{(agent.memory_info().rss - before) / MIB:.0f} MiB"))
        grew = agent.memory_info().rss - before
        queued = _health(cluster).get("queued_output")
    finally:
        os.kill(master, signal.SIGCONT)
    assert grew < 24 * MIB, f"the agent grew by {grew / MIB:.0f} MiB (queued: {queued})"
    assert cluster.wait_job(job_id, timeout=60)["state"] == "completed"
    logs = subprocess.run(
        f"{sys.executable} -m mgpu --master {cluster.master_addr} logs {job_id} | wc -c",
        shell=True, capture_output=True, text=True, env=cluster.env, check=True)
    assert int(logs.stdout) == size


# ---------------------------------------------------------------- 5: a job's stdin


def test_stdin_to_a_job_that_does_not_read_blocks_the_writer(cluster: Cluster) -> None:
    job_id = cluster.submit("sleep 600", "--stdin")
    cluster.wait_job(job_id, ("running",))
    assert cluster.master is not None
    procs = {"master": psutil.Process(cluster.master.pid),
             "agent": psutil.Process(cluster.nodes["node1"].pid),
             "keeper": _keeper(cluster)}
    before = {k: p.memory_info().rss for k, p in procs.items()}
    attach = subprocess.Popen(
        [sys.executable, "-m", "mgpu", "--master", cluster.master_addr, "attach", str(job_id)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=cluster.env, start_new_session=True)
    assert attach.stdin is not None
    written = [0]
    chunk = b"y\n" * 32768

    def feed() -> None:
        try:
            while written[0] < 64 * MIB:
                attach.stdin.write(chunk)  # type: ignore[union-attr]
                attach.stdin.flush()  # type: ignore[union-attr]
                written[0] += len(chunk)
        except (BrokenPipeError, ValueError, OSError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        def stalled() -> bool:
            """No progress in a second (the wait is the join's: it is the writer's)."""
            seen = written[0]
            feeder.join(1.0)
            return seen > 0 and written[0] == seen

        wait_until(stalled, 60, interval=0)
        grew = {k: p.memory_info().rss - before[k] for k, p in procs.items()}
        assert written[0] < 32 * MIB, f"the client wrote {written[0] / MIB:.0f} MiB unblocked"
        for name, delta in grew.items():
            assert delta < 16 * MIB, f"the {name} grew by {delta / MIB:.0f} MiB"
    finally:
        cluster.mgpu("cancel", str(job_id))
        attach.kill()
        attach.wait()
        feeder.join(5)
        with contextlib.suppress(OSError):
            attach.stdin.close()


# ---------------------------------------------------------------- the fixtures themselves


def test_teardown_stops_a_keeper_and_jobs_no_agent_started(cluster: Cluster) -> None:
    """After a restart the agent's keeper is no child of it, and a job submitted with an
    environment of its own does not carry the cluster's marker: teardown still ends both."""
    cluster.restart_node("node1")  # the old agent stops; the keeper stays, the new one finds it
    pid_file = cluster.tmp / "job.pid"
    reply = cluster.api("/api/v1/jobs", {"jobs": [{
        "command": f"echo $$ > {pid_file}; exec sleep 600", "gpus": 1, "cwd": "/",
        "env": {"PATH": os.environ["PATH"]}}]})
    cluster.wait_job(reply["job_ids"][0], ("running",))
    pid = _pid_of(pid_file)
    keeper = _keeper(cluster)
    assert keeper.ppid() != cluster.nodes["node1"].pid
    assert cluster.close() == []
    assert not _alive(pid) and not _alive(keeper)


def test_the_node_command_takes_whose_jobs_it_runs(cluster: Cluster) -> None:
    cluster.add_node("node2", 1, "--users", "alice,bob")
    assert _node(cluster, "node2")["users"] == ["alice", "bob"]
    assert "only alice" in cluster.mgpu("nodes").stdout
