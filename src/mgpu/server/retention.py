"""What the master keeps, and for how long: no mgpu secrets ever; ended jobs for
``job_retention_days``, then only an accounting row.

* **Secrets.** ``MGPU_TOKEN``, ``MGPU_JOIN_TOKEN`` and any other ``MGPU_*_TOKEN``,
  ``MGPU_*_SECRET``, ``_PASSWORD`` or ``_CREDENTIAL`` (:func:`mgpu.utils.secretenv.is_secret`,
  the rule the ``mgpu`` command also applies) are taken out of every
  submitted environment, whatever the client sent, so they are neither saved with the job
  nor passed to it; a database written before this is scrubbed at start-up.
* **Retention.** A job that ended more than ``job_retention_days`` ago is pruned: from
  memory, from the ``jobs`` table (its command, environment) and its output files; the
  accounting rows of its runs (``runs``: user, GPUs, node, start, end, state, exit code,
  GPU-seconds; saved when each run ended, ``server/accounting.py``) stay. The master prunes
  at start-up and then every :func:`prune_interval`. Asking for a pruned job answers 404
  and says that it was pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial
from typing import TYPE_CHECKING

from mgpu.core.errors import NotFound, StoreError
from mgpu.core.gang import spool_keys
from mgpu.core.models import SimpleJob, run_key
from mgpu.server.auth import Identity
from mgpu.server.effects import Effects
from mgpu.server.store import Batch, LoadedJob, RunRow
from mgpu.utils.secretenv import is_secret

if TYPE_CHECKING:
    from mgpu.server.context import Context
    from mgpu.server.state import ClusterState

log = logging.getLogger("mgpu.master")

DAY = 86400.0
AUDIT_PRUNE_EVERY = 3600.0  # seconds between prunings of the audit log


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
    effects that drop them from the database (their runs' accounting rows stay)."""
    effects = Effects()
    gone: list[SimpleJob] = []
    for job in list(state.jobs.values()):
        if (not job.state.ended or job.ended_at is None or job.ended_at.timestamp() >= before
                or state.shares_env(job.id)):  # (an array's row holds its tasks' env)
            continue
        del state.jobs[job.id]
        state.envs.pop(job.id, None)
        state.cancel_requested.discard(job.id)
        gone.append(job)
        effects.batch.pruned.append(job.id)
    return gone, effects


async def missing(master: Context, job_id: int, who: Identity, error: NotFound) -> NotFound:
    """The 404 for a job not in memory: that it was pruned, when its accounting row says so
    (and the caller may know of it), else ``error``."""
    store, committer = master.store, master.committer
    if store is None or committer is None or job_id >= master.state.next_id:
        return error
    row: RunRow | None = await committer.read(partial(store.last_run, job_id))
    if row is None or (master.cfg.private_jobs and not who.admin and row.user != who.user):
        return error
    return NotFound(
        f"job {job_id} ended ({row.state}) more than {master.cfg.job_retention_days:g} days "
        "ago and was pruned (job_retention_days / MGPU_JOB_RETENTION_DAYS): only its "
        "accounting record is kept (`mgpu usage`)")


async def prune_audit(master: Context) -> None:
    """Keep the audit log to its last ``audit_days`` (0: keep it all): at start, then
    hourly, on the store's thread between writes."""
    days = master.cfg.audit_days
    assert master.committer is not None and master.store is not None
    store = master.store
    while days > 0:
        before = time.time() - days * 86400
        try:
            gone = await master.committer.read(partial(store.prune_audit, before))
        except StoreError as e:
            log.error("%s", e.message)
        else:
            if gone:
                log.info("audit log: dropped %d events older than %g days (audit_days)",
                         gone, days)
        await asyncio.sleep(AUDIT_PRUNE_EVERY)


async def prune_jobs(master: Context) -> None:
    """Prune jobs ended more than ``job_retention_days`` ago (0: keep them): at start,
    then every :func:`prune_interval`."""
    days = master.cfg.job_retention_days
    while days > 0:
        gone, effects = prune(master.state, time.time() - days * DAY)
        if gone:
            try:
                await master.apply(effects)
            except StoreError:
                pass  # logged; they are pruned from the database at the next pass
            else:
                assert master.output is not None
                for job in gone:
                    for run in range(job.run + 1):
                        for key in spool_keys(run_key(job.id, run), job.nodes,
                                              job.ntasks_per_node):
                            master.output.close(key)
                            with contextlib.suppress(OSError):
                                master.output.file(key).unlink()
                log.info("pruned %d jobs ended over %g days ago (job_retention_days); "
                         "their accounting records are kept", len(gone), days)
        await asyncio.sleep(prune_interval(days))
