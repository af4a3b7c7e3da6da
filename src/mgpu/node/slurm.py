"""The SLURM bridge: a node agent whose jobs run in a SLURM partition instead of under the
keeper (``mgpu node --backend slurm [--partition P]``).

The agent registers as a node offering the partition's GPUs (:func:`offered_gpus`); to the
master it is one more node. :class:`SlurmLink` stands where the agent's
:class:`~mgpu.node.keeper_link.KeeperLink` stands, with the same orders:

* **start**: the run's :class:`~mgpu.node.slurm_submit.Submission`, sent through
  :attr:`SlurmLink.api` (``sbatch``; or slurmrestd with ``--slurm-rest``: ``slurm_rest``) of
  the command (script on stdin) with ``--gres=gpu:N``, ``-t`` (whole minutes, rounded
  up: the bridge holds the job to the exact limit itself, with ``scancel``), ``--comment
  "mgpu job ID.RUN NAME (node N, TAG)"``, the submitter's directory and environment, and
  output files in ``DATA/slurm/output``. The SLURM job id goes to the master
  (:class:`~mgpu.core.messages.JobStarted` ``backend_id``), which shows it in ``mgpu
  show``. Jobs asking for stdin or a terminal are refused with the fix.
* **output** (:mod:`~mgpu.node.slurm_follow`): the files SLURM writes are followed
  every :data:`~mgpu.node.slurm_follow.TAIL_INTERVAL` and copied, framed (stdout,
  stderr), into the run's spool, from which the agent's usual forwarding
  (:class:`~mgpu.node.link_runs.LinkRuns`) sends them: ``mgpu logs -f`` and ``srun`` work.
* **state**: one batched ``squeue`` (or the transport's query) per ``slurm_poll``
  seconds for every live run; SLURM's end maps to mgpu's
  (:func:`~mgpu.node.slurm_cli.end_of`). A job cancelled with ``scancel`` outside mgpu
  ends as cancelled.
* **cancel**, a time limit, fencing: ``scancel``; the state mgpu wanted is kept so that
  SLURM's CANCELLED reads as cancelled, timeout or node_fail.
* **restart**: each run's SLURM id and end are kept in ``DATA/slurm/runs.json``; a
  restarted bridge re-adopts them, and goes on copying output from where its spool says
  (:mod:`~mgpu.node.slurm_runs`). A run whose submission was cut short is looked up in SLURM by its
  comment.

The data dir must be where the compute nodes can write (a shared filesystem), as SLURM
writes the output files there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.core.timefmt import format_duration
from mgpu.node import slurm_cli as sc
from mgpu.node.link_runs import OnEnded, OnOutput
from mgpu.node.runs import NodeRun
from mgpu.node.slurm_follow import SlurmFollow
from mgpu.node.slurm_rest import transport_of
from mgpu.node.slurm_runs import SlurmRun, load_runs, run_comment, save_runs
from mgpu.node.slurm_submit import Submission, submission_of
from mgpu.node.stdin import InputPump

log = logging.getLogger("mgpu.node.slurm")

RETRY = (0.5, 5.0)  # seconds between sbatch attempts while SLURM does not answer: first, most
CLOSE_WAIT = 5.0  # seconds a stopping bridge waits for its sbatch and scancel calls
MISSING_POLLS = 3  # polls a job may be absent from squeue before it counts as lost
NO_STDIN = ("the SLURM backend gives a job no stdin and no terminal: run it without --pty "
            "and --stdin (for `mgpu srun`, with stdin from /dev/null: `< /dev/null`), or on "
            "one of mgpu's own nodes")


class SlurmLink(SlurmFollow):
    """Runs jobs in SLURM; reports their output and ends through the agent's callbacks (as
    :class:`~mgpu.node.keeper_link.KeeperLink` does); ``send`` carries the SLURM job ids."""

    def __init__(self, cfg: NodeConfig, on_output: OnOutput, on_ended: OnEnded,
                 send: Callable[[m.NodeMessage], None], has_room: Callable[[], bool],
                 on_health: Callable[[str | None], None]) -> None:
        self.cfg = cfg
        self.on_health = on_health  # SLURM does not answer (a reason), or does again (None)
        self.down: str | None = None
        self.node_id = cfg.node_id
        self.data_dir = cfg.effective_data_dir
        self.spool_dir = self.data_dir / "spool"
        self.jobs_dir = self.data_dir / "jobs"
        self.dir = self.data_dir / "slurm"
        self.out_dir = self.dir / "output"
        self.on_output = on_output
        self.on_ended = on_ended
        self.send = send
        self.has_room = has_room
        self.jobs: dict[str, SlurmRun] = {}
        self.input = InputPump(lambda *_: None, lambda _: None)  # (no input: refused)
        self.fence: float | None = None
        self.keeper_pid = 0
        self.env = dict(os.environ)  # SLURM's commands' (SLURM_CONF, PATH)
        self.api = transport_of(cfg, self.env)  # how SLURM is asked: commands, or REST
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Make the directories, re-adopt the runs of ``runs.json``, start following."""
        for d in (self.spool_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.data_dir, self.dir, self.out_dir):  # the path to the output files:
            d.mkdir(exist_ok=True, mode=0o711)  # job users reach their own, list none
            d.chmod(0o711)
        await self._adopt_saved()
        await self._shape()
        self._loop_task = asyncio.create_task(self._follow())

    async def _shape(self) -> None:
        """Learn the partition's SLURM nodes and their GPUs, which the node registers (the
        master places multi-node jobs by them); tried again each poll until SLURM answers."""
        with contextlib.suppress(sc.SlurmError):
            self.backend_nodes = [m.BackendNode(name=n, gpus=g) for n, g in (
                await self.api.partition_nodes(self.cfg.partition)).items()]

    async def close(self, kill_jobs: bool) -> None:
        """Stop following; with ``kill_jobs``, ``scancel`` every live run first (else they
        run on in SLURM, for the next bridge to re-adopt)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:  # a submission retried while SLURM does not answer is cut short:
            # the next bridge looks for it in SLURM by its comment
            _, late = await asyncio.wait(list(self._tasks), timeout=CLOSE_WAIT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if kill_jobs:
            ids = [j.slurm_id for j in self.jobs.values() if j.ended is None and j.slurm_id]
            with contextlib.suppress(sc.SlurmError):
                await self.api.cancel([i for i in ids if i])
        self._save()

    # ------------------------------------------------------------------ runs.json

    def _save(self) -> None:
        save_runs(self.dir / "runs.json", self.jobs)

    async def _adopt_saved(self) -> None:
        for job in load_runs(self.dir / "runs.json", self.spool):
            self.jobs[job.key] = job
            log.info("re-adopted job %s (SLURM job %s, %s)", job.key, job.slurm_id,
                     job.ended.state if job.ended else "running")
        lost = [j for j in self.jobs.values() if j.slurm_id is None and j.ended is None]
        if lost:  # the bridge stopped while submitting them: did SLURM take them?
            known = {sj.comment: sj.id for sj in (await self.api.query([])).values()}
            for job in lost:
                job.slurm_id = known.get(job.comment)
                if job.slurm_id is None:
                    self._fail(job, "the SLURM bridge stopped while submitting the job, "
                               "and SLURM does not have it")
        self._save()

    # ------------------------------------------------------------------ orders

    def start(self, msg: m.StartJob) -> NodeRun:
        """Submit a run to SLURM (in the background); its id, output and end come back."""
        job = SlurmRun(msg.job_id, msg.run, time_limit=msg.time_limit,
                       comment=run_comment(msg.job_id, msg.run, msg.name, self.node_id),
                       tasks=max(1, msg.nodes) * msg.tasks)
        self.jobs[job.key] = job
        if msg.stdin or msg.pty:
            self._fail(job, NO_STDIN)
        elif msg.user == "root" and not self.cfg.allow_root_jobs:
            self._fail(job, "jobs do not run as root: submit as another user, or allow root "
                       "jobs on this node (MGPU_ALLOW_ROOT_JOBS=1, allow_root_jobs in [node])")
        else:
            self._spawn(self._submit(job, msg))
        self._save()  # (before sbatch: a restart then looks for it in SLURM)
        return job

    def refuse(self, msg: m.StartJob, reason: str) -> None:
        job = SlurmRun(msg.job_id, msg.run)
        self.jobs[job.key] = job
        self._fail(job, reason)
        self._save()

    async def _submit(self, job: SlurmRun, msg: m.StartJob) -> None:
        try:
            acct = sc.account_of(msg.user)
        except LookupError as e:
            self._fail(job, str(e))
            self._save()
            return
        out, err = self._outputs(job.key)
        for path in (out, err):
            path.touch(mode=0o600)
            if acct is not None:  # slurmd opens them as the job's user
                os.chown(path, acct.pw_uid, acct.pw_gid)
        sub = submission_of(msg, comment=job.comment, node_id=self.node_id,
                            partition=self.cfg.partition, outputs=(str(out), str(err)),
                            bridge_env=self.env, account=acct)
        if not await self._prepare(job, msg, sub):  # (queue in SLURM: slurm_queue.py)
            return
        delay = RETRY[0]
        while job.slurm_id is None:
            try:
                job.slurm_id = await self.api.submit(sub)
                self._slurm_up()
            except sc.SlurmError as e:
                if not e.unreachable:
                    self._fail(job, f"SLURM did not take the job: {e.message}")
                    self._save()
                    return
                self._slurm_down(e)  # the node takes no new jobs; this one waits
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY[1])
                # (an sbatch that timed out may have been taken all the same)
                with contextlib.suppress(sc.SlurmError):
                    job.slurm_id = {sj.comment: sj.id for sj in (
                        await self.api.query([])).values()}.get(job.comment)
            if job.slurm_id is None and job.wanted is not None:  # cancelled meanwhile
                state, reason = job.wanted
                self._end(job, sc.End(state, None, reason, sc.wanted_cause(state)))
                return
        log.info("job %s is SLURM job %d", job.key, job.slurm_id)
        self._save()
        if job.wanted is not None:  # cancelled while it was being submitted
            await self.api.cancel([job.slurm_id])
        self._forward(job)
        self._wake.set()

    async def _prepare(self, job: SlurmRun, msg: m.StartJob, sub: Submission) -> bool:
        """Complete ``sub`` before its sbatch; False when that failed the run."""
        return True

    def _seen(self, job: SlurmRun, sj: sc.SlurmJob) -> None:
        """What squeue said of a live run (before its end, if it ended, is taken)."""

    def active(self, job_id: int) -> SlurmRun | None:
        for job in self.jobs.values():
            if job.job_id == job_id and job.ended is None:
                return job
        return None

    def cancel(self, job_id: int, reason: str = "cancelled", grace: float | None = None,
               state: str = "cancelled") -> None:
        """``scancel`` the run (SLURM sends SIGTERM, then SIGKILL after its KillWait)."""
        job = self.active(job_id)
        if job is not None:
            self._stop(job, state, reason)

    def kill(self, key: str, reason: str) -> None:
        job = self.jobs.get(key)
        if job is not None and job.ended is None:
            self._stop(job, "node_fail", reason)

    def _stop(self, job: SlurmRun, state: str, reason: str) -> None:
        if job.wanted is None:
            job.wanted = (state, reason)
            self._save()
        if job.slurm_id is not None:
            self._spawn(self.api.cancel([job.slurm_id]))

    def signal(self, job_id: int, signum: int) -> None:
        job = self.active(job_id)
        if job is not None and job.slurm_id is not None:
            self._spawn(self.api.cancel([job.slurm_id], signum))

    def write_stdin(self, job_id: int, data: bytes, eof: bool) -> None:
        """Nothing: jobs that take input are refused at start."""

    def resize(self, job_id: int, rows: int, cols: int) -> None:
        """Nothing: jobs with a terminal are refused at start."""

    def forget(self, key: str) -> None:
        """Drop an ended run, its spool and SLURM's output files (the master has it all)."""
        job = self.jobs.get(key)
        if job is None or job.ended is None:
            return
        del self.jobs[key]
        for path in (self.spool(key), *self._outputs(key)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._save()

    def relink(self) -> None:
        super().relink()
        for job in self.jobs.values():
            job.id_sent = False

    def _forward(self, job: NodeRun) -> bool:
        """The SLURM id goes first (once a link), then output and end."""
        if isinstance(job, SlurmRun) and job.slurm_id is not None and not job.id_sent:
            if not self.has_room():
                return False
            job.id_sent = True
            self.send(m.JobStarted(job.job_id, -1, run=job.run, backend_id=str(job.slurm_id),
                                   backend_nodes=job.nodes or None))
        return super()._forward(job)

    # ------------------------------------------------------------------ following

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("SLURM: %s", task.exception())

    async def _query(self, ids: list[int]) -> dict[Any, sc.SlurmJob]:
        """What squeue says of the SLURM jobs ``ids``, by :meth:`_key`."""
        return dict(await self.api.query(ids))

    def _key(self, job: SlurmRun) -> Any:
        return job.slurm_id  # (an array's task: slurm_queue.py)

    async def _poll(self) -> None:
        if self.backend_nodes is None:
            await self._shape()
        live = {self._key(j): j for j in self.jobs.values()
                if j.ended is None and j.slurm_id is not None}
        if not live:
            return
        seen = await self._query(sorted({j.slurm_id for j in live.values() if j.slurm_id}))
        self._slurm_up()
        now = time.time()
        for key, job in live.items():
            sj = seen.get(key)
            if sj is None:
                job.missing += 1
                if job.missing >= MISSING_POLLS:
                    # Not requeued (no cause given): it may well have run to its end.
                    self._end(job, sc.End("node_fail", None, f"SLURM no longer knows job "
                              f"{job.slurm_id} (it ended long ago, or slurmctld lost it)",
                              None))
                continue
            job.missing = 0
            if sj.nodes and sj.nodes != job.nodes:  # (where SLURM runs it: the master's too)
                job.nodes, job.id_sent = sj.nodes, False
                self._forward(job)
            self._seen(job, sj)
            end = sc.end_of(sj, job.wanted)
            if end is not None:
                self._end(job, end)
            elif (job.time_limit and sj.start_time and job.wanted is None
                  and sj.state == "RUNNING" and now >= sj.start_time + job.time_limit):
                self._stop(job, "timeout",
                           f"time limit of {format_duration(job.time_limit)} reached")
        self._save()

    def _end(self, job: SlurmRun, end: sc.End) -> None:
        self._tail(job, final=True)
        if job.failure is not None and end.state == "failed":  # a gang: srun says which
            end = sc.End(end.state, job.failure[0], job.failure[1], end.cause)  # task failed
        size = self.output_size(job.key)
        job.known = size
        job.ended = m.JobEnded(job.job_id, job.run, end.state, end.exit_code, end.reason,
                               size, end.cause)
        log.info("job %s (SLURM job %s) ended: %s", job.key, job.slurm_id, end.state)
        self._save()
        self._forward(job)
