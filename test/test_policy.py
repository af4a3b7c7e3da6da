"""The scheduling policies as pure functions (``core/scheduler.py``, ``core/backfill.py``):
the contract's codes, constraints, the reservation's start time, backfill that never delays
the reserved job, no starvation of big jobs, and how far a pass reads.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import replace

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


# ---------------------------------------------------------------- priority and fair share


def test_fair_share_factor_is_one_unused_and_a_half_at_par() -> None:
    from mgpu.core.priority import fair_share_factor

    assert fair_share_factor(0.0, 100.0, 1, 2) == 1.0
    assert fair_share_factor(50.0, 100.0, 1, 2) == pytest.approx(0.5)
    assert fair_share_factor(90.0, 100.0, 1, 2) < fair_share_factor(10.0, 100.0, 1, 2)
    assert fair_share_factor(50.0, 100.0, 2, 3) > fair_share_factor(50.0, 100.0, 1, 3)


@given(st.floats(0, 1e6), st.floats(0, 1e6), st.integers(0, 64))
def test_usage_accrues_the_same_however_often_it_is_updated(a: float, b: float,
                                                            gpus: int) -> None:
    from mgpu.core.priority import accrued, decayed

    h = 7 * 86_400.0
    whole = accrued(gpus, a + b, h)
    assert decayed(accrued(gpus, a, h), b, h) + accrued(gpus, b, h) == pytest.approx(
        whole, rel=1e-9, abs=1e-6)
    assert decayed(1000.0, h, h) == pytest.approx(500.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(0, 20 * 86_400),
                          st.integers(-5, 5)), min_size=1, max_size=40),
       st.floats(0, 30 * 86_400), st.lists(st.integers(0, 39), max_size=10))
def test_the_queue_orders_as_a_full_sort_by_priority_would(
        jobs: list[tuple[str, float, int]], later: float, gone: list[int]) -> None:
    from mgpu.core.priority import PriorityWeights
    from mgpu.server.queue import PendingQueue

    w = PriorityWeights(age=1000, fair_share=10_000, job=100, max_age=7 * 86_400)
    share = {"a": 0.9, "b": 0.5, "c": 0.1}
    q = PendingQueue(w)
    t0 = NOW
    for i, (user, sub, term) in enumerate(jobs):
        q.add(JobSnapshot(i, 1, user, submitted_at=t0 + sub), float(term))
    for i in gone:
        q.remove(i)
    now = t0 + 20 * 86_400 + later  # after every submit
    list(q.ordered(now - later / 2, share.__getitem__))  # an earlier pass ages some jobs
    got = list(q.ordered(now, share.__getitem__))

    def priority(i: int) -> float:
        user, sub, term = jobs[i]
        return (w.age * w.age_factor(now - t0 - sub) + w.fair_share * share[user]
                + w.job * term)

    left = [i for i in range(len(jobs)) if i not in gone]
    assert [j.job_id for j in got] == sorted(left, key=lambda i: (-round(priority(i), 6), i))
    for j in got:
        f = j.factors
        assert j.priority == pytest.approx(priority(j.job_id))
        assert f.age + f.fair_share + f.job == pytest.approx(j.priority)


def test_two_backlogged_users_converge_to_equal_gpu_hours() -> None:
    """User a queues 10 times as many jobs as b (1 GPU, one hour each) on 8 GPUs; with
    equal shares each gets half the GPU-hours while both have jobs waiting."""
    from mgpu.server.fairshare import FairShare
    from mgpu.server.queue import PendingQueue

    q, fs = PendingQueue(), FairShare()
    for i in range(2200):  # b: 200 jobs, more than it can run in the two days
        user = "b" if i % 11 == 0 else "a"
        q.add(JobSnapshot(i, 1, user, submitted_at=NOW, time_limit=3600), 0.0)
    running: list[tuple[float, str, int]] = []  # (end, user, gpu)
    hours = {"a": 0, "b": 0}
    now = NOW
    for _ in range(48):  # two days, one pass an hour (every job ends on the hour)
        running = [r for r in running if r[0] > now]
        by_user: dict[str, int] = {}
        for _, user, _ in running:
            by_user[user] = by_user.get(user, 0) + 1
        fs.advance(now, by_user, {"a", "b"})
        busy = {g for _, _, g in running}
        got = multifactor(Snapshot(now, list(q.ordered(now, fs.factor)),
                                   [NodeSnapshot("n", 8, tuple(g for g in range(8)
                                                               if g not in busy))]))
        for p in got.placements:
            job = q.jobs[p.job_id][0]
            q.remove(p.job_id)
            fs.started(job.user, 1)
            running.append((now + 3600, job.user, p.gpu_ids[0]))
            hours[job.user] += 1
        now += 3600
    assert 0.4 <= hours["b"] / (hours["a"] + hours["b"]) <= 0.6, hours


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_nodes_that_bring_their_releases_plan_as_running_jobs_do(snap: Snapshot) -> None:
    """The master indexes the running jobs' ends by node (``NodeSnapshot.releases``); the
    plan is the same as the policy's own index of ``running``."""
    ends: dict[str, list[tuple[float, int]]] = {}
    for r in snap.running:
        ends.setdefault(r.node_id, []).append((r.expected_end, len(r.gpu_ids)))
    indexed = [replace(n, releases=tuple(sorted(ends.get(n.node_id, []))))
               for n in snap.nodes]
    plain = multifactor(snap)
    assert multifactor(replace(snap, nodes=indexed)) == plain


def test_a_job_that_leaves_pending_loses_its_reason_code_and_expected_start() -> None:
    from mgpu.core.models import JobState, SimpleJob, advance, utc

    job = SimpleJob(id=1, name="j", user="u", state=JobState.PENDING, gpus=1, command="true",
                    cwd="/", pending_reason="Resources", expected_start=utc(NOW + 60))
    advance(job, JobState.RUNNING, NOW)
    assert job.pending_reason is None and job.expected_start is None
