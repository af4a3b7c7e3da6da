"""The simulator and ``mgpu simulate`` (tier 1: pure replays; tier 3: the command).

Each replay is a small hand-made trace whose answers were worked out by hand, written
beside it (t = seconds of the trace's clock). The policy is the master's own (``load_policy``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mgpu.cli.simulate import replay as simulate_as_master
from mgpu.core.config import MasterConfig
from mgpu.core.errors import UsageError
from mgpu.core.scheduler import Placement, ScheduleResult, Snapshot, load_policy
from mgpu.core.simmetrics import Figures, backlogged, figures, percentile, shares_within
from mgpu.core.simulator import NEVER, PolicyError, SimResult, parse_nodes, simulate
from mgpu.core.trace import Dependency, parse_trace

SRC = Path(__file__).resolve().parent.parent / "src"
HEADER = "submit,user,gpus,duration,time_limit"


def replay(csv: str, nodes: str = "1x8", policy: str = "fifo-reserve") -> SimResult:
    """``csv`` replayed as ``mgpu simulate`` does: with the master's priority queue and
    fair-share usage, at their default settings."""
    return simulate_as_master(parse_trace(csv), parse_nodes(nodes), load_policy(policy))


def starts(result: SimResult) -> dict[str, float | None]:
    return {j.label: j.start for j in result.jobs}


# ------------------------------------------------------------------ replays known by hand


def test_a_blocked_big_job_holds_its_node_and_a_limit_stops_a_job() -> None:
    # t=0: job 1 (8 GPUs) runs to t=100; job 2 (4 GPUs) waits.  t=10: job 3 waits behind 2.
    # t=100: 2 starts on GPUs 0-3, stopped at its 40 s limit (t=140, timeout); 3 starts on
    # GPUs 4-7, ends t=110.  JCT 100, 140, 100; waits 0, 100, 90; makespan 140;
    # GPU-seconds 800 + 160 + 40 = 1000 of 8 x 140.
    result = replay(f"{HEADER}\n0,alice,8,100,\n0,bob,4,50,40\n10,alice,4,10,\n")
    assert starts(result) == {"1": 0, "2": 100, "3": 100}
    assert [j.state for j in result.jobs] == ["completed", "timeout", "completed"]
    assert [j.gpu_ids for j in result.jobs] == [tuple(range(8)), (0, 1, 2, 3), (4, 5, 6, 7)]
    fig = figures(result)
    assert (fig.completed, fig.timeout, fig.cancelled, fig.rejected) == (2, 1, 0, 0)
    assert fig.avg_jct_s == pytest.approx(340 / 3)
    assert fig.avg_wait_s == pytest.approx(190 / 3)
    assert fig.p95_wait_s == 100
    assert fig.makespan_s == 140
    assert fig.utilisation == pytest.approx(1000 / 1120)
    assert fig.gpu_hours == pytest.approx({"alice": 840 / 3600, "bob": 160 / 3600})
    assert fig.shares == pytest.approx({"alice": 0.84, "bob": 0.16})


def test_the_reservation_keeps_small_jobs_off_its_node_not_off_the_others() -> None:
    # Two nodes of 4.  t=0: job 1 (3 GPUs) to n01 (a tie of fits: the first); job 2 (2) to
    # n02 (n01 has 1 free); job 3 (4) is blocked and reserves n02 (2 free, the most);
    # job 4 (1) backfills n01's last GPU; job 5 (1) may not use n02: it waits.
    # t=10: job 4 ends; job 5 takes n01's GPU (n02 is still reserved), ends t=20.
    # t=100: jobs 1 and 2 end; job 3 starts on n01 (a tie: the first), ends t=110.
    csv = f"{HEADER}\n0,a,3,100,\n0,b,2,100,\n0,c,4,10,\n0,d,1,10,\n0,e,1,10,\n"
    result = replay(csv, "2x4")
    assert [(j.label, j.node, j.start) for j in result.jobs] == [
        ("1", "n01", 0), ("2", "n02", 0), ("3", "n01", 100), ("4", "n01", 0),
        ("5", "n01", 10)]
    fig = figures(result)
    assert fig.makespan_s == 110
    assert fig.avg_wait_s == pytest.approx((0 + 0 + 100 + 0 + 10) / 5)
    assert fig.avg_jct_s == pytest.approx((100 + 100 + 110 + 10 + 20) / 5)
    assert fig.utilisation == pytest.approx((300 + 200 + 40 + 10 + 10) / (8 * 110))


@pytest.mark.parametrize(("policy", "expected"), [
    # fifo-reserve: job 2's reservation keeps every later job off the node until it runs.
    ("fifo-reserve", {"1": 0, "2": 100, "3": 110, "4": 110}),
    # multifactor: job 2 is expected to start at t=100 (job 1's limit); job 3 ends by
    # then (limit 50) and backfills at once; job 4 (limit 200) would delay job 2: it waits.
    ("multifactor", {"1": 0, "2": 100, "3": 0, "4": 110}),
])
def test_backfill_by_time_limit_does_not_delay_the_reserved_job(
        policy: str, expected: dict[str, float]) -> None:
    csv = f"{HEADER}\n0,a,2,100,100\n0,b,4,10,10\n0,c,1,50,50\n0,d,1,200,200\n"
    result = replay(csv, "1x4", policy)
    assert starts(result) == expected
    fig = figures(result)
    assert fig.makespan_s == 310
    assert fig.avg_wait_s == pytest.approx(sum(expected.values()) / 4)


def test_a_job_too_big_for_every_node_is_rejected_and_the_rest_run() -> None:
    result = replay(f"{HEADER}\n0,a,16,10,\n5,a,2,10,\n", "2x8")
    assert [j.state for j in result.jobs] == ["rejected", "completed"]
    assert "largest has 8" in (result.jobs[0].reason or "")
    fig = figures(result)
    # makespan runs from the first submission (t=0) to the last end (t=15)
    assert (fig.rejected, fig.completed, fig.makespan_s) == (1, 1, 15)
    assert fig.avg_wait_s == 0
    assert fig.utilisation == pytest.approx(2 * 10 / (16 * 15))


def test_dependencies_chain_and_a_dependency_never_met_cancels_its_chain() -> None:
    # 1 runs 0-10 and ends ok; 2 (afterok:1) runs 10-30; 3 is stopped at its limit (0-5,
    # timeout); 4 (afterok:3) can never start: cancelled at t=5, and 5 (afterany:4) then
    # runs at once (t=5); 6 (afternotok:3) runs 5-6; 7 (afterok:1?afterok:3) runs at 10.
    csv = (
        "id,submit,user,gpus,duration,time_limit,dependency\n"
        "1,0,a,1,10,,\n"
        "2,0,a,1,20,,afterok:1\n"
        "3,0,a,1,50,5,\n"
        "4,0,a,1,1,,afterok:3\n"
        "5,0,a,1,1,,afterany:4\n"
        "6,0,a,1,1,,afternotok:3\n"
        "7,0,a,1,1,,afterok:1?afterok:3\n"
        "8,0,a,1,1,,after:2\n"
    )
    result = replay(csv)
    by = {j.label: j for j in result.jobs}
    assert starts(result) == {"1": 0, "2": 10, "3": 0, "4": None, "5": 5, "6": 5, "7": 10,
                              "8": 10}
    assert (by["4"].state, by["4"].reason, by["4"].end) == ("cancelled", NEVER, 5)
    assert by["3"].state == "timeout"
    fig = figures(result)
    assert (fig.completed, fig.timeout, fig.cancelled) == (6, 1, 1)
    assert fig.makespan_s == 30


def test_an_array_runs_each_task_under_its_cap() -> None:
    # 5 tasks of 10 s, at most 2 at once, on 8 GPUs: ends at 10, 10, 20, 20, 30.
    result = replay("submit,user,gpus,duration,time_limit,array\n0,a,1,10,,0-4%2\n")
    assert starts(result) == {"1_0": 0, "1_1": 0, "1_2": 10, "1_3": 10, "1_4": 20}
    fig = figures(result)
    assert (fig.jobs, fig.makespan_s, fig.p95_wait_s) == (5, 30, 20)
    assert fig.utilisation == pytest.approx(50 / (8 * 30))


def test_a_dependency_on_an_array_waits_for_every_task() -> None:
    csv = ("submit,user,gpus,duration,time_limit,array,dependency\n"
           '0,a,1,10,,"1,3",\n'
           "0,a,1,5,,,afterok:1\n")
    result = replay(csv)
    assert starts(result) == {"1_1": 0, "1_3": 0, "2": 10}


def test_ties_in_time_keep_file_order_and_ends_come_before_submissions() -> None:
    assert [j.id for j in parse_trace(f"{HEADER}\n5,x,1,1,\n0,y,1,1,\n5,z,1,1,\n")] == [
        2, 1, 3]
    # Job 1 is submitted at t=10, the instant job 2 ends: it takes the freed GPU at once.
    result = replay(f"{HEADER}\n10,b,1,5,\n0,a,1,10,\n", "1x1")
    assert [(j.label, j.start) for j in result.jobs] == [("2", 0), ("1", 10)]
    assert figures(result).avg_wait_s == 0


@pytest.mark.parametrize("policy", ["fifo-reserve", "multifactor"])
def test_fair_share_lets_the_user_who_used_less_go_first(policy: str) -> None:
    # One GPU; heavy queues 4 jobs of 10 s at t=0, then light 2.  t=0: nobody has used
    # anything, so the oldest id goes first (heavy's).  t=10: light has used nothing and goes
    # ahead of heavy's older jobs; t=20: both used 10 GPU-seconds (heavy's a little decayed,
    # so a little less): heavy; t=30: light (10 against 20); then heavy's last two.
    csv = f"{HEADER}\n" + "0,heavy,1,10,\n" * 4 + "0,light,1,10,\n" * 2
    result = replay(csv, "1x1", policy)
    assert [(j.user, j.start) for j in sorted(result.jobs, key=lambda j: j.start or 0)] == [
        ("heavy", 0), ("light", 10), ("heavy", 20), ("light", 30), ("heavy", 40),
        ("heavy", 50)]
    # Without the master's queue and usage (submission order), light would wait for all.
    plain = simulate(parse_trace(csv), parse_nodes("1x1"), load_policy(policy))
    assert [j.start for j in plain.jobs if j.user == "light"] == [40, 50]


def test_shares_while_both_users_wait_in_submission_order() -> None:
    # Submission order, no fair share (the metrics, not the queue, are under test).
    # One GPU; a submits 4 jobs of 10 s at t=0, b one at t=0 and one at t=25: a a a
    # a b b.  a waits until its last job starts (t=30), b until t=50: both wait during
    # [0, 30), when a holds the GPU throughout.
    csv = f"{HEADER}\n" + "0,a,1,10,\n" * 4 + "0,b,1,10,\n25,b,1,10,\n"
    result = simulate(parse_trace(csv), parse_nodes("1x1"), load_policy("fifo-reserve"))
    windows = backlogged(result.jobs, ["a", "b"])
    assert windows == [(0, 30)]  # a's last job starts at 30
    assert shares_within(result.jobs, windows) == {"a": 1.0}
    assert figures(result).shares == pytest.approx({"a": 4 / 6, "b": 2 / 6})


def test_the_policy_sees_the_snapshot_the_master_builds() -> None:
    # One node of 3 GPUs.  Job 1 runs from t=0, its limit 49.5; job 2 (no limit) from t=10;
    # job 3 (2 GPUs) is submitted at t=20 and sees both running, with their expected ends:
    # start + limit, and start + the default limit for the job without one.
    seen: list[Snapshot] = []
    fifo = load_policy("fifo-reserve")

    def watching(snap: Snapshot) -> ScheduleResult:
        seen.append(Snapshot(snap.now, list(snap.pending), snap.nodes, snap.running,
                             snap.default_time_limit))
        return fifo(seen[-1])

    trace = parse_trace(f"{HEADER}\n0,a,1,100,49.5\n10,b,1,100,\n20,c,2,1,\n")
    simulate(trace, parse_nodes("1x3"), watching, default_time_limit=600)
    at20 = next(s for s in seen if s.now == 20)
    assert [(j.job_id, j.gpus, j.user, j.submitted_at, j.time_limit)
            for j in at20.pending] == [(3, 2, "c", 20, None)]
    assert [(r.job_id, r.user, r.node_id, r.gpu_ids, r.expected_end)
            for r in at20.running] == [(1, "a", "n01", (0,), 49.5), (2, "b", "n01", (1,), 610)]
    assert at20.default_time_limit == 600
    assert [(n.node_id, n.total_gpus, n.free_gpu_ids, n.releases) for n in at20.nodes] == [
        ("n01", 3, (2,), ((49.5, 1), (610, 1)))]
    # t=0: job 1's limit, as the policy sees it, is in whole seconds (rounded up).
    assert [(j.job_id, j.time_limit) for j in seen[0].pending] == [(1, 50)]


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 95) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


def test_a_policy_that_places_a_job_on_a_busy_gpu_is_reported() -> None:
    def greedy(snap: Snapshot) -> ScheduleResult:
        return ScheduleResult([Placement(j.job_id, snap.nodes[0].node_id, (0,))
                               for j in snap.pending])

    with pytest.raises(PolicyError, match="impossible placement"):
        simulate(parse_trace(f"{HEADER}\n0,a,1,1,\n0,a,1,1,\n"), parse_nodes("1x2"), greedy)


# ------------------------------------------------------------------ reading traces and nodes


def test_a_trace_reads_ids_dependencies_and_arrays() -> None:
    jobs = parse_trace("id,submit,user,gpus,duration,time_limit,dependency,array\n"
                       "7,1.5,a,2,60,120,,0-3%2\n"
                       "9,3,b,1,1,,afterok:7:7?afterany:7,\n")
    assert [(j.id, j.submit, j.gpus, j.time_limit) for j in jobs] == [
        (7, 1.5, 2, 120), (9, 3, 1, None)]
    assert (jobs[0].array, jobs[0].array_limit) == ((0, 1, 2, 3), 2)
    assert jobs[1].depends == ((Dependency("afterok", (7, 7)),),
                               (Dependency("afterany", (7,)),))


@pytest.mark.parametrize(("csv", "message"), [
    ("", "header row"),
    ("submit,user,gpus,duration\n0,a,1,1\n", "missing: time_limit"),
    (f"{HEADER},colour\n0,a,1,1,,red\n", "unknown: colour"),
    (f"{HEADER}\n", "no jobs"),
    (f"{HEADER}\n0,a,1,1\n", "line 2: 4 fields"),
    (f"{HEADER}\nsoon,a,1,1,\n", "line 2: submit 'soon'"),
    (f"{HEADER}\n0,a,0,1,\n", "gpus must be a whole number >= 1"),
    (f"{HEADER}\n0,a,1,0,\n", "duration must be a number of seconds > 0"),
    (f"{HEADER}\n0,a,1,nan,\n", "duration must be"),
    (f"{HEADER}\n0,,1,1,\n", "user is empty"),
    (f"id,{HEADER}\n1,0,a,1,1,\n1,1,a,1,1,\n", "line 3: id 1 is also the id on line 2"),
    (f"{HEADER},dependency\n0,a,1,1,,afterok:2\n1,a,1,1,,\n", "not submitted before it"),
    (f"{HEADER},dependency\n0,a,1,1,,afterall:1\n", "TYPE one of after, afterany"),
    (f"{HEADER},dependency\n0,a,1,1,,\"afterok:1,afterok:1?after:1\"\n", "mixes"),
    (f"{HEADER},array\n0,a,1,1,,5-3\n", "array '5-3'"),
    (f"{HEADER},array\n0,a,1,1,,0-9%0\n", "0-9%0"),
    (f"{HEADER},array\n0,a,1,1,,0-999999\n", "more than 100,000 tasks"),
])
def test_a_bad_trace_is_refused_naming_the_fix(csv: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_trace(csv)


def test_nodes_are_counts_of_shapes() -> None:
    assert parse_nodes("2x8,1x4") == [("n01", 8), ("n02", 8), ("n03", 4)]
    assert len(parse_nodes("1000x8")) == 1000
    assert parse_nodes("1000x8")[0] == ("n0001", 8)
    for bad in ("8", "0x8", "8x0", "axb", "8x8,"):
        with pytest.raises(UsageError, match="COUNTxGPUS"):
            parse_nodes(bad)


# ------------------------------------------------------------------ the command, end to end


def mgpu(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mgpu ARGS`` with none of the caller's MGPU_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    env["HOME"] = str(cwd)  # no config file of the user's
    env.pop("XDG_CONFIG_HOME", None)
    return subprocess.run([sys.executable, "-m", "mgpu", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60, check=False)


def test_mgpu_simulate_prints_the_figures_and_json(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(f"{HEADER}\n0,alice,8,100,\n0,bob,4,50,40\n10,alice,4,10,\n")
    done = mgpu("simulate", "--trace", str(trace), "--nodes", "1x8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    default = MasterConfig.__dataclass_fields__["scheduler"].default  # the master's own
    assert lines[0] == (f"3 jobs on 1x8 (8 GPUs), policy {default}: 2 completed, "
                        "1 timeout, 0 cancelled, 0 rejected, 0 never started")
    assert "average JCT" in lines[1] and "(113.3 s)" in lines[1]
    assert "(63.3 s)" in lines[2] and "(100.0 s)" in lines[3] and "(140.0 s)" in lines[4]
    assert lines[5].split() == ["GPU", "utilisation", "89.3", "%"]
    assert [ln.split() for ln in lines[7:]] == [
        ["USER", "GPU-HOURS", "SHARE"], ["alice", "0.23", "84.0", "%"],
        ["bob", "0.04", "16.0", "%"]]

    done = mgpu("simulate", "--trace", str(trace), "--nodes", "1x8", "--json",
                "--policy", "fifo-reserve", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["policy"], got["nodes"], got["jobs"], got["makespan_s"]) == (
        "fifo-reserve", "1x8", 3, 140)
    assert got["shares"] == pytest.approx({"alice": 0.84, "bob": 0.16})
    assert set(got) == {"policy", "nodes", "trace", *Figures.__dataclass_fields__}


@pytest.mark.parametrize(("args", "message"), [
    (["--trace", "missing.csv"], "cannot read the trace missing.csv"),
    (["--trace", "bad.csv"], "trace line 2: gpus must be"),
    (["--trace", "bad.csv", "--nodes", "eight"], "--nodes 'eight': use COUNTxGPUS"),
    (["--trace", "bad.csv", "--policy", "nope"], "unknown scheduler 'nope'"),
])
def test_mgpu_simulate_names_what_is_wrong(tmp_path: Path, args: list[str],
                                           message: str) -> None:
    (tmp_path / "bad.csv").write_text(f"{HEADER}\n0,a,x,1,\n")
    done = mgpu("simulate", *args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_mgpu_simulate_imports_no_server_and_no_client(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(f"{HEADER}\n0,a,1,1,\n")
    code = ("import sys\nfrom mgpu.cli import main\n"
            f"status = main(['simulate', '--trace', {str(trace)!r}])\n"
            "print(status, sorted(sys.modules))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
    env["PYTHONPATH"] = str(SRC)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=True)
    status, _, modules = done.stdout.splitlines()[-1].partition(" ")
    assert status == "0"
    # Of the server, only its pure priority queue and fair-share usage: no aiohttp, no SQLite.
    for name in ("aiohttp", "sqlite3", "mgpu.server.master", "mgpu.server.state",
                 "mgpu.server.store", "mgpu.server.api", "mgpu.client.client", "mgpu.node"):
        assert f"'{name}'" not in modules, f"`mgpu simulate` imported {name}"
    assert "'mgpu.server.fairshare'" in modules and "'mgpu.server.queue'" in modules
