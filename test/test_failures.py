"""Failures and time limits, end to end with real processes: nothing lost, nothing run twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import MARKER, Cluster, wait_until
from mgpu.client.client import SimpleClient
from mgpu.core.errors import ConnectionFailed, MgpuError

PY = sys.executable


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def state_of(cluster: Cluster, job_id: int) -> dict[str, Any]:
    return cluster.job(job_id)


# ---------------------------------------------------------------------- time limits


def test_time_limit_kills_the_whole_tree(make_cluster: Any, tmp_path: Path) -> None:
    """SIGTERM-ignoring main process, a grandchild and an escapee in its own session all die."""
    cluster = make_cluster(nodes=0)
    cluster.add_node("node1", 1, env={"MGPU_KILL_GRACE": "0.5"})
    pids = tmp_path / "pids"
    escapee = f"{PY} -c 'import os, time; os.setsid(); time.sleep(300)'"
    script = (
        f"trap '' TERM; sleep 300 & echo $! >> {pids}; "
        f"{escapee} & echo $! >> {pids}; echo $$ >> {pids}; "
        "while true; do sleep 0.05; done"
    )
    job_id = cluster.submit(script, "-t", "0:01")
    job = cluster.wait_job(job_id, ("timeout",), timeout=30)
    assert job["reason"] == "time limit of 0:00:01 reached"
    assert job["exit_code"] == 128 + signal.SIGKILL  # it ignored SIGTERM
    assert job["time_limit"] == 1
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 3
    wait_until(lambda: not any(alive(p) for p in recorded), 10,
               message=lambda: f"still alive: {[p for p in recorded if alive(p)]}")


def test_time_limit_default_and_maximum(make_cluster: Any) -> None:
    cluster = make_cluster(
        nodes=1, env={"MGPU_DEFAULT_TIME_LIMIT": "30", "MGPU_MAX_TIME_LIMIT": "1:00:00"})
    default = cluster.submit("true")
    assert cluster.wait_job(default, ("completed",))["time_limit"] == 30 * 60
    over = cluster.mgpu("submit", "-t", "2:00:00", "true", check=False)
    assert over.returncode != 0
    assert "maximum of 1:00:00" in over.stderr and "Traceback" not in over.stderr
    unlimited = cluster.mgpu("submit", "-t", "UNLIMITED", "true", check=False)
    assert unlimited.returncode != 0 and "maximum" in unlimited.stderr
    bad = cluster.mgpu("submit", "-t", "1:xx", "true", check=False)
    assert bad.returncode == 2 and "D-HH:MM:SS" in bad.stderr
    within = cluster.submit("true", "-t", "0-01:00")
    assert cluster.wait_job(within, ("completed",))["time_limit"] == 3600


# ---------------------------------------------------------------------- lost and hung nodes


def test_stopped_agent_is_fenced_before_its_job_runs_again(make_cluster: Any,
                                                            tmp_path: Path) -> None:
    """SIGSTOP an agent past the node timeout: its job is dead before the requeued copy runs."""
    cluster = make_cluster(nodes=0, env={"MGPU_NODE_TIMEOUT": "2"})
    cluster.add_node("node1", 1)
    cluster.add_node("node2", 2)  # best fit puts a 1-GPU job on node1 first
    runs = tmp_path / "runs"
    script = (
        f'if [ -s {runs} ]; then read node pid < {runs}; '
        f'kill -0 "$pid" 2>/dev/null && echo ALIVE >> {runs}.twice; fi; '
        f'echo "$MGPU_NODE_ID $$" >> {runs}; exec sleep 300'
    )
    job_id = cluster.submit(script)
    wait_until(lambda: runs.exists() and runs.read_text().startswith("node1"), 20)
    first_pid = int(runs.read_text().split()[1])
    cluster.kill_node("node1", signal.SIGSTOP, wait=False)
    try:
        wait_until(lambda: len(runs.read_text().splitlines()) == 2, 30,
                   message="the job to be requeued and run on node2")
        assert runs.read_text().splitlines()[1].startswith("node2")
        assert not (tmp_path / "runs.twice").exists(), "the first copy was still running"
        assert not alive(first_pid)
        job = cluster.job(job_id)
        assert job["state"] == "running" and job["node"] == "node2" and job["requeues"] == 1
        nodes = {n["node_id"]: n for n in cluster.api("/api/v1/nodes")["nodes"]}
        assert nodes["node1"]["state"] == "down" and nodes["node1"]["down_since"]
    finally:
        cluster.nodes["node1"].signal_group(signal.SIGCONT)
    # The stopped node returns: it takes new work again and never restarts the old job.
    cluster.wait_nodes_up(["node1"])
    assert cluster.job(job_id)["node"] == "node2"
    cluster.mgpu("cancel", str(job_id))


def test_agent_killed_and_restarted_within_fence_keeps_its_jobs(make_cluster: Any,
                                                                tmp_path: Path) -> None:
    cluster = make_cluster(nodes=1)
    gate = tmp_path / "gate"
    job_id = cluster.submit(
        f"echo start; while [ ! -e {gate} ]; do sleep 0.02; done; echo end; exit 5")
    cluster.wait_job(job_id, ("running",))
    wait_until(lambda: "start" in cluster.mgpu("logs", str(job_id)).stdout, 10)
    cluster.kill_node("node1", signal.SIGKILL)
    cluster.restart_node("node1")
    assert cluster.job(job_id)["state"] == "running"
    gate.touch()
    job = cluster.wait_job(job_id, ("failed",))
    assert job["exit_code"] == 5 and job["requeues"] == 0
    assert cluster.mgpu("logs", str(job_id)).stdout == "start\nend\n"


def test_fence_on_disconnect_kills_jobs_when_the_master_is_gone(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0)
    cluster.add_node("node1", 2, env={"MGPU_FENCE_ON_DISCONNECT": "1",
                                      "MGPU_FENCE_TIMEOUT": "0.5"})
    job_id = cluster.submit("sleep 300")
    cluster.wait_job(job_id, ("running",))

    def job_procs() -> list[psutil.Process]:
        return [p for p in psutil.process_iter(["environ"])  # (this cluster's job only)
                if (env := p.info["environ"] or {}).get("MGPU_JOB_ID") == str(job_id)
                and env.get(MARKER) == str(cluster.tmp)]

    procs = wait_until(job_procs, 10, message="the job's processes")
    cluster.kill_master(signal.SIGKILL)
    wait_until(lambda: not any(alive(p.pid) for p in procs), 15,
               message="the node to kill its job after losing the master")
    cluster.start_master()
    job = cluster.wait_job(job_id, ("pending", "running", "node_fail"), timeout=20)
    assert job["state"] in ("pending", "running", "node_fail")


def test_master_outage_keeps_jobs_by_default(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=1)
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo a; while [ ! -e {gate} ]; do sleep 0.02; done; echo b")
    cluster.wait_job(job_id, ("running",))
    cluster.kill_master(signal.SIGKILL)
    gate.touch()  # the job ends while the master is away
    cluster.start_master()
    job = cluster.wait_job(job_id, ("completed",), timeout=20)
    assert job["exit_code"] == 0
    assert cluster.mgpu("logs", str(job_id)).stdout == "a\nb\n"


# ---------------------------------------------------------------------- the master


def test_kill9_of_master_during_a_submit_storm_loses_no_acknowledged_job(
    make_cluster: Any,
) -> None:
    """4 clients submit 2,000 jobs; the master is killed mid-way and restarted."""
    cluster = make_cluster(nodes=0)
    acked: list[list[int]] = [[] for _ in range(4)]
    failures = [0] * 4
    killed = threading.Event()
    restarted = threading.Event()

    def client(i: int) -> None:
        sc = SimpleClient("127.0.0.1", cluster.port, timeout=10, token=cluster.token)
        done = 0
        while done < 500:
            try:
                acked[i].append(sc.submit_job(gpus=1, cmd=f"echo {i}-{done}", env={}))
                done += 1
            except (ConnectionFailed, MgpuError):
                failures[i] += 1
                restarted.wait(30)
        sc.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(map(len, acked)) >= 600, 60)
    cluster.kill_master(signal.SIGKILL)
    killed.set()
    cluster.start_master()
    restarted.set()
    for t in threads:
        t.join(120)
    ids = [i for per in acked for i in per]
    assert len(ids) == 2000 and len(set(ids)) == 2000, "an id was handed out twice"
    listed = cluster.api("/api/v1/jobs?all=1")["jobs"]
    by_id = {j["id"]: j for j in listed}
    missing = [i for i in ids if i not in by_id]
    assert not missing, f"acknowledged jobs lost: {missing[:10]}"
    assert len(by_id) == len(listed), "a job is listed twice"
    for per_client, per in enumerate(acked):
        commands = [by_id[i]["command"] for i in per]
        assert commands == [f"echo {per_client}-{n}" for n in range(500)]
    assert sum(failures) >= 1, "the kill did not interrupt any client"


def test_full_disk_fails_submissions_clearly_and_keeps_accepted_jobs(
    tmp_path: Path,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    data = tmp_path / "small"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    cluster = Cluster(tmp_path / "c")
    cluster.master_dir = data / "master"
    try:
        cluster.start_master()
        accepted = [cluster.submit("true") for _ in range(20)]
        filler = data / "filler"
        with open(filler, "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * (64 * 1024))
                f.flush()
        # The disk is full now: a big submission cannot be saved.
        big_env = {f"V{i}": "x" * 1000 for i in range(200)}
        failed = cluster.mgpu("submit", *[f"--env={k}={v}" for k, v in big_env.items()],
                              "true", check=False)
        assert failed.returncode != 0
        assert "full" in failed.stderr and "Traceback" not in failed.stderr
        listed = {j["id"] for j in cluster.api("/api/v1/jobs?all=1")["jobs"]}
        assert set(accepted) <= listed
        filler.unlink()
        after = cluster.submit("true")
        assert after > max(accepted)
        cluster.restart_master(wait_nodes=False)
        listed = {j["id"] for j in cluster.api("/api/v1/jobs?all=1")["jobs"]}
        assert {*accepted, after} <= listed
    finally:
        problems = cluster.close()
        subprocess.run(["umount", "-l", str(data)], check=False)
    assert not problems, problems
