"""The node keeper: the one process on a node that runs jobs and outlives its agent.

The agent starts the keeper once (``python -m mgpu.node.keeper DATA_DIR``, in a session of
its own) and talks to it over ``DATA_DIR/keeper.sock``. A restarted agent finds the keeper
still there and re-adopts every job with its output and exit code. For each job the keeper:

* starts ``/bin/sh -c COMMAND`` in a new session, with pipes or a pseudo-terminal, and
  exactly the environment it was given (the agent sets ``CUDA_VISIBLE_DEVICES``);
* is the child subreaper (``PR_SET_CHILD_SUBREAPER``) of everything the job starts, so a
  descendant that left the job's session is still found and killed; each such process is
  attributed to its job by the ``MGPU_JOB_ID`` and ``MGPU_JOB_RUN`` it inherited;
* writes the job's framed output to its spool file and tells the agent how far it has got;
* enforces the time limit: SIGTERM to the job's whole tree, a grace period, then SIGKILL;
* when the job's main process exits, kills whatever it left behind, writes ``JOBID.exit``
  and reports the end.

**Fencing.** The agent pings the keeper. If the agent says nothing for ``fence`` seconds
(it died, hung or was stopped), the keeper kills every job, before the master (whose node
timeout is longer) can requeue them: no job ever runs twice because of a silent agent.

Why one keeper per node rather than one watcher process per job: a fork of a Python
process costs about 3 ms of CPU here (copy-on-write of the interpreter's pages in both
processes), which would cap a 2-core node at a few hundred jobs per second; the keeper
starts each job with ``vfork`` for a fraction of that. The cost: if the keeper itself is
killed, the node's jobs lose their watcher; the next agent then reports them as failed.

Messages are ``length:u32 | kind:u8 | body`` with a JSON body (for STDIN: the run key, a
newline, then raw bytes). This module imports only the standard library and ``core/frames.py``,
so the keeper starts fast and stays small.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, BinaryIO

from mgpu.core.frames import STREAM_STDERR, STREAM_STDOUT, frame

LENGTH = struct.Struct(">I")
PR_SET_CHILD_SUBREAPER = 36
DRAIN_TIMEOUT = 2.0
READ_SIZE = 1 << 16
IDLE_EXIT = 10.0  # with no agent and no job for this long, the keeper exits
GREW_BELOW = 1 << 16  # progress is reported while less than this waits to go to the agent

# Jobs are named by their run key ("JOBID.RUN"): a requeued job's new run is another job
# here, even while its old run is still being killed.
# agent -> keeper
SPAWN = b"S"  # Spawn
PING = b"p"  # {fence}
CANCEL = b"c"  # {key, state, reason, grace}
SIGNAL = b"k"  # {key, signum}
STDIN = b"i"  # key, a newline, then raw bytes
STDIN_EOF = b"e"  # {key}
RESIZE = b"r"  # {key, rows, cols}
FORGET = b"f"  # {key}: the agent has reported the end; drop it
SHUTDOWN = b"q"  # kill every job and exit
# keeper -> agent
HELLO = b"h"  # {jobs: [{key, job_id, pid, size, exited}]}
GREW = b"g"  # {key, size}
EXITED = b"x"  # Exited


@dataclass
class Spawn:
    """Agent -> keeper: start one job."""

    key: str
    job_id: int
    command: str
    cwd: str
    env: dict[str, str]
    spool: str
    exit_file: str
    time_limit: float | None = None
    grace: float = 30.0
    fence: float | None = None  # the agent's fence time, known before the job starts
    stdin: bool = False
    pty: bool = False
    rows: int = 24
    cols: int = 80
    argv: list[str] | None = None
    user: str = ""  # the job's owner: a root keeper runs the job under this account
    allow_root: bool = False  # may a root keeper run a job of root's as root?


@dataclass
class Exited:
    """How a job ended (also kept in ``KEY.exit``)."""

    key: str
    job_id: int
    state: str
    exit_code: int | None
    reason: str | None
    size: int


def pack(kind: bytes, body: dict[str, Any] | bytes = b"") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return LENGTH.pack(len(payload) + 1) + kind + payload


def unpack_all(buf: bytearray) -> list[tuple[bytes, bytes]]:
    """Take every complete message, as (kind, payload), off the front of ``buf``."""
    out: list[tuple[bytes, bytes]] = []
    while len(buf) >= 4:
        (n,) = LENGTH.unpack_from(buf)
        if len(buf) < 4 + n:
            break
        out.append((bytes(buf[4:5]), bytes(buf[5 : 4 + n])))
        del buf[: 4 + n]
    return out


def exit_code_of(returncode: int) -> int:
    """The shell convention: 128+N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str | None:
    if returncode == 0:
        return None
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def read_exit(path: str) -> Exited | None:
    try:
        with open(path, "rb") as f:
            return Exited(**json.loads(f.read()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


@dataclass
class Account:
    """A Unix account to run a job as."""

    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    shell: str


ACCOUNT_TTL = 30.0  # seconds an account lookup is reused (passwd and group files)
_accounts: dict[str, tuple[float, Account | None]] = {}


def account_of(req: Spawn) -> Account | None:
    """Whom to run the job as: its owner's account when the keeper is root, else nobody
    else (the job runs as the keeper's user). PermissionError, with the reason, when the
    owner has no account here or is root and root jobs are not allowed."""
    if os.geteuid() != 0:
        return None
    now = time.monotonic()
    cached = _accounts.get(req.user)
    if cached is not None and now - cached[0] < ACCOUNT_TTL:
        acct = cached[1]
    else:
        acct = _lookup(req.user)
        _accounts[req.user] = (now, acct)
    if acct is None:
        raise PermissionError(
            f"user {req.user!r} has no account on this node: create it (same name as on "
            "the master) or run the job from an account that exists here")
    if acct.uid == 0 and not req.allow_root:
        raise PermissionError(
            "jobs do not run as root: submit as another user, or allow root jobs on this "
            "node (MGPU_ALLOW_ROOT_JOBS=1, allow_root_jobs in [node])")
    return acct


def _lookup(user: str) -> Account | None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir,
                   entry.pw_shell)


def _as_owner(job: Job) -> dict[str, Any]:
    """Popen arguments that run the job as its owner, with the owner's HOME and USER.

    Only when the owner is another user than the keeper's: a uid change makes Popen fork
    instead of vfork, which costs the keeper about a millisecond per job."""
    env = job.req.env
    acct = job.account
    if acct is None or acct.uid == os.geteuid():
        return {"env": env}
    env = {**env, "HOME": acct.home, "USER": acct.name, "LOGNAME": acct.name,
           "SHELL": acct.shell or "/bin/sh"}
    return {"env": env, "user": acct.uid, "group": acct.gid, "extra_groups": acct.groups}


# Words that only a shell understands: a command starting with one needs /bin/sh.
_SHELL_WORDS = frozenset((
    "alias", "bg", "break", "builtin", "cd", "command", "continue", "declare", "eval",
    "exec", "exit", "export", "fc", "fg", "getopts", "hash", "jobs", "let", "local", "read",
    "readonly", "return", "set", "shift", "source", "times", "trap", "type", "typeset",
    "ulimit", "umask", "unalias", "unset", "wait", ".", ":", "!", "{", "}", "if", "then",
    "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done", "function",
    "select", "time",
))
_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./- ")


def command_argv(req: Spawn) -> list[str]:
    """What to execute: the job's argv; else its command line split on spaces when it is
    a plain list of words that any shell would run the same way (no quotes, variables,
    globs, redirections, builtins; this saves a fork and lets the program itself get
    signals); else ``/bin/sh -c COMMAND``."""
    if req.argv:
        return req.argv
    words = req.command.split()
    if (words and set(req.command) <= _PLAIN and words[0] not in _SHELL_WORDS
            and "=" not in words[0]):
        return words
    return ["/bin/sh", "-c", req.command]


# Signals the keeper ignores, which an exec would pass on to the job as ignored.
_RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)


