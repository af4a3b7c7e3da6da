"""Queue in SLURM on the master: jobs handed to a queue-in-SLURM bridge as soon as mgpu's own
conditions allow, to wait in SLURM's queue (README "Queue in SLURM").

A job is *bound* for such a bridge (``Node.slurm_queue``, said at registration) when it is
a one-node job of one task, the bridge takes jobs now, serves its user and has as many GPUs,
and its partition is the bridge's (or it names none and every node of the master is such a
bridge). For a bound job:

* **The gate** (``controls.py``) keeps only what stays mgpu's: its array's ``%N`` and its
  user's GPU cap (QoS). Its hold and begin time go to SLURM (``sbatch --hold``, ``--begin``);
  of its dependency, the master decides the terms it can (a job that ended, or runs
  elsewhere, or is unknown) and passes the rest, those on live jobs of the same bridge, to
  SLURM (``--dependency``, in mgpu ids that the bridge turns into SLURM's). A term on a job
  that waits in mgpu's queue or runs on another node keeps it in the gate, as ever.
* **Hand-off** (:meth:`Handoff.schedule`, before the policy's pass): each admitted bound
  job leaves the queue the policy sees, whatever the bridge's free GPUs. It stays
  ``pending``, with its ``node`` (the bridge) and, once SLURM took it, its ``backend_id``
  and SLURM's reason (``pending_reason`` ``Priority``, ``Dependency``, ``JobHeldUser``...;
  the words ``in SLURM: ...``). Jobs go in id order, so a job's parents are handed first.
* **Start**: SLURM's start (:class:`~mgpu.core.messages.JobQueued` with a start time) makes
  it ``running`` with SLURM's start time, on as many of the bridge's GPUs as are free
  (the count mgpu shows; SLURM decided). Its end is the plain bridge's.
* **Hold, release, cancel** of a handed job become the bridge's ``scontrol uhold``,
  ``release``, ``scancel``; a cancel ends it at once. SLURM's ``DependencyNeverSatisfied``
  ends it as mgpu's own would (cancelled, unless ``--kill-on-invalid-dep no``); an end
  SLURM gives it before it ran (``scancel`` there) ends it so.
* **The bridge lost** (down, back without the run, an order that could not be saved or
  sent) or not back after a master restart: the job goes back to mgpu's gate and queue;
  a bridge that comes back with the run is told to kill it (``Registered.kill``).

Like every handler, nothing here does I/O or reads the clock.
"""

from __future__ import annotations

from collections.abc import Callable

from mgpu.core import controls as c
from mgpu.core import messages as m
from mgpu.core.control_messages import UserLimits
from mgpu.core.models import JobState, NodeState, SimpleJob, advance, run_key
from mgpu.server.accounting import end_run
from mgpu.server.arrays import SubmitControls
from mgpu.server.auth import Identity
from mgpu.server.effects import Effects
from mgpu.server.node_events import Node
from mgpu.server.scheduling import SchedulingPass

SUBMITTING = "Submitting"  # pending_reason of a handed job until SLURM says its own


