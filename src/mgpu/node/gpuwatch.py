"""The agent's watch over its GPUs: samples their usage, says which processes are its
jobs', and keeps each job's figures.

Every ``interval`` seconds :class:`GpuWatch` samples the GPUs (``utils/gpustate.py``, in a
thread: NVML calls block) and attributes each compute process: a process whose own or
whose ancestors' environment carries this node's ``MGPU_NODE_ID`` and a ``MGPU_JOB_ID``
(every job process inherits them), or that descends from the keeper, is a job's; any other
is **outside** mgpu. The master hears the result on the next heartbeat, only when it
changed (:meth:`report`: memory by 64 MiB steps, utilisation by 5 points, the process
list), so a report costs at most one message a heartbeat and
``MAX_GPU_PROCESSES`` processes a GPU.

Each running job's GPUs are sampled for its figures: the peak of the memory used on them
(summed over its GPUs) and the mean utilisation (over its GPUs and samples), sent with the
job's end (:meth:`annotate`). A job re-adopted by a new agent is measured from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec
import psutil

from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.core.models import GpuInfo, GpuUsage
from mgpu.utils.gpustate import Sampler, sampler_for


def open_watch(cfg: NodeConfig, source: str, gpus: list[GpuInfo],
               keeper_pid: Callable[[], int], log: logging.Logger) -> GpuWatch:
    """The node's watch: sampling its GPUs as ``cfg`` says (``gpu_sample_interval`` 0, or
    GPUs whose usage cannot be read: a watch that reports nothing)."""
    sampler = None
    if cfg.gpu_sample_interval > 0:
        sampler = sampler_for(source, cfg.node_id, [g.index for g in gpus], cfg.fake_gpu_state)
    return GpuWatch(sampler, cfg.node_id, cfg.gpu_sample_interval, keeper_pid, log)


@dataclass
class _Figures:
    gpu_ids: tuple[int, ...]
    peak_mib: int | None = None
    util_sum: float = 0.0
    samples: int = 0

    def add(self, usage: dict[int, GpuUsage]) -> None:
        mine = [usage[i] for i in self.gpu_ids if i in usage]
        mems = [u.memory_used_mib for u in mine if u.memory_used_mib is not None]
        if mems:
            self.peak_mib = max(self.peak_mib or 0, sum(mems))
        utils = [u.utilization for u in mine if u.utilization is not None]
        if utils:
            self.util_sum += sum(utils) / len(utils)
            self.samples += 1

    def stats(self) -> m.JobGpuStats | None:
        if self.peak_mib is None and not self.samples:
            return None
        mean = round(self.util_sum / self.samples, 1) if self.samples else None
        return m.JobGpuStats(memory_peak_mib=self.peak_mib, utilization_mean=mean,
                             samples=self.samples)


class GpuWatch:
    """Samples ``sampler`` every ``interval`` s from :meth:`start` to :meth:`close` (see
    the module docstring); without a sampler it does nothing and reports nothing."""

    def __init__(self, sampler: Sampler | None, node_id: str, interval: float,
                 keeper_pid: Callable[[], int], log: logging.Logger) -> None:
        self.sampler, self.node_id, self.interval = sampler, node_id, interval
        self.keeper_pid = keeper_pid
        self.log = log
        self.latest: dict[int, GpuUsage] = {}
        self._sent: object = None  # the signature of the last report taken
        self._jobs: dict[int, _Figures] = {}  # running jobs, by id
        self._owners: dict[tuple[int, float], int | None] = {}  # (pid, start) → job
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.sampler is not None and self._task is None:
            self._task = asyncio.create_task(self.run())

    def started(self, job_id: int, gpu_ids: Iterable[int]) -> None:
        """A job started here on these GPUs: measure them for it."""
        if self.sampler is not None:
            self._jobs[job_id] = _Figures(tuple(gpu_ids))

    def annotate(self, ended: m.JobEnded) -> m.JobEnded:
        """``ended`` with the job's figures, the first time it is asked (an end that is
        sent again keeps what it got)."""
        figures = self._jobs.pop(ended.job_id, None)
        stats = figures.stats() if figures is not None else None
        if stats is None or ended.gpu_stats is not None:
            return ended
        return msgspec.structs.replace(ended, gpu_stats=stats)

    def with_usage(self, gpus: list[GpuInfo]) -> list[GpuInfo]:
        """``gpus`` with their last sampled usage (what a node registers with)."""
        return [msgspec.structs.replace(
            g, memory_used_mib=u.memory_used_mib, utilization=u.utilization,
            processes=u.processes) if (u := self.latest.get(g.index)) else g for g in gpus]

    def report(self) -> list[GpuUsage] | None:
        """The GPUs' usage if it changed since the last report taken, else None."""
        latest = [self.latest[i] for i in sorted(self.latest)]
        sig = [(u.index, (u.memory_used_mib or 0) // 64, (u.utilization or 0) // 5,
                [(p.pid, p.job_id, p.outside, (p.memory_used_mib or 0) // 64)
                 for p in u.processes], u.more_processes) for u in latest]
        if not latest or sig == self._sent:
            return None
        self._sent = sig
        return latest

    def resend(self) -> None:
        """The next :meth:`report` is sent whole (a new link to the master)."""
        self._sent = None

    async def run(self) -> None:
        """Sample until cancelled; a failing sample is logged and tried again."""
        warned = False
        while self.sampler is not None:
            try:
                usage = await asyncio.to_thread(self.sampler.sample)
                seen: set[tuple[int, float]] = set()
                self.latest = {i: self._attribute(u, seen) for i, u in usage.items()}
                for key in [k for k in self._owners if k not in seen]:
                    del self._owners[key]  # (bounded: only processes on a GPU now)
                for figures in self._jobs.values():
                    figures.add(self.latest)
                warned = False
            except Exception as e:  # an NVML error, a driver reset: keep the agent going
                if not warned:
                    self.log.warning("cannot read the GPUs' usage: %s", e)
                    warned = True
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.sampler is not None:
            self.sampler.close()

    # ------------------------------------------------------------------ attribution

    def _attribute(self, usage: GpuUsage, seen: set[tuple[int, float]]) -> GpuUsage:
        """``usage`` with each process's job (the processes' keys added to ``seen``)."""
        procs = []
        for p in usage.processes:
            key, job_id, outside = self._owner(p.pid)
            seen.add(key)
            procs.append(msgspec.structs.replace(p, job_id=job_id, outside=outside))
        return msgspec.structs.replace(usage, processes=procs)

    def _owner(self, pid: int) -> tuple[tuple[int, float], int | None, bool]:
        """((pid, start time), the job it belongs to, whether it is outside mgpu)."""
        try:
            proc = psutil.Process(pid)
            key = (pid, proc.create_time())
        except psutil.Error:
            return (pid, 0.0), None, True  # not a process here: no job of ours
        if key in self._owners:
            job = self._owners[key]
            return key, (job or None), job is None
        job = self._owners[key] = self._job_of(proc)
        return key, (job or None), job is None

    def _job_of(self, proc: psutil.Process) -> int | None:
        """The job ``proc`` belongs to (0: a job's, which one unknown), None: none."""
        keeper = self.keeper_pid()
        try:
            chain = [proc, *proc.parents()]
        except psutil.Error:
            chain = [proc]
        for p in chain:
            with contextlib.suppress(psutil.Error):
                env = p.environ()
                if env.get("MGPU_NODE_ID") == self.node_id and env.get(
                        "MGPU_JOB_ID", "").isdigit():
                    return int(env["MGPU_JOB_ID"])
            if keeper > 0 and p.pid == keeper and p is not proc:
                return 0
        return None

