"""Finding and killing a run's processes, in the keeper.

A run's processes are those of its cgroup where the keeper made one (``cgroup.py``); else
its main process's descendants (read from ``/proc``), plus the orphans re-parented to the
keeper (it is their child subreaper) that carry the run's ``MGPU_JOB_ID`` and
``MGPU_JOB_RUN``. At a run's end the orphans no other running job claims go too.

Standard library only (with ``cgroup.py``): the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Iterable

from mgpu.node import cgroup
from mgpu.node.keeper_jobs import KeeperRun

PR_SET_CHILD_SUBREAPER = 36
LINGER_MAX = 5.0  # without cgroups, how long to wait for them (a pid may be reused)


def tree(job: KeeperRun, mains: set[int]) -> list[int]:
    """The job's live processes: its main process's descendants, plus the orphans
    reparented to the keeper that carry its ``MGPU_JOB_ID`` (``mains``: every job's main
    process, never an orphan)."""
    found: list[int] = []
    roots = [job.pid] if job.exited_at is None and job.pid > 0 else []
    markers = (f"MGPU_JOB_ID={job.job_id}\0".encode(),
               f"MGPU_JOB_RUN={job.key}\0".encode())
    for pid in own_children():
        if pid in mains:
            continue  # a job's own main process, not an orphan
        if pid in job.known or has_env(pid, markers):
            roots.append(pid)
    for root in roots:
        found.append(root)
        found.extend(descendants(root))
    job.known.update(found)
    return found


def signal_tree(job: KeeperRun, jobs: Iterable[KeeperRun], cgroups: cgroup.JobCgroups | None,
                sig: int, ending: bool = False) -> list[int]:
    """Signal every process of the job: its cgroup's, else its group, its tree and
    (``ending``: the job's end) every orphan under the keeper that no other running job
    of ``jobs`` claims. The pids signalled (none when the cgroup was killed whole)."""
    if job.cgroup is not None and cgroups is not None:
        if sig == signal.SIGKILL:
            cgroups.kill(job.cgroup)
            return []
        pids = cgroup.procs(job.cgroup)
    else:
        if job.pid > 0 and job.exited_at is None:  # (after the exit, the keeper killed it)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, sig)
        everyone = list(jobs)
        pids = tree(job, {j.pid for j in everyone}) + (
            unclaimed(job, everyone) if ending else [])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return pids


def unclaimed(job: KeeperRun, jobs: list[KeeperRun]) -> list[int]:
    """Without cgroups, at the end of ``job``: the orphans re-parented to the keeper (it
    is their subreaper) that no other running job claims (by its known processes or the
    MGPU_JOB_RUN they carry), with their descendants. A process that shed its markers
    and left its session is attributed to the job that ends first; a job that does that
    may lose it early, but it never outlives every job."""
    others = [j for j in jobs if j is not job and j.result is None]
    skip = {j.pid for j in others}.union(*(j.known for j in others))
    skip.update(*(cgroup.procs(j.cgroup) for j in others if j.cgroup is not None))
    markers = [f"MGPU_JOB_RUN={j.key}\0".encode() for j in others]
    found: list[int] = []
    for pid in own_children():
        if pid == job.pid or pid in skip or environ_has_any(pid, markers):
            continue
        found.append(pid)
        found.extend(descendants(pid))
    return found


def all_dead(job: KeeperRun, jobs: Iterable[KeeperRun], cgroups: cgroup.JobCgroups | None,
             now: float) -> bool:
    """Kill whatever the job left (the main is a zombie); True once none of it lives.
    Until then the job's end is not reported, so its GPUs are not given to another."""
    if job.cgroup is not None and cgroups is not None:
        if cgroup.populated(job.cgroup):  # (killed whole when the main process exited)
            cgroups.kill(job.cgroup)
            job.lingering_since = job.lingering_since or now
            return False
        cgroups.give_back(job.cgroup)
        return True
    pids = signal_tree(job, jobs, cgroups, signal.SIGKILL, ending=True)
    if any(map(alive, pids)) and now - (job.lingering_since or now) < LINGER_MAX:
        job.lingering_since = job.lingering_since or now  # (bounded: pids are reused)
        return False
    return True


def children(pid: int) -> list[int]:
    """The children of every thread of ``pid``."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        out.extend(read_children(f"/proc/{pid}/task/{tid}/children"))
    return out


def own_children() -> list[int]:
    """The keeper's children: it has one thread, whose list holds them all."""
    pid = os.getpid()
    return read_children(f"/proc/{pid}/task/{pid}/children")


def read_children(path: str) -> list[int]:
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


def descendants(root: int) -> list[int]:
    out: list[int] = []
    todo = [root]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def alive(pid: int) -> bool:
    """Is ``pid`` a process that has not exited (a zombie has)?"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def environ_has_any(pid: int, markers: list[bytes]) -> bool:
    """Does the environment of ``pid`` hold any of ``markers`` (``NAME=VALUE\\0``)?"""
    if not markers:
        return False
    env = _environ(pid)
    return env is not None and any(marker in env for marker in markers)


def has_env(pid: int, markers: tuple[bytes, ...]) -> bool:
    """Does the environment of ``pid`` hold all of ``markers``?"""
    env = _environ(pid)
    return env is not None and all(marker in env for marker in markers)


def _environ(pid: int) -> bytes | None:
    """The raw environment of ``pid``; None when it has gone or may not be read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def reap_orphans(keep: set[int]) -> None:
    """Reap exited orphans that were reparented to the keeper (never a job's main pid)."""
    for pid in own_children():
        if pid in keep:
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def set_subreaper() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
