"""Process supervision on a node: spawn, environment, output, signals, reaping.

Each job runs as ``/bin/sh -c COMMAND`` in a new session (so its own process group), with
``CUDA_VISIBLE_DEVICES`` set to exactly its GPUs. Its stdout and stderr are read without
threads (non-blocking pipes watched by the event loop) and framed into the job's spool; its
exit is seen through a pidfd. When the job's main process exits, whatever it left running
in its process group is killed (as SLURM does at the end of a step), so no stray process
keeps a GPU. Cancel: SIGTERM to the group, a grace period, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mgpu.core import messages as m
from mgpu.utils.spool import SpoolDir

READ_SIZE = 1 << 16
DRAIN_TIMEOUT = 2.0


def job_environment(
    base: dict[str, str], job_id: int, node_id: str, gpu_ids: list[int], name: str
) -> dict[str, str]:
    """The environment a job sees: the submitter's, plus exactly its GPUs."""
    env = dict(base) if base else dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["MGPU_JOB_ID"] = str(job_id)
    env["MGPU_NODE_ID"] = node_id
    env["MGPU_JOB_NAME"] = name
    env["MGPU_GPUS"] = str(len(gpu_ids))
    return env


def exit_code_of(returncode: int) -> int:
    """The shell convention: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exit code {returncode}"


@dataclass
class RunningJob:
    """One job under supervision."""

    job_id: int
    gpu_ids: list[int]
    proc: subprocess.Popen[bytes] | None = None
    pidfd: int = -1
    open_streams: int = 0
    exited: bool = False
    ended: m.JobEnded | None = None
    cancel_reason: str | None = None
    kill_timer: asyncio.TimerHandle | None = None
    concluding: asyncio.Future[None] | None = None
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else -1


OnOutput = Callable[[int, int, bytes], None]
OnEnded = Callable[["RunningJob"], None]


class Supervisor:
    """Runs jobs on this node and reports their output and their ends through callbacks.

    ``on_output(job_id, offset, framed_bytes)`` is called for every chunk after it is in the
    spool; ``on_ended(job)`` once, after all output, with ``job.ended`` set.
    """

    def __init__(
        self,
        node_id: str,
        spool: SpoolDir,
        on_output: OnOutput,
        on_ended: OnEnded,
        kill_grace: float = 30.0,
    ) -> None:
        self.node_id = node_id
        self.spool = spool
        self.on_output = on_output
        self.on_ended = on_ended
        self.kill_grace = kill_grace
        self.jobs: dict[int, RunningJob] = {}

    def start(self, msg: m.StartJob) -> RunningJob:
        """Spawn a job. A job that cannot start ends at once as failed, with the reason."""
        loop = asyncio.get_running_loop()
        job = RunningJob(msg.job_id, list(msg.gpu_ids))
        self.jobs[msg.job_id] = job
        env = job_environment(msg.env, msg.job_id, self.node_id, msg.gpu_ids, msg.name)
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", msg.command],
                cwd=msg.cwd or "/",
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            where = f" in {msg.cwd}" if isinstance(e, FileNotFoundError | PermissionError) else ""
            reason = f"could not start{where}: {e.strerror or e}"
            self._emit(job, m.STREAM_STDERR, f"mgpu: {reason}\n".encode())
            self._finish(job, m.JobEnded(msg.job_id, "failed", None, reason, 0))
            return job
        job.proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        for stream, pipe in ((m.STREAM_STDOUT, proc.stdout), (m.STREAM_STDERR, proc.stderr)):
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            job.open_streams += 1
            loop.add_reader(fd, self._read, job, stream, fd)
        job.pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(job.pidfd, self._reap, job)
        return job

    def _emit(self, job: RunningJob, stream: int, data: bytes) -> None:
        framed = m.frame(stream, data)
        offset = self.spool.append(job.job_id, framed)
        self.on_output(job.job_id, offset, framed)

    def _read(self, job: RunningJob, stream: int, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._emit(job, stream, data)
            return
        asyncio.get_running_loop().remove_reader(fd)
        job.open_streams -= 1
        if job.open_streams == 0:
            job.drained.set()

    def _reap(self, job: RunningJob) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(job.pidfd)
        os.close(job.pidfd)
        job.pidfd = -1
        assert job.proc is not None
        # Whatever the job left behind in its process group goes with it. The main process
        # is a zombie until wait(), so its pid (the group's id) cannot have been reused.
        _signal_group(job.proc.pid, signal.SIGKILL)
        returncode = job.proc.wait()
        job.exited = True
        if job.kill_timer is not None:
            job.kill_timer.cancel()
        job.concluding = asyncio.ensure_future(self._conclude(job, returncode))

    async def _conclude(self, job: RunningJob, returncode: int) -> None:
        if job.open_streams:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.drained.wait(), DRAIN_TIMEOUT)
        self._close_pipes(job)
        code = exit_code_of(returncode)
        reason: str | None
        if job.cancel_reason is not None:
            state, reason = "cancelled", job.cancel_reason
        else:
            state = "completed" if returncode == 0 else "failed"
            reason = describe_exit(returncode)
        self._finish(
            job, m.JobEnded(job.job_id, state, code, reason, self.spool.size(job.job_id))
        )

    def _close_pipes(self, job: RunningJob) -> None:
        if job.proc is None:
            return
        loop = asyncio.get_running_loop()
        for pipe in (job.proc.stdout, job.proc.stderr):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(ValueError, OSError):
                    loop.remove_reader(pipe.fileno())
                pipe.close()

    def _finish(self, job: RunningJob, ended: m.JobEnded) -> None:
        job.ended = ended
        self.spool.close(job.job_id)
        self.on_ended(job)

    def cancel(self, job_id: int, reason: str = "cancelled", grace: float | None = None) -> None:
        """SIGTERM the job's process group; SIGKILL it after the grace period."""
        job = self.jobs.get(job_id)
        if job is None or job.proc is None or job.exited:
            return
        if job.cancel_reason is None:
            job.cancel_reason = reason
        _signal_group(job.proc.pid, signal.SIGTERM)
        grace = self.kill_grace if grace is None else grace
        if job.kill_timer is None:
            job.kill_timer = asyncio.get_running_loop().call_later(
                grace, _signal_group, job.proc.pid, signal.SIGKILL
            )

    def kill(self, job_id: int, reason: str) -> None:
        """Kill at once (fencing): SIGKILL the whole group."""
        job = self.jobs.get(job_id)
        if job is None or job.proc is None or job.exited:
            return
        job.cancel_reason = reason
        _signal_group(job.proc.pid, signal.SIGKILL)

    def forget(self, job_id: int) -> None:
        """Drop an ended job once the master has saved its end."""
        job = self.jobs.get(job_id)
        if job is not None and job.ended is not None:
            del self.jobs[job_id]

    def shutdown(self) -> None:
        """Kill every job still running (the agent is going away for good)."""
        for job in self.jobs.values():
            if job.proc is not None and not job.exited:
                _signal_group(job.proc.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
