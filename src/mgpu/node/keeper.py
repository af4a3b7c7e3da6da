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
process costs about 3 ms of CPU here (copy-on-write of the interpreter's pages in both
processes), which would cap a 2-core node at a few hundred jobs per second; the keeper
starts each job with ``vfork`` for a fraction of that. The cost: if the keeper itself is
killed, the node's jobs lose their watcher; the next agent then reports them as failed.

Messages are ``length:u32 | kind:u8 | body`` with a JSON body (for STDIN: the run key, a
newline, then raw bytes). A message the keeper cannot act on is logged and, for a SPAWN,
fails that job: no single request ends the keeper. This module imports only the standard
library, ``core/frames.py`` and its own stdlib-only helpers (``cgroup``, ``keeper_sock``,
``keeper_spool``, ``keeper_start``), so the keeper starts fast and stays small.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import select
import selectors
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mgpu.core.frames import STREAM_STDERR, STREAM_STDOUT
from mgpu.node import cgroup, keeper_sock
from mgpu.node.keeper_spool import Spool
from mgpu.node.keeper_start import enter_after_setuid, failure_reason

LENGTH = struct.Struct(">I")
PR_SET_CHILD_SUBREAPER = 36
DRAIN_TIMEOUT = 2.0
READ_SIZE = 1 << 16
IDLE_EXIT = 10.0  # with no agent and no job for this long, the keeper exits
GREW_BELOW = 1 << 16  # progress is reported while less than this waits to go to the agent
LINGER_POLL = 0.005  # seconds between checks that a killed job's processes are gone
LINGER_MAX = 5.0  # without cgroups, how long to wait for them (a pid may be reused)

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
HELLO = b"h"  # {jobs: [{key, job_id, pid, size, exited, stdin_written}], stdin_credit}
GREW = b"g"  # {key, size}
EXITED = b"x"  # Exited
STDIN_CREDIT = b"w"  # {key, written}: see "stdin flow control" below
REFUSED = b"!"  # {reason}: this connection is refused (another agent holds the keeper,
#                 or the peer's uid is not allowed); the keeper closes it after this

# Stdin flow control (credit-based). For each job the keeper counts ``written``: the bytes
# of STDIN it has taken off its buffer, by writing them to the job's stdin, or by dropping
# them once the job has closed its stdin or ended. It sends STDIN_CREDIT {key, written}
# (cumulative since the run started) as that count advances (at least every
# STDIN_CREDIT_STEP bytes, and whenever the buffer runs empty); HELLO gives it for every job
# too. The agent may have at most STDIN_WINDOW bytes of a job's STDIN payloads sent and not
# yet counted in ``written``: it stops forwarding (and so stops reading from its client)
# until a credit comes. The keeper's buffer per job therefore never holds more than
# STDIN_WINDOW; nothing sent within the window is dropped. An agent that sends beyond the
# window breaks the protocol: the keeper keeps the bytes (nothing accepted is lost) and logs
# it once for that job.
STDIN_WINDOW = 1 << 20
STDIN_CREDIT_STEP = 1 << 16


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
    max_output: int = 0  # bytes of spool after which output is cut (0: no cap)


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


def _as_owner(job: Job, preexec: Callable[[], None] | None = None) -> dict[str, Any]:
    """Popen arguments that run the job as its owner, with the owner's HOME and USER, in
    its working directory, calling ``preexec`` in the child last.

    Only when the owner is another user than the keeper's: a uid change makes Popen fork
    instead of vfork, which costs the keeper about a millisecond per job. The directory is
    then entered as the owner, after the change of ids (Popen's ``cwd`` would enter it as
    root, past the directory's permissions)."""
    env = job.req.env
    acct = job.account
    cwd = job.req.cwd or "/"
    if acct is None or acct.uid == os.geteuid():
        return {"env": env, "cwd": cwd, "preexec_fn": preexec}
    env = {**env, "HOME": acct.home, "USER": acct.name, "LOGNAME": acct.name,
           "SHELL": acct.shell or "/bin/sh"}
    return {"env": env, "user": acct.uid, "group": acct.gid, "extra_groups": acct.groups,
            "preexec_fn": enter_after_setuid(cwd, preexec)}


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


