"""The gate of the job controls: which pending jobs may be in the queue the policy sees.

A pending job that may not start yet (held, a begin time or a retry's back-off in the
future, a dependency not met, its array's ``%N`` reached, its user's QoS GPU cap reached)
is kept OUT of ``ClusterState.pending``: the policy never sees it. It waits here, in
``gated``, with its reason code in ``SimpleJob.pending_reason`` and the words in
``reason``. A gated job is looked at again only on the events that can free it: a job it
depends on starts or ends, a timer for its begin time, a task of its array or a job of its
user leaves the queue, a release, a change of limits (:meth:`JobControls.gate_pass`, run by
the master before every scheduling pass).

A job let into the queue is *admitted*: it counts towards its array's ``%N`` and its
user's GPU cap until it ends, is held, or waits for a retry. So the policy may place every
job it sees without passing either limit.

Retries (``--retries N``): a run that exits non-zero goes back to pending after a back-off
(``retry_backoff``, doubled each retry, capped at ``retry_backoff_max``), counted in
``retries``, apart from ``requeues`` after a lost node. Arrays and limits are in
``arrays.py`` and ``limits.py``.
"""

from __future__ import annotations

import heapq
from abc import abstractmethod
from bisect import insort
from collections.abc import Callable, Iterable, Iterator

from mgpu.core import controls as c
from mgpu.core import messages as m
from mgpu.core.control_messages import UserLimits
from mgpu.core.errors import UsageError
from mgpu.core.models import EndCause, JobState, SimpleJob, advance, utc
from mgpu.core.scheduler import JobSnapshot
from mgpu.server.auth import Identity
from mgpu.server.effects import Effects
from mgpu.server.node_events import Node, NodeEvents

_RETRIED_CAUSES = (None, EndCause.EXITED, EndCause.SIGNALED)


