"""The agent <-> keeper protocol: message kinds, their bodies, and the framing.

Messages are ``length:u32 | kind:u8 | body`` with a JSON body (for STDIN: the run key, a
newline, then raw bytes). Standard library only: the keeper imports this at start, and
stays small and quick to start.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

LENGTH = struct.Struct(">I")


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
HELLO = b"h"  # Hello
GREW = b"g"  # Grew
EXITED = b"x"  # Exited
STDIN_CREDIT = b"w"  # StdinCredit: see "stdin flow control" below
REFUSED = b"!"  # Refused: this connection is refused (another agent holds the keeper,
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
    cause: str | None = None  # an EndCause value of core/models.py (None: unknown)


# Why a run the keeper stopped ended, by the state it stopped it into (EndCause values).
ENDING_CAUSES = {"cancelled": "cancelled", "timeout": "time_limit", "node_fail": "node_lost"}


@dataclass
class Held:
    """Keeper -> agent, in HELLO: one run the keeper holds (``exited``: its end, if it
    ended; ``stdin_written``: its stdin credit so far)."""

    key: str
    job_id: int
    pid: int
    size: int
    stdin_written: int
    exited: Exited | None


@dataclass
class Hello:
    """Keeper -> agent, first on every connection: the runs it holds; ``stdin_credit``
    says it sends STDIN_CREDIT."""

    jobs: list[Held]
    stdin_credit: bool = True


@dataclass
class Grew:
    """Keeper -> agent: the run's spool has ``size`` bytes."""

    key: str
    size: int


@dataclass
class StdinCredit:
    """Keeper -> agent: ``written`` bytes of the run's stdin taken off its buffer."""

    key: str
    written: int


@dataclass
class Refused:
    """Keeper -> a peer it will not serve, before it closes the connection."""

    reason: str


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
