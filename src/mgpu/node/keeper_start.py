"""Starting a job as another user, and saying why a start failed.

A root keeper runs a job as its owner. ``Popen(cwd=..., user=...)`` changes directory
*before* it drops privileges, which would let a job start in a directory its owner may not
enter; so the keeper passes no ``cwd`` and changes directory in the child after the change
of ids (:func:`enter_after_setuid`, a ``preexec_fn``, which Popen calls after setuid). When
that fails, Popen only says that the preexec function failed: :func:`why_cannot_enter`
then finds the reason, in a child that takes the owner's ids and tries.

Standard library only: the keeper imports this at start.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable


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
