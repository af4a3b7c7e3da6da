"""The keeper's side of its connection to the agent, and the messages it acts on.

One agent at a time (``keeper_sock.py`` says who may connect); on connecting it gets HELLO
with every run the keeper holds. What a turn of the loop queues goes out together at its
end. Ends the agent may not have passed on when it went are written to ``KEY.exit``.
Standard library only: the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import signal
import socket
import sys
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from mgpu.core.keeper_messages import (
    CANCEL,
    EXITED,
    FORGET,
    HELLO,
    PING,
    REFUSED,
    RESIZE,
    SHUTDOWN,
    SIGNAL,
    SPAWN,
    STDIN,
    STDIN_EOF,
    Exited,
    Held,
    Hello,
    Refused,
    Spawn,
    pack,
    unpack_all,
)
from mgpu.node import keeper_sock, supervisor
from mgpu.node.keeper_jobs import KeeperRun
from mgpu.node.keeper_stdin import StdinFeed


class AgentConnection:
    """The agent's connection, for :class:`~mgpu.node.keeper.Keeper` (which holds the runs,
    the selector and the listener, and acts on the orders passed here)."""

    listener: socket.socket
    sel: selectors.BaseSelector
    jobs: dict[str, KeeperRun]
    conn: socket.socket | None
    inbuf: bytearray
    outbuf: bytearray
    writing: bool  # is the connection registered for EVENT_WRITE?
    last_heard: float
    idle_since: float
    fence: float | None
    stopping: bool
    stdin: StdinFeed

    if TYPE_CHECKING:  # the keeper's own, for the orders below
        def spawn(self, req: Spawn) -> None: ...
        def stop(self, job: KeeperRun, state: str, reason: str, grace: float) -> None: ...
        @staticmethod
        def _record(job: KeeperRun) -> None: ...

    def send(self, kind: bytes, body: dict[str, Any]) -> None:
        """Queue a message to the agent; what a turn of the loop queued goes out together
        at its end (``_flush``)."""
        if self.conn is None:
            return  # the agent reads it from HELLO and the files when it returns
        # Never dropped while connected: what queues up is bounded by the jobs (a few
        # messages each; GREW waits while GREW_BELOW bytes are queued).
        self.outbuf += pack(kind, body)

    def _flush(self) -> None:
        if self.conn is None:
            return
        try:
            while self.outbuf:
                n = self.conn.send(self.outbuf)
                del self.outbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._drop_conn()
            return
        if self.writing != bool(self.outbuf):
            self.writing = bool(self.outbuf)
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.writing else 0)
            self.sel.modify(self.conn, want, ("conn", None))

    def _drop_conn(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.conn)
            self.conn.close()
            for job in self.jobs.values():  # ends the agent may not have passed on
                if job.result is not None:
                    self._record(job)
        self.conn = None
        self.writing = False
        self.outbuf.clear()
        self.inbuf.clear()
        self.idle_since = time.monotonic()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:  # none waiting, or out of file descriptors: not the keeper's end
            return
        refusal = keeper_sock.peer_refusal(conn)
        if refusal is None and self.conn is not None:
            for _ in range(64):  # has the agent we had gone? (its EOF may be unread yet)
                if self.conn is None or not select.select([self.conn], [], [], 0)[0]:
                    break
                self._on_conn(selectors.EVENT_READ)
            if self.conn is not None:
                refusal = ("another node agent is connected to this keeper: stop it first "
                           "(one agent per node data dir)")
        if refusal is not None:
            with contextlib.suppress(OSError):
                conn.setblocking(False)
                conn.send(pack(REFUSED, asdict(Refused(refusal))))
            conn.close()
            print(f"mgpu keeper: refused a connection: {refusal}", file=sys.stderr, flush=True)
            return
        conn.setblocking(False)
        self.conn = conn
        self.last_heard = time.monotonic()
        self.sel.register(conn, selectors.EVENT_READ, ("conn", None))
        held = []
        for job in self.jobs.values():
            held.append(Held(job.key, job.job_id, job.pid, job.size, job.stdin_written,
                             job.result))
            job.notified = job.size
            job.stdin_credited = job.stdin_written
        self.send(HELLO, asdict(Hello(held)))

    def _on_conn(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush()
        if not mask & selectors.EVENT_READ or self.conn is None:
            return
        try:
            data = self.conn.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_conn()
            return
        self.last_heard = time.monotonic()
        self.inbuf += data
        for kind, payload in unpack_all(self.inbuf):
            try:
                self._on_message(kind, payload)
            except Exception as e:  # one bad message must not end the keeper
                print(f"mgpu keeper: message {kind!r} not understood: {e!r}", file=sys.stderr,
                      flush=True)
                self._refuse_spawn(kind, payload, e)

    def _refuse_spawn(self, kind: bytes, payload: bytes, e: Exception) -> None:
        """A SPAWN the keeper could not even read: end that job, if it can be named."""
        if kind != SPAWN:
            return
        with contextlib.suppress(Exception):
            body = json.loads(payload)
            key, job_id = str(body["key"]), int(body["job_id"])
            if key not in self.jobs:
                self.send(EXITED, asdict(Exited(key, job_id, "failed", None,
                                                f"could not start: bad request ({e})", 0,
                                                "failed_to_start")))

    def _on_message(self, kind: bytes, payload: bytes) -> None:
        if kind == STDIN:
            key, _, data = payload.partition(b"\n")
            job = self.jobs.get(key.decode(errors="replace"))
            if job is not None:
                self.stdin.take(job, data)
            return
        body = json.loads(payload) if payload else {}
        if kind == SPAWN:
            req = Spawn(**body)
            if req.key in self.jobs:
                return  # a run key is started once
            if req.fence is not None:
                self.fence = req.fence
            self.spawn(req)
            return
        if kind == PING:
            self.fence = body.get("fence")
            return
        if kind == SHUTDOWN:
            self.stopping = True
            for job in self.jobs.values():
                self.stop(job, "cancelled", "the node agent was stopped", 0)
            return
        job = self.jobs.get(str(body.get("key")))
        if job is None:
            return
        if kind == CANCEL:
            self.stop(job, body["state"], body["reason"], float(body["grace"]))
        elif kind == SIGNAL:
            if job.pid > 0 and job.exited_at is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, int(body["signum"]))
        elif kind == STDIN_EOF:
            job.stdin_eof = True
            self.stdin.write(job)
        elif kind == RESIZE and job.pty_fd is not None:
            supervisor.set_size(job.pty_fd, int(body["rows"]), int(body["cols"]))
            if job.pid > 0 and job.exited_at is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGWINCH)
        elif kind == FORGET and job.result is not None:
            del self.jobs[job.key]
            if job.exit_written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job.req.exit_file)