class JobControls(NodeEvents):
    """The gate half of :class:`~mgpu.server.state.ClusterState` (which holds the queue)."""

    pending: dict[int, JobSnapshot]
    arrays: dict[int, dict[int, int]]  # array id -> task id -> job id (``arrays.py``)

    @abstractmethod
    def _enqueue(self, job: SimpleJob, *, in_place: bool = False) -> None:
        """Put ``job`` in the queue the policy sees."""

    @abstractmethod
    def _dequeue(self, job_id: int) -> None:
        """Take ``job_id`` out of that queue."""

    def init_controls(self) -> None:
        self.gated: dict[int, str] = {}  # job id -> its reason code
        self.admitted: dict[int, tuple[str, int, int | None]] = {}  # -> (user, GPUs, array)
        self.user_gpus: dict[str, int] = {}  # GPUs of each user's admitted jobs
        self.array_active: dict[int, int] = {}  # admitted tasks of each throttled array
        self.arrays = {}
        self.timers: list[tuple[float, int]] = []  # (when, job id): begin times, back-offs
        self.dep_waiters: dict[int, set[int]] = {}  # job id -> gated jobs depending on it
        self.throttled: dict[int, list[int]] = {}  # array id -> its gated tasks, in order
        self.qos_waiting: dict[str, list[int]] = {}  # user -> jobs over the GPU cap
        self.limits: dict[str, UserLimits] = {}
        self.retry_backoff = 10.0
        self.retry_backoff_max = 600.0
        self._drain: set[tuple[str, int | None]] = set()  # (user, array) with room freed
        self._loaded = Effects()  # what start-up decided, saved with the first pass

    # ------------------------------------------------------------------ admission

    def _charge(self, job: SimpleJob) -> None:
        array = job.array_job_id if job.array_throttle else None
        self.admitted[job.id] = (job.user, job.gpus, array)
        self.user_gpus[job.user] = self.user_gpus.get(job.user, 0) + job.gpus
        if array is not None:
            self.array_active[array] = self.array_active.get(array, 0) + 1

    def _uncharge(self, job_id: int) -> None:
        """``job_id`` no longer counts (it ended, or waits again): room for others."""
        held = self.admitted.pop(job_id, None)
        if held is None:
            return
        user, gpus, array = held
        self.user_gpus[user] -= gpus
        if array is not None:
            self.array_active[array] -= 1
        self._drain.add((user, array))

    def _blocker(self, job: SimpleJob, now: float) -> tuple[str, str] | None:
        """Why ``job`` may not be in the queue now (code, words), or None. Registers it
        where the event that can free it will find it."""
        return self._control_blocker(job, now) or self._limit_blocker(job)

    def _control_blocker(self, job: SimpleJob, now: float) -> tuple[str, str] | None:
        """Its hold, begin time or dependency (what a queue-in-SLURM bridge leaves to
        SLURM: ``handoff.py``)."""
        if job.held:
            return c.HELD, f"`mgpu release {job.id}` lets it start"
        if job.begin_at is not None and job.begin_at.timestamp() > now:
            when = job.begin_at.timestamp()
            heapq.heappush(self.timers, (when, job.id))
            words = f"not before {job.begin_at.isoformat(timespec='seconds')}"
            if job.retries:
                words = f"retry {job.retries} of {job.max_retries}, {words} (back-off)"
            return c.BEGIN_TIME, words
        if job.dependency:
            status, words = self._dep_status(job)
            if status is None:
                return c.DEPENDENCY, words
            if status is False:
                return c.DEPENDENCY_NEVER, words
        return None

    def _limit_blocker(self, job: SimpleJob, throttle_here: bool = True
                       ) -> tuple[str, str] | None:
        """Its array's ``%N`` (unless not ``throttle_here``: SLURM's) or its user's GPU cap
        (mgpu's, whoever runs the job)."""
        throttle, array = job.array_throttle, job.array_job_id
        if (throttle and throttle_here and array is not None
                and self.array_active.get(array, 0) >= throttle):
            insort(self.throttled.setdefault(array, []), job.id)
            return c.ARRAY_LIMIT, f"array {array} runs at most {throttle} tasks at once"
        cap = self.limits.get(job.user, UserLimits()).max_gpus
        used = self.user_gpus.get(job.user, 0)
        if cap is not None and used + job.gpus > cap:
            insort(self.qos_waiting.setdefault(job.user, []), job.id)
            return c.QOS_MAX_GPUS, (f"{job.user} may use at most {cap} GPUs at once "
                                    f"(`mgpu limits list`); {used} in use or queued")
        return None

    def _dep_terms(self, job: SimpleJob
                   ) -> Iterator[tuple[str, int, SimpleJob | None, bool | None]]:
        """Each term of ``job``'s dependency, an array's tasks one by one: its kind, the
        job it names, that job (None: unknown) and whether the term holds (None: not yet)."""
        for kind, dep_id in c.parse_dependency(job.dependency or "")[1]:
            tasks = self.arrays.get(dep_id)
            for one in (list(tasks.values()) if tasks else [dep_id]):
                dep = self.jobs.get(one)
                yield kind, one, dep, c.term_status(
                    kind, None if dep is None else dep.state.value,
                    dep is not None and dep.started_at is not None)

    def _dep_status(self, job: SimpleJob) -> tuple[bool | None, str]:
        statuses: list[bool | None] = []
        waiting: list[str] = []
        for kind, one, _, status in self._dep_terms(job):
            statuses.append(status)
            if status is None:
                self.dep_waiters.setdefault(one, set()).add(job.id)
                waiting.append(f"{kind}:{one}")
        status = c.combine(c.parse_dependency(job.dependency or "")[0], statuses)
        if status is False:
            return False, f"{job.dependency} can no longer be met"
        return status, f"waits for {', '.join(waiting[:5])}" + (" ..." if len(waiting) > 5 else "")

    def _settle(self, job: SimpleJob, now: float, effects: Effects, queued: bool) -> None:
        """Admit ``job`` (``queued``: already in the queue) or gate it with its reason."""
        why = self._blocker(job, now)
        if why is None:
            self.gated.pop(job.id, None)
            job.pending_reason = None
            if not queued:
                self._enqueue(job, in_place=True)
            self._charge(job)
            return
        code, words = why
        if queued:
            self._dequeue(job.id)
        if code == c.DEPENDENCY_NEVER and job.kill_on_invalid_dep:
            self.gated.pop(job.id, None)
            self.envs.pop(job.id, None)
            advance(job, JobState.CANCELLED, now, reason=f"{code}: {words}")
            job.pending_reason = c.DEPENDENCY_NEVER
            effects.update(job)
            effects.ended.append(job.id)
            return
        self.gated[job.id] = code
        job.pending_reason, job.reason = code, f"{code}: {words}"
        job.expected_start = None  # (the plan's, from when it was in the queue)

    def gate_pass(self, effects: Effects, now: float) -> Effects:
        """Look again at the gated jobs that ``effects`` (what just happened) and the clock
        may have freed; what that changed (jobs cancelled for a dependency never met)."""
        out, self._loaded = self._loaded, Effects()
        ended = list(effects.ended)
        wake: set[int] = set()
        for job in effects.batch.updates.values():  # started: "after" may now hold
            if job.state is JobState.RUNNING:
                wake.update(self.dep_waiters.pop(job.id, ()))
        while self.timers and self.timers[0][0] <= now:
            wake.add(heapq.heappop(self.timers)[1])
        while ended or wake or self._drain:
            for job_id in ended:
                self.gated.pop(job_id, None)
                self._uncharge(job_id)
                wake.update(self.dep_waiters.pop(job_id, ()))
            ended = []
            wake.update(self._drained())
            before = len(out.ended)
            for job_id in sorted(wake):
                woken = self.jobs.get(job_id)
                if woken is not None and woken.state is JobState.PENDING and job_id in self.gated:
                    self._settle(woken, now, out, queued=False)
            wake = set()
            ended = out.ended[before:]
        return out

    def _drained(self) -> list[int]:
        """Gated jobs that fit in the room freed in their array or under their user's cap
        (first come, first in)."""
        freed, self._drain = self._drain, set()
        out: list[int] = []
        users = {u for u, _ in freed}
        for array in {a for _, a in freed if a is not None}:
            waiting = self.throttled.get(array, [])
            room = len(waiting)
            first = self.jobs.get(waiting[0]) if waiting else None
            if first is not None and first.array_throttle:
                room = first.array_throttle - self.array_active.get(array, 0)
            while waiting and room > 0:
                job_id = waiting.pop(0)
                if self.gated.get(job_id) == c.ARRAY_LIMIT:
                    out.append(job_id)
                    room -= 1
        for user in users:
            waiting = self.qos_waiting.get(user, [])
            cap = self.limits.get(user, UserLimits()).max_gpus
            used = self.user_gpus.get(user, 0)  # (each job let in is checked again)
            while waiting:
                job = self.jobs.get(waiting[0])
                if job is None or self.gated.get(job.id) != c.QOS_MAX_GPUS:
                    waiting.pop(0)
                    continue
                if cap is not None and used + job.gpus > cap:
                    break
                used += job.gpus
                out.append(waiting.pop(0))
        return out

    def limits_changed(self, user: str) -> None:
        """``user``'s limits changed: its jobs waiting on its GPU cap look again."""
        self._drain.add((user, None))

    def gate_forget(self, job_ids: Iterable[int]) -> None:
        """Forget jobs whose submit could not be saved."""
        for job_id in job_ids:
            self.gated.pop(job_id, None)
            self._uncharge(job_id)
        self._drain.clear()

    # ------------------------------------------------------------------ holds

    def acted_on(self, job_id: int, who: Identity | None, private: bool,
                 verb: str) -> SimpleJob | m.CancelResult:
        """Job ``job_id`` for ``who`` to ``verb`` ("cancel", "hold"...) in a request about
        many jobs, or that job's refusal: unknown or hidden from ``who`` (not_found), or
        another user's (forbidden). ``who`` None: the master itself, which may do anything."""
        job = self.jobs.get(job_id)
        if job is None or (who is not None and not who.sees(job, private)):
            return m.CancelResult(job_id, False, error=f"no job {job_id}", code="not_found")
        if who is not None and not who.owns(job):
            return m.CancelResult(
                job_id, False, state=job.state.value, code="forbidden",
                error=f"job {job_id} belongs to {job.user}: only its owner or an admin may "
                f"{verb} it")
        return job

    def on_hold(self, job_ids: list[int], hold: bool, now: float, who: Identity | None,
                private: bool) -> tuple[list[m.CancelResult], Effects]:
        """Hold pending jobs (``hold``), or release held ones, for their owner or an admin."""
        effects = Effects()
        results: list[m.CancelResult] = []
        verb = "hold" if hold else "release"
        for job_id in job_ids:
            job = self.acted_on(job_id, who, private, verb)
            if isinstance(job, m.CancelResult):
                results.append(job)
            elif job.state is not JobState.PENDING:
                results.append(m.CancelResult(
                    job_id, False, state=job.state.value, code="ended",
                    error=f"job {job_id} is {job.state.value}: only pending jobs can be "
                    f"{'held' if hold else 'released'}"))
            else:
                if job.held != hold:
                    job.held = hold
                    effects.update(job)
                    if hold:
                        self._uncharge(job.id)
                        self._settle(job, now, effects, queued=job.id in self.pending)
                    elif job.id in self.gated:
                        self._settle(job, now, effects, queued=False)
                results.append(m.CancelResult(job_id, True, state=job.state.value))
        effects.merge(self.gate_pass(Effects(), now))  # what a hold made room for
        return results, effects

    # ------------------------------------------------------------------ retries

    def on_job_ended(self, node_id: str, msg: m.JobEnded, now: float, *,
                     node: Node | None = None) -> Effects:
        """A run's end; one that exited non-zero with retries left waits for its next run."""
        job = self.jobs.get(msg.job_id)
        if (job is None or job.state is not JobState.RUNNING or job.node != node_id
                or job.parts is not None  # (a gang's end is its parts': gang.py retries)
                or job.run != msg.run or not self.retried(job, msg.state, msg.exit_code,
                                                          msg.end_cause)):
            return super().on_job_ended(node_id, msg, now, node=node)
        effects = Effects()
        effects.sends.append((node_id, m.EndedAck([msg.key])))
        node = node or self.nodes.get(node_id)
        if node is not None:
            node.release(job.id)
        self.retry(job, msg.exit_code, now, effects)
        return effects

    def retried(self, job: SimpleJob, state: str, exit_code: int | None,
                cause: EndCause | None) -> bool:
        """Whether a run of ``job`` that ended so runs again (``--retries``)."""
        return (job.retries < job.max_retries and state == JobState.FAILED.value
                and bool(exit_code) and cause in _RETRIED_CAUSES
                and job.id not in self.cancel_requested)

    def retry(self, job: SimpleJob, exit_code: int | None, now: float,
              effects: Effects) -> None:
        """Send ``job`` (its GPUs released) back to wait for its next run, after a back-off."""
        job.retries += 1
        delay = c.backoff(self.retry_backoff, job.retries, self.retry_backoff_max)
        advance(job, JobState.PENDING, now, reason=(
            f"retry {job.retries} of {job.max_retries} after exit code {exit_code}: "
            f"back-off of {delay:g} s"))
        job.begin_at = utc(now + delay)
        effects.update(job)
        self._uncharge(job.id)
        self._settle(job, now, effects, queued=False)

    # ------------------------------------------------------------------ start-up

    @abstractmethod
    def load_array_envs(self, load_env: Callable[[int], dict[str, str]]) -> None:
        """At start-up: array tasks get their array's saved environment (``arrays.py``)."""

    def start_controls(self, limits: dict[str, UserLimits], now: float,
                       load_env: Callable[[int], dict[str, str]]) -> None:
        """After the jobs are loaded: the limits, the arrays, and the gate rebuilt (what
        that changes is saved with the first scheduling pass)."""
        self.limits = dict(limits)
        effects = self._loaded
        for job in self.jobs.values():
            if job.array_job_id is not None and job.array_task_id is not None:
                self.arrays.setdefault(job.array_job_id, {})[job.array_task_id] = job.id
            if job.state is JobState.RUNNING:
                self._charge(job)
        self.load_array_envs(load_env)
        for job in list(self.jobs.values()):
            if job.state is JobState.PENDING:
                self._settle(job, now, effects, queued=job.id in self.pending)


def check_retries(retries: int, where: str) -> None:
    if not 0 <= retries <= c.MAX_RETRIES:
        raise UsageError(f"{where}--retries must be from 0 to {c.MAX_RETRIES}, got {retries}")
