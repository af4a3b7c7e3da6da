"""The ``mgpu queue`` rows of array tasks: ``12_4`` for a task, and the pending tasks of an
array that wait for the same reason folded into one line, ``12_[5-99]``.

Like :mod:`mgpu.client.tables`, it works on the master's JSON as plain dicts (start-up).
"""

from __future__ import annotations

from mgpu.client.tables import QueueRow, queue_rows
from mgpu.core.controls import fold_tasks

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any


def folded_rows(jobs: list[dict[str, Any]]) -> list[QueueRow]:
    """Queue rows of ``jobs`` (in queue order), array tasks named and pending ones folded."""
    rows = queue_rows(jobs)
    if not any(j.get("array_job_id") is not None for j in jobs):
        return rows
    out: list[QueueRow] = []
    i, n = 0, len(jobs)
    while i < n:
        job = jobs[i]
        array = job.get("array_job_id")
        if array is None:
            out.append(rows[i])
            i += 1
            continue
        end = i + 1
        if job["state"] == "pending":
            key = (array, "pending", job.get("pending_reason"))
            while end < n and (jobs[end].get("array_job_id"), jobs[end]["state"],
                               jobs[end].get("pending_reason")) == key:
                end += 1
        tasks = [j["array_task_id"] for j in jobs[i:end]]
        name = f"{array}_[{fold_tasks(tasks)}]" if len(tasks) > 1 else f"{array}_{tasks[0]}"
        out.append((name, *rows[i][1:]))
        i = end
    return out
