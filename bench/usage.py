"""The accounting sums on a big history: ``mgpu usage``'s queries over ``--runs`` runs.

Fills a fresh store (a temp dir) with ``--runs`` runs of ``--users`` users on ``--nodes``
nodes over ``--days`` days (random lengths up to 12 h, random waits), written as the master
writes them (``Store.write`` of ``Batch.runs``), then times each query of
``GET /api/v1/usage`` through the store: by user, node and day, everyone's and one user's,
over the whole history and over its last month. The figure is the median of ``--repeat``
runs of each, in milliseconds. Target (issue 13): fast on 100,000 runs.

Usage: ``python bench/usage.py [--runs 100000] [--users 50] [--nodes 20] [--days 365]``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mgpu.server.accounting import UsageQuery, usage_rows, usage_sql
from mgpu.server.store import Batch, RunRow, Store

DAY = 86400.0


def fill(store: Store, runs: int, users: int, nodes: int, days: int, now: float) -> None:
    rng = random.Random(13)
    start = now - days * DAY
    batch: list[RunRow] = []
    for i in range(runs):
        queued = start + rng.random() * days * DAY
        started = queued + rng.expovariate(1 / 600)
        ended = started + rng.random() * 12 * 3600
        gpus = rng.choice((1, 1, 2, 4, 8))
        batch.append(RunRow(job_id=i + 1, run=0, user=f"user{rng.randrange(users)}",
                            name="train", gpus=gpus, gpu_ids="0",
                            node=f"node{rng.randrange(nodes)}",
                            queued=queued, started=started, ended=ended, state="completed",
                            exit_code=0, end_cause="exited", gpu_seconds=gpus * (ended - started)))
        if len(batch) == 10_000:
            store.write(Batch(runs=batch))
            batch = []
    if batch:
        store.write(Batch(runs=batch))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "mgpu.db")
        try:
            t = time.perf_counter()
            fill(store, args.runs, args.users, args.nodes, args.days, now)
            print(f"{args.runs} runs written in {time.perf_counter() - t:.1f} s")
            whole, month = (now - args.days * DAY - DAY, now), (now - 30 * DAY, now)
            print(f"{'query':<34}{'median ms':>10}{'groups':>8}")
            for by in ("user", "node", "day", "total"):
                for user in (None, "user7"):
                    for name, (since, until) in (("all", whole), ("month", month)):
                        q = UsageQuery(since, until, by, user)
                        sql, qargs = usage_sql(q)
                        times, rows = [], []
                        for _ in range(args.repeat):
                            t = time.perf_counter()
                            rows = usage_rows(store.query(sql, qargs))
                            times.append(time.perf_counter() - t)
                        label = f"by {by}, {user or 'everyone'}, {name}"
                        print(f"{label:<34}{statistics.median(times) * 1000:>10.1f}"
                              f"{len(rows):>8}")
        finally:
            store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