def _executable(name: str, env: dict[str, str]) -> str:
    """The file ``execvp`` would run for ``name``, searching the job's own PATH (not the
    keeper's): FileNotFoundError, or PermissionError when only files it may not execute
    were found, each naming ``name``."""
    if "/" in name:
        return name
    denied = False  # as execvp: EACCES if any candidate was there but not runnable
    for d in env.get("PATH", os.defpath).split(os.pathsep):
        path = f"{d or '.'}/{name}"
        try:
            st = os.stat(path)
        except PermissionError:  # a directory of PATH it may not search
            denied = True
            continue
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK):
            return path
        denied = True  # not executable, or a directory of that name
    if denied:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), name)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def format_duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{days}-{text}" if days else text


@dataclass
class Job:
    """One job in the keeper."""

    req: Spawn
    spool: BinaryIO | None = None
    size: int = 0
    notified: int = -1
    pid: int = -1  # the job's main process (and its process group), once started
    popen: subprocess.Popen[bytes] | None = None  # when Popen started it (pty, another user)
    out_fds: list[int] = field(default_factory=list)  # the read ends of its output
    pidfd: int = -1
    open_streams: int = 0
    exited_at: float | None = None
    ending: tuple[str, str] | None = None
    kill_at: float | None = None
    limit_at: float | None = None
    stdin_fd: int | None = None
    stdin_buf: bytearray = field(default_factory=bytearray)
    stdin_eof: bool = False
    pty_fd: int | None = None
    known: set[int] = field(default_factory=set)
    result: Exited | None = None
    account: Account | None = None  # the owner to run as (None: the keeper's own user)
    exit_written: bool = False

    @property
    def key(self) -> str:
        return self.req.key

    @property
    def job_id(self) -> int:
        return self.req.job_id


