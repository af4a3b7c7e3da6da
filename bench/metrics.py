"""What the master's Prometheus metrics cost it: per job on the hot path, and per scrape.

* hot path: :meth:`MasterMetrics.saved` over the effects of real submits, placements and
  ends (``ClusterState``'s own handlers, no I/O), in microseconds per job; each job is
  counted three times (submitted, its queue wait, its end);
* scrape: one ``GET /metrics`` body made from a master holding N jobs (the gauges walk every
  job the master holds, on its event loop), in milliseconds, for N of 1,000 to 100,000.

Usage: ``python bench/metrics.py [--jobs 10000] [--nodes 50]``. CPU time of this process
(``time.process_time``), so that other load on the machine counts less.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from prometheus_client import generate_latest

from mgpu.core import messages as m
from mgpu.core.config import MasterConfig
from mgpu.core.models import JobSpec
from mgpu.server.effects import Effects
from mgpu.server.metrics import MasterMetrics
from mgpu.server.node_events import Node
from mgpu.server.state import ClusterState
from mgpu.server.stats import SchedulingStats
from mgpu.utils.gpu import fake_gpus


def cluster(jobs: int, nodes: int, data_dir: Path) -> tuple[ClusterState, MasterMetrics,
                                                               list[Effects]]:
    """A state with ``nodes`` nodes of 8 GPUs and ``jobs`` jobs submitted, placed (as many
    as fit) and ended; the effects of each step, as the master would save them."""
    state = ClusterState()
    for i in range(nodes):
        state.nodes[f"n{i}"] = Node(f"n{i}", fake_gpus(8), last_seen=time.time())
    metrics = MasterMetrics(MasterConfig(data_dir=data_dir), state, SchedulingStats())
    now = time.time()
    steps: list[Effects] = []
    left = jobs
    while left:
        batch = min(left, nodes * 8)
        _, submitted = state.on_submit([JobSpec(command="true", user=f"u{i % 7}")
                                        for i in range(batch)], now)
        placed = state.schedule(now + 1)
        ended = Effects()
        for node_id, msg in placed.sends:
            if isinstance(msg, m.StartJob):
                ended.merge(state.on_job_ended(node_id, m.JobEnded(
                    msg.job_id, msg.run, "completed", 0, None, 0), now + 2))
        steps += [submitted, placed, ended]
        left -= batch
    return state, metrics, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=50)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mgpu-bench-") as tmp:
        _, metrics, steps = cluster(args.jobs, args.nodes, Path(tmp))
        start = time.process_time()
        for effects in steps:
            metrics.saved(effects)
        took = time.process_time() - start
        counted = generate_latest(metrics.registry).decode()
        assert f"mgpu_jobs_submitted_total {float(args.jobs)}" in counted, counted[:400]
        print(f"hot path: {args.jobs} jobs submitted, placed and ended: "
              f"{took / args.jobs * 1e6:.2f} us per job (CPU)")
        for n in (1_000, 10_000, 100_000):
            _, metrics, _ = cluster(n, args.nodes, Path(tmp))
            runs = 5
            start = time.process_time()
            for _ in range(runs):
                body = generate_latest(metrics.registry)
            took = (time.process_time() - start) / runs
            print(f"scrape with {n:>7} jobs held: {took * 1e3:7.2f} ms CPU, "
                  f"{len(body)} bytes")


if __name__ == "__main__":
    main()
