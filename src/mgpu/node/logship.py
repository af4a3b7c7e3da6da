"""The node's warnings and errors, kept for the master: an operator on the master reads every
node's log with ``mgpu events --node NODE`` (or ``mgpu nodes --log NODE``).

:class:`LogShipper` is a logging handler on the ``mgpu`` logger of the agent's process. It
keeps records of level WARNING and above in a bounded queue; the agent takes them with each
heartbeat and sends them to the master as one :class:`~mgpu.core.messages.NodeLog`. What
is logged while the master is away waits for the next link, up to :data:`CAPACITY` records;
past that the oldest go, and the next batch says how many. The master keeps them in its audit
log (bounded per node and minute: ``server/nodelog.py``).
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from mgpu.core import messages as m

CAPACITY = 200  # records waiting for the master
BATCH = 50  # records in one message
MAX_TEXT = 1000  # characters of a record's text


class LogShipper(logging.Handler):
    """Keeps WARNING+ records until :meth:`take` hands them on: those of the agent's own
    logger ``logger_name`` and, with ``everything`` (the process runs this agent alone), of
    every ``mgpu`` module (the keeper link, orphan killing...). A
    :class:`~mgpu.node.manager.NodeManager` running many agents in one process ships each
    agent's own records only: a module's could be any agent's."""

    def __init__(self, logger_name: str, capacity: int = CAPACITY,
                 everything: bool = False) -> None:
        super().__init__(logging.WARNING)
        self.logger_name = logger_name
        self.everything = everything
        self.pending: deque[m.NodeLogRecord] = deque(maxlen=capacity)
        self.dropped = 0
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        own = (record.name == self.logger_name
               or record.name.startswith(self.logger_name + "."))
        if not (own or (self.everything and record.name.startswith("mgpu."))):
            return
        try:
            text = record.getMessage()
        except Exception:  # (a bad format string is the caller's bug, not a reason to fail)
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text = f"{text}: {record.exc_info[1]!r}"
        entry = m.NodeLogRecord(time=record.created, level=record.levelname.lower(),
                                logger=record.name[:128], message=text[:MAX_TEXT])
        with self._lock:
            if len(self.pending) == self.pending.maxlen:
                self.dropped += 1
            self.pending.append(entry)

    def take(self, most: int = BATCH) -> list[m.NodeLogRecord]:
        """Up to ``most`` records, oldest first, and first a note of any dropped."""
        with self._lock:
            out: list[m.NodeLogRecord] = []
            if self.dropped:
                out.append(m.NodeLogRecord(
                    time=self.pending[0].time if self.pending else 0.0, level="warning",
                    logger=self.logger_name,
                    message=f"{self.dropped} earlier warnings or errors were dropped "
                            f"(more than {self.pending.maxlen} waited for the master)"))
                self.dropped = 0
            while self.pending and len(out) < most:
                out.append(self.pending.popleft())
            return out