class Keeper:
    """The keeper's event loop: jobs, their pipes, the agent's connection, the deadlines."""

    def __init__(self, data_dir: str, listener: socket.socket) -> None:
        self.data_dir = data_dir
        self.listener = listener
        self.sel = selectors.DefaultSelector()
        self.jobs: dict[str, Job] = {}
        self.conn: socket.socket | None = None
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.writing = False  # is the connection registered for EVENT_WRITE?
        self.devnull = os.open(os.devnull, os.O_RDWR)  # the stdin of jobs that take none
        self.home = os.open(".", os.O_PATH | os.O_DIRECTORY)  # see _spawn_here
        self.last_heard = time.monotonic()
        self.idle_since = time.monotonic()
        self.fence: float | None = None
        self.stopping = False

    # ------------------------------------------------------------------ jobs

    def spawn(self, req: Spawn) -> None:
        # A run key is used once (a requeue is the next run), so its spool and exit files
        # are new: nothing to look at or clear first.
        job = Job(req)
        self.jobs[req.key] = job
        try:
            job.account = account_of(req)
        except PermissionError as e:
            with contextlib.suppress(OSError):
                self.emit(job, STREAM_STDERR, f"mgpu: {e}\n".encode())
            self.finish(job, "failed", None, str(e))
            return
        try:
            if req.pty:
                self._start_pty(job)
            else:
                self._start_pipes(job)
        except OSError as e:
            argv = command_argv(req)
            exit_code: int | None = None
            if e.filename == argv[0] and isinstance(e, FileNotFoundError | PermissionError):
                # What a shell would say and return for a program it cannot run.
                missing = isinstance(e, FileNotFoundError)
                exit_code = 127 if missing else 126
                reason = f"{argv[0]}: {'command not found' if missing else e.strerror}"
            elif isinstance(e, FileNotFoundError | PermissionError):
                reason = f"could not start in {req.cwd}: {e.strerror or e}"
            else:
                reason = f"could not start: {e.strerror or e}"
            with contextlib.suppress(OSError):
                self.emit(job, STREAM_STDERR, f"mgpu: {reason}\n".encode())
            self.finish(job, "failed", exit_code, reason)
            return
        job.pidfd = os.pidfd_open(job.pid)
        self.sel.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        if req.time_limit:
            job.limit_at = time.monotonic() + req.time_limit

    def _start_pipes(self, job: Job) -> None:
        """Start the job with its stdout and stderr on pipes (and its stdin on a pipe too
        when it takes input, else on /dev/null)."""
        req = job.req
        argv = command_argv(req)
        opts = _as_owner(job)
        out_r, out_w = os.pipe()  # both ends close on exec; the child gets dup2'd copies
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if req.stdin else (-1, -1)
        try:
            fds = (in_r if req.stdin else self.devnull, out_w, err_w)
            if "user" in opts:  # another account: Popen changes the ids in the child
                job.popen = subprocess.Popen(
                    argv, cwd=req.cwd or "/", stdin=fds[0], stdout=fds[1], stderr=fds[2],
                    start_new_session=True, **opts)
                job.pid = job.popen.pid
            else:
                job.pid = self._spawn_here(argv, req.cwd or "/", opts["env"], fds)
        except BaseException:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, in_r):
                if fd >= 0:
                    os.close(fd)
        for stream, fd in ((STREAM_STDOUT, out_r), (STREAM_STDERR, err_r)):
            fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
            self.sel.register(fd, selectors.EVENT_READ, ("out", (job, stream)))
            job.out_fds.append(fd)
        job.open_streams = 2
        if in_w >= 0:
            fcntl.fcntl(in_w, fcntl.F_SETFL, os.O_NONBLOCK)
            job.stdin_fd = in_w

    def _spawn_here(self, argv: list[str], cwd: str, env: dict[str, str],
                    fds: tuple[int, int, int]) -> int:
        """Start ``argv`` as the keeper's own user with ``posix_spawn`` (a vfork and an
        exec, without Popen's error pipe and bookkeeping): in a new session, with ``fds``
        as its stdin, stdout and stderr and the signals the keeper ignores set back to
        their defaults. posix_spawn cannot change directory, so the keeper (one thread)
        steps into ``cwd`` for the call and back out after it."""
        os.chdir(cwd)
        try:
            path = _executable(argv[0], env)
            try:
                return os.posix_spawn(
                    path, argv, env, setsid=True, setsigdef=_RESET_SIGNALS,
                    file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(fds)])
            except (FileNotFoundError, PermissionError) as e:
                raise type(e)(e.errno, e.strerror, argv[0]) from None
        finally:
            os.fchdir(self.home)

    def _start_pty(self, job: Job) -> None:
        import pty

        req = job.req
        master_fd, slave_fd = pty.openpty()
        _set_size(slave_fd, req.rows, req.cols)
        try:
            job.popen = subprocess.Popen(
                command_argv(req), cwd=req.cwd or "/",
                stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, start_new_session=True,
                preexec_fn=_take_terminal, **_as_owner(job),
            )
            job.pid = job.popen.pid
        except BaseException:
            os.close(master_fd)
            raise
        finally:
            os.close(slave_fd)
        os.set_blocking(master_fd, False)
        job.pty_fd = job.stdin_fd = master_fd
        self.sel.register(master_fd, selectors.EVENT_READ, ("out", (job, STREAM_STDOUT)))
        job.open_streams = 1

    def emit(self, job: Job, stream: int, data: bytes) -> None:
        if job.spool is None:  # opened on first output: a silent job costs no file
            job.spool = open(job.req.spool, "ab")  # noqa: SIM115 - open for the job's life
        job.spool.write(frame(stream, data))
        job.spool.flush()
        job.size += 5 + len(data)

    def _read(self, job: Job, stream: int, fd: int) -> None:
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

    def _write_stdin(self, job: Job) -> None:
        """Write what the job's stdin takes now; wait until it is writable for the rest."""
        fd = job.stdin_fd
        if fd is None:
            job.stdin_buf.clear()
            return
        try:
            while job.stdin_buf:
                n = os.write(fd, job.stdin_buf)
                del job.stdin_buf[:n]
        except BlockingIOError:
            pass
        except OSError:  # the job closed its stdin or ended
            job.stdin_buf.clear()
        if job.pty_fd is not None:
            if not job.stdin_buf and job.stdin_eof:
                job.stdin_eof = False
                job.stdin_buf += b"\x04"  # Ctrl-D: end of input at the terminal
                self._write_stdin(job)
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

    def tree(self, job: Job) -> list[int]:
        """The job's live processes: its main process's descendants, plus the orphans
        reparented to the keeper that carry its ``MGPU_JOB_ID``."""
        found: list[int] = []
        roots = [job.pid] if job.exited_at is None and job.pid > 0 else []
        markers = (f"MGPU_JOB_ID={job.job_id}\0".encode(),
                   f"MGPU_JOB_RUN={job.key}\0".encode())
        mains = {j.pid for j in self.jobs.values()}
        for pid in _own_children():
            if pid in mains:
                continue  # a job's own main process, not an orphan
            if pid in job.known or _has_env(pid, markers):
                roots.append(pid)
        for root in roots:
            found.append(root)
            found.extend(_descendants(root))
        job.known.update(found)
        return found

    def signal_tree(self, job: Job, sig: int) -> None:
        if job.pid > 0 and job.exited_at is None:  # (after the exit, _on_exit killed it)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, sig)
        for pid in self.tree(job):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def stop(self, job: Job, state: str, reason: str, grace: float) -> None:
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

    def _on_exit(self, job: Job) -> None:
        self.sel.unregister(job.pidfd)
        os.close(job.pidfd)
        job.pidfd = -1
        # Whatever the job left behind in its group goes with it (as SLURM ends a step);
        # the main process is a zombie until wait(), so its group id cannot be reused yet.
        # Processes that left the group are found by the tree walk in conclude().
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)
        job.exited_at = time.monotonic()

    def conclude(self, job: Job) -> None:
        """After the main process exited and its output drained (or the drain timed out)."""
        self.signal_tree(job, signal.SIGKILL)  # what left its group (the main is a zombie)
        returncode = self._reap(job)
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
        if returncode is None:
            state, exit_code, reason = "failed", None, "its exit status was lost"
        else:
            exit_code = exit_code_of(returncode)
            state = "completed" if returncode == 0 else "failed"
            reason = describe_exit(returncode) or ""
        if job.ending is not None:
            state, reason = job.ending
        self.finish(job, state, exit_code, reason or None)

    @staticmethod
    def _reap(job: Job) -> int | None:
        """The main process's return code, as Popen gives it (-N: killed by signal N)."""
        if job.popen is not None:
            return job.popen.wait()
        try:
            _, status = os.waitpid(job.pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status)

    def finish(self, job: Job, state: str, exit_code: int | None, reason: str | None) -> None:
        """Report the end to the agent, or record it on disk when no agent is there.

        The keeper also keeps the end in memory until the agent says FORGET (a reconnecting
        agent gets it in HELLO); the file is for a keeper that dies before then."""
        if job.spool is not None:
            job.spool.close()
        job.result = Exited(job.key, job.job_id, state, exit_code, reason, job.size)
        if self.conn is None:
            _write_exit(job)
        else:
            self.send(EXITED, dict(vars(job.result)))

    # ------------------------------------------------------------------ the agent

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
                    _write_exit(job)
        self.conn = None
        self.writing = False
        self.outbuf.clear()
        self.inbuf.clear()
        self.idle_since = time.monotonic()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        self._drop_conn()
        conn.setblocking(False)
        self.conn = conn
        self.last_heard = time.monotonic()
        self.sel.register(conn, selectors.EVENT_READ, ("conn", None))
        jobs = []
        for job in self.jobs.values():
            jobs.append({"key": job.key, "job_id": job.job_id, "pid": job.pid,
                         "size": job.size,
                         "exited": asdict(job.result) if job.result else None})
            job.notified = job.size
        self.send(HELLO, {"jobs": jobs})

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
            self._on_message(kind, payload)

    def _on_message(self, kind: bytes, payload: bytes) -> None:
        if kind == STDIN:
            key, _, data = payload.partition(b"\n")
            job = self.jobs.get(key.decode())
            if job is not None and job.stdin_fd is not None:
                job.stdin_buf += data
                self._write_stdin(job)
            return
        body = json.loads(payload) if payload else {}
        if kind == SPAWN:
            req = Spawn(**body)
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
            self._write_stdin(job)
        elif kind == RESIZE and job.pty_fd is not None:
            _set_size(job.pty_fd, int(body["rows"]), int(body["cols"]))
            if job.pid > 0 and job.exited_at is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(job.pid, signal.SIGWINCH)
        elif kind == FORGET and job.result is not None:
            del self.jobs[job.key]
            if job.exit_written:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(job.req.exit_file)

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
                        self._write_stdin(job)
                    if mask & selectors.EVENT_READ:
                        self._read(job, stream, key.fd)
                elif kind == "in":
                    self._write_stdin(data)
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
                _reap_orphans({j.pid for j in self.jobs.values() if j.result is None})
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
            if job.exited_at is not None:
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
                self.send(GREW, {"key": job.key, "size": job.size})


