"""Multi-node (gang) jobs: all-or-nothing placement in the policies, then real masters and
agents (two or three agents on this machine, different node ids) running jobs that span
them: each task's rank and rendezvous, one failure ending the others, cancel, time limits,
a lost node requeueing the whole job, labelled and per-task output, ``srun -N``, several
tasks a node, and what is refused.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core.scheduler import (
    JobSnapshot,
    NodeSnapshot,
    RunningSnapshot,
    Snapshot,
    fifo_reserve,
    multifactor,
)

KEYS = ("RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
        "MASTER_PORT", "MGPU_NODELIST", "CUDA_VISIBLE_DEVICES", "MGPU_NODE_ID", "SLURM_PROCID",
        "SLURM_NTASKS", "SLURM_NODELIST", "SLURM_NODEID")
SHOW_ENV = (f"{sys.executable} -c \"import json, os; "
            f"print(json.dumps({{k: os.environ.get(k) for k in {KEYS!r}}}))\"")


def node(name: str, total: int, free: tuple[int, ...], releases: tuple[tuple[float, int], ...]
         = ()) -> NodeSnapshot:
    return NodeSnapshot(name, total, free, releases=releases)


# ------------------------------------------------------------------ the policies


@pytest.mark.parametrize("policy", [multifactor, fifo_reserve])
def test_a_gang_takes_distinct_nodes_all_at_once_or_none(policy: Any) -> None:
    nodes = [node("a", 4, (0, 1, 2, 3)), node("b", 4, (2, 3)), node("c", 4, (3,))]
    got = policy(Snapshot(0.0, [JobSnapshot(1, 2, "u", nodes=2)], nodes))
    (p,) = got.placements
    # Best fit: the nodes with the fewest usable GPUs that can hold 2 (b, then a).
    assert (p.node_id, p.gpu_ids) == ("b", (2, 3))
    assert p.more == (("a", (0, 1)),)
    # Three nodes with 2 free GPUs do not exist: nothing starts, not even part of it.
    got = policy(Snapshot(0.0, [JobSnapshot(2, 2, "u", nodes=3)], nodes))
    assert got.placements == []


def test_a_gang_no_set_of_nodes_can_hold_is_passed_over_with_no_node_fits() -> None:
    nodes = [node("a", 4, (0, 1, 2, 3)), node("b", 2, (0, 1))]
    got = multifactor(Snapshot(0.0, [JobSnapshot(1, 4, "u", nodes=2),
                                     JobSnapshot(2, 1, "u")], nodes))
    assert got.reasons[1].code.value == "NoNodeFits"
    assert "1 node that take jobs can run 4 GPUs" in got.reasons[1].detail
    assert [p.job_id for p in got.placements] == [2]  # it holds nothing back


def test_a_blocked_gang_reserves_its_nodes_and_backfill_does_not_delay_it() -> None:
    # b has 2 GPUs free now, a frees its 2 at t=100: the gang (2 GPUs on each of 2 nodes)
    # starts at 100, and b's free GPUs are held for it until then.
    nodes = [node("a", 2, (), releases=((100.0, 2),)), node("b", 4, (0, 1),
                                                         releases=((200.0, 2),))]
    running = [RunningSnapshot(10, "x", "a", (0, 1), 100.0),
               RunningSnapshot(11, "x", "b", (2, 3), 200.0)]
    pending = [JobSnapshot(1, 2, "u", nodes=2, time_limit=50),
               JobSnapshot(2, 2, "u", time_limit=500),  # would hold b's GPUs past 200
               JobSnapshot(3, 2, "u", time_limit=100)]  # ends by 200: may backfill on b
    got = multifactor(Snapshot(0.0, pending, nodes, running))
    (res,) = got.reservations
    assert res.job_id == 1 and res.start == 100.0
    assert {res.node_id, *res.more_nodes} == {"a", "b"}
    assert got.reasons[2].code.value == "Reserved"
    assert [(p.job_id, p.node_id) for p in got.placements] == [(3, "b")]


# ------------------------------------------------------------------ end to end


def task_lines(text: str) -> dict[int, dict[str, Any]]:
    """``logs --label`` output of SHOW_ENV tasks, by task number."""
    out = {}
    for line in text.splitlines():
        label, _, rest = line.partition(": ")
        out[int(label)] = json.loads(rest)
    return out


@pytest.mark.cluster(nodes=2, gpus=2)
def test_each_task_gets_its_rank_and_one_rendezvous(cluster: Cluster) -> None:
    job_id = cluster.submit(SHOW_ENV, "-N", "2", "--gpus-per-node", "2", "--slurm-env")
    job = cluster.wait_job(job_id)
    assert job["state"] == "completed" and job["exit_code"] == 0, job
    assert job["gpus"] == 4 and job["nodes"] == 2
    assert sorted(p["node"] for p in job["parts"]) == ["node1", "node2"]
    tasks = task_lines(cluster.mgpu("logs", "--label", str(job_id)).stdout)
    assert sorted(tasks) == [0, 1]
    addr, port = job["rendezvous"].rsplit(":", 1)
    order = [p["node"] for p in job["parts"]]
    for rank, env in tasks.items():
        assert env["RANK"] == env["NODE_RANK"] == env["SLURM_PROCID"] == str(rank)
        assert env["WORLD_SIZE"] == env["SLURM_NTASKS"] == "2"
        assert env["LOCAL_RANK"] == "0" and env["LOCAL_WORLD_SIZE"] == "1"
        assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == (addr, port)
        assert env["MGPU_NODELIST"] == env["SLURM_NODELIST"] == ",".join(order)
        assert env["MGPU_NODE_ID"] == order[rank] and env["SLURM_NODEID"] == str(rank)
        assert env["CUDA_VISIBLE_DEVICES"] == "0,1"
    # One task's output alone, bare; the merged output without --label, bare too.
    alone = cluster.mgpu("logs", "--task", "1", str(job_id)).stdout
    assert json.loads(alone)["RANK"] == "1"
    bare = cluster.mgpu("logs", str(job_id)).stdout.splitlines()
    assert sorted(json.loads(line)["RANK"] for line in bare) == ["0", "1"]
    refused = cluster.mgpu("logs", "--task", "2", str(job_id), check=1)
    assert "has 2 tasks: give --task from 0 to 1" in refused.stderr
    # Both nodes' GPUs are free again; its run is counted under both nodes, all 4 GPUs.
    nodes = cluster.api("/api/v1/nodes")["nodes"]
    assert all(g["job_id"] is None for n in nodes for g in n["gpus"])
    usage = json.loads(cluster.mgpu("usage", "--by", "node", "--json").stdout)
    assert [r["key"] for r in usage["rows"]] == [",".join(order)]


@pytest.mark.cluster(nodes=2, gpus=1)
def test_one_task_failing_stops_the_others_with_its_exit_code(
        cluster: Cluster, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = (f'echo "$RANK $$" >> {pids}; if [ "$RANK" = 1 ]; then '
              f'while [ "$(wc -l < {pids})" -lt 2 ]; do sleep 0.02; done; exit 7; fi; '
              "exec sleep 300")
    job_id = cluster.submit(script, "-N", "2")
    job = cluster.wait_job(job_id, timeout=60)
    assert job["state"] == "failed" and job["exit_code"] == 7, job
    assert job["reason"].startswith("task 1 on "), job["reason"]
    rank0 = int(next(line for line in pids.read_text().splitlines()
                     if line.startswith("0 ")).split()[1])
    wait_until(lambda: not _alive(rank0), 15, message="task 0 to be stopped")
    parts = {p["node"]: p for p in job["parts"]}
    assert sorted(p["state"] for p in parts.values()) == ["cancelled", "failed"]
    assert cluster.mgpu("wait", str(job_id), check=7)


@pytest.mark.cluster(nodes=2, gpus=1)
def test_cancel_and_the_time_limit_reach_every_node(cluster: Cluster) -> None:
    job_id = cluster.submit("echo up; exec sleep 300", "-N", "2")
    wait_until(lambda: len(cluster.mgpu("logs", str(job_id)).stdout.splitlines()) == 2, 20,
               message="both tasks to start")
    cluster.mgpu("cancel", str(job_id))
    job = cluster.wait_job(job_id, timeout=60)
    assert job["state"] == "cancelled" and all(p["ended"] for p in job["parts"]), job
    timed = cluster.submit("exec sleep 300", "-N", "2", "-t", "0:02")
    job = cluster.wait_job(timed, timeout=60)
    assert job["state"] == "timeout", job
    nodes = cluster.api("/api/v1/nodes")["nodes"]
    assert all(g["job_id"] is None for n in nodes for g in n["gpus"])


def test_a_lost_node_requeues_the_whole_gang(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=0, env={"MGPU_NODE_TIMEOUT": "2"})
    for name in ("node1", "node2", "node3"):
        cluster.add_node(name, 1)
    runs = tmp_path / "runs"
    job_id = cluster.submit(f'echo "$MGPU_NODE_ID $$" >> {runs}; exec sleep 300', "-N", "2")
    wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) == 2, 20)
    first = dict(line.split() for line in runs.read_text().splitlines())
    lost, survivor = sorted(first)
    cluster.kill_node(lost, signal.SIGSTOP, wait=False)
    try:
        wait_until(lambda: not _alive(int(first[survivor])), 30,
                   message="the surviving task to be stopped")
        job = cluster.wait_job(job_id, ("running",))
        wait_until(lambda: len(runs.read_text().splitlines()) == 4, 30,
                   message="the gang to run again on two live nodes")
        job = cluster.job(job_id)
        assert job["requeues"] == 1 and lost not in [p["node"] for p in job["parts"]], job
    finally:
        cluster.nodes[lost].signal_group(signal.SIGCONT)
    cluster.mgpu("cancel", str(job_id))
    cluster.wait_job(job_id, timeout=60)


@pytest.mark.cluster(nodes=2, gpus=1)
def test_a_master_restart_keeps_a_running_gang(cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo before $RANK; while [ ! -e {gate} ]; do sleep 0.02; done; "
                            "echo after $RANK", "-N", "2")
    wait_until(lambda: len(cluster.mgpu("logs", str(job_id)).stdout.splitlines()) == 2, 20,
               message="both tasks to start")
    queue = cluster.mgpu("queue").stdout
    assert "node1,node2" in queue or "node2,node1" in queue, queue
    cluster.restart_master()
    assert cluster.job(job_id)["state"] == "running"
    gate.touch()
    job = cluster.wait_job(job_id, timeout=60)
    assert job["state"] == "completed" and job["requeues"] == 0, job
    lines = sorted(cluster.mgpu("logs", "-l", str(job_id)).stdout.splitlines())
    assert lines == ["0: after 0", "0: before 0", "1: after 1", "1: before 1"], lines


@pytest.mark.cluster(nodes=2, gpus=1)
def test_srun_streams_every_task_live_and_stdin_goes_to_task_0(
        cluster: Cluster, tmp_path: Path) -> None:
    said = tmp_path / "task0-said"  # task 1 fails only once task 0 has spoken
    done = cluster.mgpu("srun", "-q", "-l", "-N", "2", "sh", "-c",
                        f'read line; echo "task $RANK got [$line]"; [ "$RANK" = 0 ] && '
                        f'touch {said} && exit 0; while [ ! -e {said} ]; do sleep 0.02; done; '
                        "exit 3", input="hello\n", check=3, timeout=60)
    lines = sorted(done.stdout.splitlines())
    assert lines == ["0: task 0 got [hello]", "1: task 1 got []"], done.stdout


@pytest.mark.cluster(nodes=2, gpus=2)
def test_several_tasks_a_node_each_with_its_own_rank(cluster: Cluster) -> None:
    job_id = cluster.submit(SHOW_ENV, "-N", "2", "--ntasks-per-node", "2", "-G", "2")
    job = cluster.wait_job(job_id, timeout=60)
    assert job["state"] == "completed", (job, cluster.mgpu("logs", str(job_id)).stdout)
    tasks = task_lines(cluster.mgpu("logs", "-l", str(job_id)).stdout)
    assert sorted(tasks) == [0, 1, 2, 3]
    for rank, env in tasks.items():
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "4"
        assert env["LOCAL_RANK"] == str(rank % 2) and env["NODE_RANK"] == str(rank // 2)
        assert env["LOCAL_WORLD_SIZE"] == "2"
    assert json.loads(cluster.mgpu("logs", "--task", "3", str(job_id)).stdout)["RANK"] == "3"


@pytest.mark.cluster(nodes=2, gpus=2)
def test_gangs_that_cannot_be_are_refused_with_the_fix(cluster: Cluster) -> None:
    too_many = cluster.mgpu("submit", "-N", "3", "true", check=5)
    assert "asks for 3 nodes" in too_many.stderr and "at most 2 (-N)" in too_many.stderr
    uneven = cluster.mgpu("submit", "-N", "2", "-G", "3", "true", check=2)
    assert "do not split evenly over 2 nodes" in uneven.stderr
    clash = cluster.mgpu("submit", "-N", "2", "-G", "2", "--gpus-per-node", "2", "true",
                         check=2)
    assert "disagree" in clash.stderr
    big = cluster.mgpu("submit", "-N", "2", "--gpus-per-node", "3", "true", check=5)
    assert "largest node" in big.stderr
    bad = cluster.mgpu("submit", "-N", "zero", "true", check=2)
    assert "positive whole number of nodes" in bad.stderr
    pty = cluster.mgpu("srun", "--pty", "-N", "2", "true", check=125)  # (srun: never ran)
    assert "--pty" in pty.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_retries_run_the_whole_gang_again(make_cluster: Any, tmp_path: Path) -> None:
    cluster = make_cluster(nodes=2, gpus=1, env={"MGPU_RETRY_BACKOFF": "0.1"})
    flag = tmp_path / "failed-once"
    said = tmp_path / "rank0-said"  # (rank 1 fails only once rank 0 has spoken)
    job_id = cluster.submit(f'echo "run $MGPU_JOB_RUN rank $RANK"; [ "$RANK" = 0 ] && '
                            f'touch {said}.$MGPU_JOB_RUN && exit 0; '
                            f'while [ ! -e {said}.$MGPU_JOB_RUN ]; do sleep 0.02; done; '
                            f'if [ ! -e {flag} ]; then touch {flag}; exit 3; fi',
                            "-N", "2", "--retries", "1")
    job = cluster.wait_job(job_id, timeout=60)
    assert job["state"] == "completed" and job["retries"] == 1, job
    lines = cluster.mgpu("logs", str(job_id)).stdout.splitlines()
    assert sorted(lines) == [f"run {job_id}.{r} rank {k}" for r in (0, 1) for k in (0, 1)]


@pytest.mark.cluster(nodes=2, gpus=1)
def test_a_signal_reaches_every_task(cluster: Cluster) -> None:
    job_id = cluster.submit("trap 'echo got USR1 $RANK; exit 0' USR1; echo ready $RANK; "
                            "while :; do sleep 0.05; done", "-N", "2")
    wait_until(lambda: len(cluster.mgpu("logs", str(job_id)).stdout.splitlines()) == 2, 20,
               message="both tasks to be ready")
    cluster.api(f"/api/v1/jobs/{job_id}/signal", {"signum": int(signal.SIGUSR1)})
    job = cluster.wait_job(job_id, timeout=30)
    assert job["state"] == "completed", job
    got = sorted(cluster.mgpu("logs", str(job_id)).stdout.splitlines())
    assert got == ["got USR1 0", "got USR1 1", "ready 0", "ready 1"]


@pytest.mark.cluster(nodes=1, gpus=2)
def test_a_failing_task_of_several_on_a_node_stops_its_siblings(cluster: Cluster) -> None:
    job_id = cluster.submit('if [ "$RANK" = 1 ]; then echo bye; exit 4; fi; exec sleep 300',
                            "--ntasks-per-node", "2", "-t", "5:00")
    job = cluster.wait_job(job_id, timeout=60)
    assert job["state"] == "failed" and job["exit_code"] == 4, job
    assert job["reason"].startswith("tasks 0-1 on node1"), job["reason"]
    assert cluster.mgpu("logs", "--task", "1", str(job_id)).stdout == "bye\n"
    assert cluster.mgpu("logs", "-l", str(job_id)).stdout == "1: bye\n"


@pytest.mark.cluster(nodes=2, gpus=1)
def test_an_agent_restarted_within_the_fence_keeps_its_part(
        cluster: Cluster, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    job_id = cluster.submit(f"echo before $RANK; while [ ! -e {gate} ]; do sleep 0.02; done; "
                            "echo after $RANK", "-N", "2")
    wait_until(lambda: len(cluster.mgpu("logs", str(job_id)).stdout.splitlines()) == 2, 20,
               message="both tasks to start")
    rank1 = next(p["node"] for p in cluster.job(job_id)["parts"][1:])
    cluster.kill_node(rank1, signal.SIGKILL)
    cluster.restart_node(rank1)
    assert cluster.job(job_id)["state"] == "running"
    gate.touch()
    job = cluster.wait_job(job_id, timeout=60)
    assert (job["state"], job["exit_code"], job["requeues"]) == ("completed", 0, 0), job
    lines = sorted(cluster.mgpu("logs", "-l", str(job_id)).stdout.splitlines())
    assert lines == ["0: after 0", "0: before 0", "1: after 1", "1: before 1"], lines
