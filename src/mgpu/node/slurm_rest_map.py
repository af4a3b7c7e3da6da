"""What the SLURM bridge's slurmrestd transport (:mod:`slurm_rest`) sends and reads: a
:class:`~mgpu.node.slurm_submit.Submission` as a ``job/submit`` request of OpenAPI
``v0.0.38`` (:func:`submit_body`), and slurmrestd's answers as ``squeue``'s (:func:`job_of`,
:func:`task_rows`, :func:`nodes_of`). Pure functions: no request is made here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from mgpu.node import slurm_cli as sc
from mgpu.node.slurm_submit import Submission


def submit_body(sub: Submission, now: float | None = None) -> dict[str, Any]:
    """The ``job/submit`` request of a submission: the options ``sbatch_argv`` gives sbatch
    (``Submission.sbatch_argv``), by slurmrestd's names. v0.0.38 reads its job properties
    as sbatch's options: ``"requeue": false`` would mean ``--requeue``, hence
    ``no_requeue``; GPUs go as ``gres``, on each node (SLURM keeps them as
    ``tres_per_node``); a multi-node job's ``nodes`` is ``[min, max]``. ``begin_time``,
    though typed an integer, is parsed as sbatch's ``--begin`` (a Unix time is refused):
    it goes as ``now+SECONDS``, so that slurmrestd's time zone does not matter."""
    job: dict[str, Any] = {
        "name": sub.name, "comment": sub.comment, "current_working_directory": sub.cwd,
        "standard_output": sub.stdout, "standard_error": sub.stderr, "open_mode": "append",
        "no_requeue": True, "environment": dict(sub.env)}
    if sub.nodes > 1 or sub.tasks_per_node > 1:
        job.update(nodes=[sub.nodes, sub.nodes], tasks_per_node=sub.tasks_per_node,
                   tasks=sub.nodes * sub.tasks_per_node)
    if sub.gpus > 0:
        job["gres"] = f"gpu:{sub.gpus}"
    if sub.time_limit:
        job["time_limit"] = sc.minutes(sub.time_limit)
    if sub.partition:
        job["partition"] = sub.partition
    if sub.array:
        job["array"] = sub.array
    if sub.hold:
        job["hold"] = True
    if sub.begin is not None:
        wait = sub.begin - (time.time() if now is None else now)
        job["begin_time"] = f"now+{max(0, math.ceil(wait))}"
    if sub.dependency:
        job["dependency"] = sub.dependency
    return {"job": job, "script": sub.script}


def job_of(rec: Mapping[str, Any]) -> sc.SlurmJob:
    """One job of a ``jobs`` answer as :class:`~slurm_cli.SlurmJob` (as ``squeue`` says it:
    ``exit_code`` is the same wait status)."""
    status = rec.get("exit_code")
    state = str(rec.get("job_state") or "PENDING").split()
    return sc.SlurmJob(
        int(rec["job_id"]), state[0] if state else "PENDING", str(rec.get("state_reason") or ""),
        status if isinstance(status, int) and status >= 0 else None,
        float(rec.get("start_time") or 0), str(rec.get("comment") or ""),
        str(rec.get("nodes") or ""))


def task_rows(rec: Mapping[str, Any]) -> list[sc.TaskKey]:
    """The (SLURM id, array task) keys one job of a ``job/{id}`` answer stands for: (id,
    None) for a job not an array's; (array id, task) for a task; one key a task for the
    row of an array's pending tasks (``array_task_string``, e.g. ``0,2-3%2``)."""
    array = rec.get("array_job_id")
    if not isinstance(array, int) or array <= 0:
        return [(int(rec["job_id"]), None)]
    task = rec.get("array_task_id")
    if isinstance(task, int) and task >= 0:
        return [(array, task)]
    return [(array, t) for t in sc.task_ids(str(rec.get("array_task_string") or ""))
            if t is not None]


def nodes_gpus(answer: Mapping[str, Any], partition: str | None) -> int:
    """The GPUs (gres ``gpu``) of a ``nodes`` answer's nodes in ``partition`` (all: None)."""
    return sum(nodes_of(answer, partition).values())


def nodes_of(answer: Mapping[str, Any], partition: str | None) -> dict[str, int]:
    """A ``nodes`` answer's nodes in ``partition`` (all: None), each with its GPUs."""
    return {str(node.get("name")): sum(
        int(n) for n in sc.GRES_GPU.findall(str(node.get("gres") or "")))
        for node in answer.get("nodes") or []
        if partition is None or partition in (node.get("partitions") or [])}