def _argv0(req: Spawn) -> str:
    with contextlib.suppress(Exception):
        return command_argv(req)[0]
    return ""


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
    spool: Spool = field(init=False)
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
    stdin_written: int = 0  # bytes taken off stdin_buf (see "stdin flow control")
    stdin_credited: int = 0  # the last ``written`` sent to the agent
    stdin_overrun: bool = False  # the agent sent past the window (logged once)
    cgroup: str | None = None  # its cgroup's directory, when the keeper made one
    lingering_since: float | None = None  # killed at its end; waiting for its processes

    def __post_init__(self) -> None:
        self.spool = Spool(self.req.spool, self.req.max_output)

    @property
    def size(self) -> int:
        return self.spool.size

    @property
    def key(self) -> str:
        return self.req.key

    @property
    def job_id(self) -> int:
        return self.req.job_id


class Keeper:
    """The keeper's event loop: jobs, their pipes, the agent's connection, the deadlines."""

    def __init__(self, data_dir: str, listener: socket.socket,
                 cgroups: cgroup.JobCgroups | None = None) -> None:
        self.data_dir = data_dir
        self.cgroups = cgroups  # None: jobs are found by the subreaper + process-group walk
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
        """Start one job; any failure to start it (bad input included) ends that job as
        ``failed`` with the reason, never the keeper."""
        # A run key is used once (a requeue is the next run), so its spool and exit files
        # are new: nothing to look at or clear first.
        job = Job(req)
        self.jobs[req.key] = job
        try:
            job.account = account_of(req)
        except Exception as e:  # a user name that no look-up takes (a NUL byte) too
            why = str(e) if isinstance(e, PermissionError) else f"could not start: {e}"
            job.spool.note(f"mgpu: {why}\n")
            self.finish(job, "failed", None, why)
            return
        try:
            if self.cgroups is not None:
                with contextlib.suppress(OSError):  # else: the process-group walk alone
                    job.cgroup = self.cgroups.take()
            with (self.cgroups.inside(job.cgroup) if self.cgroups is not None and job.cgroup
                  else contextlib.nullcontext()):
                if req.pty:
                    self._start_pty(job)
                else:
                    self._start_pipes(job)
            job.pidfd = os.pidfd_open(job.pid)  # (EMFILE: the job cannot be watched)
        except Exception as e:  # one bad spawn must not end the keeper
            if job.pid > 0:  # started, but not watched: it does not run unwatched
                with contextlib.suppress(OSError):
                    os.killpg(job.pid, signal.SIGKILL)
                self._reap(job)
            acct = job.account if job.account and job.account.uid != os.geteuid() else None
            exit_code, reason = failure_reason(
                e, _argv0(req), req.cwd or "/", acct.name if acct else None,
                (acct.uid, acct.gid, acct.groups) if acct else None)
            job.spool.note(f"mgpu: {reason}\n")
            if job.cgroup is not None and self.cgroups is not None:
                self.cgroups.kill(job.cgroup)  # (nothing, unless the spawn failed late)
                if not cgroup.populated(job.cgroup):
                    self.cgroups.give_back(job.cgroup)
            self.finish(job, "failed", exit_code, reason)
            return
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
                    argv, stdin=fds[0], stdout=fds[1], stderr=fds[2],
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
                command_argv(req),
                stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, start_new_session=True,
                **_as_owner(job, _take_terminal),
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
        job.spool.write(stream, data)  # never raises: a full disk loses output, not the job

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
            job.stdin_written += len(job.stdin_buf)
            job.stdin_buf.clear()
            self._credit(job)
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
        self._credit(job)
        if job.pty_fd is not None:
            if not job.stdin_buf and job.stdin_eof:
                job.stdin_eof = False
                job.stdin_written -= 1  # the Ctrl-D is the keeper's, not the agent's
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

    def _credit(self, job: Job) -> None:
        """Tell the agent how much of the job's stdin it has taken (flow control)."""
        ahead = job.stdin_written - job.stdin_credited
        if ahead >= STDIN_CREDIT_STEP or (ahead > 0 and not job.stdin_buf):
            job.stdin_credited = job.stdin_written
            self.send(STDIN_CREDIT, {"key": job.key, "written": job.stdin_written})

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

    def signal_tree(self, job: Job, sig: int, ending: bool = False) -> list[int]:
        """Signal every process of the job: its cgroup's, else its group, its tree and
        (``ending``: the job's end) every orphan under the keeper that no running job
        claims. The pids signalled (none when the cgroup was killed whole)."""
        if job.cgroup is not None and self.cgroups is not None:
            if sig == signal.SIGKILL:
                self.cgroups.kill(job.cgroup)
                return []
            pids = cgroup.procs(job.cgroup)
        else:
            if job.pid > 0 and job.exited_at is None:  # (after the exit, _on_exit killed it)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job.pid, sig)
            pids = self.tree(job) + (self._unclaimed(job) if ending else [])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        return pids

    def _unclaimed(self, job: Job) -> list[int]:
        """Without cgroups, at the end of ``job``: the orphans re-parented to the keeper (it
        is their subreaper) that no other running job claims (by its known processes or the
        MGPU_JOB_RUN they carry), with their descendants. A process that shed its markers
        and left its session is attributed to the job that ends first; a job that does that
        may lose it early, but it never outlives every job."""
        others = [j for j in self.jobs.values() if j is not job and j.result is None]
        skip = {j.pid for j in others}.union(*(j.known for j in others))
        skip.update(*(cgroup.procs(j.cgroup) for j in others if j.cgroup is not None))
        markers = [f"MGPU_JOB_RUN={j.key}\0".encode() for j in others]
        found: list[int] = []
        for pid in _own_children():
            if pid == job.pid or pid in skip or _environ_has_any(pid, markers):
                continue
            found.append(pid)
            found.extend(_descendants(pid))
        return found

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
        if (job.cgroup is not None and self.cgroups is not None
                and cgroup.populated(job.cgroup)):
            self.cgroups.kill(job.cgroup)  # all of it now: its pipes close, output drains
        job.exited_at = time.monotonic()

    def _all_dead(self, job: Job, now: float) -> bool:
        """Kill whatever the job left (the main is a zombie); True once none of it lives.
        Until then the job's end is not reported, so its GPUs are not given to another."""
        if job.cgroup is not None and self.cgroups is not None:
            if cgroup.populated(job.cgroup):  # (killed whole when the main process exited)
                self.cgroups.kill(job.cgroup)
                job.lingering_since = job.lingering_since or now
                return False
            self.cgroups.give_back(job.cgroup)
            return True
        pids = self.signal_tree(job, signal.SIGKILL, ending=True)
        if any(map(_alive, pids)) and now - (job.lingering_since or now) < LINGER_MAX:
            job.lingering_since = job.lingering_since or now  # (bounded: pids are reused)
            return False
        return True

    def conclude(self, job: Job) -> None:
        """After the main process exited and its output drained (or the drain timed out),
        and (called again each turn until then) every process of the job is dead."""
        if not self._all_dead(job, time.monotonic()):
            return
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
        job.spool.close()
        if job.spool.lost is not None:
            reason = f"{reason}; {job.spool.lost}" if reason else job.spool.lost
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
                conn.send(pack(REFUSED, {"reason": refusal}))
            conn.close()
            print(f"mgpu keeper: refused a connection: {refusal}", file=sys.stderr, flush=True)
            return
        conn.setblocking(False)
        self.conn = conn
        self.last_heard = time.monotonic()
        self.sel.register(conn, selectors.EVENT_READ, ("conn", None))
        jobs = []
        for job in self.jobs.values():
            jobs.append({"key": job.key, "job_id": job.job_id, "pid": job.pid,
                         "size": job.size, "stdin_written": job.stdin_written,
                         "exited": asdict(job.result) if job.result else None})
            job.notified = job.size
            job.stdin_credited = job.stdin_written
        self.send(HELLO, {"jobs": jobs, "stdin_credit": True})

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
                                                f"could not start: bad request ({e})", 0)))

    def _on_message(self, kind: bytes, payload: bytes) -> None:
        if kind == STDIN:
            key, _, data = payload.partition(b"\n")
            job = self.jobs.get(key.decode(errors="replace"))
            if job is None:
                return
            if job.stdin_fd is None:  # closed or ended: taken and dropped, as a pipe would
                job.stdin_written += len(data)
                self._credit(job)
                return
            job.stdin_buf += data
            if len(job.stdin_buf) > STDIN_WINDOW and not job.stdin_overrun:
                job.stdin_overrun = True
                print(f"mgpu keeper: job {job.key}: the agent sent stdin past the "
                      f"{STDIN_WINDOW}-byte window", file=sys.stderr, flush=True)
            self._write_stdin(job)
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


def _alive(pid: int) -> bool:
    """Is ``pid`` a process that has not exited (a zombie has)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _environ_has_any(pid: int, markers: list[bytes]) -> bool:
    if not markers:
        return False
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return False
    return any(marker in env for marker in markers)


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
    _set_subreaper()
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
