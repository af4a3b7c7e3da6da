"""The pending queue in priority order, kept sorted as jobs come and go (not on each pass).

Priority (``core/priority.py``) is age + fair share + the job's own term. Within one user the
fair-share term is the same for every job, and the age term grows at the same rate for every
job younger than ``max_age``; so each user's jobs are kept in two sorted lists whose order
never changes with time:

- *young* jobs, by ``w_age * -submitted_at / max_age + w_job * (priority - nice)``;
- *old* jobs (waited ``max_age`` or more; their age factor is 1), by ``w_job * (priority -
  nice)``. Jobs move from young to old as they reach ``max_age`` (a heap by submit time).

:meth:`PendingQueue.ordered` merges the heads of those lists (two per user) by each job's
priority now, lazily: a pass that stops after 50 jobs costs 50 steps of a heap as big as two
per user, whatever the length of the queue. Ties go to the older job id.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator
from dataclasses import replace

from mgpu.core.priority import PriorityWeights
from mgpu.core.snapshot import JobSnapshot

Entry = tuple[float, int]  # (-key, job id): ascending = highest priority first


class PendingQueue:
    """The pending jobs the gates let through; see the module docstring."""

    def __init__(self, weights: PriorityWeights | None = None) -> None:
        self.weights = weights or PriorityWeights()
        self.jobs: dict[int, tuple[JobSnapshot, float]] = {}  # id -> (snapshot, job term)
        self._young: dict[str, list[Entry]] = {}
        self._old: dict[str, list[Entry]] = {}
        self._where: dict[int, tuple[bool, Entry]] = {}  # id -> (old?, its entry)
        self._aging: list[tuple[float, int]] = []  # (submitted_at, id) of young jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self.jobs

    def add(self, job: JobSnapshot, job_term: float) -> None:
        """Queue ``job`` (``job_term``: its ``--priority`` less its ``--nice``). It goes in
        as young; :meth:`ordered` moves it on if it is older than ``max_age``."""
        self.remove(job.job_id)
        self.jobs[job.job_id] = (job, job_term)
        self._put(job.user, job.job_id, False,
                  (-self.weights.young_key(job.submitted_at, job_term), job.job_id))
        heapq.heappush(self._aging, (job.submitted_at, job.job_id))

    def remove(self, job_id: int) -> None:
        held = self.jobs.pop(job_id, None)
        if held is None:
            return
        user = held[0].user
        old, entry = self._where.pop(job_id)
        lists = self._old if old else self._young
        entries = lists[user]
        del entries[bisect.bisect_left(entries, entry)]
        if not entries:
            del lists[user]

    def _put(self, user: str, job_id: int, old: bool, entry: Entry) -> None:
        lists = self._old if old else self._young
        # (a plain sorted list: a new job mostly goes at the end, and moving the tail of
        # even 100,000 entries is a memmove)
        bisect.insort(lists.setdefault(user, []), entry)
        self._where[job_id] = (old, entry)

    def _age(self, now: float) -> None:
        """Move the jobs that have waited ``max_age`` to their users' old lists."""
        cutoff = now - self.weights.max_age
        while self._aging and self._aging[0][0] <= cutoff:
            _, job_id = heapq.heappop(self._aging)
            where = self._where.get(job_id)
            if where is None or where[0]:
                continue  # gone, or moved already
            job, term = self.jobs[job_id]
            self.remove(job_id)
            self.jobs[job_id] = (job, term)
            self._put(job.user, job_id, True, (-self.weights.job * term, job_id))

    def ordered(self, now: float, fair_share: Callable[[str], float]) -> Iterator[JobSnapshot]:
        """The jobs, highest priority at ``now`` first, each with its priority and factors
        (``fair_share(user)``: the user's factor, 0 to 1). Lazy; do not change the queue
        while reading it."""
        self._age(now)
        w = self.weights
        young_shift = w.age * now / w.max_age if w.max_age > 0 else 0.0
        heads: list[tuple[float, int, Iterator[Entry], float, float]] = []
        for lists, shift in ((self._young, young_shift), (self._old, w.age)):
            for user, entries in lists.items():
                share = fair_share(user)
                base = shift + w.fair_share * share
                it = iter(entries)
                neg, job_id = next(it)
                heads.append((neg - base, job_id, it, base, share))
        heapq.heapify(heads)
        while heads:
            neg_priority, job_id, it, base, share = heads[0]
            job, term = self.jobs[job_id]
            yield replace(job, priority=-neg_priority,
                          factors=w.factors(now - job.submitted_at, share, term))
            nxt = next(it, None)
            if nxt is None:
                heapq.heappop(heads)
            else:
                heapq.heapreplace(heads, (nxt[0] - base, nxt[1], it, base, share))
