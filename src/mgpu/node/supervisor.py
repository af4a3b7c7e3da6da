"""Process supervision on a node, from the agent's side.

Jobs run under the node's keeper (``keeper.py``), a process the supervisor starts once
and that outlives the agent. The supervisor talks to it over ``DATA/keeper.sock``: it asks
for jobs to start, passes on cancels, signals and input, forwards output as the spool files
grow, pings so the keeper knows the agent is alive, and reports each end. When a restarted
agent connects, the keeper says which jobs it holds, and the agent re-adopts them with their
output and exit codes. Ends recorded in ``DATA/jobs/JOBID.exit`` are recovered even when the
keeper is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgpu.core import messages as m
from mgpu.core.models import run_key
from mgpu.node import keeper as kp
from mgpu.utils.spool import read_at

log = logging.getLogger("mgpu.node.supervisor")

READ_CHUNK = 1 << 20
CONNECT_TIMEOUT = 10.0


def job_environment(
    base: dict[str, str], job_id: int, run: int, node_id: str, gpu_ids: list[int], name: str
) -> dict[str, str]:
    """The environment a job sees: the submitter's (none with ``--export=NONE``; never the
    agent's, which holds the node's join secret), plus exactly its GPUs."""
    env = dict(base)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["MGPU_JOB_ID"] = str(job_id)
    env["MGPU_JOB_RUN"] = run_key(job_id, run)
    env["MGPU_NODE_ID"] = node_id
    env["MGPU_JOB_NAME"] = name
    env["MGPU_GPU_COUNT"] = str(len(gpu_ids))
    return env


@dataclass
class RunningJob:
    """One run of a job under supervision, as the agent sees it."""

    job_id: int
    run: int
    pid: int = -1
    forwarded: int = 0
    ended: m.JobEnded | None = None

    @property
    def key(self) -> str:
        return run_key(self.job_id, self.run)


OnOutput = Callable[[RunningJob, int, bytes], None]
OnEnded = Callable[[RunningJob], None]


class Supervisor:
    """Starts jobs through the keeper; reports their output and ends through callbacks.

    Jobs are kept by run key (a requeued job's new run may start here while its old run is
    still being killed). ``on_output(job, offset, framed_bytes)`` is called as output
    appears in the run's spool; ``on_ended(job)`` once per run, after all of its output,
    with ``job.ended`` set.
    """

    def __init__(self, node_id: str, data_dir: Path, on_output: OnOutput, on_ended: OnEnded,
                 kill_grace: float = 30.0, fence: float | None = None,
                 allow_root: bool = False, max_output: int = 0) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.spool_dir = data_dir / "spool"
        self.jobs_dir = data_dir / "jobs"
        self.on_output = on_output
        self.on_ended = on_ended
        self.kill_grace = kill_grace
        self.fence = fence
        self.allow_root = allow_root
        self.max_output = max_output  # bytes of output kept per run (0: no cap)
        self.jobs: dict[str, RunningJob] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._outbox = bytearray()  # messages to the keeper, written at the end of a turn
        self._reader_task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self.lost = asyncio.Event()
        self._closing = False

    # ------------------------------------------------------------------ files

    def spool(self, key: str) -> Path:
        return self.spool_dir / f"{key}.out"

    def _exit_file(self, key: str) -> str:
        return f"{self.jobs_dir}/{key}.exit"

    def output_size(self, key: str) -> int:
        try:
            return self.spool(key).stat().st_size
        except FileNotFoundError:
            return 0

    def read_output(self, key: str, offset: int, limit: int = READ_CHUNK) -> bytes:
        return read_at(self.spool(key), offset, limit)

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Connect to the node's keeper (starting it if none runs) and re-adopt its jobs."""
        for d in (self.spool_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            reader, writer = await self._connect()
        except OSError:
            self._start_keeper()
            reader, writer = await self._connect_when_ready()
        self._writer = writer
        hello = await self._read_message(reader)
        if hello is None or hello[0] != kp.HELLO:
            raise OSError("the node keeper did not answer")
        self._adopt(json.loads(hello[1])["jobs"])
        self._reader_task = asyncio.create_task(self._follow(reader))
        self._pinger = asyncio.create_task(self._ping_loop())

    def _start_keeper(self) -> None:
        logfile = open(self.data_dir / "keeper.log", "ab")  # noqa: SIM115 - handed to the child
        with logfile:
            self._keeper = subprocess.Popen(
                [sys.executable, "-m", "mgpu.node.keeper", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                start_new_session=True, close_fds=True,
            )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        with kp.socket_address(str(self.data_dir)) as address:
            return await asyncio.open_unix_connection(address)

    async def _connect_when_ready(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        while True:
            try:
                return await self._connect()
            except OSError:
                if self._keeper is not None and self._keeper.poll() is not None:
                    raise OSError(f"the node keeper exited at start (see "
                                  f"{self.data_dir / 'keeper.log'})") from None
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.01)

    def _adopt(self, held: list[dict[str, Any]]) -> None:
        """Take back the jobs a former agent started: running, or ended while it was away."""
        for item in held:
            job = _from_key(item["key"])
            job.pid = item["pid"]
            self.jobs[job.key] = job
            if item["exited"]:
                exited = kp.Exited(**item["exited"])
                job.forwarded = exited.size
                job.ended = _ended(exited)
            log.info("re-adopted job %s (%s)", job.key,
                     job.ended.state if job.ended else "running")
        for name in os.listdir(self.jobs_dir):
            key, dot, suffix = name.rpartition(".")
            if not dot or suffix != "exit" or key in self.jobs:
                continue
            left = kp.read_exit(self._exit_file(key))
            if left is not None:  # the keeper that recorded it is gone
                job = _from_key(key)
                job.forwarded, job.ended = left.size, _ended(left)
                self.jobs[key] = job

    async def close(self, kill_jobs: bool) -> None:
        """Stop supervising; with ``kill_jobs``, the keeper kills every job and exits."""
        self._closing = True
        if self._pinger is not None:
            self._pinger.cancel()
        if kill_jobs and self._writer is not None:
            self._send(kp.SHUTDOWN, {})
            running = [j for j in self.jobs.values() if j.ended is None]
            if running and self._reader_task is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._all_ended(running), 10)
        if self._reader_task is not None:
            self._reader_task.cancel()
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
        if self._keeper is not None and kill_jobs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self._keeper.wait, 10)

    async def _all_ended(self, jobs: list[RunningJob]) -> None:
        while any(j.ended is None for j in jobs) and not self.lost.is_set():
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ the keeper link

    def _send(self, kind: bytes, body: dict[str, Any] | bytes) -> None:
        """Queue a message to the keeper: what one turn of the event loop queued goes
        out in one write."""
        if self._writer is None:
            raise ConnectionError("the node keeper is not connected")
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox += kp.pack(kind, body)

    def _flush(self) -> None:
        if self._writer is not None and self._outbox:
            self._writer.write(self._outbox)
        self._outbox = bytearray()

    @staticmethod
    async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        try:
            head = await reader.readexactly(4)
            raw = await reader.readexactly(kp.LENGTH.unpack(head)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return raw[:1], raw[1:]

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        buf = bytearray()
        while True:
            try:
                data = await reader.read(1 << 18)
            except ConnectionError:
                data = b""
            if not data:
                break
            buf += data
            for kind, payload in kp.unpack_all(buf):
                self._on_keeper(kind, payload)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.lost.set()
        if self._closing:
            return
        log.error("lost the node keeper: jobs on this node are no longer watched")
        for job in list(self.jobs.values()):
            exited = kp.read_exit(self._exit_file(job.key))
            if exited is not None:
                self._conclude(job, exited)
            else:
                self._fail(job, "the node keeper died while the job ran")

    def _on_keeper(self, kind: bytes, payload: bytes) -> None:
        body = json.loads(payload)
        job = self.jobs.get(str(body.get("key")))
        if job is None:
            return
        if kind == kp.GREW:
            self.pump(job.key, body["size"])
        elif kind == kp.EXITED:
            self._conclude(job, kp.Exited(**body))

    async def _ping_loop(self) -> None:
        while True:
            with contextlib.suppress(ConnectionError):
                self._send(kp.PING, {"fence": self.fence})
            await asyncio.sleep(max(0.05, (self.fence or 4.0) / 4))

    # ------------------------------------------------------------------ orders

    def start(self, msg: m.StartJob) -> RunningJob:
        """Ask the keeper to start a job; its output and end come back by callback."""
        job = RunningJob(msg.job_id, msg.run)
        self.jobs[job.key] = job
        env = job_environment(msg.env, msg.job_id, msg.run, self.node_id, msg.gpu_ids,
                              msg.name)
        req = {
            "key": job.key, "job_id": msg.job_id, "command": msg.command, "cwd": msg.cwd,
            "env": env, "spool": str(self.spool(job.key)),
            "exit_file": self._exit_file(job.key),
            "time_limit": msg.time_limit, "grace": self.kill_grace, "fence": self.fence,
            "stdin": msg.stdin, "pty": msg.pty, "argv": msg.argv, "user": msg.user,
            "allow_root": self.allow_root, "max_output": self.max_output,
        }
        try:
            self._send(kp.SPAWN, req)
        except ConnectionError as e:
            self._fail(job, f"could not start: {e}")
        return job

    def active(self, job_id: int) -> RunningJob | None:
        """The run of ``job_id`` that still runs here, if any."""
        for job in self.jobs.values():
            if job.job_id == job_id and job.ended is None:
                return job
        return None

    def cancel(self, job_id: int, reason: str = "cancelled", grace: float | None = None,
               state: str = "cancelled") -> None:
        """SIGTERM the job's whole tree; SIGKILL it after the grace period."""
        job = self.active(job_id)
        if job is not None:
            self._stop(job.key, state, reason, self.kill_grace if grace is None else grace)

    def kill(self, key: str, reason: str) -> None:
        """Kill one run at once (fencing)."""
        job = self.jobs.get(key)
        if job is not None and job.ended is None:
            self._stop(key, "node_fail", reason, 0)

    def _stop(self, key: str, state: str, reason: str, grace: float) -> None:
        with contextlib.suppress(ConnectionError):
            self._send(kp.CANCEL, {"key": key, "state": state, "reason": reason,
                                   "grace": grace})

    def signal(self, job_id: int, signum: int) -> None:
        job = self.active(job_id)
        if job is not None:
            with contextlib.suppress(ConnectionError):
                self._send(kp.SIGNAL, {"key": job.key, "signum": signum})

    def write_stdin(self, job_id: int, data: bytes, eof: bool) -> None:
        job = self.active(job_id)
        if job is None:
            return
        with contextlib.suppress(ConnectionError):
            if data:
                self._send(kp.STDIN, job.key.encode() + b"\n" + data)
            if eof:
                self._send(kp.STDIN_EOF, {"key": job.key})

    def resize(self, job_id: int, rows: int, cols: int) -> None:
        job = self.active(job_id)
        if job is not None:
            with contextlib.suppress(ConnectionError):
                self._send(kp.RESIZE, {"key": job.key, "rows": rows, "cols": cols})

    def forget(self, key: str) -> None:
        """Drop an ended run once the master has saved its end (its spool stays)."""
        job = self.jobs.get(key)
        if job is None or job.ended is None:
            return
        del self.jobs[key]
        try:
            self._send(kp.FORGET, {"key": key})
        except ConnectionError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._exit_file(key))

    # ------------------------------------------------------------------ output and ends

    def rewind(self, key: str, offset: int) -> None:
        """The master holds output up to ``offset``: forward from there on."""
        job = self.jobs.get(key)
        if job is not None:
            job.forwarded = offset

    def pump(self, key: str, size: int | None = None) -> None:
        """Forward output from the last forwarded offset up to ``size`` (default: the end)."""
        job = self.jobs.get(key)
        if job is None:
            return
        end = self.output_size(key) if size is None else size
        while job.forwarded < end:
            data = self.read_output(key, job.forwarded, min(READ_CHUNK, end - job.forwarded))
            if not data:
                break
            self.on_output(job, job.forwarded, data)
            job.forwarded += len(data)

    def _conclude(self, job: RunningJob, exited: kp.Exited) -> None:
        if job.ended is not None:
            return
        self.pump(job.key, exited.size)
        job.ended = _ended(exited)
        self.on_ended(job)

    def _fail(self, job: RunningJob, reason: str) -> None:
        if job.ended is not None:
            return
        with open(self.spool(job.key), "ab") as f:
            f.write(m.frame(m.STREAM_STDERR, f"mgpu: {reason}\n".encode()))
        size = self.output_size(job.key)
        self.pump(job.key, size)
        job.ended = m.JobEnded(job.job_id, job.run, "failed", None, reason, size)
        self.on_ended(job)


def _from_key(key: str) -> RunningJob:
    job_id, _, run = key.partition(".")
    return RunningJob(int(job_id), int(run or 0))


def _ended(exited: kp.Exited) -> m.JobEnded:
    job = _from_key(exited.key)
    return m.JobEnded(job.job_id, job.run, exited.state, exited.exit_code, exited.reason,
                      exited.size)
