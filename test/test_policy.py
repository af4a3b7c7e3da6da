"""The scheduling policies as pure functions (``core/scheduler.py``, ``core/backfill.py``):
the contract's codes, constraints, the reservation's start time, backfill that never delays
the reserved job, no starvation of big jobs, and how far a pass reads.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mgpu.core.scheduler import (
    JobSnapshot,
    NodeSnapshot,
    PendingReason,
    Placement,
    RunningSnapshot,
    ScheduleResult,
    Snapshot,
    fifo_reserve,
    load_policy,
    multifactor,
)

NOW = 1_000_000.0


def job(job_id: int, gpus: int = 1, limit: int | None = 3600, **kw: object) -> JobSnapshot:
    return JobSnapshot(job_id, gpus, str(kw.pop("user", "u")), submitted_at=NOW,
                       time_limit=limit, **kw)  # type: ignore[arg-type]


def node(node_id: str, total: int, free: tuple[int, ...] | None = None,
         **kw: object) -> NodeSnapshot:
    return NodeSnapshot(node_id, total, tuple(range(total)) if free is None else free,
                        **kw)  # type: ignore[arg-type]


def run(pending: list[JobSnapshot], nodes: list[NodeSnapshot],
        running: list[RunningSnapshot] | None = None, **kw: int) -> ScheduleResult:
    return multifactor(Snapshot(NOW, pending, nodes, running or [], **kw))


def test_every_pending_reason_code_has_its_slurm_name() -> None:
    assert [c.value for c in PendingReason] == [
        "Priority", "Resources", "Reserved", "Dependency", "Held", "BeginTime",
        "QOSMaxGPUs", "NodeDown", "NoNodeFits", "GpusBusyOutside"]


def test_load_policy_knows_both_builtins_and_multifactor_is_the_default() -> None:
    assert load_policy("multifactor") is multifactor
    assert load_policy("default") is multifactor
    assert load_policy("fifo-reserve") is fifo_reserve


def test_jobs_go_in_the_order_given_to_the_tightest_node() -> None:
    got = run([job(1, 2), job(2, 1), job(3, 4)],
              [node("big", 4), node("small", 2)])
    assert got.placements == [Placement(1, "small", (0, 1)), Placement(2, "big", (0,))]
    assert got.reasons[3].code is PendingReason.RESOURCES


def test_the_top_blocked_job_is_reserved_from_the_running_jobs_expected_ends() -> None:
    running = [RunningSnapshot(10, "a", "n1", (0, 1), NOW + 300),
               RunningSnapshot(11, "a", "n1", (2,), NOW + 100),
               RunningSnapshot(12, "a", "n2", (0, 1, 2), NOW + 900)]
    got = run([job(1, 4)], [node("n1", 4, (3,)), node("n2", 4, (3,))], running)
    assert got.placements == []
    assert [(r.job_id, r.node_id, r.start) for r in got.reservations] == [(1, "n1", NOW + 300)]
    assert got.starts == {1: NOW + 300}
    assert got.reasons[1].code is PendingReason.RESOURCES


def test_an_overdue_job_counts_as_ending_now_and_no_limit_counts_as_the_default() -> None:
    running = [RunningSnapshot(10, "a", "n1", (0,), NOW - 50)]
    got = run([job(1, 2)], [node("n1", 2, (1,))], running)
    assert got.starts == {1: NOW}
    got = run([job(1, 2), job(2, 1, limit=None)], [node("n1", 2, (1,))],
              [RunningSnapshot(10, "a", "n1", (0,), NOW + 500)], default_time_limit=400)
    assert got.placements == [Placement(2, "n1", (1,))]  # 400 s ends before the start


def test_backfill_takes_short_jobs_and_holds_back_long_ones() -> None:
    running = [RunningSnapshot(10, "a", "n1", (0, 1), NOW + 600)]
    nodes = [node("n1", 4, (2, 3))]
    got = run([job(1, 4), job(2, 1, limit=1200), job(3, 1, limit=600), job(4, 1, limit=60)],
              nodes, running)
    assert got.placements == [Placement(3, "n1", (2,)), Placement(4, "n1", (3,))]
    assert got.reasons[2].code is PendingReason.RESERVED and got.reasons[2].job_id == 1
    assert got.starts == {1: NOW + 600}


def test_backfill_may_use_the_gpus_the_reservation_does_not_need() -> None:
    running = [RunningSnapshot(10, "a", "n1", (0, 1, 2, 3), NOW + 600)]
    got = run([job(1, 6), job(2, 2, limit=99_999), job(3, 1, limit=99_999)],
              [node("n1", 8, (4, 5, 6, 7))], running)
    assert got.placements == [Placement(2, "n1", (4, 5))]  # 8 - 6 = 2 spare at the start
    assert got.reasons[3].code is PendingReason.RESERVED


def test_other_nodes_stay_open_to_lower_jobs() -> None:
    running = [RunningSnapshot(10, "a", "n1", (0,), NOW + 600)]
    got = run([job(1, 2), job(2, 1, limit=99_999)], [node("n1", 2, (1,)), node("n2", 1)],
              running)
    assert got.placements == [Placement(2, "n2", (0,))]


def test_a_job_no_node_can_run_says_so_and_holds_nothing_back() -> None:
    got = run([job(1, 16), job(2, 1, gpu_type="H100"), job(3, 1)], [node("n1", 2)])
    assert got.reasons[1].code is PendingReason.NO_NODE_FITS
    assert got.reasons[2].code is PendingReason.NO_NODE_FITS
    assert "of type H100" in got.reasons[2].detail
    assert got.placements == [Placement(3, "n1", (0,))]
    assert got.reservations == []


@pytest.mark.parametrize("policy", [multifactor, fifo_reserve])
def test_constraints_type_memory_partition_users(policy: object) -> None:
    nodes = [node("a100", 2, gpu_type="NVIDIA A100", gpu_free_mib=(1000, 80_000)),
             node("h100", 2, gpu_type="nvidia h100"),
             node("gpu-part", 2, partition="gpu"),
             node("alices", 2, users=frozenset({"alice"}))]
    pending = [job(1, 1, gpu_type="NVIDIA H100"), job(2, 1, gpu_mem_mib=40_000),
               job(3, 1, partition="gpu"), job(4, 1, user="alice"), job(5, 1, user="bob")]
    got = policy(Snapshot(NOW, pending, nodes))  # type: ignore[operator]
    where = {p.job_id: (p.node_id, p.gpu_ids) for p in got.placements}
    assert where[1] == ("h100", (0,))
    assert where[2] == ("a100", (1,))  # the GPU with the memory, not the first one
    assert where[3] == ("gpu-part", (0,))
    assert where[4][0] in ("a100", "h100", "alices")
    assert where[5][0] in ("a100", "h100") and where[5][0] != "alices"


def test_partition_none_only_uses_nodes_in_no_partition() -> None:
    got = run([job(1, 1)], [node("p", 2, partition="gpu")])
    assert got.placements == [] and got.reasons[1].code is PendingReason.NO_NODE_FITS


def test_the_pass_stops_reading_once_no_gpu_is_free_and_a_job_is_reserved() -> None:
    read: list[int] = []

    def endless() -> Iterator[JobSnapshot]:
        i = 0
        while True:
            i += 1
            read.append(i)
            yield job(i, 1 if i != 3 else 4)

    got = multifactor(Snapshot(NOW, endless(), [node("n1", 4, (2, 3)), node("n2", 2)],
                               [RunningSnapshot(10, "a", "n1", (0, 1), NOW + 60)]))
    assert len(got.placements) == 4 and read == [1, 2, 3, 4, 5, 6]
    assert got.reservations[0].job_id == 3


def test_backfill_depth_bounds_how_far_past_the_blocked_job_a_pass_reads() -> None:
    pending = [job(1, 4), *(job(i, 2, limit=99_999) for i in range(2, 100)),
               job(100, 1, limit=30)]
    running = [RunningSnapshot(10, "a", "n1", (0, 1, 2), NOW + 60)]
    got = run(pending, [node("n1", 4, (3,))], running, backfill_depth=10)
    assert got.placements == [] and 100 not in got.reasons and 11 in got.reasons
    got = run(pending, [node("n1", 4, (3,))], running, backfill_depth=1000)
    assert got.placements == [Placement(100, "n1", (3,))]


# ---------------------------------------------------------------- properties


@st.composite
def clusters(draw: st.DrawFn) -> Snapshot:
    nodes, running = [], []
    rid = 1000
    for i in range(draw(st.integers(1, 4))):
        total = draw(st.integers(1, 8))
        busy = draw(st.lists(st.integers(0, total - 1), unique=True, max_size=total))
        # busy GPUs belong to running jobs of 1 or 2 GPUs each
        for k in range(0, len(busy), 2):
            rid += 1
            running.append(RunningSnapshot(rid, "x", f"n{i}", tuple(busy[k:k + 2]),
                                           NOW + draw(st.integers(0, 5000))))
        nodes.append(NodeSnapshot(f"n{i}", total,
                                  tuple(g for g in range(total) if g not in busy)))
    pending = [job(i + 1, draw(st.integers(1, 8)), draw(st.integers(1, 5000)))
               for i in range(draw(st.integers(1, 12)))]
    return Snapshot(NOW, pending, nodes, running)


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_placements_are_valid(snap: Snapshot) -> None:
    got = multifactor(snap)
    free = {n.node_id: set(n.free_gpu_ids) for n in snap.nodes}
    asked = {j.job_id: j.gpus for j in snap.pending}  # type: ignore[attr-defined]
    for p in got.placements:
        assert len(p.gpu_ids) == asked[p.job_id]
        assert set(p.gpu_ids) <= free[p.node_id]
        free[p.node_id] -= set(p.gpu_ids)
    assert len({p.job_id for p in got.placements}) == len(got.placements)
    placed = {p.job_id for p in got.placements}
    assert not placed & set(got.reasons)


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_backfill_never_delays_the_reserved_job(snap: Snapshot) -> None:
    """Start what the pass placed (each ends at its limit), plan again for the reserved job
    alone: it is planned to start no later than first promised."""
    got = multifactor(snap)
    if not got.reservations:
        return
    promised = got.reservations[0]
    pending = {j.job_id: j for j in snap.pending}  # type: ignore[attr-defined]
    placed = {p.job_id: p for p in got.placements}
    running = list(snap.running) + [
        RunningSnapshot(p.job_id, "u", p.node_id, p.gpu_ids,
                        NOW + (pending[p.job_id].time_limit or snap.default_time_limit))
        for p in placed.values()]
    nodes = [NodeSnapshot(n.node_id, n.total_gpus, tuple(
        g for g in n.free_gpu_ids
        if not any(p.node_id == n.node_id and g in p.gpu_ids for p in placed.values())))
        for n in snap.nodes]
    again = multifactor(Snapshot(NOW, [pending[promised.job_id]], nodes, running))
    assert again.starts[promised.job_id] <= promised.start


def test_a_big_job_is_not_starved_by_a_stream_of_small_ones() -> None:
    """One 4-GPU node; a 4-GPU job waits behind 1-GPU jobs that keep coming (one every
    10 s, each running 100 s of a 120 s limit). In priority (age) order it starts once the
    jobs ahead of it end, and never later than its first reservation."""
    events: list[tuple[float, int]] = []  # (end time, job id) of running jobs
    running: dict[int, RunningSnapshot] = {}
    pending: dict[int, JobSnapshot] = {}
    now, next_id, big, first_promise, started_big = NOW, 1, 0, None, None
    for step in range(400):
        now = NOW + step * 10
        while events and events[0][0] <= now:
            _, done = heapq.heappop(events)
            running.pop(done)
        pending[next_id] = JobSnapshot(next_id, 1, "small", now, 120)
        next_id += 1
        if step == 5:
            big = next_id
            pending[big] = JobSnapshot(big, 4, "big", now, 1000)
            next_id += 1
        free = set(range(4)) - {g for r in running.values() for g in r.gpu_ids}
        got = multifactor(Snapshot(now, sorted(pending.values(), key=lambda j: j.job_id),
                                   [NodeSnapshot("n1", 4, tuple(sorted(free)))],
                                   list(running.values())))
        if big in got.starts and first_promise is None:
            first_promise = got.starts[big]
        for p in got.placements:
            j = pending.pop(p.job_id)
            ends = now + (100 if j.gpus == 1 else 1000)
            running[j.job_id] = RunningSnapshot(j.job_id, j.user, "n1", p.gpu_ids,
                                                now + (j.time_limit or 0))
            heapq.heappush(events, (ends, j.job_id))
            if j.job_id == big:
                started_big = now
        if started_big is not None:
            break
    assert first_promise is not None and started_big is not None
    assert started_big <= first_promise
