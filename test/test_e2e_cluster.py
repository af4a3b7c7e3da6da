"""The end-to-end fixtures themselves, and the failures they exist to stage."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Cluster, wait_until


def test_wait_until_returns_the_truthy_value() -> None:
    calls: list[int] = []

    def third_time() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise FileNotFoundError("not yet")
        return len(calls)

    assert wait_until(third_time, timeout=5, ignore=(FileNotFoundError,)) == 3


def test_wait_until_times_out_with_the_message() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"timed out after 0.05s waiting for pigs"):
        wait_until(lambda: False, timeout=0.05, message="pigs")
    with pytest.raises(pytest.fail.Exception, match=r"last error: OSError\('down'\)"):
        wait_until(_raise_oserror, timeout=0.05, ignore=(OSError,))
    with pytest.raises(ZeroDivisionError):  # not ignored: raised at once
        wait_until(lambda: 1 / 0, timeout=5)


def _raise_oserror() -> bool:
    raise OSError("down")


def test_teardown_reports_a_component_that_died(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        cluster.start_master()
        node = cluster.add_node("node1", 1)
        os.kill(node.pid, signal.SIGKILL)  # not through the cluster: a crash
        wait_until(lambda: not node.running())
    finally:
        problems = cluster.close()
    assert problems == ["node1 exited on its own with status -9"]


def test_teardown_stops_jobs_a_killed_node_left_behind(cluster: Cluster) -> None:
    pid_file = cluster.tmp / "job.pid"
    job_id = cluster.submit(f"echo $$ > {pid_file}; exec sleep 300")
    cluster.wait_job(job_id, ("running",))
    pid = wait_until(lambda: pid_file.read_text().strip(), ignore=(OSError,))
    cluster.kill_node("node1")
    os.kill(int(pid), 0)  # still running: its node died, not the job
    assert cluster.close() == []
    assert _dead(int(pid))


def _dead(pid: int) -> bool:
    """Gone, or a zombie: a job whose keeper was killed with it is left to init, which
    reaps it when it gets to it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_restarted_master_keeps_a_running_job(cluster: Cluster) -> None:
    gate = cluster.tmp / "gate"
    job_id = cluster.submit(f"echo before; while [ ! -e {gate} ]; do sleep 0.01; done; echo after")
    cluster.wait_job(job_id, ("running",))
    cluster.kill_master(signal.SIGKILL)
    gate.touch()  # the job ends while the master is away
    cluster.restart_master()
    job = cluster.wait_job(job_id)
    assert (job["state"], job["exit_code"]) == ("completed", 0)
    assert cluster.mgpu("logs", str(job_id)).stdout == "before\nafter\n"


def test_a_node_whose_data_dir_is_deeper_than_a_socket_path_may_be(make_cluster: Any) -> None:
    """AF_UNIX takes 107 bytes of path: the keeper's socket in a deeper data dir is reached
    through /proc/self/fd of its directory."""
    cluster = make_cluster(nodes=0)
    deep = cluster.tmp / ("d" * 60) / ("e" * 60)
    assert len(str(deep / "run" / "keeper.sock")) > 107
    cluster.add_node("node1", 1, "--data-dir", str(deep))
    job = cluster.submit("echo deep")
    assert cluster.wait_job(job)["state"] == "completed"
    assert (deep / "run" / "keeper.sock").exists()
    cluster.restart_node("node1")  # a new agent finds the keeper by the same road
    assert cluster.wait_job(cluster.submit("true"))["state"] == "completed"
