"""Queue in SLURM: a SLURM bridge whose jobs wait in SLURM's queue (``mgpu node --backend
slurm --slurm-queue``; README "Queue in SLURM").

* **Unit**: the bridge's ``--dependency`` and ``--begin``; the master's hand-off, SLURM's
  word on a handed job, holds, cancels and a lost bridge, as handlers (no sockets).
* **End to end** against the session's real SLURM (``slurm_session`` in conftest.py; root
  only, as test_slurm.py): a real master and a queue-in-SLURM bridge, ``mgpu`` commands,
  and SLURM's own ``squeue`` to see what SLURM holds.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core import messages as m
from mgpu.core.config import BackendConfig, NodeConfig
from mgpu.core.models import GpuInfo, JobSpec, JobState
from mgpu.node import slurm_cli as sc
from mgpu.node.backends import queue_mode
from mgpu.node.slurm_queue import begin_arg, slurm_dependency
from mgpu.server.state import ClusterState
from mgpu.utils.settings import load
from slurm_cluster import GPUS, PARTITION, SlurmCluster

# ---------------------------------------------------------------- unit: the bridge's options


def test_dependency_names_slurm_ids_and_keeps_its_form() -> None:
    ids = {12: "101", 13: "102", 14: "103_4"}
    assert slurm_dependency("afterok:12:13,afterany:14", ids) == (
        "afterok:101,afterok:102,afterany:103_4")
    assert slurm_dependency("afternotok:12?after:13", ids) == "afternotok:101?after:102"


def test_begin_is_local_time_to_the_second() -> None:
    when = time.mktime((2031, 5, 6, 7, 8, 9, 0, 0, -1))
    assert begin_arg(when) == "--begin=2031-05-06T07:08:09"


def test_squeue_rows_of_an_array_each_task_apart() -> None:
    rows = sc.parse_tasks(
        "7|2-3%2|PENDING|JobArrayTaskLimit|0|N/A|(null)\n"
        "7|0|RUNNING|None|0|2026-12-03T13:59:53|mgpu job 4.0 t (node b)\n"
        "7|1|FAILED|NonZeroExitCode|256|2026-12-03T13:59:53|(null)\n"
        "8|N/A|PENDING|Priority|0|N/A|(null)\n"
        "9|[4,6-10:2%1]|PENDING|JobHeldUser|0|N/A|(null)\n")
    assert sorted(rows) == [(7, 0), (7, 1), (7, 2), (7, 3), (8, None), (9, 4), (9, 6),
                            (9, 8), (9, 10)]
    assert (rows[7, 3].state, rows[7, 3].reason) == ("PENDING", "JobArrayTaskLimit")
    assert sc.exit_code_of(rows[7, 1].exit_status) == 1 and rows[7, 0].start_time > 0
    assert rows[9, 8].reason == "JobHeldUser"


def test_the_setting_from_flag_environment_and_file() -> None:
    assert load(NodeConfig, {"node_id": "n", "backend": "slurm", "slurm_queue": True},
                environ={})[0].slurm_queue
    assert load(NodeConfig, {"node_id": "n"}, environ={"MGPU_SLURM_QUEUE": "1"})[0].slurm_queue
    assert load(BackendConfig, {}, file_data={"backend": {"kind": "slurm", "slurm_queue": True}},
                environ={})[0].slurm_queue
    assert not load(NodeConfig, {"node_id": "n"}, environ={})[0].slurm_queue
    plain = load(NodeConfig, {"node_id": "n", "slurm_queue": True}, environ={})[0]
    assert not queue_mode(plain)  # (a local node: the setting is a bridge's)


# ---------------------------------------------------------------- unit: the master's side

NOW = 1_000_000.0


def bridge_gpus(n: int) -> list[GpuInfo]:
    return [GpuInfo(index=i, name="slurm:gpu", memory_total_mib=0) for i in range(n)]


def with_bridge(gpus: int = 2) -> ClusterState:
    """A master whose only node is a queue-in-SLURM bridge ``b`` of ``gpus`` GPUs."""
    state = ClusterState()
    reg, _ = state.on_register(m.Register(
        "b", bridge_gpus(gpus), partition="slurm",
        slurm_queue=True), NOW)
    assert reg.accepted
    return state


def submit(state: ClusterState, **spec: Any) -> tuple[int, list[tuple[str, Any]]]:
    """Submit one job; its id and what the master sends (after a pass)."""
    ids, effects = state.on_submit([JobSpec(command="true", **spec)], NOW, "alice")
    effects.merge(state.gate_pass(effects, NOW)).merge(state.schedule(NOW))
    return ids[0], effects.sends  # (an array: its first task)


def order_of(sends: list[tuple[str, Any]], job_id: int) -> m.StartJob:
    (start,) = [s for _, s in sends if isinstance(s, m.StartJob) and s.job_id == job_id]
    assert isinstance(start, m.StartJob)
    return start


def test_jobs_are_handed_off_whatever_the_free_gpus_and_stay_pending() -> None:
    state = with_bridge(gpus=2)
    sent = [submit(state, gpus=2) for _ in range(3)]
    for job_id, sends in sent:  # all three, though the bridge has 2 GPUs
        start = order_of(sends, job_id)
        assert start.queue is not None and len(start.gpu_ids) == 2
        job = state.jobs[job_id]
        assert (job.state, job.node, job.pending_reason) == (JobState.PENDING, "b",
                                                             "Submitting")
    assert not state.pending and state.nodes["b"].free_gpu_ids() == (0, 1)
    first = sent[0][0]
    state.on_job_queued("b", m.JobQueued(first, 0, "77", "PENDING", "Priority"), NOW)
    job = state.jobs[first]
    assert (job.backend_id, job.pending_reason) == ("77", "Priority")
    assert job.reason == "in SLURM: Priority (SLURM job 77 on node b)"
    state.on_job_queued("b", m.JobQueued(first, 0, "77", "RUNNING", "None", NOW - 5), NOW)
    assert job.state is JobState.RUNNING and job.started_at is not None
    assert job.started_at.timestamp() == NOW - 5  # SLURM's start
    assert job.gpu_ids == [0, 1] and state.nodes["b"].free_gpu_ids() == ()
    ends = state.on_job_ended("b", m.JobEnded(first, 0, "completed", 0, None, 0), NOW)
    assert job.state is JobState.COMPLETED and ends.ended == [first]


def test_hold_begin_and_dependency_go_to_slurm_decided_terms_stay() -> None:
    state = with_bridge()
    parent, _ = submit(state, gpus=1)
    done, _ = submit(state, gpus=1)
    state.on_job_queued("b", m.JobQueued(done, 0, "9", "RUNNING", "None", NOW), NOW)
    state.on_job_ended("b", m.JobEnded(done, 0, "completed", 0, None, 0), NOW)
    child, sends = submit(state, gpus=1, dependency=f"afterok:{parent}:{done}", hold=True,
                          begin=NOW + 600)
    order = order_of(sends, child).queue
    assert order == m.QueueOrder(dependency=f"afterok:{parent}", hold=True, begin=NOW + 600)
    never, sends = submit(state, gpus=1, dependency=f"afternotok:{done}")
    assert state.jobs[never].state is JobState.CANCELLED  # decided by the master, as ever
    assert not [s for _, s in sends if isinstance(s, m.StartJob)]


def test_a_term_decided_between_admission_and_hand_off_is_not_sent() -> None:
    state = with_bridge()
    parent, _ = submit(state, gpus=1)
    (child,), effects = state.on_submit(
        [JobSpec(command="true", gpus=1, dependency=f"afterok:{parent}")], NOW, "alice")
    assert state.slurm_deps[child] == f"afterok:{parent}"  # (admitted: SLURM's to wait)
    state.on_job_queued("b", m.JobQueued(parent, 0, "9", "RUNNING", "None", NOW), NOW)
    effects.merge(state.on_job_ended("b", m.JobEnded(parent, 0, "completed", 0, None, 0), NOW))
    sends = effects.merge(state.gate_pass(effects, NOW)).merge(state.schedule(NOW)).sends
    assert order_of(sends, child).queue == m.QueueOrder()  # (the master decided it)


def test_a_dependency_on_a_job_elsewhere_waits_in_mgpu_until_it_ends() -> None:
    state = with_bridge()
    state.on_register(m.Register("local", [GpuInfo(index=0, name="x", memory_total_mib=0)]), NOW)
    elsewhere, _ = submit(state, gpus=1)  # (the default partition: the local node)
    assert state.jobs[elsewhere].state is JobState.RUNNING
    child, sends = submit(state, gpus=1, partition="slurm", dependency=f"afterok:{elsewhere}")
    assert state.jobs[child].pending_reason == "Dependency" and not any(
        isinstance(s, m.StartJob) for _, s in sends)
    ended = state.on_job_ended("local", m.JobEnded(elsewhere, 0, "completed", 0, None, 0),
                               NOW)
    sends = ended.merge(state.gate_pass(ended, NOW)).merge(state.schedule(NOW)).sends
    assert order_of(sends, child).queue == m.QueueOrder()


def test_an_arrays_tasks_go_in_one_order_with_its_throttle() -> None:
    state = with_bridge()
    first, sends = submit(state, gpus=1, array="0-3%2")
    (start,) = [s for _, s in sends if isinstance(s, m.StartJob)]
    assert start.job_id == first and start.queue is not None
    assert start.queue.throttle == 2 and start.queue.array is not None
    assert [(t.task_id, t.job_id) for t in start.queue.array] == [
        (task, first + task) for task in range(4)]
    assert start.queue.array[3].env["MGPU_ARRAY_TASK_ID"] == "3"
    assert all(state.handed.get(first + task) == "b" for task in range(4))
    # The order could not be sent: its tasks all go back to mgpu's queue.
    state.unplace([first], NOW, "node b disconnected")
    assert not state.handed and all(first + t in state.pending for t in range(4))


def test_hold_release_and_cancel_of_a_handed_job_are_orders_to_the_bridge() -> None:
    state = with_bridge()
    job_id, _ = submit(state, gpus=1)
    results, held = state.on_hold([job_id], True, NOW, None, False)
    assert results[0].ok and state.jobs[job_id].held
    assert held.sends == [("b", m.HoldJob(job_id, True))]
    _, released = state.on_hold([job_id], False, NOW, None, False)
    assert released.sends == [("b", m.HoldJob(job_id, False))]
    results, cancelled = state.on_cancel([job_id], NOW)
    assert state.jobs[job_id].state is JobState.CANCELLED
    assert ("b", m.CancelJob(job_id, "cancelled")) in cancelled.sends
    late = state.on_job_ended("b", m.JobEnded(job_id, 0, "cancelled", None, None, 0), NOW)
    assert late.sends == [("b", m.EndedAck([f"{job_id}.0"]))]


def test_slurm_ends_and_never_satisfied_dependencies_end_pending_jobs() -> None:
    state = with_bridge()
    cancelled, _ = submit(state, gpus=1)
    state.on_job_ended("b", m.JobEnded(cancelled, 0, "cancelled", None,
                                       "cancelled in SLURM (scancel)", 0), NOW)
    assert state.jobs[cancelled].state is JobState.CANCELLED
    never, _ = submit(state, gpus=1)
    effects = state.on_job_queued("b", m.JobQueued(never, 0, "5", "PENDING",
                                                   "DependencyNeverSatisfied"), NOW)
    job = state.jobs[never]
    assert (job.state, job.pending_reason) == (JobState.CANCELLED, "DependencyNeverSatisfied")
    assert ("b", m.CancelJob(never, "its dependency can never be satisfied")) in effects.sends


def test_a_lost_bridge_gives_its_handed_jobs_back_and_kills_them_when_back() -> None:
    state = with_bridge()
    job_id, _ = submit(state, gpus=1)
    state.on_disconnect("b", NOW)
    state.on_tick(NOW + state.node_timeout + 1)
    job = state.jobs[job_id]
    assert job.node is None and job_id in state.pending and job_id not in state.handed
    reg, _ = state.on_register(m.Register(
        "b", bridge_gpus(2), partition="slurm",
        slurm_queue=True, running=[m.RunningReport(job_id, 0, 0)]), NOW + 20)
    assert reg.kill == [f"{job_id}.0"]
    kept, _ = submit(state, gpus=1)  # a bridge that comes back with a handed run keeps it
    reg, _ = state.on_register(m.Register(
        "b", bridge_gpus(2), partition="slurm",
        slurm_queue=True, running=[m.RunningReport(kept, 0, 0)]), NOW + 30)
    assert reg.kill == [] and state.handed.get(kept) == "b"


def test_without_a_queue_bridge_nothing_changes() -> None:
    state = ClusterState()
    state.on_register(m.Register("b", [GpuInfo(index=0, name="slurm:gpu", memory_total_mib=0)],
                                 partition="slurm"), NOW)
    job_id, sends = submit(state, gpus=1, hold=True)
    assert state.jobs[job_id].pending_reason == "Held" and not sends


# ---------------------------------------------------------------- a real SLURM

BRIDGE = "sq1"


def squeue(slurm: SlurmCluster, *args: str) -> str:
    return subprocess.run(["squeue", *args], env=slurm.env, capture_output=True, text=True,
                          check=True, timeout=30).stdout


def in_slurm(slurm: SlurmCluster, sid: str) -> tuple[str, str]:
    """SLURM's state and reason of job ``sid`` (``squeue -t all``; ``("", "")``: none)."""
    out = squeue(slurm, "-h", "-t", "all", "-j", sid, "-O", "State:|,Reason:").strip()
    state, _, reason = out.partition("|")
    return state.strip(), reason.strip()


