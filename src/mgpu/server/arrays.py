"""The job controls at submit: checks, job arrays, and each new job through the gate.

``on_submit`` (``state.py``) calls :meth:`SubmitControls.expand_arrays` first: a spec with
``array`` stands for one job per task, all accepted or refused together with the rest of the
request, and saved in the same one write (10,000 tasks are one request). Then
:meth:`SubmitControls.check_controls` refuses what can never be right (an unknown job in a
dependency, a user's limits passed), before anything changes; and once the jobs exist,
:meth:`SubmitControls.gate_submitted` copies their controls onto them and lets each into
the queue or keeps it at the gate (``controls.py``).

An array's id is its first task's job id; each task is a job of its own, with
``MGPU_ARRAY_JOB_ID`` and ``MGPU_ARRAY_TASK_ID`` in its environment (and SLURM's names,
``SLURM_ARRAY_JOB_ID`` and ``SLURM_ARRAY_TASK_ID``), added when it starts. The tasks share
one environment, saved once, with the first task (what makes 10,000 tasks one small write);
retention keeps that row while a task may still run. :meth:`SubmitControls.resolve` turns
``12``, ``12_4`` and ``12_[3-5]`` into job ids.
"""

from __future__ import annotations

from collections.abc import Callable

from mgpu.core import controls as c
from mgpu.core.control_messages import UserLimits
from mgpu.core.errors import NotFound, Rejected, UsageError
from mgpu.core.models import JobSpec, SimpleJob, utc
from mgpu.core.timefmt import format_duration
from mgpu.server.auth import Identity
from mgpu.server.controls import JobControls, check_retries
from mgpu.server.effects import Effects

# Per-task (index of the array's first spec, task id, throttle), None for a plain job.
Tasks = list[tuple[int, int, int | None] | None]


