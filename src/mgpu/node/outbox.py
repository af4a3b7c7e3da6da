"""The messages an agent has for the master on one link, and how much output they hold.

Output is read from the spool only while the outbox holds less than :data:`OUT_WINDOW`
bytes of it (``has_room``); the rest waits on disk, read by offset when the link has room.
So a job that writes fast, or a master that reads slowly, costs the agent at most a window
of memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp

from mgpu.core import messages as m

OUT_WINDOW = 4 * 1024 * 1024  # output bytes queued for the master at most


def _output_bytes(msg: m.NodeMessage) -> int:
    return len(msg.data) if isinstance(msg, m.JobOutput) else 0


class Outbox:
    """A queue of messages for the master, counting the output bytes in it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[m.NodeMessage] = asyncio.Queue()
        self.output = 0  # bytes of JobOutput data queued
        self._taken = 0

    def put(self, msg: m.NodeMessage) -> None:
        self.output += _output_bytes(msg)
        self.queue.put_nowait(msg)

    def has_room(self) -> bool:
        return self.output < OUT_WINDOW

    def empty(self) -> bool:
        return self.queue.empty()

    def get_nowait(self) -> m.NodeMessage:  # for take_frame, which batches what waits
        msg = self.queue.get_nowait()
        self._taken += _output_bytes(msg)
        return msg

    async def send_all(self, ws: aiohttp.ClientWebSocketResponse,
                       sent: Callable[[], None]) -> None:
        """Send what is queued, as it comes, batched into frames; ``sent()`` after each
        frame that took output (the window may have room again). Ends with the link."""
        with contextlib.suppress(ConnectionError):
            while True:
                msg = await self.queue.get()
                self._taken = _output_bytes(msg)
                frame = m.take_frame(msg, self)
                await ws.send_bytes(frame)
                self.output -= self._taken
                if self._taken:
                    sent()