class Handoff(SubmitControls, SchedulingPass):
    """The queue-in-SLURM half of :class:`~mgpu.server.state.ClusterState` (first in its
    bases); see the module docstring."""

    def init_handoff(self) -> None:
        self.handed: dict[int, str] = {}  # job id -> the bridge it waits in SLURM through
        self.slurm_deps: dict[int, str] = {}  # job id -> the dependency terms SLURM decides
        self.carried: dict[int, list[int]] = {}  # job id -> the tasks its order carries

    # ------------------------------------------------------------------ binding

    def _bridges(self) -> tuple[list[Node], bool]:
        """The queue-in-SLURM bridges that take jobs now (by id), and whether every node
        is such a bridge."""
        bridges = sorted((n for n in self.nodes.values() if n.slurm_queue and n.takes_jobs),
                         key=lambda n: n.node_id)
        return bridges, all(n.slurm_queue for n in self.nodes.values())

    def queue_bridge(self, job: SimpleJob, bridges: tuple[list[Node], bool] | None = None
                     ) -> Node | None:
        """The queue-in-SLURM bridge ``job`` is bound for now, or None (mgpu's own queue).
        ``bridges``: :meth:`_bridges`, when the caller asks for many jobs at once."""
        if job.nodes > 1 or job.ntasks_per_node > 1 or job.stdin or job.pty:
            return None
        nodes, only = self._bridges() if bridges is None else bridges
        for node in nodes:
            if ((node.partition == job.partition or (job.partition is None and only))
                    and job.gpus <= len(node.gpus) and node.serves(job.user)):
                return node
        return None

    def _blocker(self, job: SimpleJob, now: float) -> tuple[str, str] | None:
        bridge = self.queue_bridge(job)
        self.slurm_deps.pop(job.id, None)
        if bridge is None:
            return super()._blocker(job, now)
        if job.dependency:
            why = self._bridge_dependency(job, bridge.node_id)
            if why is not None:
                return why
        return self._limit_blocker(job, throttle_here=False)  # (%N: SLURM's --array)

    def _bridge_dependency(self, job: SimpleJob, bridge: str) -> tuple[str, str] | None:
        """Decide what the master can of ``job``'s dependency; keep the terms on live jobs
        of ``bridge`` for SLURM (:attr:`slurm_deps`). Why it waits in mgpu's gate, or None."""
        self.slurm_deps.pop(job.id, None)  # (decided afresh: what ended meanwhile is out)
        anyof = c.parse_dependency(job.dependency or "")[0]
        statuses: list[bool | None] = []
        slurm: list[str] = []
        waiting: list[str] = []
        for kind, one, dep, status in self._dep_terms(job):
            if status is None and dep is not None and self._in_slurm(dep, bridge):
                slurm.append(f"{kind}:{one}")
                continue
            statuses.append(status)
            if status is None:
                self.dep_waiters.setdefault(one, set()).add(job.id)
                waiting.append(f"{kind}:{one}")
        if anyof and any(s is True for s in statuses):
            return None
        if (not anyof and False in statuses) or (anyof and not slurm and not waiting):
            return c.DEPENDENCY_NEVER, f"{job.dependency} can no longer be met"
        if waiting:
            return c.DEPENDENCY, f"waits for {', '.join(waiting[:5])}" + (
                " ..." if len(waiting) > 5 else "")
        if slurm:
            self.slurm_deps[job.id] = ("?" if anyof else ",").join(slurm)
        return None

    def _in_slurm(self, dep: SimpleJob, bridge: str) -> bool:
        """Whether ``dep`` is (or, handed in this pass, will be) a live SLURM job of
        ``bridge``, which SLURM can wait for."""
        if self.handed.get(dep.id) == bridge:
            return True
        if dep.state is JobState.RUNNING:
            return dep.node == bridge and dep.parts is None
        if dep.state is JobState.PENDING and dep.id in self.pending:
            bound = self.queue_bridge(dep)
            return bound is not None and bound.node_id == bridge
        return False

    def _settle(self, job: SimpleJob, now: float, effects: Effects, queued: bool) -> None:
        if job.id not in self.handed:  # (a handed job's controls are SLURM's)
            super()._settle(job, now, effects, queued)

    # ------------------------------------------------------------------ hand-off

    def schedule(self, now: float) -> Effects:
        """Hand the bound jobs of the queue to their bridges, then the policy's pass."""
        effects = Effects()
        bridges = self._bridges()
        if bridges[0]:
            todo = sorted(self.pending)  # (parents before their dependants)
            while todo:
                woken: set[int] = set()
                for job_id in todo:
                    job = self.jobs[job_id]
                    bridge = self.queue_bridge(job, bridges)
                    if bridge is None or job_id not in self.pending:
                        continue
                    if job.dependency and self._bridge_dependency(job, bridge.node_id):
                        self._uncharge(job_id)  # (changed meanwhile: gated again)
                        self._settle(job, now, effects, queued=True)
                        continue
                    tasks = self._array_tasks(job, bridge)
                    self._hand(tasks, bridge, now, effects)
                    for task in tasks:
                        woken.update(self.dep_waiters.pop(task.id, ()))
                todo = []
                for job_id in sorted(woken):  # dependants that SLURM may now wait for
                    job = self.jobs[job_id]
                    if job.state is JobState.PENDING and job_id in self.gated:
                        self._settle(job, now, effects, queued=False)
                        if job_id in self.pending:
                            todo.append(job_id)
        return effects.merge(super().schedule(now))

    def _array_tasks(self, job: SimpleJob, bridge: Node) -> list[SimpleJob]:
        """``job`` and the tasks of its array that go with it to SLURM: those in the queue,
        bound for ``bridge`` with the same dependency terms for SLURM. (One order carries
        them all, and the bridge makes them one ``sbatch --array``: an order, unlike the
        frames the link batches, never splits an array.)"""
        if job.array_job_id is None:
            return [job]
        deps = self.slurm_deps.get(job.id)
        tasks = [job]
        for task_id in sorted(self.arrays.get(job.array_job_id, {}).values()):
            task = self.jobs[task_id]
            if task_id == job.id or task_id not in self.pending or (
                    self.slurm_deps.get(task_id), task.held, task.begin_at) != (
                    deps, job.held, job.begin_at):
                continue  # (not in the queue, or with other controls: an order of its own)
            bound = self.queue_bridge(task)
            if bound is not None and bound.node_id == bridge.node_id:
                tasks.append(task)
        return tasks

    def _hand(self, tasks: list[SimpleJob], bridge: Node, now: float,
              effects: Effects) -> None:
        """Send ``tasks`` (one job, or tasks of one array: one order) to ``bridge``."""
        job = tasks[0]
        env = self.run_env(job)
        array: list[m.ArrayTask] = []
        for task in tasks:
            self._dequeue(task.id)
            self.handed[task.id] = bridge.node_id
            task.node, task.backend_id, task.expected_start = bridge.node_id, None, None
            task.pending_reason = SUBMITTING
            task.reason = f"in SLURM: being submitted by node {bridge.node_id}"
            effects.update(task)
            if task.array_task_id is not None:
                array.append(m.ArrayTask(task.array_task_id, task.id, task.run, {
                    k: v for k, v in self.run_env(task).items() if env.get(k) != v}))
        if len(array) > 1:
            self.carried[job.id] = [t.id for t in tasks[1:]]
        begin = job.begin_at.timestamp() if job.begin_at is not None else None
        order = m.QueueOrder(dependency=self.slurm_deps.pop(job.id, None), hold=job.held,
                             begin=begin if begin is not None and begin > now else None,
                             array=array if len(array) > 1 else None,
                             throttle=job.array_throttle if len(array) > 1 else None)
        for task in tasks[1:]:
            self.slurm_deps.pop(task.id, None)
        effects.sends.append((bridge.node_id, m.StartJob(
            job_id=job.id, run=job.run, command=job.command, cwd=job.cwd, env=env,
            gpu_ids=list(range(job.gpus)), user=job.user, name=job.name,
            time_limit=job.time_limit, argv=job.argv, queue=order)))

    def unhand(self, job: SimpleJob, why: str, now: float, effects: Effects) -> None:
        """Take ``job`` back from its bridge into mgpu's gate and queue (with the tasks
        its order carried, when the bridge may never have had them)."""
        for task_id in self.carried.pop(job.id, ()):
            task = self.jobs[task_id]
            if self.handed.get(task_id) is not None and task.state is JobState.PENDING:
                self.unhand(task, why, now, effects)
        self.handed.pop(job.id, None)
        job.node, job.backend_id = None, None
        job.reason = f"back in mgpu's queue: {why}"
        effects.update(job)
        self._settle(job, now, effects, queued=False)

    def cancel_handed(self, job_id: int, reason: str, effects: Effects) -> None:
        """A handed job is cancelled (it ends at once): its bridge ``scancel``s it."""
        bridge = self.handed.pop(job_id, None)
        if bridge is not None:
            effects.sends.append((bridge, m.CancelJob(job_id, reason)))

    # ------------------------------------------------------------------ the bridge's word

    def on_job_queued(self, node_id: str, msg: m.JobQueued, now: float) -> Effects:
        """SLURM's state of a handed job: its reason while it waits, its start."""
        effects = Effects()
        job = self.jobs.get(msg.job_id)
        if (job is None or self.handed.get(msg.job_id) != node_id or job.run != msg.run
                or job.state is not JobState.PENDING):
            return effects  # (ended or taken back meanwhile: its end still comes)
        self.carried.pop(job.id, None)  # (the bridge has the order)
        if msg.start_time is not None:
            self._started(job, node_id, msg, effects)
            return effects
        code = msg.reason if msg.reason not in ("", "None") else "Submitted"
        if code == c.DEPENDENCY_NEVER and job.kill_on_invalid_dep:
            self.cancel_handed(job.id, "its dependency can never be satisfied", effects)
            end_run(effects, job, JobState.CANCELLED, now, reason=(
                f"{code}: {job.dependency} can no longer be met (SLURM)"))
            job.pending_reason = c.DEPENDENCY_NEVER
            self.envs.pop(job.id, None)
            effects.ended.append(job.id)
            return effects
        words = f"in SLURM: {code} (SLURM job {msg.backend_id} on node {node_id})"
        if (job.backend_id, job.pending_reason, job.reason) != (msg.backend_id, code, words):
            job.backend_id, job.pending_reason, job.reason = msg.backend_id, code, words
            effects.update(job)
        return effects

    def _started(self, job: SimpleJob, node_id: str, msg: m.JobQueued,
                 effects: Effects) -> None:
        assert msg.start_time is not None
        del self.handed[job.id]
        advance(job, JobState.RUNNING, msg.start_time)  # (SLURM's start)
        job.node, job.backend_id = node_id, msg.backend_id
        node = self.nodes.get(node_id)
        if node is not None:  # (the GPUs mgpu counts as busy there; SLURM chose its own)
            free = [g for g in node.gpus if g.job_id is None][:job.gpus]
            for g in free:
                g.job_id = job.id
            job.gpu_ids = [g.index for g in free]
        effects.update(job)
        self.fairshare.started(job.user, job.gpus)

    def on_job_ended(self, node_id: str, msg: m.JobEnded, now: float, *,
                     node: Node | None = None) -> Effects:
        """An end SLURM gave a handed job before it ran (``scancel`` there, a refusal)."""
        job = self.jobs.get(msg.job_id)
        if (job is None or self.handed.get(msg.job_id) != node_id or job.run != msg.run
                or job.state is not JobState.PENDING):
            return super().on_job_ended(node_id, msg, now, node=node)
        effects = Effects()
        effects.sends.append((node_id, m.EndedAck([msg.key])))
        del self.handed[job.id]
        to = JobState.CANCELLED if msg.state == JobState.CANCELLED.value else JobState.FAILED
        end_run(effects, job, to, now, reason=msg.reason, exit_code=msg.exit_code,
                end_cause=msg.end_cause)
        self.envs.pop(job.id, None)
        effects.ended.append(job.id)
        return effects

    # ------------------------------------------------------------------ holds

    def on_hold(self, job_ids: list[int], hold: bool, now: float, who: Identity | None,
                private: bool) -> tuple[list[m.CancelResult], Effects]:
        """Holds and releases; those of handed jobs are SLURM's (``HoldJob``)."""
        mine = [i for i in job_ids if i in self.handed]
        if not mine:
            return super().on_hold(job_ids, hold, now, who, private)
        rest = [i for i in job_ids if i not in self.handed]
        results, effects = super().on_hold(rest, hold, now, who, private)
        said = {r.job_id: r for r in results}
        for job_id in mine:
            job = self.acted_on(job_id, who, private, "hold" if hold else "release")
            if isinstance(job, m.CancelResult):
                said[job_id] = job
                continue
            if job.held != hold:
                job.held = hold
                effects.update(job)
                effects.sends.append((self.handed[job_id], m.HoldJob(job_id, hold)))
            said[job_id] = m.CancelResult(job_id, True, state=job.state.value)
        return [said[i] for i in job_ids], effects

    # ------------------------------------------------------------------ bridges come and go

    def on_register(self, msg: m.Register, now: float) -> tuple[m.Registered, Effects]:
        """A bridge that comes back keeps the handed runs it still has; the others go back
        to mgpu's queue."""
        registered, effects = super().on_register(msg, now)
        if not registered.accepted:
            return registered, effects
        reported = {r.key for r in msg.running}
        for job_id, node_id in list(self.handed.items()):
            job = self.jobs[job_id]
            key = run_key(job_id, job.run)
            if node_id != msg.node_id:
                continue
            if key in reported:
                if key in registered.kill:
                    registered.kill.remove(key)
                registered.output_offsets[key] = -1  # (filled in by the outer layer)
            else:
                self.unhand(job, f"node {node_id} came back without it", now, effects)
        return registered, effects

    def on_tick(self, now: float) -> Effects:
        effects = super().on_tick(now)
        down = {n.node_id for n in self.nodes.values()
                if n.state is NodeState.DOWN and n.down_since == now}
        for job_id, node_id in list(self.handed.items()):
            if node_id in down:
                self.unhand(self.jobs[job_id], f"node {node_id} stopped answering", now,
                            effects)
        return effects

    def unclaimed(self, now: float) -> Effects:
        effects = super().unclaimed(now)
        for job_id, node_id in list(self.handed.items()):
            if node_id not in self.nodes:
                self.unhand(self.jobs[job_id], f"node {node_id} did not return after the "
                            "master restarted", now, effects)
        return effects

    def start_controls(self, limits: dict[str, UserLimits], now: float,
                       load_env: Callable[[int], dict[str, str]]) -> None:
        """At start-up: the pending jobs saved with a node are handed jobs (their bridge
        says, when it registers, whether it still has them)."""
        for job in self.jobs.values():
            if job.state is JobState.PENDING and job.node is not None:
                self._dequeue(job.id)
                self.handed[job.id] = job.node
        super().start_controls(limits, now, load_env)
