"""Job arrays on a real cluster (tier 3): one job per task with its ids in the environment,
``%N`` running at most N at once (across a restart of the master too), ``12_4`` /
``12_[3-5]`` / ``12`` in ``cancel`` and ``show``, pending tasks folded into one ``queue``
line, and 10,000 tasks as one request (README "Job arrays")."""

from __future__ import annotations

import getpass
import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Cluster, wait_until
from mgpu.core.models import JobSpec, JobState, advance
from mgpu.server import retention
from mgpu.server.effects import Effects
from mgpu.server.state import ClusterState
from mgpu.server.store import Store


def tasks_of(cluster: Cluster, array: int) -> dict[int, dict[str, Any]]:
    """The array's tasks by task id, as ``GET /jobs?all=1`` lists them."""
    jobs = cluster.api("/api/v1/jobs?all=1")["jobs"]
    return {j["array_task_id"]: j for j in jobs if j["array_job_id"] == array}


@pytest.mark.cluster(nodes=1, gpus=4)
def test_array_throttle_cancel_show_and_queue(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    # Each task writes its ids, then runs until its gate file exists.
    command = (f'echo "$MGPU_ARRAY_JOB_ID $MGPU_ARRAY_TASK_ID $SLURM_ARRAY_JOB_ID '
               f'$SLURM_ARRAY_TASK_ID" > {out}/$MGPU_ARRAY_TASK_ID; '
               f"while [ ! -e {out}/go$MGPU_ARRAY_TASK_ID ]; do sleep 0.05; done")
    array = cluster.submit(command, "--array=0-5%2")
    tasks = tasks_of(cluster, array)
    assert sorted(tasks) == [0, 1, 2, 3, 4, 5]
    assert [tasks[t]["id"] for t in range(6)] == list(range(array, array + 6))

    def running() -> list[int]:
        return sorted(t for t, j in tasks_of(cluster, array).items() if j["state"] == "running")

    wait_until(lambda: running() == [0, 1], 30, message=lambda: f"tasks 0, 1 running: {running()}")
    waiting = tasks_of(cluster, array)[2]
    assert waiting["pending_reason"] == "JobArrayTaskLimit"
    assert waiting["reason"] == (f"JobArrayTaskLimit: array {array} runs at most 2 tasks at "
                                 "once")
    rows = [line.split()[:4] for line in cluster.mgpu("queue").stdout.splitlines()[1:]]
    me = getpass.getuser()
    assert rows == [[f"{array}_0", "echo", me, "running"], [f"{array}_1", "echo", me, "running"],
                    [f"{array}_[2-5]", "echo", me, "pending"]]
    listed = json.loads(cluster.mgpu("queue", "--json").stdout)  # --json lists every task
    assert len(listed) == 6
    shown = cluster.mgpu("show", f"{array}_3").stdout
    fields = {k: v.strip() for k, v in (line.split(":", 1) for line in shown.splitlines())}
    assert fields["array_job_id"] == f"{array} (task {array}_3; at most 2 at once)"
    assert json.loads(cluster.mgpu("show", f"{array}_3", "--json").stdout)["id"] == array + 3
    said = cluster.mgpu("explain", f"{array}_3").stdout  # (a gate's code, not the policy's)
    assert "is pending: JobArrayTaskLimit, its array runs as many tasks as its %N allows" \
        in said, said
    assert "no task 9 in array" in cluster.mgpu("show", f"{array}_9", check=4).stderr

    # The master restarts: the throttle still holds.
    cluster.restart_master()
    assert running() == [0, 1]
    assert tasks_of(cluster, array)[2]["pending_reason"] == "JobArrayTaskLimit"

    cancelled = cluster.mgpu("cancel", f"{array}_[4-5]").stdout
    assert cancelled == f"Cancelled job {array + 4}\nCancelled job {array + 5}\n"
    cluster.mgpu("cancel", f"{array}_3")
    (out / "go0").touch()
    wait_until(lambda: running() == [1, 2], 30, message=lambda: f"tasks 1, 2: {running()}")
    for task in (0, 2):  # (running is said before the task has written its line)
        line = wait_until(lambda t=task: (out / str(t)).exists() and (out / str(t)).read_text(),
                          30, message=f"task {task}'s line")
        assert line.split() == [str(array), str(task), str(array), str(task)]
    # The whole array: what has not ended.
    cluster.mgpu("cancel", str(array))
    states = {t: cluster.wait_job(j["id"])["state"] for t, j in tasks_of(cluster, array).items()}
    assert states == {0: "completed", 1: "cancelled", 2: "cancelled", 3: "cancelled",
                      4: "cancelled", 5: "cancelled"}

    listed_ids = cluster.submit("echo $MGPU_ARRAY_TASK_ID", "--array=1,3,5-7")
    tasks = tasks_of(cluster, listed_ids)
    assert sorted(tasks) == [1, 3, 5, 6, 7]
    for t, j in tasks.items():
        assert cluster.wait_job(j["id"])["state"] == "completed"
        assert cluster.mgpu("logs", str(j["id"])).stdout == f"{t}\n"
        assert cluster.mgpu("logs", f"{listed_ids}_{t}").stdout == f"{t}\n"  # (by its task)
    bad = cluster.mgpu("submit", "--array=5-1", "true", check=2)
    assert "--array '5-1'" in bad.stderr


def test_ten_thousand_tasks_are_one_request(make_cluster: Any) -> None:
    cluster = make_cluster(nodes=0)
    body = {"jobs": [{"command": "true", "array": "0-9999%8"}]}
    started = time.perf_counter()
    code, reply = cluster.status_of("/api/v1/jobs", body, cluster.token)
    took = time.perf_counter() - started
    print(f"10,000-task array: one request, {took * 1000:.0f} ms")  # figure for the report
    assert code == 201
    first = reply["job_ids"][0]
    assert reply["job_ids"] == list(range(first, first + 10_000))  # one job per task
    jobs = cluster.api("/api/v1/jobs")["jobs"]
    assert len(jobs) == 10_000
    assert {j["array_job_id"] for j in jobs} == {first}
    assert [j["array_task_id"] for j in jobs] == list(range(10_000))
    events = cluster.mgpu("events", "--json").stdout
    submits = [e for e in json.loads(events) if e["action"] == "submit"]
    assert [e["detail"] for e in submits] == [f"jobs {first}-{first + 9999} (10000 jobs)"]
    queue = cluster.mgpu("queue").stdout.splitlines()
    assert [line.split()[0] for line in queue[1:]] == [f"{first}_[0-7]", f"{first}_[8-9999]"]
    assert queue[2].endswith(f"JobArrayTaskLimit: array {first} runs at most 8 tasks at once")
    over = cluster.status_of("/api/v1/jobs", {"jobs": [{"command": "true",
                                                         "array": "0-10000"}]}, cluster.token)
    assert over[0] == 400 and "over 10000 tasks" in over[1]["error"]


def test_an_arrays_tasks_share_one_saved_environment(tmp_path: Path) -> None:
    """Saved once, with the first task; every task runs with it (after a restart too, when
    the first task has ended), and retention keeps that row while a task may still run."""
    state = ClusterState()
    ids, effects = state.on_submit([JobSpec(command="true", env={"A": "1"}, array="0-2")],
                                   1000.0, user="u")
    assert {j.id: env for j, env in effects.batch.inserts} == {
        ids[0]: {"A": "1"}, ids[1]: {}, ids[2]: {}}
    assert state.run_env(state.jobs[ids[2]]) == {
        "A": "1", "MGPU_ARRAY_JOB_ID": str(ids[0]), "MGPU_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_JOB_ID": str(ids[0]), "SLURM_ARRAY_TASK_ID": "2"}
    store = Store(tmp_path / "mgpu.db")
    store.write(effects.batch)
    first = state.jobs[ids[0]]
    advance(first, JobState.RUNNING, 1001.0)
    advance(first, JobState.COMPLETED, 1002.0)
    ended = Effects()
    ended.update(first)
    store.write(ended.batch)

    again = ClusterState()  # a master restarted on that database
    again.load(store.load(), store.last_id())
    again.start_controls({}, 2000.0, store.load_env)
    assert again.run_env(again.jobs[ids[1]])["A"] == "1"
    gone, _ = retention.prune(again, before=10.0**10)
    assert gone == []  # the first task's row holds its sisters' environment
    for job_id in ids[1:]:
        again.on_cancel([job_id], 3000.0)
    gone, _ = retention.prune(again, before=10.0**10)
    assert sorted(j.id for j in gone) == ids
    store.close()
