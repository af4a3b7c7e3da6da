"""The scheduling policies compared, offline: what each does to a lab's jobs, whether fair
share converges, and what one scheduling pass costs at scale.

1. **Trace**: ``bench/traces/lab-2k.csv`` replayed by the simulator as ``mgpu simulate``
   does (``mgpu.cli.simulate.replay``: the master's priority queue and fair-share usage at
   their default settings around each policy) on 8 nodes of 8 GPUs: average JCT, average
   and p95 wait, makespan, GPU utilisation.
2. **Fair share**: two users submitting 1-GPU jobs at a 10 : 1 ratio (``gen.py
   --two-users``), both backlogged; each user's share of the GPU-hours used while both had
   jobs waiting. Target: 50/50 +- 10 % (each user within 40-60 %).
3. **Pass time**: the master's real pass (``ClusterState.schedule``: the snapshot it builds,
   the policy, the placements), in memory, no network: 1,000 nodes x 8 GPUs all busy,
   100,000 jobs pending (sizes and users as in the lab trace); then, ``--passes`` times, a
   running job ends and a pass runs (the event that frees GPUs), and a job is submitted and
   a pass runs (the event that frees none). Median and p99 of each. Target: p99 <= 50 ms.
   ``--profile`` adds cProfile's top functions of the passes after a job end.

Usage: ``python bench/scheduling.py [--policies fifo-reserve,multifactor] [--pending 100000]
[--nodes 1000] [--passes 200] [--budget 300] [--profile] [--gc-freeze]
[--skip trace,fairshare,passes]``
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "traces"))

import gen  # noqa: E402 - bench/traces/gen.py, beside this file

from mgpu.cli.simulate import replay  # noqa: E402
from mgpu.core import messages as m  # noqa: E402
from mgpu.core.errors import ConfigError  # noqa: E402
from mgpu.core.models import GpuInfo, JobSpec  # noqa: E402
from mgpu.core.scheduler import Policy, load_policy  # noqa: E402
from mgpu.core.simmetrics import backlogged, figures, percentile, shares_within  # noqa: E402
from mgpu.core.simulator import parse_nodes  # noqa: E402
from mgpu.core.timefmt import format_elapsed  # noqa: E402
from mgpu.core.trace import parse_trace  # noqa: E402
from mgpu.server.state import ClusterState  # noqa: E402

NOW = 1_800_000_000.0  # the simulated master's clock (any Unix time)


def policies(names: list[str]) -> list[tuple[str, Policy]]:
    out = []
    for name in names:
        try:
            out.append((name, load_policy(name)))
        except ConfigError as e:
            print(f"  {name}: not available in this build ({e.message})")
    return out


def trace_section(chosen: list[tuple[str, Policy]], trace_path: Path, nodes: str) -> None:
    jobs = parse_trace(trace_path.read_text())
    print(f"\n== {trace_path.name}: {len(jobs):,} jobs on {nodes}")
    print(f"{'policy':<14} {'avg JCT':>11} {'avg wait':>11} {'p95 wait':>11} "
          f"{'makespan':>12} {'util':>7} {'replay':>8}")
    for name, policy in chosen:
        started = time.perf_counter()
        fig = figures(replay(jobs, parse_nodes(nodes), policy))
        took = time.perf_counter() - started
        print(f"{name:<14} {_t(fig.avg_jct_s):>11} {_t(fig.avg_wait_s):>11} "
              f"{_t(fig.p95_wait_s):>11} {_t(fig.makespan_s):>12} "
              f"{100 * fig.utilisation:6.1f}% {took:7.1f}s")


def fairshare_section(chosen: list[tuple[str, Policy]], ratio: float, hours: float,
                      nodes: str) -> None:
    total = sum(g for _, g in parse_nodes(nodes))
    buf = io.StringIO()
    gen.write(gen.two_users(ratio, hours, 3600.0, total), buf)
    jobs = parse_trace(buf.getvalue())
    print(f"\n== fair share: heavy and light submit at {ratio:g} : 1, {len(jobs):,} jobs "
          f"over {hours:g} h on {nodes}; shares of the GPU-hours while both wait")
    print(f"{'policy':<14} {'window':>12} {'heavy':>7} {'light':>7}  target 40-60 % each")
    for name, policy in chosen:
        result = replay(jobs, parse_nodes(nodes), policy)
        windows = backlogged(result.jobs, ["heavy", "light"])
        shares = shares_within(result.jobs, windows)
        span = sum(b - a for a, b in windows)
        heavy, light = shares.get("heavy", 0.0), shares.get("light", 0.0)
        ok = all(0.4 <= s <= 0.6 for s in (heavy, light))
        print(f"{name:<14} {_t(span):>12} {100 * heavy:6.1f}% {100 * light:6.1f}%  "
              f"{'met' if ok else 'MISSED'}")


def build_state(policy: Policy, pending: int, nodes: int, gpus: int,
                seed: int) -> ClusterState:
    """A ``ClusterState`` with ``nodes`` nodes of ``gpus`` GPUs, every GPU running a 1-GPU
    job, and ``pending`` jobs waiting (sizes and users drawn as in the lab trace)."""
    rng = random.Random(seed)
    state = ClusterState(policy=policy, max_batch_jobs=10_000, max_pending_per_user=10**7)
    for i in range(nodes):
        state.on_register(m.Register(node_id=f"n{i:04d}", gpus=[
            GpuInfo(index=g, name="fake", memory_total_mib=81_920) for g in range(gpus)]),
            NOW)
    fill = [JobSpec(command="true", gpus=1, time_limit=rng.choice((3600, 4 * 3600, 86_400)))
            for _ in range(nodes * gpus)]
    for k in range(0, len(fill), 10_000):
        state.on_submit(fill[k:k + 10_000], NOW, user="filler")
    state.schedule(NOW)
    assert not state.pending, "the fill jobs should all run"
    users = [f"user{k:02d}" for k in range(1, gen.USERS + 1)]
    weights = [1 / k**gen.ZIPF for k in range(1, gen.USERS + 1)]
    sizes, size_p = [g for g, _ in gen.GPU_MIX], [p for _, p in gen.GPU_MIX]
    batch: list[tuple[str, JobSpec]] = []
    for i in range(pending):
        batch.append((rng.choices(users, weights)[0], JobSpec(
            command="true", gpus=rng.choices(sizes, size_p)[0],
            time_limit=rng.choice((900, 3600, 4 * 3600, 86_400)))))
        if len(batch) == 10_000 or i == pending - 1:
            by_user: dict[str, list[JobSpec]] = {}
            for user, spec in batch:
                by_user.setdefault(user, []).append(spec)
            for user, specs in by_user.items():
                state.on_submit(specs, NOW + i / pending, user=user)
            batch.clear()
    return state


def passes_section(chosen: list[tuple[str, Policy]], pending: int, nodes: int, gpus: int,
                   count: int, profile: bool, seed: int, budget: float,
                   gc_freeze: bool = False) -> None:
    print(f"\n== the master's pass: {pending:,} pending x {nodes:,} nodes x {gpus} GPUs, "
          f"{count} passes per event; target p99 <= 50 ms")
    print(f"{'policy':<14} {'event, clock':<16} {'median':>9} {'p99':>9} {'max':>9} "
          f"{'started':>8}")
    for name, policy in chosen:
        started = time.perf_counter()
        state = build_state(policy, pending, nodes, gpus, seed)
        if gc_freeze:  # the state built so far is left out of the collector's full sweeps
            gc.collect()
            gc.freeze()
        print(f"  ({name}: cluster state built in {time.perf_counter() - started:.1f} s)")
        prof = cProfile.Profile() if profile else None
        ended, submitted, placed = _run_passes(state, count, seed, prof, budget)
        if len(ended[0]) < count:
            print(f"  ({name}: {len(ended[0])} of {count} passes per event in the "
                  f"{budget:g} s budget)")
        for event, (wall, cpu) in (("job end", ended), ("submit", submitted)):
            for clock, times in (("wall", wall), ("cpu", cpu)):
                print(f"{name:<14} {event + ', ' + clock:<16} "
                      f"{_ms(statistics.median(times)):>9} "
                      f"{_ms(percentile(times, 99) or 0):>9} {_ms(max(times)):>9} "
                      f"{placed if event == 'job end' and clock == 'wall' else '':>8}")
        if prof is not None:
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(18)
            print(out.getvalue())


Times = tuple[list[float], list[float]]  # wall-clock and CPU seconds of each pass


def _run_passes(state: ClusterState, count: int, seed: int, prof: cProfile.Profile | None,
                budget: float) -> tuple[Times, Times, int]:
    """``count`` times (fewer if ``budget`` seconds run out): a running job ends, a pass; a
    job is submitted, a pass. The durations of both kinds of pass (wall clock, and this
    process's CPU time, which a busy machine's other processes do not inflate), and how
    many jobs the first kind started."""
    deadline = time.perf_counter() + budget
    rng = random.Random(seed + 1)
    now = NOW + 10.0
    ended: Times = ([], [])
    submitted: Times = ([], [])
    placed = 0
    node_ids = list(state.nodes)
    for _ in range(count):
        if time.perf_counter() > deadline:
            break
        now += 1.0
        node = state.nodes[rng.choice(node_ids)]
        held = [g.job_id for g in node.gpus if g.job_id is not None]
        job = state.jobs[rng.choice(held)]
        state.on_job_ended(node.node_id, m.JobEnded(
            job_id=job.id, run=job.requeues, state="completed", exit_code=0, reason=None,
            output_size=0), now)
        t0, c0 = time.perf_counter(), time.process_time()
        if prof is not None:
            prof.enable()
        effects = state.schedule(now)
        if prof is not None:
            prof.disable()
        ended[0].append(time.perf_counter() - t0)
        ended[1].append(time.process_time() - c0)
        placed += len(effects.sends)
        now += 1.0
        state.on_submit([JobSpec(command="true", gpus=1, time_limit=3600)], now,
                        user="user01")
        t0, c0 = time.perf_counter(), time.process_time()
        state.schedule(now)
        submitted[0].append(time.perf_counter() - t0)
        submitted[1].append(time.process_time() - c0)
    return ended, submitted, placed


def _t(seconds: float | None) -> str:
    return "-" if seconds is None else format_elapsed(seconds)


def _ms(seconds: float) -> str:
    return f"{1000 * seconds:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policies", default="fifo-reserve,multifactor")
    ap.add_argument("--trace", type=Path, default=HERE / "traces" / "lab-2k.csv")
    ap.add_argument("--sim-nodes", default="8x8", help="the cluster of the replays")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--pending", type=int, default=100_000)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--budget", type=float, default=300.0,
                    help="seconds of passes per policy, at most (fewer passes if slow)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() once the state is built: passes without the cyclic "
                    "collector's full sweeps of it")
    ap.add_argument("--skip", default="", help="comma list of trace, fairshare, passes")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    chosen = policies(a.policies.split(","))
    if "trace" not in skip:
        trace_section(chosen, a.trace, a.sim_nodes)
    if "fairshare" not in skip:
        fairshare_section(chosen, a.ratio, a.hours, a.sim_nodes)
    if "passes" not in skip:
        passes_section(chosen, a.pending, a.nodes, a.gpus, a.passes, a.profile, a.seed,
                       a.budget, a.gc_freeze)


if __name__ == "__main__":
    main()
