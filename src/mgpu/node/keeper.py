"""The node keeper: the one process on a node that runs jobs and outlives its agent.

The agent starts the keeper once (``python -m mgpu.node.keeper DATA_DIR``, in a session of
its own) and talks to it over ``DATA_DIR/run/keeper.sock`` (private to the agent's uid, one
agent at a time: ``keeper_sock.py``). A restarted agent finds the keeper still there and
re-adopts every job with its output and exit code. For each job the keeper:

* starts ``/bin/sh -c COMMAND`` in a new session, with pipes or a pseudo-terminal, and
  exactly the environment it was given (the agent sets ``CUDA_VISIBLE_DEVICES``);
* runs it in a cgroup of its own where it may (``cgroup.py``): nothing the job starts can
  leave it, and the job's end is reported once it is empty. Else (and as well) it is the
  child subreaper (``PR_SET_CHILD_SUBREAPER``) of everything the job starts, so a
  descendant that left the job's session is still found and killed; each such process is
  attributed to its job by the ``MGPU_JOB_ID`` and ``MGPU_JOB_RUN`` it inherited, and at a
  job's end the orphans no running job claims are killed too;
* writes the job's framed output to its spool file (``keeper_spool.py``: a cap, a full
  disk) and tells the agent how far it has got;
* enforces the time limit: SIGTERM to the job's whole tree, a grace period, then SIGKILL;
* when the job's main process exits, kills whatever it left behind, writes ``JOBID.exit``
  and reports the end.

**Fencing.** The agent pings the keeper. If the agent says nothing for ``fence`` seconds
(it died, hung or was stopped), the keeper kills every job, before the master (whose node
timeout is longer) can requeue them: no job ever runs twice because of a silent agent.

Why one keeper per node rather than one watcher process per job: a fork of a Python
process is dear (copy-on-write of the interpreter's pages in both processes) and would cap
how many jobs a node can start per second; the keeper starts each job with ``vfork``
(``posix_spawn``), which copies nothing. If the keeper dies, its agent kills what it leaves.

Messages are those of ``core/keeper_messages.py``. A message the keeper cannot act on is
logged and, for a SPAWN, fails that job: no single request ends the keeper. This module
imports only the standard library, ``core/frames.py``, the protocol
(``core/keeper_messages.py``), ``core/exitstatus``, ``core/timefmt`` and its own stdlib-only
helpers (``cgroup``, ``exitfile``, ``keeper_jobs``, ``keeper_sock``, ``keeper_spool``,
``proctree``, ``supervisor``), so the keeper starts fast and stays small.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import sys
import time

from mgpu.core.exitstatus import describe_exit, exit_code_of
from mgpu.core.frames import STREAM_STDERR, STREAM_STDOUT
from mgpu.core.keeper_messages import (
    CANCEL,
    ENDING_CAUSES,
    EXITED,
    FORGET,
    GREW,
    HELLO,
    LENGTH,
    PING,
    REFUSED,
    RESIZE,
    SHUTDOWN,
    SIGNAL,
    SPAWN,
    STDIN,
    STDIN_CREDIT,
    STDIN_CREDIT_STEP,
    STDIN_EOF,
    STDIN_WINDOW,
    Exited,
    Grew,
    Spawn,
    pack,
    unpack_all,
)
from mgpu.core.timefmt import format_duration
from mgpu.node import cgroup, keeper_sock, proctree, supervisor
from mgpu.node.exitfile import write_exit
from mgpu.node.keeper_conn import AgentConnection
from mgpu.node.keeper_jobs import KeeperRun
from mgpu.node.keeper_stdin import StdinFeed

# The protocol's names, for those who talk to the keeper through this module.
__all__ = [
    "CANCEL", "EXITED", "FORGET", "GREW", "HELLO", "LENGTH", "PING", "REFUSED", "RESIZE",
    "SHUTDOWN", "SIGNAL", "SPAWN", "STDIN", "STDIN_CREDIT", "STDIN_CREDIT_STEP", "STDIN_EOF",
    "STDIN_WINDOW", "Exited", "Keeper", "Spawn", "main", "pack", "socket_address",
    "socket_path", "unpack_all",
]

DRAIN_TIMEOUT = 2.0
READ_SIZE = 1 << 16
IDLE_EXIT = 10.0  # with no agent and no job for this long, the keeper exits
GREW_BELOW = 1 << 16  # progress is reported while less than this waits to go to the agent
LINGER_POLL = 0.005  # seconds between checks that a killed job's processes are gone


class Keeper(AgentConnection):
    """The keeper's event loop: jobs, their pipes, the agent's connection, the deadlines."""

    def __init__(self, data_dir: str, listener: socket.socket,
                 cgroups: cgroup.JobCgroups | None = None) -> None:
        self.data_dir = data_dir
        self.cgroups = cgroups  # None: jobs are found by the subreaper + process-group walk
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.jobs: dict[str, KeeperRun] = {}
        self.conn: socket.socket | None = None
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.writing = False  # is the connection registered for EVENT_WRITE?
        self.devnull = os.open(os.devnull, os.O_RDWR)  # the stdin of jobs that take none
        self.home = os.open(".", os.O_PATH | os.O_DIRECTORY)  # see supervisor.spawn_here
        self.last_heard = time.monotonic()
        self.idle_since = time.monotonic()
        self.fence: float | None = None
        self.stopping = False
        self.stdin = StdinFeed(self.sel, self.send)

    # ------------------------------------------------------------------ jobs

    def spawn(self, req: Spawn) -> None:
        """Start one job; any failure to start it (bad input included) ends that job as
        ``failed`` with the reason, never the keeper."""
        # A run key is used once (a requeue is the next run), so its spool and exit files
        # are new: nothing to look at or clear first.
        job = KeeperRun(req)
        self.jobs[req.key] = job
        try:
            job.account = supervisor.account_of(req)
        except Exception as e:  # a user name that no look-up takes (a NUL byte) too
            why = str(e) if isinstance(e, PermissionError) else f"could not start: {e}"
            job.spool.note(f"mgpu: {why}\n")
            self.finish(job, "failed", None, why, "failed_to_start")
            return
        try:
            if self.cgroups is not None:
                with contextlib.suppress(OSError):  # else: the process-group walk alone
                    job.cgroup = self.cgroups.take()
            with (self.cgroups.inside(job.cgroup) if self.cgroups is not None and job.cgroup
                  else contextlib.nullcontext()):
                self._start(job)
            job.pidfd = os.pidfd_open(job.pid)  # (EMFILE: the job cannot be watched)
        except Exception as e:  # one bad spawn must not end the keeper
            if job.pid > 0:  # started, but not watched: it does not run unwatched
                with contextlib.suppress(OSError):
                    os.killpg(job.pid, signal.SIGKILL)
                supervisor.reap(job)
            acct = job.account if job.account and job.account.uid != os.geteuid() else None
            exit_code, reason = supervisor.failure_reason(
                e, supervisor.argv0(req), req.cwd or "/", acct.name if acct else None,
                (acct.uid, acct.gid, acct.groups) if acct else None)
            job.spool.note(f"mgpu: {reason}\n")
            if job.cgroup is not None and self.cgroups is not None:
                self.cgroups.kill(job.cgroup)  # (nothing, unless the spawn failed late)
                if not cgroup.populated(job.cgroup):
                    self.cgroups.give_back(job.cgroup)
            self.finish(job, "failed", exit_code, reason, "failed_to_start")
            return
        self.sel.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        if req.time_limit:
            job.limit_at = time.monotonic() + req.time_limit

    def _start(self, job: KeeperRun) -> None:
        """Start the job's processes (``supervisor.py``) and watch their output."""
        if job.req.pty:
            supervisor.start_pty(job)
            assert job.pty_fd is not None
            self.sel.register(job.pty_fd, selectors.EVENT_READ, ("out", (job, STREAM_STDOUT)))
            return
        supervisor.start_pipes(job, self.devnull, self.home)
        for stream, fd in zip((STREAM_STDOUT, STREAM_STDERR), job.out_fds, strict=True):
            self.sel.register(fd, selectors.EVENT_READ, ("out", (job, stream)))

    def emit(self, job: KeeperRun, stream: int, data: bytes) -> None:
        job.spool.write(stream, data)  # never raises: a full disk loses output, not the job

    def _read(self, job: KeeperRun, stream: int, fd: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""  # EIO: the terminal's last holder has gone
        if data:
            self.emit(job, stream, data)
            return
        self.sel.unregister(fd)
        job.open_streams -= 1

    def signal_tree(self, job: KeeperRun, sig: int, ending: bool = False) -> list[int]:
        """Signal every process of the job (``proctree.signal_tree``)."""
        return proctree.signal_tree(job, self.jobs.values(), self.cgroups, sig, ending)

    def stop(self, job: KeeperRun, state: str, reason: str, grace: float) -> None:
        """SIGTERM the job's whole tree now; SIGKILL it after ``grace`` (0: at once)."""
        if job.result is not None:
            return
        if job.ending is None:
            job.ending = (state, reason)
        if grace <= 0:
            self.signal_tree(job, signal.SIGKILL)
            return
        self.signal_tree(job, signal.SIGTERM)
        if job.kill_at is None:
            job.kill_at = time.monotonic() + grace

    def _on_exit(self, job: KeeperRun) -> None:
        self.sel.unregister(job.pidfd)
        os.close(job.pidfd)
        job.pidfd = -1
        # Whatever the job left behind in its group goes with it (as SLURM ends a step);
        # the main process is a zombie until wait(), so its group id cannot be reused yet.
        # Processes that left the group are found by the tree walk in conclude().
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)
        if (job.cgroup is not None and self.cgroups is not None
                and cgroup.populated(job.cgroup)):
            self.cgroups.kill(job.cgroup)  # all of it now: its pipes close, output drains
        job.exited_at = time.monotonic()

    def conclude(self, job: KeeperRun) -> None:
        """After the main process exited and its output drained (or the drain timed out),
        and (called again each turn until then) every process of the job is dead."""
        if not proctree.all_dead(job, self.jobs.values(), self.cgroups, time.monotonic()):
            return
        returncode = supervisor.reap(job)
        for fd in job.out_fds:
            if fd != job.pty_fd:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(fd)
                os.close(fd)
        job.out_fds.clear()
        if job.stdin_fd is not None and job.pty_fd is None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(job.stdin_fd)
            with contextlib.suppress(OSError):
                os.close(job.stdin_fd)
            job.stdin_fd = None
        if job.pty_fd is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(job.pty_fd)
            with contextlib.suppress(OSError):
                os.close(job.pty_fd)
        cause: str | None = None
        if returncode is None:
            state, exit_code, reason = "failed", None, "its exit status was lost"
        else:
            exit_code = exit_code_of(returncode)
            state = "completed" if returncode == 0 else "failed"
            reason = describe_exit(returncode) or ""
            cause = "signaled" if returncode < 0 else "exited"
        if job.ending is not None:
            state, reason = job.ending
            cause = ENDING_CAUSES.get(state, cause)
        self.finish(job, state, exit_code, reason or None, cause)

    def finish(self, job: KeeperRun, state: str, exit_code: int | None, reason: str | None,
               cause: str | None = None) -> None:
        """Report the end to the agent, or record it on disk when no agent is there.

        The keeper also keeps the end in memory until the agent says FORGET (a reconnecting
        agent gets it in HELLO); the file is for a keeper that dies before then."""
        job.spool.close()
        if job.spool.lost is not None:
            reason = f"{reason}; {job.spool.lost}" if reason else job.spool.lost
        job.result = Exited(job.key, job.job_id, state, exit_code, reason, job.size, cause)
        if self.conn is None:
            self._record(job)
        else:
            self.send(EXITED, dict(vars(job.result)))

    @staticmethod
    def _record(job: KeeperRun) -> None:
        """Write the run's end to ``KEY.exit`` once (``exitfile.py``)."""
        assert job.result is not None
        if not job.exit_written:
            job.exit_written = True
            write_exit(job.req.exit_file, job.result)

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ, ("listen", None))
        next_reap = time.monotonic() + 1.0
        while True:
            now = time.monotonic()
            if self._should_exit(now):
                return 0
            for key, mask in self.sel.select(self._timeout(now)):
                kind, data = key.data
                if kind == "out":
                    job, stream = data
                    if mask & selectors.EVENT_WRITE:
                        self.stdin.write(job)
                    if mask & selectors.EVENT_READ:
                        self._read(job, stream, key.fd)
                elif kind == "in":
                    self.stdin.write(data)
                elif kind == "exit":
                    self._on_exit(data)
                elif kind == "listen":
                    self._accept()
                elif kind == "conn":
                    self._on_conn(mask)
            now = time.monotonic()
            self._check(now)
            if self.outbuf:
                self._flush()
            if now >= next_reap:
                proctree.reap_orphans({j.pid for j in self.jobs.values() if j.result is None})
                next_reap = now + 1.0

    def _should_exit(self, now: float) -> bool:
        running = any(j.result is None for j in self.jobs.values())
        if self.stopping and not running:
            return True
        return (self.conn is None and not running
                and now - self.idle_since > max(IDLE_EXIT, self.fence or 0))

    def _timeout(self, now: float) -> float:
        deadlines = [now + 1.0]
        for job in self.jobs.values():
            if job.result is not None:
                continue
            if job.lingering_since is not None:
                deadlines.append(now + LINGER_POLL)
            elif job.exited_at is not None:
                deadlines.append(job.exited_at + DRAIN_TIMEOUT)
            if job.limit_at is not None and job.ending is None:
                deadlines.append(job.limit_at)
            if job.kill_at is not None:
                deadlines.append(job.kill_at)
        if self.fence is not None:
            deadlines.append(self.last_heard + self.fence)
        return max(0.0, min(deadlines) - now)

    def _check(self, now: float) -> None:
        fenced = (self.fence is not None and now - self.last_heard > self.fence)
        for job in list(self.jobs.values()):
            if job.result is not None:
                continue
            if job.exited_at is not None and (
                    job.open_streams == 0 or now > job.exited_at + DRAIN_TIMEOUT):
                self.conclude(job)
                continue
            if job.limit_at is not None and now >= job.limit_at and job.ending is None:
                self.stop(job, "timeout", "time limit of "
                          f"{format_duration(job.req.time_limit or 0)} reached", job.req.grace)
            if job.kill_at is not None and now >= job.kill_at:
                job.kill_at = None
                self.signal_tree(job, signal.SIGKILL)
            if fenced and job.ending is None:
                self.stop(job, "node_fail", f"the node agent stopped answering for "
                          f"{self.fence:g}s: job killed so that it cannot run twice", 0)
            if (self.conn is not None and job.size != job.notified
                    and len(self.outbuf) < GREW_BELOW):
                job.notified = job.size
                self.send(GREW, vars(Grew(job.key, job.size)))


socket_path = keeper_sock.socket_path
socket_address = keeper_sock.socket_address


def main(argv: list[str]) -> int:
    """``python -m mgpu.node.keeper DATA_DIR``: run the keeper of the node using DATA_DIR."""
    data_dir = argv[0]
    # Not SIGINT: an ignored signal is inherited, and a shell cannot trap what it was born
    # ignoring. The keeper has a session of its own, so no terminal's Ctrl-C reaches it.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Popen restores it for the jobs
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with socket_address(data_dir) as address:
            probe.connect(address)
    except OSError:
        pass
    else:
        probe.close()
        return 0  # a keeper already runs for this data dir
    probe.close()
    try:
        listener = keeper_sock.bind(data_dir)
    except PermissionError as e:
        print(f"mgpu keeper: {e}", file=sys.stderr)
        return 1
    proctree.set_subreaper()
    cgroups = cgroup.available()
    try:
        return Keeper(data_dir, listener, cgroups).run()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(socket_path(data_dir))
        if cgroups is not None:
            cgroups.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
