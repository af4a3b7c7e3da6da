"""Accounting: a row for every run of every job, and the sums ``mgpu usage`` shows.

* **Recording.** :func:`end_run` is how the state handlers end a run: it moves the job out
  of ``running`` (to an ended state, or back to ``pending`` for a requeue) and adds the
  run's :class:`~mgpu.server.store.RunRow` to the handler's effects, so the row is saved in
  the very transaction that saves the job's end. A job that ends without ever running
  (cancelled while pending) gets one row too, with no start. Pruning a job
  (``retention.py``) drops its ``jobs`` row and output, never its runs.
* **Usage.** :func:`usage_sql` is one SQL aggregate over ``runs`` (indexed by end time, and
  by user and end time): GPU-hours within ``[since, until)`` (a run that straddles a bound
  counts only its part inside), the jobs and runs that overlap the window, and the average
  wait (start minus the time the run was queued: the submit, or for a requeued run the
  previous run's end) of the runs that started in it. ``by`` groups per user, per node,
  or per UTC day (a run that spans midnight counts in each day for its part of it).
  Only ended runs are counted: a running job counts once its run ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mgpu.core.errors import UsageError
from mgpu.core.models import EndCause, JobState, SimpleJob, advance
from mgpu.server.effects import Effects
from mgpu.server.store import RunRow

DAY = 86400.0
MAX_DAYS = 3700  # days --by day may span (ten years, and a little)
GROUPS = ("user", "node", "day", "total")


def end_run(effects: Effects, job: SimpleJob, to: JobState, now: float, *,
            reason: str | None = None, exit_code: int | None = None,
            end_cause: EndCause | None = None) -> None:
    """:func:`~mgpu.core.models.advance` ``job`` to ``to`` at ``now``, and record the run
    this ends in ``effects`` (with the job's update). ``job`` is running (its run ends) or
    pending (it ends without running; ``to`` is then an ended state)."""
    ran = job.state is JobState.RUNNING
    started = job.started_at.timestamp() if ran and job.started_at is not None else None
    # (A multi-node run's node is all of its nodes, comma-separated, rank 0 first.)
    node, gpu_ids, run = (",".join(job.nodes_of()) or None, list(job.gpu_ids), job.requeues)
    advance(job, to, now, reason=reason, exit_code=exit_code, end_cause=end_cause)
    requeued = not to.ended  # back to pending: the run ended with its node lost
    effects.update(job)
    effects.batch.runs.append(RunRow(
        job_id=job.id, run=run, user=job.user, name=job.name, gpus=job.gpus,
        gpu_ids=",".join(map(str, gpu_ids)) if started is not None else "",
        node=node if started is not None else None,
        queued=job.submitted_at.timestamp() if job.submitted_at is not None else None,
        started=started, ended=now,
        state=JobState.NODE_FAIL.value if requeued else to.value,
        exit_code=None if requeued else exit_code if exit_code is not None else job.exit_code,
        end_cause=(EndCause.NODE_LOST.value if requeued
                   else None if job.end_cause is None else job.end_cause.value),
        gpu_seconds=0.0 if started is None else job.gpus * max(0.0, now - started),
    ))


@dataclass(frozen=True)
class UsageQuery:
    """What to add up: runs within ``[since, until)`` (POSIX times), of ``user`` only when
    given, grouped ``by`` one of :data:`GROUPS`."""

    since: float
    until: float
    by: str = "user"
    user: str | None = None

    def check(self) -> None:
        if self.by not in GROUPS:
            raise UsageError(f"--by takes one of {', '.join(GROUPS[:3])}, got {self.by!r}")
        if self.until <= self.since:
            raise UsageError("--until must be later than --since")
        if self.by == "day" and (self.until - self.since) / DAY > MAX_DAYS:
            raise UsageError(f"--by day spans at most {MAX_DAYS} days: give a later --since")


@dataclass(frozen=True)
class UsageRow:
    """One group's sums: ``key`` is the user, the node, the day (``YYYY-MM-DD``) or
    ``total``; ``avg_wait`` (seconds) is None when no run started in the window."""

    key: str
    gpu_seconds: float
    jobs: int
    runs: int
    avg_wait: float | None


# Runs that overlap [since, until): ended after since, started (or, never started, ended)
# before until. `ended > :since` is the indexed range.
_OVERLAP = "r.ended > :since AND COALESCE(r.started, r.ended) < :until"
_KEYS = {"user": "r.user", "node": "r.node", "total": "'total'"}


def usage_sql(q: UsageQuery) -> tuple[str, dict[str, object]]:
    """The SQL (and its arguments) whose rows are (key, GPU-seconds, jobs, runs, average
    wait) for ``q``: a group per row, by GPU time (most first), or by day in order."""
    args: dict[str, object] = {"since": q.since, "until": q.until, "user": q.user}
    only = " AND r.user = :user" if q.user is not None else ""
    if q.by != "day":
        started = " AND r.started IS NOT NULL" if q.by == "node" else ""
        sql = (f"SELECT {_KEYS[q.by]} AS k, "
               "TOTAL(r.gpus * MAX(0.0, MIN(r.ended, :until) - MAX(r.started, :since))) AS gs, "
               "COUNT(DISTINCT r.job_id), COUNT(*), AVG(CASE WHEN r.started >= :since AND "
               "r.started < :until THEN r.started - r.queued END) "
               f"FROM runs r WHERE {_OVERLAP}{only}{started} GROUP BY k ORDER BY gs DESC, k")
        return sql, args
    # One row per UTC day (days without runs too: zeros, for plots). A run overlaps a day
    # if it ended after the day began and began before it ended; bounding `ended` by the
    # day's end plus the longest run ever (kept in meta by Store.write) keeps each day's
    # join an index range.
    args["day0"] = q.since - q.since % DAY
    sql = ("WITH RECURSIVE days(d) AS (SELECT :day0 UNION ALL "
           "SELECT d + 86400.0 FROM days WHERE d + 86400.0 < :until), "
           "longest(s) AS (SELECT COALESCE(MAX(CAST(value AS REAL)), 0.0) FROM meta "
           "WHERE key = 'longest_run') "
           "SELECT strftime('%Y-%m-%d', d, 'unixepoch'), "
           "TOTAL(r.gpus * MAX(0.0, MIN(r.ended, d + 86400.0, :until) "
           "- MAX(r.started, d, :since))), "
           "COUNT(DISTINCT r.job_id), COUNT(r.job_id), "
           "AVG(CASE WHEN r.started >= MAX(d, :since) AND r.started < MIN(d + 86400.0, :until) "
           "THEN r.started - r.queued END) "
           "FROM days LEFT JOIN runs r ON r.ended > MAX(d, :since) "
           "AND r.ended <= d + 86400.0 + (SELECT s FROM longest) "
           f"AND COALESCE(r.started, r.ended) < MIN(d + 86400.0, :until){only} "
           "GROUP BY d ORDER BY d")
    return sql, args


def usage_rows(rows: list[tuple[Any, ...]]) -> list[UsageRow]:
    """:func:`usage_sql`'s rows as :class:`UsageRow` (a run with no node shows as ``-``)."""
    return [UsageRow("-" if key is None else str(key), float(seconds or 0.0), int(jobs or 0),
                     int(runs or 0), None if wait is None else float(wait))
            for key, seconds, jobs, runs, wait in rows]
