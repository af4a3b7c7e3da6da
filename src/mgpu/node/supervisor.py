"""Starting a job's processes, in the keeper: what to execute, as whom, and how.

* **argv**: the job's argv, its command line split into words when any shell would run it
  the same way, else ``/bin/sh -c COMMAND`` (:func:`command_argv`); the program is looked up
  in the job's own PATH (:func:`executable`).
* **accounts**: a root keeper runs a job as its owner (:func:`account_of`).
  ``Popen(cwd=..., user=...)`` changes directory *before* it drops privileges, which would
  let a job start in a directory its owner may not enter; so the keeper passes no ``cwd``
  and changes directory in the child after the change of ids
  (:func:`enter_after_setuid`, a ``preexec_fn``, which Popen calls after setuid). When that
  fails, Popen only says that the preexec function failed: :func:`why_cannot_enter` then
  finds the reason, in a child that takes the owner's ids and tries.
* **spawning**: with pipes (:func:`start_pipes`, ``posix_spawn`` for the keeper's own user)
  or a pseudo-terminal (:func:`start_pty`), in a new session.

Standard library only (with the keeper's own stdlib-only modules): the keeper imports this
at start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from typing import Any

from mgpu.core.keeper_messages import Spawn
from mgpu.node.keeper_jobs import Account, KeeperRun

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


def as_owner(job: KeeperRun, preexec: Callable[[], None] | None = None) -> dict[str, Any]:
    """Popen arguments that run the job as its owner, with the owner's HOME and USER, in
    its working directory, calling ``preexec`` in the child last.

    Only when the owner is another user than the keeper's: a uid change makes Popen fork
    instead of vfork, which costs the keeper a copy of its pages per job. The directory is
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


def argv0(req: Spawn) -> str:
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


def executable(name: str, env: dict[str, str]) -> str:
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


def start_pipes(job: KeeperRun, devnull: int, home: int) -> None:
    """Start the job with its stdout and stderr on pipes (``job.out_fds``: stdout's read
    end, then stderr's, non-blocking), and its stdin on a pipe too when it takes input
    (``job.stdin_fd``), else on ``devnull``. ``home``: the directory to return to."""
    req = job.req
    argv = command_argv(req)
    opts = as_owner(job)
    out_r, out_w = os.pipe()  # both ends close on exec; the child gets dup2'd copies
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if req.stdin else (-1, -1)
    try:
        fds = (in_r if req.stdin else devnull, out_w, err_w)
        if "user" in opts:  # another account: Popen changes the ids in the child
            job.popen = subprocess.Popen(
                argv, stdin=fds[0], stdout=fds[1], stderr=fds[2],
                start_new_session=True, **opts)
            job.pid = job.popen.pid
        else:
            job.pid = spawn_here(argv, req.cwd or "/", opts["env"], fds, home)
    except BaseException:
        for fd in (out_r, err_r, in_w):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        for fd in (out_w, err_w, in_r):
            if fd >= 0:
                os.close(fd)
    for fd in (out_r, err_r):
        fcntl.fcntl(fd, fcntl.F_SETFL, os.O_NONBLOCK)
        job.out_fds.append(fd)
    job.open_streams = 2
    if in_w >= 0:
        fcntl.fcntl(in_w, fcntl.F_SETFL, os.O_NONBLOCK)
        job.stdin_fd = in_w


def spawn_here(argv: list[str], cwd: str, env: dict[str, str],
               fds: tuple[int, int, int], home: int) -> int:
    """Start ``argv`` as the keeper's own user with ``posix_spawn`` (a vfork and an
    exec, without Popen's error pipe and bookkeeping): in a new session, with ``fds``
    as its stdin, stdout and stderr and the signals the keeper ignores set back to
    their defaults. posix_spawn cannot change directory, so the keeper (one thread)
    steps into ``cwd`` for the call and back out (to the directory ``home``) after it."""
    os.chdir(cwd)
    try:
        path = executable(argv[0], env)
        try:
            return os.posix_spawn(
                path, argv, env, setsid=True, setsigdef=_RESET_SIGNALS,
                file_actions=[(os.POSIX_SPAWN_DUP2, fd, n) for n, fd in enumerate(fds)])
        except (FileNotFoundError, PermissionError) as e:
            raise type(e)(e.errno, e.strerror, argv[0]) from None
    finally:
        os.fchdir(home)


def start_pty(job: KeeperRun) -> None:
    """Start the job on a new pseudo-terminal of its size; ``job.pty_fd`` (also its
    ``stdin_fd``) is the terminal's master end, non-blocking."""
    import pty

    req = job.req
    master_fd, slave_fd = pty.openpty()
    set_size(slave_fd, req.rows, req.cols)
    try:
        job.popen = subprocess.Popen(
            command_argv(req),
            stdin=slave_fd, stdout=slave_fd, stderr=slave_fd, start_new_session=True,
            **as_owner(job, _take_terminal),
        )
        job.pid = job.popen.pid
    except BaseException:
        os.close(master_fd)
        raise
    finally:
        os.close(slave_fd)
    os.set_blocking(master_fd, False)
    job.pty_fd = job.stdin_fd = master_fd
    job.open_streams = 1


def reap(job: KeeperRun) -> int | None:
    """The main process's return code, as Popen gives it (-N: killed by signal N)."""
    if job.popen is not None:
        return job.popen.wait()
    try:
        _, status = os.waitpid(job.pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set the terminal's size (a terminal that has gone is left alone)."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    """In the job's child, after setsid: make the pty its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def enter_after_setuid(cwd: str, then: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: change to ``cwd`` with the job's own ids, then call ``then``."""

    def enter() -> None:
        os.chdir(cwd)
        if then is not None:
            then()

    return enter


def why_cannot_enter(cwd: str, uid: int, gid: int, groups: list[int]) -> str | None:
    """Why a process with these ids cannot change to ``cwd`` (``strerror``), or None."""
    pid = os.fork()
    if pid == 0:  # the child: one system call each, then _exit (no Python clean-up)
        code = 0
        try:
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            os.chdir(cwd)
        except OSError as e:
            code = e.errno or 1
        except BaseException:  # the child must reach _exit
            code = 1
        os._exit(code & 0xFF)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return None if code == 0 else os.strerror(code).lower()


def failure_reason(e: BaseException, argv0: str, cwd: str, user: str | None,
                   ids: tuple[int, int, list[int]] | None) -> tuple[int | None, str]:
    """(exit code or None, reason) for a job that could not start because of ``e``.

    ``user``/``ids``: the owner it was to run as, when that is another user than the
    keeper's (the directory is then entered after the change of ids)."""
    if isinstance(e, FileNotFoundError | PermissionError) and e.filename == argv0:
        # What a shell would say and return for a program it cannot run.
        missing = isinstance(e, FileNotFoundError)
        return (127 if missing else 126,
                f"{argv0}: {'command not found' if missing else e.strerror}")
    if isinstance(e, subprocess.SubprocessError) and ids is not None:
        why = why_cannot_enter(cwd, *ids)
        if why is not None:
            return None, (f"cannot enter working directory {cwd} as user {user}: {why} "
                          "(submit from a directory that user may enter, or pass -D)")
    if isinstance(e, FileNotFoundError | PermissionError):
        return None, f"could not start in {cwd}: {e.strerror or e}"
    if isinstance(e, OSError):
        return None, f"could not start: {e.strerror or e}"
    return None, f"could not start: {e}"