# ---------------------------------------------------------------------------- helpers


def _write_exit(job: Job) -> None:
    """``KEY.exit``: one write of a few bytes, so a reader sees all of it or (after a
    crash) invalid JSON, which it ignores."""
    assert job.result is not None
    if job.exit_written:
        return
    job.exit_written = True
    data = json.dumps(asdict(job.result)).encode()
    with contextlib.suppress(OSError):
        fd = os.open(job.req.exit_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def _set_size(fd: int, rows: int, cols: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    """In the job's child, after setsid: make the pty its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _children(pid: int) -> list[int]:
    """The children of every thread of ``pid``."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        out.extend(_read_children(f"/proc/{pid}/task/{tid}/children"))
    return out


def _own_children() -> list[int]:
    """The keeper's children: it has one thread, whose list holds them all."""
    pid = os.getpid()
    return _read_children(f"/proc/{pid}/task/{pid}/children")


def _read_children(path: str) -> list[int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        return []
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except ProcessLookupError:
        return []
    finally:
        os.close(fd)
    return [int(k) for k in b"".join(chunks).split()]


def _descendants(root: int) -> list[int]:
    out: list[int] = []
    todo = [root]
    while todo:
        kids = _children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def _has_env(pid: int, markers: tuple[bytes, ...]) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return all(marker in env for marker in markers)


def _reap_orphans(keep: set[int]) -> None:
    """Reap exited orphans that were reparented to the keeper (never a job's main pid)."""
    for pid in _own_children():
        if pid in keep:
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _set_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, "keeper.sock")


UNIX_PATH_MAX = 107  # bytes of a socket's path that AF_UNIX takes (sun_path, less its NUL)


@contextlib.contextmanager
def socket_address(data_dir: str) -> Iterator[str]:
    """The address to bind or connect the keeper's socket by: its path, or, when that is
    longer than AF_UNIX takes (a deep data dir), the same file reached through
    ``/proc/self/fd/N/`` of its directory, for as long as the block lasts."""
    path = socket_path(data_dir)
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        yield path
        return
    fd = os.open(data_dir, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/keeper.sock"
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """``python -m mgpu.node.keeper DATA_DIR``: run the keeper of the node using DATA_DIR."""
    data_dir = argv[0]
    # Not SIGINT: an ignored signal is inherited, and a shell cannot trap what it was born
    # ignoring. The keeper has a session of its own, so no terminal's Ctrl-C reaches it.
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # Popen restores it for the jobs
    path = socket_path(data_dir)
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
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with socket_address(data_dir) as address:
        listener.bind(address)
    listener.listen(16)
    _set_subreaper()
    try:
        return Keeper(data_dir, listener).run()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