@pytest.fixture
def queued(slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> Cluster:
    """A master and one queue-in-SLURM bridge (``--slurm-queue``), no other node."""
    return start_queued(make_cluster, slurm)


def start_queued(make_cluster: Callable[..., Cluster], slurm: SlurmCluster,
                 **options: Any) -> Cluster:
    cluster = make_cluster(nodes=0, **options)
    argv = ["node", "--node-id", BRIDGE, "--master-host", "127.0.0.1", "--master-port",
            str(cluster.port), "--port", "0", "--data-dir", str(cluster.tmp / BRIDGE),
            "--join-token-file", str(cluster.join_token_file), "--backend", "slurm",
            "--partition", PARTITION, "--slurm-poll", "0.3", "--slurm-queue"]
    cluster.base_env["SLURM_CONF"] = str(slurm.conf)
    cluster._node_args[BRIDGE] = argv
    cluster.nodes[BRIDGE] = cluster._spawn(BRIDGE, argv, None)
    cluster.wait_nodes_up([BRIDGE])
    return cluster


def slurm_id(cluster: Cluster, job_id: int) -> str:
    got: str = wait_until(lambda: cluster.job(job_id).get("backend_id"), 30,
                          message=lambda: f"a SLURM id on job {job_id}: {cluster.job(job_id)}")
    return got


def wait_reason(cluster: Cluster, slurm: SlurmCluster, job_id: int, reason: str) -> str:
    """Wait until SLURM and mgpu both say job ``job_id`` is pending for ``reason``."""
    sid = slurm_id(cluster, job_id)
    wait_until(lambda: in_slurm(slurm, sid) == ("PENDING", reason), 30,
               message=lambda: f"job {job_id} pending for {reason} in SLURM: "
               f"{in_slurm(slurm, sid)}")
    wait_until(lambda: cluster.job(job_id)["pending_reason"] == reason, 30,
               message=lambda: f"mgpu to say {reason}: {cluster.job(job_id)}")
    return sid


def gate(tmp: Path, name: str) -> tuple[Path, str]:
    """A file and a command that waits for it, then exits 0 (a job the test ends)."""
    path = tmp / name
    return path, f"while [ ! -e {path} ]; do sleep 0.1; done"


def test_more_jobs_than_gpus_all_wait_in_slurm(queued: Cluster, slurm: SlurmCluster) -> None:
    go, wait = gate(queued.tmp, "go")
    jobs = [queued.submit(wait, "-G", str(GPUS // 2)) for _ in range(3)]
    sids = [slurm_id(queued, j) for j in jobs]
    wait_until(lambda: sum(queued.job(j)["state"] == "running" for j in jobs) == 2, 30,
               message=lambda: f"two running: {[queued.job(j) for j in jobs]}")
    (waiting,) = [j for j in jobs if queued.job(j)["state"] == "pending"]
    sid = sids[jobs.index(waiting)]
    # (SLURM's reason is None until its scheduler's next pass has looked at the job)
    wait_until(lambda: in_slurm(slurm, sid) in (("PENDING", "Resources"),
                                                ("PENDING", "Priority")), 30,
               message=lambda: f"pending for its GPUs in SLURM: {in_slurm(slurm, sid)}")
    listed = squeue(slurm, "-h", "-o", "%i")
    assert all(s in listed.split() for s in sids)  # all of them in SLURM at once

    def row() -> str:
        return next(line for line in queued.mgpu("queue").stdout.splitlines()
                    if line.split()[0] == str(waiting))

    wait_until(lambda: "pending" in row() and "in SLURM" in row()
               and f"SLURM job {sid}" in row(), 30, message=lambda: f"the queue's row: {row()}")
    job = queued.job(waiting)
    assert job["node"] == BRIDGE and job["gpu_ids"] == []
    running = next(j for j in jobs if j != waiting)
    assert queued.job(running)["started_at"] is not None
    go.touch()
    for job_id in jobs:
        assert queued.wait_job(job_id, timeout=60)["state"] == "completed"


def test_afterok_chain_waits_in_slurm_and_a_failed_parent_ends_it(
        queued: Cluster, slurm: SlurmCluster) -> None:
    go, wait = gate(queued.tmp, "go")
    parent = queued.submit(wait, "-G", "1")
    child = queued.submit("echo child ran", "-G", "1", "--dependency", f"afterok:{parent}")
    wait_reason(queued, slurm, child, "Dependency")
    assert queued.job(parent)["state"] in ("pending", "running")
    go.touch()
    assert queued.wait_job(parent, timeout=60)["state"] == "completed"
    ended = queued.wait_job(child, timeout=60)
    assert ended["state"] == "completed"
    assert ended["started_at"] >= queued.job(parent)["ended_at"]
    assert "child ran" in queued.mgpu("logs", str(child)).stdout
    failing = queued.submit("exit 3", "-G", "1")
    orphan = queued.submit("echo never", "-G", "1", "--dependency", f"afterok:{failing}")
    assert queued.wait_job(failing, timeout=60)["exit_code"] == 3
    never = queued.wait_job(orphan, timeout=60)
    assert (never["state"], never["pending_reason"]) == ("cancelled",
                                                         "DependencyNeverSatisfied")


def test_hold_and_release_in_slurm(queued: Cluster, slurm: SlurmCluster) -> None:
    held = queued.submit("echo held ran", "-G", "1", "--hold")
    wait_reason(queued, slurm, held, "JobHeldUser")
    queued.mgpu("release", str(held))
    assert queued.wait_job(held, timeout=60)["state"] == "completed"
    go, wait = gate(queued.tmp, "go")
    blocker = queued.submit(wait, "-G", str(GPUS))  # (so the next one waits in SLURM)
    queued.wait_job(blocker, ("running",), timeout=60)
    later = queued.submit("echo later ran", "-G", "1")
    wait_reason(queued, slurm, later, "Resources")
    queued.mgpu("hold", str(later))
    wait_reason(queued, slurm, later, "JobHeldUser")
    queued.mgpu("release", str(later))
    go.touch()
    assert queued.wait_job(later, timeout=60)["state"] == "completed"
    assert "later ran" in queued.mgpu("logs", str(later)).stdout


def test_cancel_pending_and_scancel_in_slurm(queued: Cluster, slurm: SlurmCluster) -> None:
    first = queued.submit("echo never", "-G", "1", "--hold")
    second = queued.submit("echo never", "-G", "1", "--hold")
    sids = [wait_reason(queued, slurm, j, "JobHeldUser") for j in (first, second)]
    queued.mgpu("cancel", str(first))
    subprocess.run(["scancel", sids[1]], env=slurm.env, check=True, timeout=30)
    for job_id, sid in zip((first, second), sids, strict=True):
        ended = queued.wait_job(job_id, timeout=60)
        assert (ended["state"], ended["started_at"]) == ("cancelled", None)
        wait_until(lambda s=sid: in_slurm(slurm, s)[0] == "CANCELLED", 30)  # type: ignore[misc]


def test_begin_in_the_future_shows_begin_time(queued: Cluster, slurm: SlurmCluster) -> None:
    job_id = queued.submit("echo later", "-G", "1", "--begin", "now+1h")
    wait_reason(queued, slurm, job_id, "BeginTime")
    assert queued.mgpu("explain", str(job_id)).stdout.count("pending in SLURM's queue") == 1
    queued.mgpu("cancel", str(job_id))
    assert queued.wait_job(job_id)["state"] == "cancelled"


def test_restarts_keep_handed_jobs_in_slurm(queued: Cluster, slurm: SlurmCluster) -> None:
    go, wait = gate(queued.tmp, "go")
    running = queued.submit(f"echo first; {wait}; echo second", "-G", "1")
    held = queued.submit("echo held ran", "-G", "1", "--hold")
    wait_until(lambda: "first" in queued.mgpu("logs", str(running)).stdout, 60)
    sid = wait_reason(queued, slurm, held, "JobHeldUser")
    queued.kill_node(BRIDGE, signal.SIGKILL)
    queued.restart_master(wait_nodes=False)
    queued.restart_node(BRIDGE)
    job = queued.job(held)  # still pending in SLURM, the same SLURM job
    assert (job["state"], job["node"], job["backend_id"]) == ("pending", BRIDGE, sid)
    assert queued.job(running)["state"] == "running"
    queued.mgpu("release", str(held))
    go.touch()
    assert queued.wait_job(held, timeout=60)["backend_id"] == sid
    assert "held ran" in queued.mgpu("logs", str(held)).stdout
    assert queued.wait_job(running, timeout=60)["state"] == "completed"
    assert queued.mgpu("logs", str(running)).stdout.split() == ["first", "second"]


def test_an_array_is_one_slurm_array_job_with_its_throttle(
        queued: Cluster, slurm: SlurmCluster) -> None:
    out = queued.tmp / "array"
    out.mkdir()
    command = (f'echo "job $MGPU_JOB_ID task $MGPU_ARRAY_TASK_ID"; '
               f"while [ ! -e {out}/go$MGPU_ARRAY_TASK_ID ]; do sleep 0.05; done; "
               "exit $MGPU_ARRAY_TASK_ID")
    array = queued.submit(command, "-G", "1", "--array=0-3%2")
    ids = list(range(array, array + 4))
    sids = [slurm_id(queued, j) for j in ids]
    base = sids[0].partition("_")[0]
    assert sids == [f"{base}_{task}" for task in range(4)]  # one SLURM array job

    def running() -> list[int]:
        slurm_running = squeue(slurm, "-h", "-t", "R", "-j", base, "-o", "%i").split()
        assert len(slurm_running) <= 2, slurm_running  # its %2, in SLURM
        states = [queued.job(j)["state"] for j in ids]
        return [task for task, state in enumerate(states) if state == "running"]

    wait_until(lambda: running() == [0, 1], 60, message=lambda: f"tasks 0, 1: {running()}")
    wait_reason(queued, slurm, ids[2], "JobArrayTaskLimit")
    for task in range(4):
        (out / f"go{task}").touch()
        ended = queued.wait_job(ids[task], timeout=60)
        assert len(running()) <= 2
        assert ended["exit_code"] == task and ended["backend_id"] == sids[task]
        assert ended["state"] == ("completed" if task == 0 else "failed")
        logs = queued.mgpu("logs", str(ids[task]), check=False).stdout
        assert logs == f"job {ids[task]} task {task}\n"


def test_an_arrays_tasks_are_held_released_and_cancelled_one_by_one(
        queued: Cluster, slurm: SlurmCluster) -> None:
    array = queued.submit("echo task $MGPU_ARRAY_TASK_ID", "-G", "1", "--array=0-2", "--hold")
    ids = list(range(array, array + 3))
    sids = [wait_reason(queued, slurm, j, "JobHeldUser") for j in ids]
    queued.mgpu("release", f"{array}_1")
    assert queued.wait_job(ids[1], timeout=60)["state"] == "completed"
    assert queued.mgpu("logs", str(ids[1])).stdout == "task 1\n"
    queued.mgpu("cancel", f"{array}_2")
    assert queued.wait_job(ids[2], timeout=60)["state"] == "cancelled"
    # (SLURM keeps no record of a pending task it cancelled: it leaves its array's row)
    wait_until(lambda: in_slurm(slurm, sids[2]) == ("", ""), 30,
               message=lambda: f"task 2 gone from SLURM: {in_slurm(slurm, sids[2])}")
    assert in_slurm(slurm, sids[0]) == ("PENDING", "JobHeldUser")  # the others as they were
    assert queued.job(ids[0])["state"] == "pending"
    subprocess.run(["scancel", sids[0]], env=slurm.env, check=True, timeout=30)
    ended = queued.wait_job(ids[0], timeout=60)  # (scancel in SLURM: gone without a trace)
    assert (ended["state"], ended["reason"]) == ("cancelled", "cancelled in SLURM (scancel)")


def test_server_with_its_own_queue_bridge_and_mixed_mode(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    """``mgpu server --backend slurm --slurm-queue``: jobs without -p wait in SLURM; with a
    local node beside it, only the bridge's partition's jobs do."""
    cluster = make_cluster(nodes=0, env={"SLURM_CONF": str(slurm.conf)}, master_args=(
        "--backend", "slurm", "--partition", PARTITION, "--slurm-poll", "0.3",
        "--slurm-queue"))
    wait_until(lambda: any(n["node_id"] == "slurm" and n["state"] == "up" for n in
                           cluster.api("/api/v1/nodes")["nodes"]), 30, ignore=(OSError,))
    held = cluster.submit("echo via-server", "-G", "1", "--hold")  # no -p: only bridges
    wait_reason(cluster, slurm, held, "JobHeldUser")
    cluster.add_node("local", gpus=1)  # (waits until it is up)
    local = cluster.submit("echo local", "--hold")  # (the default partition: mgpu's gate)
    assert cluster.job(local)["pending_reason"] == "Held"
    assert cluster.job(local)["node"] is None
    cluster.mgpu("release", str(held), str(local))
    for job_id, node in ((held, "slurm"), (local, "local")):
        ended = cluster.wait_job(job_id, timeout=60)
        assert (ended["state"], ended["node"]) == ("completed", node)


def test_a_lost_bridge_gives_its_jobs_back_and_scancels_them_when_back(
        slurm: SlurmCluster, make_cluster: Callable[..., Cluster]) -> None:
    cluster = start_queued(make_cluster, slurm, env={"MGPU_NODE_TIMEOUT": "2"})
    held = cluster.submit("echo held ran", "-G", "1", "--hold")
    old = wait_reason(cluster, slurm, held, "JobHeldUser")
    cluster.kill_node(BRIDGE, signal.SIGKILL)
    wait_until(lambda: cluster.job(held)["node"] is None, 30,
               message=lambda: f"the job back in mgpu's queue: {cluster.job(held)}")
    job = cluster.job(held)  # (held: mgpu's own gate holds it while no bridge takes it)
    assert (job["state"], job["pending_reason"], job["backend_id"]) == ("pending", "Held", None)
    cluster.restart_node(BRIDGE)
    wait_until(lambda: in_slurm(slurm, old)[0] == "CANCELLED", 30,
               message=lambda: f"the old SLURM job cancelled: {in_slurm(slurm, old)}")
    cluster.mgpu("release", str(held))
    ended = cluster.wait_job(held, timeout=60)
    assert ended["state"] == "completed" and ended["backend_id"] not in (None, old)
    assert "held ran" in cluster.mgpu("logs", str(held)).stdout
