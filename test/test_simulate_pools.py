"""Node pools in the simulator: the pools' rule on its own (pure), replays whose pools grow
and shrink (answers worked out by hand beside each), and ``mgpu simulate --pool`` end to end.

t = seconds of the trace's clock; GPU-seconds are written out, GPU-hours are them / 3600.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mgpu.core import poolrule
from mgpu.core.poolrule import Demand, PoolMemory, PoolNode, decide, forget
from mgpu.core.scheduler import load_policy
from mgpu.core.simmetrics import PoolFigures, figures
from mgpu.core.simpools import SimPool, parse_pool
from mgpu.core.simulator import SimResult, parse_nodes, simulate
from mgpu.core.trace import parse_trace
from mgpu.server import pools as master_pools

HEADER = "submit,user,gpus,duration,time_limit"

# ------------------------------------------------------------------ the rule, on its own


def limits(**kw: Any) -> SimPool:
    base: dict[str, Any] = dict(name="p", gpus_per_node=4, min_nodes=0, max_nodes=3,
                                scale_up_after=60, scale_down_after=600)
    return SimPool(**{**base, **kw})


def test_the_rule_asks_for_the_nodes_that_long_waiting_jobs_fill_up_to_max() -> None:
    mem = PoolMemory()
    jobs = [Demand(2, 100)] * 5 + [Demand(8, 100)]  # 10 GPUs that fit; 8 > a node: not
    assert decide(limits(), mem, [], jobs, now=1000).request == 3  # 3 nodes' worth, max 3
    assert mem.requested == [1000, 1000, 1000]
    mem = PoolMemory()
    assert decide(limits(), mem, [], [Demand(2, 100)] * 3, now=0).request == 2  # 6 GPUs
    assert decide(limits(), mem, [], [Demand(2, 100)] * 3, now=1).request == 0  # not twice
    assert decide(limits(), PoolMemory(), [], [Demand(2, 59.9)] * 3, now=0).request == 0
    assert decide(limits(), PoolMemory(), [], [Demand(2, 60)] * 3, now=0).request == 2
    # Nodes up count: 2 up, 12 GPUs wait: 3 nodes' worth, but only 1 more fits under max.
    up = [PoolNode("a", busy=True), PoolNode("b", busy=True)]
    assert decide(limits(), PoolMemory(known={"a", "b"}), up, [Demand(4, 99)] * 3,
                  now=0).request == 1


def test_the_rule_reads_the_queue_only_as_far_as_the_pool_could_grow() -> None:
    read: list[int] = []

    def queue() -> Any:
        for i in range(1000):
            read.append(i)
            yield Demand(4, 100)

    assert decide(limits(), PoolMemory(), [], queue(), now=0).request == 3
    assert len(read) == 4  # 3 nodes' worth (12 GPUs) read, then one more to see it is full


def test_a_join_answers_the_oldest_request_and_a_request_expires() -> None:
    mem = PoolMemory(requested=[0.0, 10.0, 50.0])
    d = decide(limits(request_timeout=100), mem, [PoolNode("a", busy=True)],
               [Demand(4, 100)] * 4, now=120)
    # a answers the request of t=0; the one of t=10 is 110 s old: given up; t=50 stands.
    # 4 nodes' worth: 1 up, 1 coming, 1 more under max 3.
    assert (d.expired, d.request) == (1, 1)
    assert mem.requested == [50.0, 120.0] and mem.known == {"a"}


def test_min_nodes_are_asked_for_and_kept_and_idle_ones_beyond_released() -> None:
    assert decide(limits(min_nodes=2), PoolMemory(), [], [], now=0).request == 2
    mem = PoolMemory()
    nodes = [PoolNode("a"), PoolNode("b"), PoolNode("c", busy=True)]
    s = limits(min_nodes=1, scale_down_after=10)
    assert decide(s, mem, nodes, [], now=0).release == []  # idle from now
    assert mem.idle_since == {"a": 0, "b": 0}
    assert decide(s, mem, nodes, [], now=9.9).release == []
    assert decide(s, mem, nodes, [], now=10).release == ["a", "b"]  # busy c counts for min
    assert mem.releasing == {"a", "b"}
    mem = PoolMemory()
    decide(s, mem, nodes[:2], [], now=0)
    assert decide(s, mem, nodes[:2], [], now=10).release == ["a"]  # b stays for min_nodes


def test_a_node_that_works_or_drains_is_not_idle_and_nothing_is_released_while_asking() -> None:
    s = limits(scale_down_after=10)
    mem = PoolMemory()
    decide(s, mem, [PoolNode("a"), PoolNode("b")], [], now=0)
    # a ran a job at t=5 (idle again from 8), b is draining: neither is released at 10.
    decide(s, mem, [PoolNode("a", busy=True), PoolNode("b", takes_jobs=False)], [], now=5)
    assert decide(s, mem, [PoolNode("a"), PoolNode("b", takes_jobs=False)], [],
                  now=8).release == []
    assert decide(s, mem, [PoolNode("a"), PoolNode("b")], [], now=10).release == []
    assert mem.idle_since == {"a": 8, "b": 10}
    # Jobs wait long enough for one node more: the idle a is kept while the pool grows.
    d = decide(s, mem, [PoolNode("a"), PoolNode("b")], [Demand(4, 60)] * 3, now=30)
    assert (d.request, d.release) == (1, [])


def test_an_operator_command_running_holds_every_decision() -> None:
    mem = PoolMemory(busy=True)
    d = decide(limits(min_nodes=1), mem, [], [Demand(4, 100)], now=0)
    assert (d.request, mem.requested) == (0, [])


def test_a_released_node_whose_agent_went_is_forgotten_and_a_lost_node_does_not_count() -> None:
    mem = PoolMemory(known={"a", "b"}, releasing={"a"}, idle_since={"a": 0})
    gone = PoolNode("a", connected=False)
    lost = PoolNode("b", up=False, connected=False)
    d = decide(limits(min_nodes=1), mem, [gone, lost], [], now=1)
    assert d.forget == ["a"]
    assert d.request == 1  # neither the released a nor the lost b counts for min_nodes
    forget(mem, "a")
    assert "a" not in mem.known and "a" not in mem.releasing and "a" not in mem.idle_since


def test_the_master_and_the_simulator_share_one_rule() -> None:
    # The master's pools keep their state in the rule's memory and call the rule itself.
    assert master_pools.Demand is poolrule.Demand and master_pools.Decision is poolrule.Decision
    assert issubclass(master_pools.PoolState, PoolMemory)
    assert master_pools.PoolSpec(name="p", gpus_per_node=1, max_nodes=1, plugin="x") \
        .scale_up_after == poolrule.SCALE_UP_AFTER
    assert SimPool("p", 1, 0, 1).scale_down_after == poolrule.SCALE_DOWN_AFTER


# ------------------------------------------------------------------ replays with pools


def replay(csv: str, nodes: str, *pools: SimPool, policy: str = "fifo-reserve") -> SimResult:
    return simulate(parse_trace(csv), parse_nodes(nodes), load_policy(policy), pools=pools)


def only_pool(result: SimResult) -> PoolFigures:
    (pool,) = figures(result).pools
    return pool


def test_a_pool_grows_for_waiting_jobs_runs_them_and_shrinks_when_idle() -> None:
    # One fixed node of 4; three 4-GPU jobs at t=0: job 1 takes n01 (to t=1000), jobs 2, 3
    # wait.  t=60: they have waited scale_up_after: two nodes asked for (8 GPUs), they join
    # at t=90 (boot 30) and run jobs 2 and 3 to t=190.  Idle from t=190, released at t=490.
    csv = f"{HEADER}\n0,a,4,1000,\n0,b,4,100,\n0,c,4,100,\n"
    pool = SimPool("cloud", 4, 0, 2, scale_up_after=60, scale_down_after=300, boot_time=30)
    result = replay(csv, "1x4", pool)
    assert [(j.label, j.node, j.start, j.end) for j in result.jobs] == [
        ("1", "n01", 0, 1000), ("2", "cloud-001", 90, 190), ("3", "cloud-002", 90, 190)]
    assert [(r.node_id, r.requested, r.joined, r.released) for r in result.pool_nodes] == [
        ("cloud-001", 60, 90, 490), ("cloud-002", 60, 90, 490)]
    got = only_pool(result)
    assert (got.requests, got.releases, got.peak_nodes, got.jobs) == (2, 2, 2, 2)
    # Powered 2 nodes x 4 GPUs x (490 - 60) s = 3440; busy 2 x 4 x 100 = 800.
    assert got.gpu_hours == pytest.approx(3440 / 3600)
    assert got.busy_gpu_hours == pytest.approx(800 / 3600)
    assert got.idle_gpu_hours == pytest.approx(2640 / 3600)
    fig = figures(result)
    assert fig.avg_wait_s == pytest.approx((0 + 90 + 90) / 3)
    assert fig.utilisation == pytest.approx((4000 + 800) / (4 * 1000 + 3440))


def test_idle_gpu_hours_of_a_pool_only_cluster_by_hand() -> None:
    # No fixed node; a pool of up to 2 nodes of 4 GPUs, at once (boot 0), 600 s idle kept.
    # t=0: jobs 1 (1000 s), 2 (100 s), 3 (100 s), 4 GPUs each.  t=60: 12 GPUs waited 60 s,
    # 8 fit under max: 2 nodes join at once; jobs 1, 2 start.  t=160: 2 ends, 3 starts on
    # p-002, ends t=260; p-002 idle from 260, released at 860.  t=1060: 1 ends; p-001 idle,
    # released at 1660.  Powered: 4 x (1660 - 60) + 4 x (860 - 60) = 9600 GPU-seconds;
    # busy 4 x (1000 + 100 + 100) = 4800; idle 4800.  Waits 60, 60, 160.
    csv = f"{HEADER}\n0,a,4,1000,\n0,b,4,100,\n0,c,4,100,\n"
    result = replay(csv, "none", SimPool("p", 4, 0, 2, 60, 600))
    assert [(j.node, j.start) for j in result.jobs] == [
        ("p-001", 60), ("p-002", 60), ("p-002", 160)]
    assert [(r.requested, r.released) for r in result.pool_nodes] == [(60, 1660), (60, 860)]
    got = only_pool(result)
    assert (got.gpu_hours, got.busy_gpu_hours, got.idle_gpu_hours) == pytest.approx(
        (9600 / 3600, 4800 / 3600, 4800 / 3600))
    fig = figures(result)
    assert (fig.total_gpus, fig.makespan_s, fig.p95_wait_s) == (0, 1060, 160)
    assert fig.avg_wait_s == pytest.approx(280 / 3)
    assert fig.utilisation == pytest.approx(0.5)


def test_a_job_that_starts_at_once_asks_for_nothing_and_a_min_node_stays() -> None:
    # scale_up_after 0: only a job still waiting after the pass counts.  Job 1 runs on
    # n01 at once: no request for it.  The pool's min node is asked for at t=0 and never
    # released: it counts until the replay's end (t=10, job 2's end, on it from t=0).
    csv = f"{HEADER}\n0,a,4,10,\n0,b,1,10,\n"
    result = replay(csv, "1x4", SimPool("warm", 1, 1, 3, scale_up_after=0))
    assert [j.node for j in result.jobs] == ["n01", "warm-001"]
    got = only_pool(result)
    assert (got.requests, got.releases, got.gpu_hours, got.idle_gpu_hours) == (1, 0, 10 / 3600, 0)


def test_a_pool_asks_exactly_when_a_job_has_waited_and_releases_exactly_when_idle() -> None:
    # A submission at t=10.1 has waited 60 s at t=70.1 (where, in floating point,
    # 10.1 + 60 - 10.1 < 60: the tick is the next float); its node (boot 0) runs it from
    # then for 10 s and is released 20 s after, at about 100.1.
    result = replay(f"{HEADER}\n10.1,a,2,10,\n", "none", SimPool("p", 2, 0, 1, 60, 20))
    (record,) = result.pool_nodes
    assert record.requested - 10.1 >= 60 and record.requested == pytest.approx(70.1)
    assert result.jobs[0].start == record.requested
    assert result.jobs[0].end is not None and record.released is not None
    assert record.released - result.jobs[0].end >= 20
    assert record.released == pytest.approx(100.1)


def test_a_job_larger_than_the_fixed_nodes_waits_for_a_pool_node_not_rejected() -> None:
    csv = f"{HEADER}\n0,a,8,50,\n0,b,16,50,\n"
    result = replay(csv, "2x4", SimPool("big", 8, 0, 1, 0, 0), policy="multifactor")
    assert [(j.state, j.node) for j in result.jobs] == [("completed", "big-001"),
                                                        ("rejected", None)]
    assert "largest has 8" in (result.jobs[1].reason or "")


def test_a_capped_arrays_waiting_tasks_ask_for_no_node() -> None:
    # 4 tasks of 10 s, one at a time (%1), on one fixed GPU: the waiting tasks cannot start
    # wherever a GPU is, so, as on the master (they are not in its queue), they ask for
    # nothing; the 1-GPU job submitted with them waits for the GPU: one node for it.
    csv = ("submit,user,gpus,duration,time_limit,array\n"
           "0,a,1,10,,0-3%1\n"
           "0,b,1,10,,\n")
    result = replay(csv, "1x1", SimPool("p", 1, 0, 4, 0, 0))
    assert [(r.node_id, r.requested) for r in result.pool_nodes] == [("p-001", 0)]
    assert [(j.label, j.node, j.start) for j in result.jobs] == [
        ("1_0", "n01", 0), ("1_1", "n01", 10), ("1_2", "n01", 20), ("1_3", "n01", 30),
        ("2", "p-001", 0)]


def test_two_pools_each_grow_for_what_fits_them() -> None:
    # small: nodes of 1 GPU; large: of 8.  t=0: a 1-GPU and an 8-GPU job; both pools
    # count the 1-GPU job (it fits either), only large the 8-GPU one.
    csv = f"{HEADER}\n0,a,1,10,\n0,b,8,10,\n"
    result = replay(csv, "none", SimPool("small", 1, 0, 4, 0, 0),
                    SimPool("large", 8, 0, 4, 0, 0))
    assert sorted(r.node_id for r in result.pool_nodes) == [
        "large-001", "large-002", "small-001"]
    assert all(j.state == "completed" for j in result.jobs)
    assert sum(p.requests for p in figures(result).pools) == 3


@pytest.mark.parametrize(("text", "message"), [
    ("cloud:8:0", "use NAME:GPUS_PER_NODE:MIN:MAX"),
    ("cloud:x:0:4", "use NAME:GPUS_PER_NODE:MIN:MAX"),
    (":8:0:4", "use NAME:GPUS_PER_NODE:MIN:MAX"),
    ("a b:8:0:4", "use NAME:GPUS_PER_NODE:MIN:MAX"),
    ("cloud:0:0:4", "GPUS_PER_NODE >= 1"),
    ("cloud:8:5:4", "0 <= MIN <= MAX"),
    ("cloud:8:0:0", "MAX >= 1"),
    ("cloud:8:0:1000000", "at most 10,000"),
])
def test_a_bad_pool_is_refused_naming_the_format(text: str, message: str) -> None:
    from mgpu.core.errors import UsageError

    with pytest.raises(UsageError, match=message):
        parse_pool(text)


# ------------------------------------------------------------------ the command, end to end


def mgpu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mgpu ARGS`` with none of the caller's MGPU_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    env["HOME"] = str(cwd)
    env.pop("XDG_CONFIG_HOME", None)
    return subprocess.run([sys.executable, "-m", "mgpu", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60, check=False)


def test_mgpu_simulate_with_a_pool_prints_and_writes_its_figures(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(f"{HEADER}\n0,a,4,1000,\n0,b,4,100,\n0,c,4,100,\n")
    args = ["simulate", "--trace", str(trace), "--nodes", "1x4", "--policy", "fifo-reserve",
            "--pool", "cloud:4:0:2", "--scale-down-after", "300", "--boot-time", "30"]
    done = mgpu(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("3 jobs on 1x4 (4 GPUs) + pool cloud (0-2 nodes of 4 GPUs), "
                               "policy fifo-reserve: 3 completed")
    assert lines[5].split() == ["GPU", "utilisation", "64.5", "%"]  # 4800 / 7440
    head = lines.index(next(ln for ln in lines if ln.startswith("POOL")))
    assert lines[head + 1].split() == ["cloud", "0-2x4", "60s", "300s", "30s", "2", "2", "2",
                                       "2", "0.96", "0.22", "0.73"]

    done = mgpu(*args, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (pool,) = json.loads(done.stdout)["pools"]
    assert pool == {
        "name": "cloud", "gpus_per_node": 4, "min_nodes": 0, "max_nodes": 2,
        "scale_up_after_s": 60, "scale_down_after_s": 300, "boot_time_s": 30,
        "requests": 2, "releases": 2, "peak_nodes": 2, "jobs": 2,
        "gpu_hours": pytest.approx(3440 / 3600), "busy_gpu_hours": pytest.approx(800 / 3600),
        "idle_gpu_hours": pytest.approx(2640 / 3600)}
    # Without --pool the JSON says so: no pools.
    plain = mgpu("simulate", "--trace", str(trace), "--nodes", "1x4", "--json", cwd=tmp_path)
    assert json.loads(plain.stdout)["pools"] == []


@pytest.mark.parametrize(("args", "message"), [
    (["--pool", "cloud:8:0"], "--pool 'cloud:8:0': use NAME:GPUS_PER_NODE:MIN:MAX, e.g. "
                              "cloud:8:0:4"),
    (["--pool", "cloud:8:4:2"], "0 <= MIN <= MAX"),
    (["--pool", "a:1:0:1", "--pool", "a:2:0:1"], "--pool a is given twice"),
    (["--pool", "a:1:0:1", "--scale-down-after", "-5"], "--scale-down-after -5: give seconds"),
    (["--pool", "a:1:0:1", "--boot-time", "nan"], "--boot-time nan: give seconds"),
    (["--scale-up-after", "30"], "--scale-up-after is a node pool's setting: give --pool"),
    (["--nodes", "none"], "--nodes none leaves no node to run jobs: give --pool"),
])
def test_mgpu_simulate_refuses_a_bad_pool_with_exit_2(tmp_path: Path, args: list[str],
                                                     message: str) -> None:
    (tmp_path / "t.csv").write_text(f"{HEADER}\n0,a,1,1,\n")
    done = mgpu("simulate", "--trace", "t.csv", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
