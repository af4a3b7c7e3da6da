"""One node agent's connection, as the master holds it: its outgoing queue, and what the
node may honestly say on it.

A node may speak only of the runs it reported when it registered and those started on it
since; a run's end comes after all of its output, and ends in an ended state. Anything else
(output or an end of a run it was never given, output after an end, a second
registration) is a :class:`Violation`, and the master cuts the node off; malformed and
oversized messages are caught as they are decoded (``core/messages.py`` bounds them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.models import ENDED_STATES, run_key

_ENDED_VALUES = frozenset(s.value for s in ENDED_STATES)
# Bytes of a job's input sent to its node and not yet acknowledged (JobInputAck): the
# master reads no more of the client's upload until the node has written some.
INPUT_WINDOW = 1 << 20


class Violation(Exception):
    """A node broke the protocol (a message it could not honestly send): cut it off."""


class NodeConn:
    """One agent's WebSocket, the queue of messages waiting to go out on it, and the runs
    it may speak of: those it reported when it registered and those started on it since
    (an agent that reports output or an end of any other run is lying, or broken)."""

    def __init__(self, node_id: str, ws: web.WebSocketResponse, reported: set[str],
                 peer: str = "?") -> None:
        self.node_id = node_id
        self.ws = ws
        self.peer = peer
        self.gone = asyncio.Event()  # set once the master no longer counts it as the node's
        self.queue: asyncio.Queue[m.MasterMessage] = asyncio.Queue()
        self.empty = asyncio.Event()
        self.runs = set(reported)
        self.job_ids = {int(k.partition(".")[0]) for k in reported}
        self.ended: set[str] = set()  # runs whose end it reported on this connection
        self.input_sent: dict[int, int] = {}  # job id -> input bytes sent on this connection
        self.input_delivered: dict[int, int] = {}  # ... and acknowledged by the node
        self.input_moved = asyncio.Event()
        self.writer = asyncio.create_task(self._write())

    def send(self, msg: m.MasterMessage) -> None:
        if isinstance(msg, m.StartJob):
            self.runs.add(run_key(msg.job_id, msg.run))
            self.job_ids.add(msg.job_id)
            for task in msg.queue.array or () if msg.queue else ():  # (one SLURM array)
                self.runs.add(run_key(task.job_id, task.run))
                self.job_ids.add(task.job_id)
        self.queue.put_nowait(msg)
        self.empty.clear()

    def send_input(self, msg: m.JobInput) -> None:
        """Send input for a job's stdin, counting it against the window."""
        self.input_sent[msg.job_id] = self.input_sent.get(msg.job_id, 0) + len(msg.data)
        self.send(msg)

    def input_acked(self, job_id: int, delivered: int) -> None:
        if delivered > self.input_delivered.get(job_id, 0):
            self.input_delivered[job_id] = delivered
            self.input_moved.set()

    async def input_room(self, job_id: int, still: Callable[[], bool],
                         window: int = INPUT_WINDOW) -> None:
        """Until less than ``window`` bytes of the job's input wait unacknowledged, the
        connection is gone, or ``still()`` says the job no longer takes input."""
        while (self.input_sent.get(job_id, 0) - self.input_delivered.get(job_id, 0) >= window
               and not self.writer.done() and still()):
            self.input_moved.clear()
            with contextlib.suppress(TimeoutError):  # (to look at still() again)
                await asyncio.wait_for(self.input_moved.wait(), 1.0)

    def check(self, msg: m.NodeMessage) -> None:
        """Raise :class:`Violation` unless ``msg`` is one this node could honestly send."""
        if isinstance(msg, m.Register):
            raise Violation("it sent a second register message")
        if isinstance(msg, m.JobStarted | m.JobQueued):
            if msg.job_id not in self.job_ids:
                raise Violation(f"it says job {msg.job_id} started, which it was never given")
        elif isinstance(msg, m.JobInputAck):
            if msg.job_id not in self.job_ids:
                raise Violation(f"it acknowledged input of job {msg.job_id}, which it was "
                                "never given")
        elif isinstance(msg, m.JobOutput | m.JobEnded):
            key = run_key(msg.job_id, msg.run)
            what = "output" if isinstance(msg, m.JobOutput) else "the end"
            if key not in self.runs:
                raise Violation(f"it sent {what} of run {key}, which it was never given")
            if key in self.ended:
                raise Violation(f"it sent {what} of run {key} after that run's end")
            if isinstance(msg, m.JobEnded):
                if msg.state not in _ENDED_VALUES:
                    raise Violation(f"it ended run {key} as {msg.state[:40]!r}, which is not "
                                    "an ended state")
                self.ended.add(key)

    async def drained(self, most: int = 16) -> None:
        """Until at most ``most`` messages wait to go out (back-pressure for job input)."""
        while self.queue.qsize() > most and not self.writer.done():
            await self.empty.wait()

    async def _write(self) -> None:
        """Send what is queued: one message a frame, or all that waits as one frame."""
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while True:
                if self.queue.empty():
                    self.empty.set()
                msg = await self.queue.get()
                await self.ws.send_bytes(m.take_frame(msg, self.queue))
