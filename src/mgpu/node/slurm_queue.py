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
  (``scontrol uhold``/``release``);
* submits an array's tasks, which come in one order (``QueueOrder.array``), as one
  ``sbatch --array=IDS%N``: each task's run follows its SLURM task (``ID_TASK``; squeue's
  ``ArrayJobID``/``ArrayTaskID``, pending tasks in one row ``2-9%2``), writes its own
  output files (``%a``), and gets its own ``MGPU_JOB_ID`` etc. from the script (a ``case``
  on ``SLURM_ARRAY_TASK_ID``).

Cancels, ends, output and re-adoption are the plain bridge's. All of it goes through the
bridge's transport (:attr:`~mgpu.node.slurm.SlurmLink.api`): SLURM's commands as named
above, or slurmrestd (``--slurm-rest``; :mod:`~mgpu.node.slurm_rest` says how each maps).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.core.controls import parse_dependency
from mgpu.node import slurm_cli as sc
from mgpu.node.link_runs import OnEnded, OnOutput
from mgpu.node.runs import NodeRun
from mgpu.node.slurm import SlurmLink
from mgpu.node.slurm_runs import SlurmRun, run_comment
from mgpu.node.slurm_submit import Submission, job_env, local_time

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
    return "--begin=" + local_time(when)


def ref(job: SlurmRun) -> str:
    """A run's SLURM job as SLURM's commands name it: ``ID``, or ``ID_TASK``."""
    return f"{job.slurm_id}" + ("" if job.array_task is None else f"_{job.array_task}")


