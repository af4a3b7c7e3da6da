"""``KEY.exit``: how a run ended, kept on disk by the keeper for an agent that is away.

The keeper writes it (:func:`write_exit`) when it cannot tell the agent, and the agent
reads it (:func:`read_exit`) when it re-adopts runs or its keeper died. Standard library
only: the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict

from mgpu.core.keeper_messages import Exited


def write_exit(path: str, exited: Exited) -> None:
    """Record ``exited`` at ``path``: one write of a few bytes, so a reader sees all of it
    or (after a crash) invalid JSON, which it ignores. A failure to write is not the
    keeper's end: the agent then reports the run lost."""
    data = json.dumps(asdict(exited)).encode()
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def read_exit(path: str) -> Exited | None:
    """The end recorded at ``path``; None when there is none or it is unreadable."""
    try:
        with open(path, "rb") as f:
            return Exited(**json.loads(f.read()))
    except (FileNotFoundError, ValueError, TypeError):
        return None
