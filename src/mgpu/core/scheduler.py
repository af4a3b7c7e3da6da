"""The scheduling policy: a pure function from a snapshot to placements.

No I/O, no clock reads, no locks: the master calls :func:`schedule` whenever something that
could let a job start happens (submit, job end, node join, cancel), with the pending jobs in
queue order and the free GPUs of every node that is up.

The default policy, ``fifo-reserve``:

1. Jobs are considered in queue order (oldest first).
2. A job that fits goes to the node with the *fewest* free GPUs that can hold it (best fit,
   so large holes stay open for large jobs); ties go to the node listed first. It takes that
   node's lowest-numbered free GPUs.
3. The first job that does not fit *reserves* the node where it will fit soonest (the node,
   among those with enough GPUs in total, with the most free GPUs now). Later jobs may not
   use a reserved node, so a stream of small jobs cannot starve a large one; they may still
   run on other nodes (backfill).
4. A job larger than every node never fits and reserves nothing; the master rejects such
   jobs at submit when nodes are known, so this only happens before nodes register.
5. A node that runs only some users' jobs (``users``) is not considered for other users'
   jobs, neither to place nor to reserve.

Other policies can be installed under the entry-point group ``mgpu.schedulers``; each is a
callable with the signature of :func:`schedule`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class JobSnapshot:
    """A pending job, as the policy sees it (the master's record is a ``SimpleJob``)."""

    job_id: int
    gpus: int
    user: str = ""


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    node_id: str
    total_gpus: int
    free_gpu_ids: tuple[int, ...]
    users: frozenset[str] | None = None  # whose jobs it runs: None, everyone's

    def serves(self, user: str) -> bool:
        return self.users is None or user in self.users


@dataclass(frozen=True, slots=True)
class Placement:
    job_id: int
    node_id: str
    gpu_ids: tuple[int, ...]


Policy = Callable[[Iterable[JobSnapshot], Sequence[NodeSnapshot], float], list[Placement]]


def schedule(
    pending: Iterable[JobSnapshot], nodes: Sequence[NodeSnapshot], now: float
) -> list[Placement]:
    """Placements for as many pending jobs as the free GPUs allow (see module docstring).

    ``pending`` must be in queue order; ``now`` is unused by this policy but part of the
    contract so that policies based on waiting time need no clock.
    """
    free: dict[str, list[int]] = {n.node_id: sorted(n.free_gpu_ids) for n in nodes}
    total = {n.node_id: n.total_gpus for n in nodes}
    order = [n.node_id for n in nodes]
    limited = {n.node_id: n for n in nodes if n.users is not None}
    largest = max(total.values(), default=0)
    free_count = sum(len(v) for v in free.values())
    reserved: set[str] = set()
    placements: list[Placement] = []
    for job in pending:
        if free_count == 0:
            break
        if job.gpus > largest:
            continue
        best: str | None = None
        allowed = order if not limited else [
            n for n in order if n not in limited or limited[n].serves(job.user)]
        for node_id in allowed:
            n_free = len(free[node_id])
            if node_id in reserved or n_free < job.gpus:
                continue
            if best is None or n_free < len(free[best]):
                best = node_id
        if best is None:
            _reserve(job, allowed, free, total, reserved)
            continue
        ids = free[best][: job.gpus]
        del free[best][: job.gpus]
        free_count -= job.gpus
        placements.append(Placement(job.job_id, best, tuple(ids)))
    return placements


def _reserve(
    job: JobSnapshot,
    order: list[str],
    free: dict[str, list[int]],
    total: dict[str, int],
    reserved: set[str],
) -> None:
    """Reserve, for the first blocked job, the node where it will fit soonest."""
    if reserved:
        return
    candidates = [n for n in order if total[n] >= job.gpus]
    if candidates:
        reserved.add(max(candidates, key=lambda n: len(free[n])))


def load_policy(name: str) -> Policy:
    """The policy called ``name``: the built-in one or an ``mgpu.schedulers`` entry point."""
    if name in ("fifo-reserve", "default"):
        return schedule
    from importlib.metadata import entry_points

    from mgpu.core.errors import ConfigError

    for ep in entry_points(group="mgpu.schedulers"):
        if ep.name == name:
            policy: Policy = ep.load()
            return policy
    raise ConfigError(f"unknown scheduler {name!r}: use 'fifo-reserve' or install a plugin")