def slurm_dependency(text: str, slurm_ids: dict[int, str]) -> str:
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
        self._spread: set[str] = set()  # arrays whose sbatch's answer reached every task

    # ------------------------------------------------------------------ submission

    def start(self, msg: m.StartJob) -> NodeRun:
        """Submit a run, or an array's runs (the order's ``array``: one sbatch)."""
        tasks = msg.queue.array if msg.queue is not None else None
        for task in tasks or [m.ArrayTask(0, msg.job_id, msg.run)]:
            key = f"{task.job_id}.{task.run}"  # (a run given again, after the master took
            self.states.pop(key, None)  # it back: SLURM's word on the old one is void)
            self.reported.pop(key, None)
        if not tasks:
            return super().start(msg)
        base = f"array-{msg.job_id}.{msg.run}"
        for task in tasks[1:]:  # (before the first's sbatch: it fails them, or names them)
            run = SlurmRun(task.job_id, task.run, time_limit=msg.time_limit,
                           comment=run_comment(task.job_id, task.run, msg.name,
                                               self.node_id),
                           array_task=task.task_id, array_base=base)
            self.jobs[run.key] = run
        first = super().start(msg)
        assert isinstance(first, SlurmRun)
        first.array_task, first.array_base = tasks[0].task_id, base
        self._save()
        if first.ended is not None:  # (refused at once: its tasks with it)
            self._forward(first)
        return first

    def _array(self, job: SlurmRun) -> list[SlurmRun]:
        """The other runs of ``job``'s SLURM array (none: not an array's)."""
        if job.array_base is None:
            return []
        return [j for j in self.jobs.values() if j.array_base == job.array_base and j is not job]

    def _outputs(self, key: str) -> tuple[Path, Path]:
        job = self.jobs.get(key)
        if job is None or job.array_base is None:
            return super()._outputs(key)
        stem = f"{job.array_base}_{job.array_task}"
        return self.out_dir / f"{stem}.stdout", self.out_dir / f"{stem}.stderr"

    async def _prepare(self, job: SlurmRun, msg: m.StartJob, sub: Submission) -> bool:
        order = msg.queue
        if order is None:
            return True
        if order.array:
            self._prepare_array(msg, order.array, order.throttle, sub)
        sub.hold, sub.begin = order.hold, order.begin
        if order.dependency:
            try:
                _, terms = parse_dependency(order.dependency)
                ids = {i: await self._slurm_ref(i) for _, i in terms}
            except LookupError as e:
                self._fail(job, str(e))
                self._save()
                return False
            sub.dependency = slurm_dependency(order.dependency, ids)
        return True

    def _prepare_array(self, msg: m.StartJob, tasks: list[m.ArrayTask],
                       throttle: int | None, sub: Submission) -> None:
        """One submission for the tasks: an array (``--array``), output files by task
        (``%a``), and each task's own variables set by the script."""
        ids = ",".join(str(t.task_id) for t in tasks)
        sub.array = ids + (f"%{throttle}" if throttle else "")
        base = f"{self.out_dir}/array-{msg.job_id}.{msg.run}_%a"
        sub.stdout, sub.stderr = base + ".stdout", base + ".stderr"
        cases = []
        for task in tasks:
            env = job_env(msgspec.structs.replace(
                msg, job_id=task.job_id, run=task.run, env={**msg.env, **task.env}),
                self.node_id, self.env)
            own = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items())
                           if sub.env.get(k) != v and k.isidentifier())
            cases.append(f"  {task.task_id}) export {own} ;;" if own else
                         f"  {task.task_id}) ;;")
            run = self.jobs.get(f"{task.job_id}.{task.run}")
            if run is not None and run.array_base is not None:
                for path in self._outputs(run.key):  # (the first's: made by _submit)
                    path.touch(mode=0o600)
                    if sub.account is not None:
                        os.chown(path, sub.account.pw_uid, sub.account.pw_gid)
        head, _, body = sub.script.partition("\n")
        sub.script = "\n".join([head, 'case "$SLURM_ARRAY_TASK_ID" in', *cases, "esac",
                                body])

    async def _slurm_ref(self, job_id: int) -> str:
        """SLURM's name of this bridge's run of ``job_id`` (``ID``, or ``ID_TASK`` for an
        array's task), once its sbatch answered; LookupError when it has none (never
        given, or it failed before SLURM had it)."""
        while True:
            runs = [j for j in self.jobs.values() if j.job_id == job_id]
            run = max(runs, key=lambda j: j.run, default=None)
            if run is not None and run.slurm_id is not None:
                return ref(run)
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
            if job.array_base is not None and job.array_base not in self._spread:
                self._spread.add(job.array_base)  # (its array's sbatch answered: theirs too)
                for task in self._array(job):
                    if task.slurm_id is None and task.ended is None:
                        task.slurm_id = job.slurm_id
                        if task.wanted is not None:  # (cancelled meanwhile)
                            self._spawn(self.api.cancel([ref(task)]))
                self._save()
                for task in self._array(job):
                    self._forward(task)
            known = self._known.pop(job.job_id, None)
            if known is not None:
                known.set()
            state = self.states.get(job.key, _SUBMITTED)
            if self.reported.get(job.key) != state:
                if not self.has_room():
                    return False
                self.reported[job.key] = state
                self.send(m.JobQueued(job.job_id, job.run, ref(job), state[0], state[1],
                                      state[2]))
        elif job.ended is not None:  # (failed before SLURM had it: its dependants learn)
            if job.array_base is not None and job.array_base not in self._spread:
                self._spread.add(job.array_base)  # (an array's sbatch: its tasks with it)
                for task in self._array(job):
                    self._fail(task, job.ended.reason or "its array was not submitted")
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
        job = self.jobs.get(key)
        if job is not None and job.ended is not None and job.array_base is not None:
            for path in self._outputs(key):  # (named by its array: gone with it)
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        super().forget(key)
        if key not in self.jobs:
            self.states.pop(key, None)
            self.reported.pop(key, None)

    async def _query(self, ids: list[int]) -> dict[Any, sc.SlurmJob]:
        """squeue's rows; an array's task that was pending and is gone was cancelled: SLURM
        drops a pending task it cancels from its array's row and keeps no record of it."""
        rows: dict[Any, sc.SlurmJob] = dict(await self.api.query_tasks(ids))
        asked = set(ids)
        for job in self.jobs.values():
            key, last = self._key(job), self.states.get(job.key)
            gone = job.wanted is not None or (last is not None and last[0] == "PENDING")
            if (gone and job.ended is None and job.array_task is not None
                    and job.slurm_id in asked and key not in rows):
                rows[key] = sc.SlurmJob(job.slurm_id or 0, "CANCELLED", "", None, 0.0,
                                        job.comment)
        return rows

    def _key(self, job: SlurmRun) -> Any:
        return job.slurm_id, job.array_task

    # ------------------------------------------------------------------ orders

    def _stop(self, job: SlurmRun, state: str, reason: str) -> None:
        if job.array_task is None:
            return super()._stop(job, state, reason)
        if job.wanted is None:  # (an array's task: that task alone)
            job.wanted = (state, reason)
            self._save()
        if job.slurm_id is not None:
            self._spawn(self.api.cancel([ref(job)]))

    def signal(self, job_id: int, signum: int) -> None:
        job = self.active(job_id)
        if job is not None and job.slurm_id is not None:
            self._spawn(self.api.cancel([ref(job)], signum))

    def hold(self, job_id: int, hold: bool) -> None:
        """Hold or release the run of ``job_id`` in SLURM (once SLURM has it)."""
        self._spawn(self._hold(job_id, hold))

    async def _hold(self, job_id: int, hold: bool) -> None:
        try:
            sid = await self._slurm_ref(job_id)
        except LookupError:
            return  # (it failed before SLURM had it: its end says so)
        await (self.api.hold if hold else self.api.release)([sid])
        log.info("job %d (SLURM job %s) %s", job_id, sid, "held" if hold else "released")
        self._wake.set()  # (squeue's new reason reaches the master at once)
