"""``mgpu top``: nodes, GPUs and the queue, redrawn in place as the master's state changes.

It follows the dashboard stream (``client/dash.py``, ``view=top``) in a thread and draws
with curses on the main thread; the lines come from ``client/top_view.py``. No polling:
the screen changes when the master says something changed, and once a second for the
elapsed times. Keys: ``q`` quits; ``n``/``p`` (or PgDn/PgUp, space) page through the
queue. A lost master is retried every :data:`RETRY` seconds, said on the first line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from mgpu.cli.shared import client_for, write
from mgpu.core.errors import MgpuError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from mgpu.client.client import SimpleClient
    from mgpu.client.dash import DashStream

RETRY = 2.0  # seconds between attempts to reach a lost master
FRAME = 0.2  # seconds: how often keys are read and the screen looked at


class _Follow:
    """The stream's last events, kept by a reader thread for the drawing thread."""

    def __init__(self, client: SimpleClient, stream: DashStream, limit: int) -> None:
        self.client = client
        self.stream: DashStream | None = stream
        self.offset = 0
        self.limit = limit
        self.data: dict[str, Any] = {}
        self.status = "connecting"
        self.skew = 0.0  # the master's clock minus ours
        self.dirty = True
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="mgpu-top", daemon=True)

    def reopen(self, offset: int, limit: int) -> None:
        """Follow another page: the reader opens a new stream with these."""
        with self.lock:
            self.offset, self.limit = max(0, offset), max(1, limit)
            stream = self.stream
        if stream is not None:
            stream.close()

    def _run(self) -> None:
        from mgpu.client.dash import DashStream

        while not self.stop.is_set():
            stream = self.stream
            try:
                if stream is None:
                    with self.lock:
                        query: dict[str, str | int] = {
                            "view": "top", "offset": self.offset, "limit": self.limit}
                    stream = self.stream = DashStream(self.client, **query)
                self._set("live")
                for name, value in stream.events():
                    with self.lock:
                        self.data[name] = value
                        if name == "cluster":
                            self.skew = value["now"] - time.time()
                        self.dirty = True
                self.stream = None
            except MgpuError as e:
                self.stream = None
                self._set(f"({e.message}: retrying)")
                self.stop.wait(RETRY)

    def _set(self, status: str) -> None:
        with self.lock:
            self.status, self.dirty = status, True


def cmd_top(ns: argparse.Namespace) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        write("error: mgpu top needs a terminal; `mgpu queue` and `mgpu nodes` print the "
              "same once", err=True)
        return 2
    import curses

    from mgpu.client.dash import DashStream

    client = client_for(ns)
    rows = _size()[1]
    first = DashStream(client, view="top", limit=rows)  # a bad token fails here, plainly
    follow = _Follow(client, first, rows)
    follow.thread.start()
    try:
        curses.wrapper(_draw, follow, client.address)
    except KeyboardInterrupt:
        pass
    finally:
        follow.stop.set()
        stream = follow.stream
        if stream is not None:
            stream.close()
    return 0


def _size() -> tuple[int, int]:
    import os

    try:
        size = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        return 80, 24
    return size.columns, size.lines


def _draw(stdscr: Any, follow: _Follow, address: str) -> None:
    import curses

    from mgpu.client.top_view import screen

    curses.curs_set(0)
    stdscr.timeout(int(FRAME * 1000))
    drawn_at = 0.0
    shown = 0
    while True:
        key = stdscr.getch()
        height, width = stdscr.getmaxyx()
        if key in (ord("q"), ord("Q")):
            return
        if key in (ord("n"), ord(" "), curses.KEY_NPAGE) and shown:
            total = follow.data.get("queue", {}).get("total", 0)
            if follow.offset + shown < total:
                follow.reopen(follow.offset + shown, height)
        elif key in (ord("p"), curses.KEY_PPAGE):
            follow.reopen(follow.offset - max(shown, 1), height)
        elif key == curses.KEY_RESIZE:
            follow.reopen(follow.offset, height)
        with follow.lock:
            due = follow.dirty or time.monotonic() - drawn_at >= 1.0 or key != -1
            if not due:
                continue
            follow.dirty = False
            lines, shown = screen(follow.data, width, height, time.time() + follow.skew,
                                  address, follow.status)
        drawn_at = time.monotonic()
        stdscr.erase()
        for y, line in enumerate(lines):
            # (the bottom-right cell cannot be written without scrolling: curses errs)
            with contextlib.suppress(curses.error):
                stdscr.addstr(y, 0, line, curses.A_REVERSE if y in (0, height - 1) else 0)
        stdscr.refresh()
