"""A job's stdin in the keeper: the buffer, the writes, and the credit sent to the agent.

See "stdin flow control" in ``core/keeper_messages.py``: the keeper counts the bytes it took
off a job's buffer and tells the agent (STDIN_CREDIT), which sends no more than a window
ahead. Standard library only: the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import sys
from collections.abc import Callable
from typing import Any

from mgpu.core.frames import STREAM_STDOUT
from mgpu.core.keeper_messages import (
    STDIN_CREDIT,
    STDIN_CREDIT_STEP,
    STDIN_WINDOW,
    StdinCredit,
)
from mgpu.node.keeper_jobs import KeeperRun


class StdinFeed:
    """Feeds the jobs' stdin from the agent's STDIN messages, registering each job's stdin
    for writing in ``sel`` while bytes wait, and reporting progress through ``send``."""

    def __init__(self, sel: selectors.BaseSelector,
                 send: Callable[[bytes, dict[str, Any]], None]) -> None:
        self.sel = sel
        self.send = send

    def take(self, job: KeeperRun, data: bytes) -> None:
        """STDIN bytes from the agent for ``job``: buffered and written as the job reads
        them; dropped (and counted as written) once its stdin is closed, as a pipe would."""
        if job.stdin_fd is None:
            job.stdin_written += len(data)
            self.credit(job)
            return
        job.stdin_buf += data
        if len(job.stdin_buf) > STDIN_WINDOW and not job.stdin_overrun:
            job.stdin_overrun = True
            print(f"mgpu keeper: job {job.key}: the agent sent stdin past the "
                  f"{STDIN_WINDOW}-byte window", file=sys.stderr, flush=True)
        self.write(job)

    def write(self, job: KeeperRun) -> None:
        """Write what the job's stdin takes now; wait until it is writable for the rest."""
        fd = job.stdin_fd
        if fd is None:
            job.stdin_written += len(job.stdin_buf)
            job.stdin_buf.clear()
            self.credit(job)
            return
        try:
            while job.stdin_buf:
                n = os.write(fd, job.stdin_buf)
                del job.stdin_buf[:n]
                job.stdin_written += n
        except BlockingIOError:
            pass
        except OSError:  # the job closed its stdin or ended
            job.stdin_written += len(job.stdin_buf)
            job.stdin_buf.clear()
        self.credit(job)
        if job.pty_fd is not None:
            if not job.stdin_buf and job.stdin_eof:
                job.stdin_eof = False
                job.stdin_written -= 1  # the Ctrl-D is the keeper's, not the agent's
                job.stdin_buf += b"\x04"  # Ctrl-D: end of input at the terminal
                self.write(job)
                return
            if job.open_streams:
                events = selectors.EVENT_READ | (selectors.EVENT_WRITE if job.stdin_buf else 0)
                self.sel.modify(fd, events, ("out", (job, STREAM_STDOUT)))
            return
        registered = fd in self.sel.get_map()
        if job.stdin_buf and not registered:
            self.sel.register(fd, selectors.EVENT_WRITE, ("in", job))
        elif not job.stdin_buf and registered:
            self.sel.unregister(fd)
        if not job.stdin_buf and job.stdin_eof:
            with contextlib.suppress(OSError):
                os.close(fd)
            job.stdin_fd = None

    def credit(self, job: KeeperRun) -> None:
        """Tell the agent how much of the job's stdin it has taken (flow control)."""
        ahead = job.stdin_written - job.stdin_credited
        if ahead >= STDIN_CREDIT_STEP or (ahead > 0 and not job.stdin_buf):
            job.stdin_credited = job.stdin_written
            self.send(STDIN_CREDIT, vars(StdinCredit(job.key, job.stdin_written)))
