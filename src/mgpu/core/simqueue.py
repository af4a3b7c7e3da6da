"""What the simulator orders its queue and charges usage with: the master's own parts.

The master keeps its pending jobs in priority order in ``server/queue.PendingQueue`` and the
users' decayed GPU-seconds in ``server/fairshare.FairShare`` (both pure: no I/O, no clock).
``core`` may not import ``server``, so :mod:`mgpu.core.simulator` names what it needs of
them here, as Protocols, and whoever runs a replay passes the master's objects in
(``mgpu simulate`` does: :func:`mgpu.cli.simulate.replay`). Replays that want no priority
at all (the hand-worked cases of the tests) use :class:`SubmitOrder` and :class:`NoUsage`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from mgpu.core.snapshot import JobSnapshot


class Queue(Protocol):
    """The pending queue in priority order (``server/queue.PendingQueue``)."""

    def add(self, job: JobSnapshot, job_term: float) -> None:
        """Queue ``job``; ``job_term`` is its ``--priority`` less its ``--nice``."""

    def remove(self, job_id: int) -> None:
        """Take a job out (started, cancelled)."""

    def ordered(self, now: float, fair_share: Callable[[str], float]) -> Iterator[JobSnapshot]:
        """The jobs, highest priority at ``now`` first, with their priority and factors;
        lazy (the queue is not changed while it is read)."""


class Usage(Protocol):
    """Per-user decayed usage and the fair-share factor (``server/fairshare.FairShare``)."""

    def advance(self, now: float, running: dict[str, int] | None = None,
                pending_users: set[str] | None = None) -> None:
        """Bring usage to ``now``: what ``running`` (GPUs per user) ran since the last call
        is added, the rest decays; then ``running`` and ``pending_users`` are the new
        state."""

    def started(self, user: str, gpus: int) -> None:
        """A job of ``user`` started: its GPUs count from now on."""

    def factor(self, user: str) -> float:
        """``user``'s fair-share factor, 0 to 1, as of the last :meth:`advance`."""


class SubmitOrder:
    """A :class:`Queue` in submission order (job id order), every priority 0."""

    def __init__(self) -> None:
        self.jobs: dict[int, JobSnapshot] = {}

    def add(self, job: JobSnapshot, job_term: float) -> None:
        late = bool(self.jobs) and next(reversed(self.jobs)) > job.job_id
        self.jobs[job.job_id] = job
        if late:  # (a job whose dependencies were met after later jobs were queued)
            self.jobs = dict(sorted(self.jobs.items()))

    def remove(self, job_id: int) -> None:
        self.jobs.pop(job_id, None)

    def ordered(self, now: float, fair_share: Callable[[str], float]) -> Iterator[JobSnapshot]:
        return iter(self.jobs.values())


class NoUsage:
    """A :class:`Usage` that charges nothing: every user's factor is 0."""

    def advance(self, now: float, running: dict[str, int] | None = None,
                pending_users: set[str] | None = None) -> None:
        return None

    def started(self, user: str, gpus: int) -> None:
        return None

    def factor(self, user: str) -> float:
        return 0.0
