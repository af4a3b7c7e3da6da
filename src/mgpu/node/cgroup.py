"""A cgroup v2 per job, for the keeper: what a job's processes cannot leave.

A process can drop its environment, leave its session and be re-parented, but it cannot
leave its cgroup (only a process with write access to ``cgroup.procs`` files may move it,
and the job's owner has none here). Where the keeper may create cgroups (cgroup2 mounted
and its own cgroup writable, typically as root), each job runs in a cgroup of its own,
``KEEPER_CGROUP/mgpu-keeper.PID/N``: the keeper steps into the job's cgroup for the spawn
and back out after it (a child is born in its parent's cgroup, so nothing the job starts,
even in its first microsecond, is outside), and ends a job by killing its cgroup
(``cgroup.kill``, else SIGKILL to each of ``cgroup.procs``) until it is empty. An emptied
cgroup is kept for the next job (a mkdir and an rmdir less per job); the keeper removes its
subtree when it exits, and a new keeper what one that is gone left behind.

Job cgroups are opt-in: ``MGPU_KEEPER_CGROUPS=1`` in the node's environment. Putting a
job in its cgroup moves the keeper into it and back for the spawn, and each move of a
process between cgroups waits for the kernel (an RCU grace period): measured here, about 12
ms more per job start (``bench/srun.py``: 2.9 x ``python -c pass`` against 2.1 x without),
which an interactive ``srun`` feels. Without them (the default), or where cgroups are not
usable (``available()`` is None), the keeper uses its subreaper and process-group walk,
which also kills what escaped with ``setsid`` and shed the job's markers, at the end of a
job (``proctree.py``). Tests cover both paths. Starting the job straight in its cgroup
(``clone3`` with ``CLONE_INTO_CGROUP``, which ``posix_spawn`` does not offer) would remove
the moves, and so the cost; then cgroups could be the default.

Standard library only: the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

_PREFIX = "mgpu-keeper."


def _cgroup2_mount() -> str | None:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup`` or, on a hybrid
    system, ``/sys/fs/cgroup/unified``), or None."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        pass
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


class JobCgroups:
    """The keeper's subtree of job cgroups. Build with :func:`available`."""

    def __init__(self, home: str, root: str) -> None:
        self.home = home  # the keeper's own cgroup (a directory), where it lives between spawns
        self.root = root  # its subtree of job cgroups
        self.free: list[str] = []  # emptied job cgroups, for the next jobs
        self.made = 0
        self._pid = str(os.getpid()).encode()
        self._home_procs = -1  # kept open: the way back home is taken at every spawn

    def take(self) -> str:
        """An empty cgroup for a job (OSError when the kernel refuses to make one)."""
        if self.free:
            return self.free.pop()
        path = f"{self.root}/{self.made + 1}"
        os.mkdir(path)
        self.made += 1
        return path

    def give_back(self, path: str) -> None:
        """A job's cgroup, once :func:`populated` says it is empty, for the next job."""
        self.free.append(path)

    @contextlib.contextmanager
    def inside(self, path: str) -> Iterator[None]:
        """Run the block (a spawn) with the keeper in ``path``; back home after it."""
        _write(f"{path}/cgroup.procs", self._pid)
        try:
            yield
        finally:
            if self._home_procs < 0:
                self._home_procs = os.open(f"{self.home}/cgroup.procs", os.O_WRONLY)
            os.write(self._home_procs, self._pid)

    def kill(self, path: str) -> None:
        """SIGKILL every process in the job's cgroup (again: a fork may race the first)."""
        try:
            _write(f"{path}/cgroup.kill", b"1")
            return
        except FileNotFoundError:
            if not os.path.isdir(path):
                return
        except OSError:
            pass
        for pid in procs(path):  # a kernel before 5.14: no cgroup.kill
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        """At the keeper's exit: remove its subtree (what is empty of it)."""
        if self._home_procs >= 0:
            os.close(self._home_procs)
            self._home_procs = -1
        with contextlib.suppress(OSError):
            for name in os.listdir(self.root):
                with contextlib.suppress(OSError):
                    os.rmdir(f"{self.root}/{name}")
        with contextlib.suppress(OSError):
            os.rmdir(self.root)


def procs(path: str) -> list[int]:
    """The live processes in a cgroup (empty when it is gone)."""
    try:
        with open(f"{path}/cgroup.procs") as f:
            return [int(line) for line in f.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def populated(path: str) -> bool:
    """Does the cgroup still hold a live process (zombies do not count)?"""
    try:
        fd = os.open(f"{path}/cgroup.events", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        events = os.read(fd, 4096)
    finally:
        os.close(fd)
    at = events.find(b"populated ")
    if at < 0:
        return bool(procs(path))
    return events[at + 10 : at + 11] != b"0"


def _write(path: str, data: bytes) -> None:
    """One write to a cgroup file (raw: these are hot, once or twice per job)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _move_self(path: str) -> None:
    _write(f"{path}/cgroup.procs", str(os.getpid()).encode())


def available() -> JobCgroups | None:
    """The keeper's job cgroups, when it may make them: cgroup2 mounted, its own cgroup
    writable and a move into a new child cgroup allowed. Removes what keepers that are
    gone left behind. None otherwise, and unless ``MGPU_KEEPER_CGROUPS=1``."""
    if os.environ.get("MGPU_KEEPER_CGROUPS", "0") != "1":
        return None
    mount, own = _cgroup2_mount(), _own_cgroup()
    if mount is None or own is None:
        return None
    home = os.path.normpath(f"{mount}/{own}")
    _remove_stale(home)
    root = f"{home}/{_PREFIX}{os.getpid()}"
    try:
        os.mkdir(root, 0o755)
    except FileExistsError:
        pass
    except OSError:
        return None
    cgroups = JobCgroups(home, root)
    try:  # can the keeper move itself there and back? (delegation, permissions)
        with cgroups.inside(root):
            pass
    except OSError:
        with contextlib.suppress(OSError):
            _move_self(home)
        cgroups.close()
        return None
    return cgroups


def _remove_stale(home: str) -> None:
    """Subtrees of keepers that have exited (empty job cgroups only)."""
    try:
        names = [n for n in os.listdir(home) if n.startswith(_PREFIX)]
    except OSError:
        return
    for name in names:
        pid = name[len(_PREFIX):]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        JobCgroups(home, f"{home}/{name}").close()
