"""The agent's side of the link to the node's keeper.

Jobs run under the node's keeper (``keeper.py``), a process the agent starts once
and that outlives the agent. The link talks to it over ``DATA/run/keeper.sock``: it asks
for jobs to start, passes on cancels, signals and input, forwards output as the spool files
grow, pings so the keeper knows the agent is alive, and reports each end. When a restarted
agent connects, the keeper says which jobs it holds, and the agent re-adopts them with their
output and exit codes. Ends recorded in ``DATA/jobs/JOBID.exit`` are recovered even when the
keeper is gone.

**A keeper that dies.** Its jobs lose their watcher. The link then (1) says the node
is degraded (``on_health``), so the master places nothing here; (2) kills every process of
the runs it held, found by their environment (``orphans.py``), and only once none lives
reports them ended (``node_fail``); (3) starts a new keeper, retrying with back-off, and
says the node is healthy again. A job started meanwhile waits for the new keeper.

**Output** is forwarded from the spool as the link to the master has room
(``link_runs.py``). When the master has acknowledged the end, the run's spool and exit files
are deleted.

**Input** (``--stdin``) goes to the keeper a window at a time (``stdin.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mgpu.core import keeper_messages as kp
from mgpu.core import messages as m
from mgpu.core.models import EndCause
from mgpu.node import keeper_sock
from mgpu.node.exitfile import read_exit
from mgpu.node.link_runs import LinkRuns, OnEnded, OnOutput
from mgpu.node.orphans import is_keeper, kill_runs, peer_pid
from mgpu.node.runs import NodeRun, job_environment
from mgpu.node.stdin import STDIN_WRITTEN, InputPump, OnInputAck

log = logging.getLogger("mgpu.node.keeper_link")

CONNECT_TIMEOUT = 10.0
RESTART_BACKOFF = (0.1, 5.0)  # seconds between attempts to start a new keeper: first, most


__all__ = ["KeeperLink", "NodeRun", "job_environment"]

OnHealth = Callable[[str | None], None]


def _always() -> bool:
    return True


def _nothing(*_: object) -> None:
    return None


class KeeperLink(LinkRuns):
    """Starts jobs through the keeper; reports their output and ends through callbacks.

    Jobs are kept by run key (a requeued job's new run may start here while its old run is
    still being killed). ``on_output(job, offset, framed_bytes)`` is called as output
    appears in the run's spool, while ``has_room()`` says the link can take it;
    ``on_ended(job)`` once per run and link, after all of its output, with ``job.ended``
    set. ``on_health(reason)`` says the node cannot take jobs (its keeper died), or
    (None) that it can again; ``on_input_ack(job)`` that more of its input was written.
    """

    def __init__(self, node_id: str, data_dir: Path, on_output: OnOutput, on_ended: OnEnded,
                 kill_grace: float = 30.0, fence: float | None = None,
                 allow_root: bool = False, max_output: int = 0, *,
                 on_health: OnHealth = _nothing, on_input_ack: OnInputAck = _nothing,
                 has_room: Callable[[], bool] = _always) -> None:
        self.node_id = node_id
        self.data_dir = data_dir
        self.spool_dir = data_dir / "spool"
        self.jobs_dir = data_dir / "jobs"
        self.on_output = on_output
        self.on_ended = on_ended
        self.on_health = on_health
        self.has_room = has_room
        self.kill_grace = kill_grace
        self.fence = fence
        self.allow_root = allow_root
        self.max_output = max_output  # bytes of output kept per run (0: no cap)
        self.jobs: dict[str, NodeRun] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._outbox = bytearray()  # messages to the keeper, written at the end of a turn
        self._reader_task: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._keeper: subprocess.Popen[bytes] | None = None
        self.keeper_pid = 0  # of the keeper at the other end of the socket
        self.input = InputPump(self._send, on_input_ack)
        self.lost = asyncio.Event()
        self.restarting = False  # the keeper died: messages to it wait for the next one
        self._closing = False

    # ------------------------------------------------------------------ life cycle

    async def open(self) -> None:
        """Connect to the node's keeper (starting it if none runs) and re-adopt its jobs."""
        for d in (self.spool_dir, self.jobs_dir):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        await self._link()
        self._pinger = asyncio.create_task(self._ping_loop())

    async def _link(self) -> None:
        """Connect to the keeper, starting one if none answers; adopt what it holds."""
        try:
            reader, writer = await self._connect()
        except OSError:
            # No keeper: whatever still runs of this node's jobs lost its keeper (which
            # died, perhaps while no agent ran) and is unwatched. It goes first: the master
            # takes those runs for lost and may run them elsewhere.
            await asyncio.to_thread(kill_runs, str(self.data_dir.absolute()), None)
            self._start_keeper()
            reader, writer = await self._connect_when_ready()
        hello = await self._read_message(reader)
        if hello is None or hello[0] != kp.HELLO:
            writer.close()
            raise OSError("the node keeper did not answer")
        self.keeper_pid = peer_pid(writer)
        body = json.loads(hello[1])
        self.input.credit = bool(body.get("stdin_credit"))
        self._writer = writer
        self._adopt(body["jobs"])
        self._reader_task = asyncio.create_task(self._follow(reader))

    def _start_keeper(self) -> None:
        logfile = open(self.data_dir / "keeper.log", "ab")  # noqa: SIM115 - handed to the child
        with logfile:
            self._keeper = subprocess.Popen(
                [sys.executable, "-m", "mgpu.node.keeper", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile,
                start_new_session=True, close_fds=True,
            )

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        with keeper_sock.socket_address(str(self.data_dir)) as address:
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

    async def close(self, kill_jobs: bool) -> None:
        """Stop supervising; with ``kill_jobs``, the keeper kills every job and exits.
        Without, the jobs run on under the keeper, which kills them if no agent comes
        back within the fence time. Closing twice is harmless."""
        if self._closing:
            return
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

    async def _all_ended(self, jobs: list[NodeRun]) -> None:
        while any(j.ended is None for j in jobs) and not self.lost.is_set():
            await asyncio.sleep(0.01)

    # ------------------------------------------------------------------ the keeper link

    def _send(self, kind: bytes, body: dict[str, Any] | bytes) -> None:
        """Queue a message to the keeper: what one turn of the event loop queued goes
        out in one write. While a new keeper is being started, it waits for that one."""
        if self._writer is None and not self.restarting:
            raise ConnectionError("the node keeper is not connected")
        if not self._outbox and self._writer is not None:
            asyncio.get_running_loop().call_soon(self._flush)
        self._outbox += kp.pack(kind, body)

    def _flush(self) -> None:
        if self._writer is None:
            return  # (while restarting, what waits goes to the next keeper)
        if self._outbox:
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
        if self._closing:
            self.lost.set()
            return
        self.restarting = True
        try:
            await self._recover()
        finally:
            self.restarting = False

    async def _recover(self) -> None:
        """The link to the keeper broke. A keeper that still lives is reconnected to; a dead
        one's jobs are killed and reported, and a new keeper is started (see the module
        docstring). The node is degraded until then."""
        alive = self.keeper_pid > 0 and is_keeper(self.keeper_pid)
        if self._keeper is not None:
            self._keeper.poll()  # reap it, if it was ours
        if not alive:
            self.lost.set()
            log.error("the node keeper died: killing its jobs and starting a new one")
            self.on_health("the node keeper died; restarting it")
            await self._end_orphans("the node keeper died while the job ran: its processes "
                                    "were killed")
        delay = RESTART_BACKOFF[0]
        while not self._closing:
            try:
                await self._link()
                break
            except OSError as e:
                why = f"the node keeper died and cannot be restarted ({e}); retrying"
                log.error("%s", why)
                self.on_health(why)
                self._outbox.clear()  # what waited for the keeper: its jobs end below
                await self._end_orphans(f"the node keeper is gone and cannot be restarted "
                                        f"({e}; see {self.data_dir / 'keeper.log'})")
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF[1])
        if self._closing:
            return
        self.lost.clear()
        log.info("the node keeper is back (pid %d)", self.keeper_pid)
        self._flush()
        self.on_health(None)

    async def _end_orphans(self, reason: str) -> None:
        """Kill every process of the runs the dead keeper held, then report their ends:
        those it recorded as they are, the others as ``node_fail`` for ``reason``."""
        open_runs = [j for j in self.jobs.values() if j.ended is None]
        for job in open_runs:
            exited = read_exit(self._exit_file(job.key))
            if exited is not None:
                self._conclude(job, exited)
        keys = {j.key for j in self.jobs.values() if j.ended is None}
        if keys:
            await asyncio.to_thread(kill_runs, str(self.data_dir.absolute()), keys)
        for job in open_runs:
            if job.key in keys:
                self._fail(job, reason, state="node_fail", cause=EndCause.KEEPER_DIED)

    def _on_keeper(self, kind: bytes, payload: bytes) -> None:
        body = json.loads(payload)
        job = self.jobs.get(str(body.get("key")))
        if job is None:
            return
        if kind == kp.GREW:
            self.pump(job.key, body["size"])
        elif kind == kp.EXITED:
            self._conclude(job, kp.Exited(**body))
        elif kind == STDIN_WRITTEN:
            self.input.written(job, int(body["written"]) - job.keeper_base)

    async def _ping_loop(self) -> None:
        while True:
            if self._writer is not None:
                self._send(kp.PING, {"fence": self.fence})
            await asyncio.sleep(max(0.05, (self.fence or 4.0) / 4))

    # ------------------------------------------------------------------ orders

    def start(self, msg: m.StartJob) -> NodeRun:
        """Ask the keeper to start a job; its output and end come back by callback."""
        job = NodeRun(msg.job_id, msg.run)
        self.jobs[job.key] = job
        env = job_environment(msg.env, msg.job_id, msg.run, self.node_id, msg.gpu_ids,
                              msg.name, str(self.data_dir.absolute()))
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

    def refuse(self, msg: m.StartJob, reason: str) -> None:
        """End a job this node will not run, with ``reason`` (its output says it too)."""
        job = NodeRun(msg.job_id, msg.run)
        self.jobs[job.key] = job
        self._fail(job, reason)

    def active(self, job_id: int) -> NodeRun | None:
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
        """Input from the master for the job's stdin: passed to the keeper a window at a
        time (:data:`STDIN_WINDOW`), the rest held until the keeper has written some."""
        job = self.active(job_id)
        if job is not None:
            self.input.feed(job, data, eof)

    def resize(self, job_id: int, rows: int, cols: int) -> None:
        job = self.active(job_id)
        if job is not None:
            with contextlib.suppress(ConnectionError):
                self._send(kp.RESIZE, {"key": job.key, "rows": rows, "cols": cols})

    def forget(self, key: str) -> None:
        """Drop an ended run once the master has saved its end, and its files: the master
        has all of its output by then (it came before the end)."""
        job = self.jobs.get(key)
        if job is None or job.ended is None:
            return
        del self.jobs[key]
        for path in (self.spool(key), Path(self._exit_file(key))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(ConnectionError):
            self._send(kp.FORGET, {"key": key})
