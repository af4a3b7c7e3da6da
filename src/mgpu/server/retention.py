"""What the master keeps, and for how long: no mgpu secrets ever; ended jobs for
``job_retention_days``, then only an accounting row.

* **Secrets.** ``MGPU_TOKEN``, ``MGPU_JOIN_TOKEN`` and any other ``MGPU_*_TOKEN``,
  ``MGPU_*_SECRET``, ``_PASSWORD`` or ``_CREDENTIAL`` (:func:`mgpu.utils.secretenv.is_secret`,
  the rule the ``mgpu`` command also applies) are taken out of every
  submitted environment, whatever the client sent, so they are neither saved with the job
  nor passed to it; a database written before this is scrubbed at start-up.
* **Retention.** A job that ended more than ``job_retention_days`` ago is pruned: from
  memory, from the ``jobs`` table (its command, environment) and its output files, in the
  same transaction that saves its :class:`~mgpu.server.store.AccountingRow` (user, GPUs,
  node, start, end, state, exit code: what GPU-hour accounting needs). The master prunes at
  start-up and then every :func:`prune_interval`. Asking for a pruned job answers 404 and
  says that it was pruned.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from mgpu.core.errors import NotFound
from mgpu.core.models import SimpleJob
from mgpu.server.auth import Identity
from mgpu.server.state import ClusterState, Effects
from mgpu.server.store import AccountingRow, Batch, LoadedJob
from mgpu.utils.secretenv import is_secret

if TYPE_CHECKING:
    from mgpu.server.master import Master

DAY = 86400.0


def strip_secrets(env: dict[str, str]) -> dict[str, str]:
    """``env`` without mgpu's own secrets (the same dict when it holds none)."""
    if not any(is_secret(k) for k in env):
        return env
    return {k: v for k, v in env.items() if not is_secret(k)}


def scrub(rows: list[LoadedJob]) -> Batch:
    """Take mgpu's secrets out of loaded jobs' environments (in place); the rewrites to save."""
    batch = Batch()
    for row in rows:
        clean = strip_secrets(row.env)
        if clean is not row.env:
            row.env = batch.envs[row.job.id] = clean
    return batch


def prune_interval(days: float) -> float:
    """Seconds between prunings: a quarter of the retention, from 0.5 s to an hour."""
    return min(3600.0, max(0.5, days * DAY / 4))


def prune(state: ClusterState, before: float) -> tuple[list[SimpleJob], Effects]:
    """Drop from memory the jobs that ended before ``before`` (a POSIX time); them, and the
    effects that drop them from the database, keeping their accounting rows."""
    effects = Effects()
    gone: list[SimpleJob] = []
    for job in list(state.jobs.values()):
        if not job.state.ended or job.ended_at is None or job.ended_at.timestamp() >= before:
            continue
        del state.jobs[job.id]
        state.envs.pop(job.id, None)
        state.cancel_requested.discard(job.id)
        gone.append(job)
        effects.batch.pruned.append(AccountingRow(
            job.id, job.user, job.gpus, job.node,
            job.started_at.timestamp() if job.started_at else None,
            job.ended_at.timestamp(), job.state.value, job.exit_code))
    return gone, effects


async def missing(master: Master, job_id: int, who: Identity, error: NotFound) -> NotFound:
    """The 404 for a job not in memory: that it was pruned, when its accounting row says so
    (and the caller may know of it), else ``error``."""
    store, committer = master.store, master.committer
    if store is None or committer is None or job_id >= master.state.next_id:
        return error
    row: AccountingRow | None = await committer.read(partial(store.accounting, job_id))
    if row is None or (master.cfg.private_jobs and not who.admin and row.user != who.user):
        return error
    return NotFound(
        f"job {job_id} ended ({row.state}) more than {master.cfg.job_retention_days:g} days "
        "ago and was pruned (job_retention_days / MGPU_JOB_RETENTION_DAYS): only its "
        "accounting record is kept")
