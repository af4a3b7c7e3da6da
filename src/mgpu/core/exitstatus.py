"""How a process's end reads as an exit status, one rule for the keeper and the CLI.

Standard library only: the keeper imports this at start. ``signal`` (which imports
``enum``) is imported only to name a signal, as the CLI's start-up budget has no room for it.
"""

from __future__ import annotations


def exit_code_of(returncode: int) -> int:
    """The shell convention: 128+N for a process killed by signal N (``returncode`` -N,
    as Popen gives it); else the code itself."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int) -> str | None:
    """Why a process ended, in words (None when it exited 0)."""
    if returncode == 0:
        return None
    if returncode < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def shell_status(state: str, exit_code: int | None) -> int:
    """The status for the shell from how a job ended: its exit code, 128+N for signal N,
    and never 0 unless it completed."""
    code = exit_code_of(0 if exit_code is None else exit_code)
    if not 0 <= code <= 255:
        code = 1
    if code == 0 and state != "completed":
        code = 1
    return code