class SubmitControls(JobControls):
    """What ``on_submit`` asks of the job controls."""

    pending_by_user: dict[str, int]
    max_batch_jobs: int

    def expand_arrays(self, specs: list[JobSpec]) -> tuple[list[JobSpec], Tasks]:
        """One spec per job: an array's spec repeated for each of its tasks (the same
        object: tasks differ only in what :meth:`gate_submitted` gives them)."""
        if not any(s.array for s in specs):
            return specs, [None] * len(specs)
        out: list[JobSpec] = []
        tasks: Tasks = []
        for spec in specs:
            if not spec.array:
                out.append(spec)
                tasks.append(None)
                continue
            if spec.interactive:
                raise Rejected("an interactive job (srun) cannot be an array: use mgpu submit")
            ids, throttle = c.parse_array(spec.array, self.max_batch_jobs)
            first = len(out)
            out.extend([spec] * len(ids))
            tasks.extend((first, t, throttle) for t in ids)
        return out, tasks

    def check_controls(self, specs: list[JobSpec], user: str | None) -> None:
        """Refuse the batch if a job's controls can never work or pass its user's limits."""
        counts: dict[str, int] = {}
        for i, spec in enumerate(specs):
            owner = user if user is not None else (spec.user or "unknown")
            counts[owner] = counts.get(owner, 0) + 1
            if i and spec is specs[i - 1]:
                continue  # an array's next task: checked with its first
            where = f"job {i + 1} of the batch: " if len(specs) > 1 else ""
            check_retries(spec.retries, where)
            if spec.begin is not None and not 0 <= spec.begin <= c.LATEST:
                raise UsageError(f"{where}begin must be a POSIX time from 0 to {c.LATEST:.0f}")
            if spec.dependency:
                _, terms = c.parse_dependency(spec.dependency)
                for _, dep_id in terms:
                    if dep_id not in self.jobs:
                        raise NotFound(f"{where}--dependency names job {dep_id}, which does "
                                       "not exist: `mgpu queue --all` lists the jobs there are")
            limits = self.limits.get(owner)
            if limits is None:
                continue
            if limits.max_gpus is not None and spec.gpus > limits.max_gpus:
                raise Rejected(f"{where}asks for {spec.gpus} GPUs but {owner} may use at most "
                               f"{limits.max_gpus} at once (an admin's limit, `mgpu limits "
                               f"list`): ask for at most {limits.max_gpus}")
            cap = limits.max_time
            if cap is not None and spec.time_limit is not None and (
                    spec.time_limit == 0 or spec.time_limit > cap):
                raise Rejected(f"{where}time limit {format_duration(spec.time_limit or None)} "
                               f"is over {owner}'s maximum of {format_duration(cap)} (an "
                               f"admin's limit, `mgpu limits list`): ask for at most that (-t)")
        for owner, count in counts.items():
            top = self.limits.get(owner, UserLimits()).max_pending
            if top is None:
                continue
            queued = self.pending_by_user.get(owner, 0) + sum(
                1 for j in self.gated if self.jobs[j].user == owner)
            if queued + count > top:
                raise Rejected(f"{owner} has {queued} pending jobs; {count} more would pass "
                               f"{owner}'s limit of {top} pending jobs (an admin's limit, "
                               "`mgpu limits list`): wait for some to start")

    def gate_submitted(self, ids: list[int], specs: list[JobSpec], tasks: Tasks,
                       effects: Effects, now: float) -> None:
        """Give the new jobs their controls; keep those that may not start yet at the gate."""
        arrays = any(t is not None for t in tasks)
        for job_id, spec, task in zip(ids, specs, tasks, strict=True):
            job = self.jobs[job_id]
            if not (spec.dependency or spec.hold or spec.begin or spec.retries or task
                    or job.user in self.limits):
                self._charge(job)  # the common case: nothing to look at
                continue
            job.dependency = spec.dependency
            job.kill_on_invalid_dep = spec.kill_on_invalid_dep
            job.held = spec.hold
            job.begin_at = utc(spec.begin) if spec.begin else None
            job.max_retries = spec.retries
            cap = self.limits.get(job.user, UserLimits()).max_time
            if cap is not None and (job.time_limit is None or job.time_limit > cap):
                job.time_limit = cap
            if task is not None:
                first, task_id, throttle = task
                array = ids[first]
                job.array_job_id, job.array_task_id, job.array_throttle = array, task_id, throttle
                self.arrays.setdefault(array, {})[task_id] = job_id
            self._settle(job, now, effects, queued=not spec.array)
        if arrays:  # an array's environment is saved once, with its first task
            effects.batch.inserts = [
                (j, env if j.array_job_id in (None, j.id) else {})
                for j, env in effects.batch.inserts]

    def run_env(self, job: SimpleJob) -> dict[str, str]:
        """The environment ``job`` runs with: the submitter's, and an array task's ids."""
        env = self.envs.get(job.id, {})
        if job.array_job_id is None or job.array_task_id is None:
            return env
        return {**env, **_array_env(job.array_job_id, job.array_task_id)}

    def shares_env(self, job_id: int) -> bool:
        """Whether ``job_id`` is an array whose tasks not yet ended run with its saved
        environment (retention keeps its row until they end)."""
        tasks = self.arrays.get(job_id, {})
        return any(not j.state.ended for t in tasks.values() if (j := self.jobs.get(t)))

    def load_array_envs(self, load_env: Callable[[int], dict[str, str]]) -> None:
        """At start-up: each array task not ended gets its array's environment (saved with
        the first task; read again when that one has ended)."""
        cache: dict[int, dict[str, str]] = {}
        for job in self.jobs.values():
            array = job.array_job_id
            if array is None or array == job.id or job.state.ended:
                continue
            if array not in cache:
                first = self.jobs.get(array)
                known = None if first is None or first.state.ended else self.envs.get(array)
                cache[array] = known if known is not None else load_env(array)
            self.envs[job.id] = cache[array]

    def resolve(self, refs: list[str], who: Identity | None, private: bool) -> list[int]:
        """Job ids of references: ``12`` (job 12; every task not ended, when 12 is an
        array), ``12_4``, ``12_[3-5]``; :class:`NotFound` for one that names nothing."""
        out: list[int] = []
        for ref in refs:
            head, wanted = c.parse_job_ref(ref)
            tasks = self.arrays.get(head, {})
            if wanted is None:
                live = [i for _, i in sorted(tasks.items()) if self._visible(i, who, private)
                        and not self.jobs[i].state.ended]
                out.extend(live or [head])
                continue
            missing = [t for t in wanted if not self._visible(tasks.get(t), who, private)]
            if missing:
                raise NotFound(f"no task {c.fold_tasks(missing)} in array {head} "
                               f"({ref}): `mgpu queue --all` lists the jobs there are")
            out.extend(tasks[t] for t in wanted)
        return out

    def _visible(self, job_id: int | None, who: Identity | None, private: bool) -> bool:
        job: SimpleJob | None = None if job_id is None else self.jobs.get(job_id)
        return job is not None and (who is None or who.sees(job, private))


def _array_env(array: int, task: int) -> dict[str, str]:
    return {"MGPU_ARRAY_JOB_ID": str(array), "MGPU_ARRAY_TASK_ID": str(task),
            "SLURM_ARRAY_JOB_ID": str(array), "SLURM_ARRAY_TASK_ID": str(task)}

