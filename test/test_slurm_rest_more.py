"""slurmrestd carries what SLURM's commands carry: multi-node jobs (``sbatch -N``) and the
queue-in-SLURM mode (``--slurm-queue``: dependencies, holds, begin times, arrays) through
``mgpu node --backend slurm --slurm-rest URL``.

* **Unit**: a :class:`Submission`'s structured fields (nodes, tasks, dependency, hold, begin,
  array) as ``sbatch``'s flags and as slurmrestd's ``v0.0.38`` job properties; slurmrestd's
  answers of an array job (recorded from the real slurmrestd 22.05.8 of these tests) read
  task by task, and its report of an array update that went through.
* **End to end** against real SLURMs through a real slurmrestd (``test/slurm_rest.py``: a
  unix socket, ``rest_auth/local``), the bridges without ``SLURM_CONF`` (SLURM's commands
  cannot reach SLURM from them, so everything goes through slurmrestd): a two-node gang on
  the two-node SLURM of test_slurm_gang.py, and a queue-in-SLURM bridge on the session's
  SLURM. Root only, like test_slurm.py (skipped, saying so, without it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.node import slurm_rest as sr
from mgpu.node import slurm_rest_map as srm
from mgpu.node.slurm_queue import begin_arg
from mgpu.node.slurm_submit import Submission, submission_of
from slurm_cluster import GPUS, SlurmCluster
from slurm_rest import SlurmRestd, running_restd
from test_slurm import BRIDGE, slurm_job
from test_slurm_gang import VARS, fields, gang_order
from test_slurm_queue import gate, in_slurm, slurm_id, squeue, wait_reason
from test_slurm_rest import restd, start_rest_bridge  # noqa: F401

# ---------------------------------------------------------------- unit: the requests


def submission(**kw: Any) -> Submission:
    base: dict[str, Any] = dict(
        name="t", comment="mgpu job 5.0 t (node b)", gpus=1, time_limit=None, cwd="/w",
        stdout="/o/array-5.0_%a.stdout", stderr="/o/array-5.0_%a.stderr", partition=None,
        script="#!/bin/sh\ntrue\n")
    return Submission(**(base | kw))


def test_queue_fields_render_as_sbatchs_flags() -> None:
    when = time.mktime((2031, 5, 6, 7, 8, 9, 0, 0, -1))
    sub = submission(array="0-3%2", hold=True, begin=when, dependency="afterok:101,after:7_2")
    argv = sub.sbatch_argv()
    assert argv[-4:] == ["--array=0-3%2", "--hold", begin_arg(when),
                         "--dependency=afterok:101,after:7_2"]
    assert begin_arg(when) == "--begin=2031-05-06T07:08:09"  # (local time, to the second)
    plain = submission().sbatch_argv()
    assert not [a for a in plain if a.startswith(("--array", "--hold", "--begin", "--dep"))]


def test_queue_fields_as_slurmrestds_job_properties() -> None:
    now = 1_800_000_000.0
    job = sr.submit_body(submission(array="0,2-5%3", hold=True, begin=now + 600.2,
                                    dependency="afterok:101?afterany:7_2"), now)["job"]
    assert (job["array"], job["hold"], job["dependency"]) == (
        "0,2-5%3", True, "afterok:101?afterany:7_2")
    assert job["begin_time"] == "now+601"  # (a Unix time is refused: --begin's own form)
    assert job["standard_output"] == "/o/array-5.0_%a.stdout"  # (slurmd expands %a)
    late = sr.submit_body(submission(begin=now - 30), now)["job"]
    assert late["begin_time"] == "now+0"  # (a begin already past: at once)
    plain = sr.submit_body(submission(), now)["job"]
    assert not {"array", "hold", "begin_time", "dependency", "nodes", "tasks"} & set(plain)


def test_a_gang_as_slurmrestds_job_properties() -> None:
    sub = submission_of(gang_order(tasks=3), comment="c", node_id="b", partition="gpu",
                        outputs=("/o", "/e"), bridge_env={}, account=None)
    job = sr.submit_body(sub)["job"]
    # sbatch --nodes=2 --ntasks-per-node=3 --gres=gpu:2 (the gres is per node)
    assert (job["nodes"], job["tasks_per_node"], job["tasks"], job["gres"]) == (
        [2, 2], 3, 6, "gpu:2")
    assert {"--nodes=2", "--ntasks-per-node=3", "--gres=gpu:2"} <= set(sub.sbatch_argv())
    assert job["environment"]["WORLD_SIZE"] == "6"
    one = sr.submit_body(submission_of(gang_order(nodes=0, gpu_ids=[0]), comment="c",
                                       node_id="b", partition=None, outputs=("/o", "/e"),
                                       bridge_env={}, account=None))["job"]
    assert not {"nodes", "tasks", "tasks_per_node"} & set(one)


# `GET /slurm/v0.0.38/job/4` of `array=0-3%2`, less fields not read here (recorded): task 1
# ran (a job id of its own), task 3 was cancelled while pending, 0 and 2 still pending.
ARRAY_ROWS = [
    {"job_id": 4, "array_job_id": 4, "array_task_id": None, "array_task_string": "0,2%2",
     "job_state": "PENDING", "state_reason": "JobHeldUser", "exit_code": 0, "start_time": 0,
     "comment": "c"},
    {"job_id": 7, "array_job_id": 4, "array_task_id": 1, "array_task_string": "",
     "job_state": "FAILED", "state_reason": "NonZeroExitCode", "exit_code": 256,
     "start_time": 1796308867, "comment": "c"},
]
PLAIN_ROW = {"job_id": 3, "array_job_id": 0, "array_task_id": None, "array_task_string": "",
             "job_state": "PENDING", "state_reason": "Dependency", "exit_code": 0,
             "start_time": 0, "comment": "c"}


def test_an_array_jobs_rows_read_task_by_task() -> None:
    assert srm.task_rows(ARRAY_ROWS[0]) == [(4, 0), (4, 2)]
    assert srm.task_rows(ARRAY_ROWS[1]) == [(4, 1)]
    assert srm.task_rows(PLAIN_ROW) == [(3, None)]
    # (once the last pending task starts, the array's own record is that task)
    assert srm.task_rows({**ARRAY_ROWS[0], "array_task_id": 2,
                          "array_task_string": ""}) == [(4, 2)]
    ran = srm.job_of(ARRAY_ROWS[1])
    assert (ran.state, ran.exit_status, ran.start_time) == ("FAILED", 256, 1796308867.0)


def test_an_array_update_that_went_through_is_not_an_error() -> None:
    # recorded: `POST job/4_1 {"hold": false}` released task 1, and said this
    done = {"description": "job array update from /run/slurmrestd.sock->fd:8 failed",
            "source": "_parse_job_list"}
    failed = {**done, "error_number": 2084, "error": "Job has already finished"}
    assert sr._array_done(done)
    assert not sr._array_done(failed)
    assert not sr._array_done({"error_number": 2017, "error": "Invalid job id specified"})


# ---------------------------------------------------------------- a gang on two SLURM nodes


@pytest.fixture(scope="module")
def restd2(slurm2_session: SlurmCluster) -> Iterator[SlurmRestd]:
    """slurmrestd on a unix socket (``rest_auth/local``) for the two-node SLURM."""
    yield from running_restd(slurm2_session)


def test_a_gang_through_slurmrestd_runs_a_task_on_each_slurm_node(
        slurm2: SlurmCluster, restd2: SlurmRestd,
        make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(nodes=0)
    start_rest_bridge(cluster, restd2.url, cluster.tmp / BRIDGE)
    job_id = cluster.submit(VARS, "-p", "slurm", "-N", "2", "--gpus-per-node", "2")
    failing = cluster.submit('if [ "$RANK" = 1 ]; then echo failing; exit 3; fi; sleep 300',
                             "-p", "slurm", "-N", "2", "--gpus-per-node", "1")
    ended = cluster.wait_job(job_id, timeout=60)
    assert (ended["state"], ended["exit_code"], ended["node"], ended["nodes"]) == (
        "completed", 0, BRIDGE, 2)
    assert ended["backend_nodes"] == "mgpu-slurm-n[1-2]"
    seen = slurm_job(slurm2, ended["backend_id"])
    assert (seen["node_count"], seen["tasks"], seen["tres_per_node"]) == (2, 2, "gres:gpu:2")
    labelled = cluster.mgpu("logs", "--label", str(job_id)).stdout.splitlines()
    by_rank = {int(line.split(":", 1)[0]): fields(line.split(":", 1)[1]) for line in labelled}
    assert sorted(by_rank) == [0, 1], labelled
    assert {by_rank[0]["host"], by_rank[1]["host"]} == set(slurm2.nodes)  # a node each
    for rank, vars_ in by_rank.items():
        assert (vars_["rank"], vars_["node"], vars_["world"]) == (str(rank), str(rank), "2")
        if slurm2.gpu_files:
            assert vars_["gpus"] == "0,1"  # SLURM's 2 GPUs of that node
    bad = cluster.wait_job(failing, timeout=60)
    assert (bad["state"], bad["exit_code"]) == ("failed", 3)
    assert "task 1" in bad["reason"], bad["reason"]
    assert "1: failing" in cluster.mgpu("logs", "--label", str(failing)).stdout
    # (srun stopped rank 0, and SLURM ended the job: nothing of it is left running)
    assert slurm_job(slurm2, bad["backend_id"])["job_state"] in ("FAILED", ["FAILED"])


# ---------------------------------------------------------------- queue in SLURM via REST


@pytest.fixture
def rest_queued(slurm: SlurmCluster, restd: SlurmRestd,  # noqa: F811
                make_cluster: Callable[..., Cluster]) -> Cluster:
    """A master and one queue-in-SLURM bridge that asks slurmrestd, no other node."""
    cluster = make_cluster(nodes=0)
    start_rest_bridge(cluster, restd.url, cluster.tmp / BRIDGE, "--slurm-queue")
    return cluster


def test_an_afterok_chain_and_a_begin_wait_in_slurm_through_slurmrestd(
        rest_queued: Cluster, slurm: SlurmCluster) -> None:
    go, wait = gate(rest_queued.tmp, "go")
    parent = rest_queued.submit(wait, "-G", "1")
    child = rest_queued.submit("echo child ran", "-G", "1", "--dependency",
                               f"afterok:{parent}")
    later = rest_queued.submit("echo later", "-G", "1", "--begin", "now+1h")
    child_sid = wait_reason(rest_queued, slurm, child, "Dependency")
    assert str(slurm_job(slurm, child_sid)["dependency"]).startswith(
        f"afterok:{slurm_id(rest_queued, parent)}")
    later_sid = wait_reason(rest_queued, slurm, later, "BeginTime")
    eligible = slurm_job(slurm, later_sid)["eligible_time"]
    assert isinstance(eligible, int) and abs(eligible - (time.time() + 3600)) < 120
    go.touch()
    assert rest_queued.wait_job(parent, timeout=60)["state"] == "completed"
    ended = rest_queued.wait_job(child, timeout=60)
    assert ended["state"] == "completed"
    assert ended["started_at"] >= rest_queued.job(parent)["ended_at"]
    assert "child ran" in rest_queued.mgpu("logs", str(child)).stdout
    rest_queued.mgpu("cancel", str(later))
    assert rest_queued.wait_job(later)["state"] == "cancelled"
    wait_until(lambda: in_slurm(slurm, later_sid)[0] == "CANCELLED", 30)


def test_hold_and_release_through_slurmrestd(rest_queued: Cluster, slurm: SlurmCluster) -> None:
    held = rest_queued.submit("echo held ran", "-G", "1", "--hold")
    wait_reason(rest_queued, slurm, held, "JobHeldUser")  # (submitted held: a user's hold)
    rest_queued.mgpu("release", str(held))
    assert rest_queued.wait_job(held, timeout=60)["state"] == "completed"
    go, wait = gate(rest_queued.tmp, "go")
    blocker = rest_queued.submit(wait, "-G", str(GPUS))  # (so the next one waits in SLURM)
    rest_queued.wait_job(blocker, ("running",), timeout=60)
    later = rest_queued.submit("echo later ran", "-G", "1")
    wait_reason(rest_queued, slurm, later, "Resources")
    rest_queued.mgpu("hold", str(later))
    # slurmrestd holds as the bridge's user, root here (rest_auth/local): slurmctld reads
    # an operator's hold as an administrator's; the bridge releases it all the same.
    sid = wait_reason(rest_queued, slurm, later, "JobHeldAdmin")
    rest_queued.mgpu("release", str(later))
    wait_until(lambda: in_slurm(slurm, sid)[1] == "Resources", 30,
               message=lambda: f"released in SLURM: {in_slurm(slurm, sid)}")
    go.touch()
    assert rest_queued.wait_job(later, timeout=60)["state"] == "completed"
    assert "later ran" in rest_queued.mgpu("logs", str(later)).stdout


def test_an_array_through_slurmrestd_is_one_slurm_array_and_a_task_cancels_alone(
        rest_queued: Cluster, slurm: SlurmCluster) -> None:
    out = rest_queued.tmp / "array"
    out.mkdir()
    command = (f'echo "job $MGPU_JOB_ID task $MGPU_ARRAY_TASK_ID"; '
               f"while [ ! -e {out}/go$MGPU_ARRAY_TASK_ID ]; do sleep 0.05; done; "
               "exit $MGPU_ARRAY_TASK_ID")
    array = rest_queued.submit(command, "-G", "1", "--array=0-3%2")
    ids = list(range(array, array + 4))
    sids = [slurm_id(rest_queued, j) for j in ids]
    base = sids[0].partition("_")[0]
    assert sids == [f"{base}_{task}" for task in range(4)]  # one SLURM array job

    def running() -> list[int]:
        slurm_running = squeue(slurm, "-h", "-t", "R", "-j", base, "-o", "%i").split()
        assert len(slurm_running) <= 2, slurm_running  # its %2, in SLURM
        states = [rest_queued.job(j)["state"] for j in ids]
        return [task for task, state in enumerate(states) if state == "running"]

    wait_until(lambda: running() == [0, 1], 60, message=lambda: f"tasks 0, 1: {running()}")
    wait_reason(rest_queued, slurm, ids[3], "JobArrayTaskLimit")
    rest_queued.mgpu("cancel", f"{array}_3")
    ended = rest_queued.wait_job(ids[3], timeout=60)
    assert (ended["state"], ended["started_at"]) == ("cancelled", None)
    # (SLURM keeps no record of a pending task it cancelled: it leaves its array's row)
    wait_until(lambda: in_slurm(slurm, sids[3]) == ("", ""), 30,
               message=lambda: f"task 3 gone from SLURM: {in_slurm(slurm, sids[3])}")
    assert in_slurm(slurm, sids[2]) == ("PENDING", "JobArrayTaskLimit")  # (not with it)
    for task in range(3):
        (out / f"go{task}").touch()
        ended = rest_queued.wait_job(ids[task], timeout=60)
        assert len(running()) <= 2
        assert ended["exit_code"] == task and ended["backend_id"] == sids[task]
        assert ended["state"] == ("completed" if task == 0 else "failed")
        logs = rest_queued.mgpu("logs", str(ids[task]), check=False).stdout
        assert logs == f"job {ids[task]} task {task}\n"  # (its own output file: %a)
