"""Queue in SLURM: a SLURM bridge whose jobs wait in SLURM's queue, not in mgpu's
(``mgpu node --backend slurm --slurm-queue``; README "Queue in SLURM").

The master hands such a bridge each job bound for it as soon as mgpu's own conditions
allow (``server/handoff.py``), whatever its free GPUs, with a
:class:`~mgpu.core.messages.QueueOrder`: what SLURM is to decide of it. :class:`QueueLink`
is the :class:`~mgpu.node.slurm.SlurmLink` that

* submits it with ``--hold``, ``--begin`` and ``--dependency`` (the master names the jobs
  it depends on by their mgpu ids: each is the SLURM job of this bridge's run of it,
  waited for while that run's own ``sbatch`` is under way);
* reports SLURM's state and reason for each run (:class:`~mgpu.core.messages.JobQueued`)
  when it changes, and once on every new link; a run's start (SLURM's start time) goes
  before any of its output, which waits in the spool until then;
* holds and releases runs on the master's :class:`~mgpu.core.messages.HoldJob`
  (``scontrol uhold``/``release``).

Cancels, ends, output and re-adoption are the plain bridge's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.core.controls import parse_dependency
from mgpu.node import slurm_cli as sc
from mgpu.node.link_runs import OnEnded, OnOutput
from mgpu.node.runs import NodeRun
from mgpu.node.slurm import SlurmLink
from mgpu.node.slurm_runs import SlurmRun
from mgpu.node.slurm_submit import Submission

log = logging.getLogger("mgpu.node.slurm")

# SLURM's states of a job that has run (or runs): its start time is a start. (A job
# cancelled while pending gets a start time too: the time of its cancel.)
RAN = frozenset({"RUNNING", "COMPLETING", "COMPLETED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY",
                 "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "NODE_FAIL", "PREEMPTED"})

_State = tuple[str, str, float | None]  # SLURM's state, its reason, the run's start
_SUBMITTED: _State = ("PENDING", "submitted", None)  # (until squeue says more)


def bridge_link(cfg: NodeConfig, on_output: OnOutput, on_ended: OnEnded,
                send: Callable[[m.NodeMessage], None], has_room: Callable[[], bool],
                on_health: Callable[[str | None], None]) -> SlurmLink:
    """The SLURM bridge's link: a :class:`QueueLink` with ``slurm_queue``, else plain."""
    kind = QueueLink if cfg.slurm_queue else SlurmLink
    return kind(cfg, on_output, on_ended, send, has_room, on_health)


def begin_arg(when: float) -> str:
    """``--begin`` of a Unix time: local time, as sbatch reads it, to the second."""
    return "--begin=" + datetime.fromtimestamp(when).strftime("%Y-%m-%dT%H:%M:%S")


def slurm_dependency(text: str, slurm_ids: dict[int, int]) -> str:
    """``--dependency``'s value: ``text`` (mgpu ids, as core/controls.py parses it) with each
    job's SLURM id (``slurm_ids``); ``?`` (any) or ``,`` (all) joins the terms, as in
    mgpu."""
    anyof, terms = parse_dependency(text)
    return ("?" if anyof else ",").join(f"{kind}:{slurm_ids[i]}" for kind, i in terms)


class QueueLink(SlurmLink):
    """A bridge whose runs wait in SLURM's queue: see the module docstring."""

    def __init__(self, cfg: NodeConfig, on_output: OnOutput, on_ended: OnEnded,
                 send: Callable[[m.NodeMessage], None], has_room: Callable[[], bool],
                 on_health: Callable[[str | None], None]) -> None:
        super().__init__(cfg, on_output, on_ended, send, has_room, on_health)
        self.states: dict[str, _State] = {}  # run key -> what squeue said last
        self.reported: dict[str, _State] = {}  # run key -> what the master heard (this link)
        self._known: dict[int, asyncio.Event] = {}  # job id -> set once its SLURM id is

    # ------------------------------------------------------------------ submission

    async def _prepare(self, job: SlurmRun, msg: m.StartJob, sub: Submission) -> bool:
        order = msg.queue
        if order is None:
            return True
        if order.hold:
            sub.options.append("--hold")
        if order.begin is not None:
            sub.options.append(begin_arg(order.begin))
        if order.dependency:
            try:
                _, terms = parse_dependency(order.dependency)
                ids = {i: await self._slurm_id_of(i) for _, i in terms}
            except LookupError as e:
                self._fail(job, str(e))
                self._save()
                return False
            sub.options.append("--dependency=" + slurm_dependency(order.dependency, ids))
        return True

    async def _slurm_id_of(self, job_id: int) -> int:
        """The SLURM id of this bridge's run of ``job_id``, once its sbatch answered;
        LookupError when it has none (never given, or it failed before SLURM had it)."""
        while True:
            runs = [j for j in self.jobs.values() if j.job_id == job_id]
            run = max(runs, key=lambda j: j.run, default=None)
            if run is not None and run.slurm_id is not None:
                return run.slurm_id
            if run is None or run.ended is not None:
                raise LookupError(f"job {job_id}, which this job depends on, is not in SLURM "
                                  "through this bridge: submit it again once that job is")
            await self._known.setdefault(job_id, asyncio.Event()).wait()

    # ------------------------------------------------------------------ reports

    def _seen(self, job: SlurmRun, sj: sc.SlurmJob) -> None:
        start = sj.start_time if sj.state in RAN and sj.start_time else None
        state = (sj.state, sj.reason, start)
        if self.states.get(job.key) != state:
            self.states[job.key] = state
            self._forward(job)

    def _forward(self, job: NodeRun) -> bool:
        """SLURM's word on the run first (its id, state, reason, start); its output only
        once the master heard it started; its end after that."""
        if not isinstance(job, SlurmRun):
            return super()._forward(job)
        if job.slurm_id is not None:
            known = self._known.pop(job.job_id, None)
            if known is not None:
                known.set()
            state = self.states.get(job.key, _SUBMITTED)
            if self.reported.get(job.key) != state:
                if not self.has_room():
                    return False
                self.reported[job.key] = state
                self.send(m.JobQueued(job.job_id, job.run, str(job.slurm_id), state[0],
                                      state[1], state[2]))
        elif job.ended is not None:  # (failed before SLURM had it: its dependants learn)
            known = self._known.pop(job.job_id, None)
            if known is not None:
                known.set()
        job.id_sent = True  # (the plain bridge's JobStarted is not sent)
        started = self.reported.get(job.key, _SUBMITTED)[2] is not None
        if job.ended is None and not started:
            return True  # its output waits in the spool until the master heard it started
        return super()._forward(job)

    def relink(self) -> None:
        super().relink()
        self.reported.clear()

    def forget(self, key: str) -> None:
        super().forget(key)
        if key not in self.jobs:
            self.states.pop(key, None)
            self.reported.pop(key, None)

    # ------------------------------------------------------------------ orders

    def hold(self, job_id: int, hold: bool) -> None:
        """Hold or release the run of ``job_id`` in SLURM (once SLURM has it)."""
        self._spawn(self._hold(job_id, hold))

    async def _hold(self, job_id: int, hold: bool) -> None:
        try:
            sid = await self._slurm_id_of(job_id)
        except LookupError:
            return  # (it failed before SLURM had it: its end says so)
        await (self.api.hold if hold else self.api.release)([sid])
        log.info("job %d (SLURM job %d) %s", job_id, sid, "held" if hold else "released")
        self._wake.set()  # (squeue's new reason reaches the master at once)
