"""The default scheduling policy, ``fifo-reserve`` (tier 1: a pure function, no I/O).

Table-driven cases follow the rules in the docstring of ``mgpu.core.scheduler``; the
property test checks what must hold for any snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu.core.errors import ConfigError
from mgpu.core.scheduler import (
    JobSnapshot,
    NodeSnapshot,
    Placement,
    fifo_reserve,
    load_policy,
    multifactor,
    schedule,
)

# A node is (node_id, total GPUs, free GPU ids); a job is (job_id, GPUs);
# a placement is (job_id, node_id, GPU ids).
NodeRow = tuple[str, int, tuple[int, ...]]
JobRow = tuple[int, int]
PlaceRow = tuple[int, str, tuple[int, ...]]


@dataclass(frozen=True)
class Case:
    name: str
    nodes: list[NodeRow]
    jobs: list[JobRow]
    expected: list[PlaceRow]


CASES = [
    Case("nothing pending", [("n1", 4, (0, 1, 2, 3))], [], []),
    Case("no nodes yet", [], [(1, 1)], []),
    Case("every GPU busy", [("n1", 2, ())], [(1, 1)], []),
    Case("one job fits", [("n1", 4, (0, 1, 2, 3))], [(1, 2)], [(1, "n1", (0, 1))]),
    Case(
        "lowest-numbered free GPUs, whatever order they are listed in",
        [("n1", 4, (3, 1, 2))],
        [(1, 2)],
        [(1, "n1", (1, 2))],
    ),
    Case(
        "best fit: the node with the fewest free GPUs that can hold the job",
        [("n1", 4, (0, 1, 2, 3)), ("n2", 2, (0, 1))],
        [(1, 2)],
        [(1, "n2", (0, 1))],
    ),
    Case(
        "ties go to the node listed first",
        [("n1", 4, (2, 3)), ("n2", 4, (0, 1))],
        [(1, 2)],
        [(1, "n1", (2, 3))],
    ),
    Case(
        "best fit keeps the big hole for the big job",
        [("n1", 8, tuple(range(8))), ("n2", 2, (0, 1))],
        [(1, 1), (2, 8)],
        [(1, "n2", (0,)), (2, "n1", tuple(range(8)))],
    ),
    Case(
        "free GPUs are used up as jobs are placed",
        [("n1", 3, (0, 1, 2)), ("n2", 2, (0, 1))],
        [(1, 2), (2, 2), (3, 1)],
        [(1, "n2", (0, 1)), (2, "n1", (0, 1)), (3, "n1", (2,))],
    ),
    Case(
        "queue order: the older job wins",
        [("n1", 2, (0, 1))],
        [(1, 2), (2, 2)],
        [(1, "n1", (0, 1))],
    ),
    Case(
        "a blocked job's reserved node takes no smaller jobs",
        [("n1", 4, (0, 1))],
        [(1, 4), (2, 1)],
        [],
    ),
    Case(
        "later jobs backfill on nodes that are not reserved",
        [("n1", 4, (0, 1)), ("n2", 2, (0, 1))],
        [(1, 4), (2, 1)],
        [(2, "n2", (0,))],
    ),
    Case(
        "the reserved node is the one with the most free GPUs now",
        [("n1", 4, (0,)), ("n2", 4, (0, 1, 2)), ("n3", 1, (0,))],
        [(1, 4), (2, 1), (3, 1)],
        [(2, "n1", (0,)), (3, "n3", (0,))],
    ),
    Case(
        "only nodes big enough for the blocked job are reserved",
        [("n1", 2, (0, 1)), ("n2", 4, (1,))],
        [(1, 4), (2, 2)],
        [(2, "n1", (0, 1))],
    ),
    Case(
        "only the first blocked job reserves",
        [("n1", 4, (0, 1)), ("n2", 4, (0, 1, 2))],
        [(1, 4), (2, 3), (3, 2)],
        [(3, "n1", (0, 1))],
    ),
    Case(
        "a job larger than every node is skipped and reserves nothing",
        [("n1", 2, (0, 1))],
        [(1, 8), (2, 2)],
        [(2, "n1", (0, 1))],
    ),
    Case(
        "a job larger than every node does not hold back the queue behind it",
        [("n1", 2, (0,)), ("n2", 2, (1,))],
        [(1, 3), (2, 1), (3, 1)],
        [(2, "n1", (0,)), (3, "n2", (1,))],
    ),
]


def snapshot(nodes: list[NodeRow]) -> list[NodeSnapshot]:
    return [NodeSnapshot(node_id, total, free) for node_id, total, free in nodes]


def pending(jobs: list[JobRow]) -> list[JobSnapshot]:
    return [JobSnapshot(job_id, gpus) for job_id, gpus in jobs]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_policy_table(case: Case) -> None:
    got = schedule(pending(case.jobs), snapshot(case.nodes), 0.0)
    assert [(p.job_id, p.node_id, p.gpu_ids) for p in got] == case.expected


def test_pending_may_be_any_iterable_and_now_is_ignored() -> None:
    nodes = snapshot([("n1", 4, (0, 1, 2, 3))])
    jobs = pending([(1, 1), (2, 2)])
    first = schedule(iter(jobs), nodes, 0.0)
    assert first == schedule((j for j in jobs), nodes, 1e12)
    assert first == [Placement(1, "n1", (0,)), Placement(2, "n1", (1, 2))]


def test_load_policy() -> None:
    assert load_policy("fifo-reserve") is fifo_reserve
    assert load_policy("default") is multifactor
    with pytest.raises(ConfigError, match="unknown scheduler 'nope'"):
        load_policy("nope")


# ---------------------------------------------------------------- properties


@st.composite
def snapshots(draw: st.DrawFn) -> tuple[list[JobSnapshot], list[NodeSnapshot]]:
    nodes = []
    for i in range(draw(st.integers(0, 5))):
        total = draw(st.integers(1, 8))
        free = draw(st.lists(st.integers(0, total - 1), unique=True, max_size=total))
        nodes.append(NodeSnapshot(f"n{i}", total, tuple(free)))
    sizes = draw(st.lists(st.integers(1, 10), max_size=12))
    jobs = [JobSnapshot(job_id=100 + i, gpus=g) for i, g in enumerate(sizes)]
    return jobs, nodes


@settings(max_examples=300, deadline=None)
@given(snapshots())
def test_placements_are_always_valid(snap: tuple[list[JobSnapshot], list[NodeSnapshot]]) -> None:
    jobs, nodes = snap
    got = schedule(jobs, nodes, 0.0)
    by_id = {j.job_id: j for j in jobs}
    node_by_id = {n.node_id: n for n in nodes}
    largest = max((n.total_gpus for n in nodes), default=0)

    # Each job placed at most once, in queue order.
    placed_ids = [p.job_id for p in got]
    assert len(placed_ids) == len(set(placed_ids))
    order = [j.job_id for j in jobs]
    assert placed_ids == sorted(placed_ids, key=order.index)

    used: dict[str, set[int]] = {n.node_id: set() for n in nodes}
    for p in got:
        job, node = by_id[p.job_id], node_by_id[p.node_id]
        assert len(p.gpu_ids) == job.gpus  # exactly its GPU count
        assert len(set(p.gpu_ids)) == len(p.gpu_ids)
        assert set(p.gpu_ids) <= set(node.free_gpu_ids)  # only free GPUs of its node
        assert not used[p.node_id] & set(p.gpu_ids)  # no GPU placed twice
        used[p.node_id] |= set(p.gpu_ids)
        assert job.gpus <= largest  # jobs larger than every node never run

    # Maximal except for one reserved node: every job left waiting that fits some node
    # fits, in what is left free, on no node but (at most) one, the same one for all.
    left = {n.node_id: len(n.free_gpu_ids) - len(used[n.node_id]) for n in nodes}
    waiting = [j for j in jobs if j.job_id not in set(placed_ids) and j.gpus <= largest]
    would_fit = {n for j in waiting for n, free in left.items() if free >= j.gpus}
    assert len(would_fit) <= 1
    if would_fit:
        # That node is reserved by the first waiting job, which it can hold once free,
        # and nothing queued after that job was put on it.
        (reserved,) = would_fit
        first = waiting[0]
        assert node_by_id[reserved].total_gpus >= first.gpus
        later = order[order.index(first.job_id) + 1 :]
        assert all(p.node_id != reserved for p in got if p.job_id in later)


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_one_node_is_strict_fifo(snap: tuple[list[JobSnapshot], list[NodeSnapshot]]) -> None:
    jobs, nodes = snap
    nodes = nodes[:1]
    got = schedule(jobs, nodes, 0.0)
    fitting = [j.job_id for j in jobs if nodes and j.gpus <= nodes[0].total_gpus]
    placed = [p.job_id for p in got]
    assert placed == fitting[: len(placed)]  # a prefix of the queue: nobody jumps ahead


@settings(max_examples=200, deadline=None)
@given(snapshots())
def test_nothing_blocked_means_everything_placed(
    snap: tuple[list[JobSnapshot], list[NodeSnapshot]],
) -> None:
    """With room for every job at once on the node it gets, all fitting jobs run."""
    jobs, nodes = snap
    nodes = [NodeSnapshot(n.node_id, n.total_gpus, tuple(range(n.total_gpus))) for n in nodes]
    largest = max((n.total_gpus for n in nodes), default=0)
    fitting = [j for j in jobs if j.gpus <= largest]
    got = schedule(jobs, nodes, 0.0)
    if sum(j.gpus for j in fitting) <= min((n.total_gpus for n in nodes), default=0):
        assert [p.job_id for p in got] == [j.job_id for j in fitting]
