"""The keeper's record of one run it holds (:class:`KeeperRun`).

The agent keeps its own record of the same run (``runs.NodeRun``); this one is the
keeper's: the processes, pipes, deadlines and stdin buffer. Standard library only (with
the keeper's own stdlib-only modules): the keeper imports this at start.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

from mgpu.core.keeper_messages import Exited, Spawn
from mgpu.node.keeper_spool import Spool


@dataclass
class Account:
    """A Unix account to run a job as."""

    name: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    shell: str


@dataclass
class KeeperRun:
    """One run in the keeper, named by its run key."""

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
