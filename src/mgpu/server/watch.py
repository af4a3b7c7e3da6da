"""Who follows a job: the output watchers, and the clients attached to interactive jobs.

A route that streams a job's output (or waits for it to run) adds an event to
``watchers[job_id]``; :meth:`OutputWatch.notify_output` sets them when the job has new
output, is placed or ends. A dashboard stream adds one to ``changes`` too, which
:meth:`OutputWatch.changed` sets whenever the master has saved a change. An interactive
job (srun, attach) whose last client has gone for the grace period (``srun_grace``) is
cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from mgpu.server.changes import Changes

if TYPE_CHECKING:
    from mgpu.server.context import Context

log = logging.getLogger("mgpu.master")


class OutputWatch:
    """The events of those following each job, and the count of each interactive job's
    clients."""

    def __init__(self, master: Context) -> None:
        self.master = master
        self.watchers: dict[int, set[asyncio.Event]] = {}
        self.attached: dict[int, int] = {}  # interactive job -> clients following it
        self._detach_timers: dict[int, asyncio.TimerHandle] = {}
        self.changes = Changes()  # the dashboard's streams (api_dash.py)

    def notify_output(self, job_id: int) -> None:
        for ev in self.watchers.get(job_id, ()):
            ev.set()

    def changed(self) -> None:
        """The master saved a change: wake every dashboard stream (each looks at what it
        shows, at most every ``api_dash.COALESCE`` seconds)."""
        self.changes.changed()

    def attach(self, job_id: int) -> None:
        """A client follows an interactive job (srun, attach)."""
        self.attached[job_id] = self.attached.get(job_id, 0) + 1
        timer = self._detach_timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def detach(self, job_id: int) -> None:
        """A client stopped following: with none left for the grace period, cancel the job."""
        left = self.attached.get(job_id, 1) - 1
        if left > 0:
            self.attached[job_id] = left
            return
        self.attached.pop(job_id, None)
        job = self.master.state.jobs.get(job_id)
        if job is None or not job.interactive or job.state.ended or self.master.closing:
            return
        self._detach_timers[job_id] = asyncio.get_running_loop().call_later(
            self.master.cfg.srun_grace, self._client_gone, job_id)

    def _client_gone(self, job_id: int) -> None:
        self._detach_timers.pop(job_id, None)
        job = self.master.state.jobs.get(job_id)
        if job is None or job.state.ended or self.attached.get(job_id):
            return
        log.warning("job %d: its interactive client has been gone for %gs: cancelling it",
                    job_id, self.master.cfg.srun_grace)
        _, effects = self.master.state.on_cancel([job_id], time.time(),
                                                 reason="its srun client went away")
        self.master.apply(effects)
