"""Generate job traces for ``mgpu simulate`` shaped like published GPU-cluster traces.

Usage::

    python bench/traces/gen.py [--jobs 2000] [--seed 2026] [--gpus 64] [--load 0.9] > lab.csv
    python bench/traces/gen.py --two-users [--ratio 10] ...   # the fair-share workload

The committed ``lab-2k.csv`` is ``python bench/traces/gen.py`` with the defaults (the same
seed gives the same file, byte for byte, on any machine: only ``random.Random`` is used).

The shape follows what the Philly study (Jeon et al., "Analysis of Large-Scale Multi-Tenant
GPU Clusters for DNN Training Workloads", USENIX ATC '19) and the Helios study (Hu et al.,
"Characterization and Prediction of Deep Learning Workloads in Large-Scale GPU
Datacenters", SC '21) report, qualitatively: most jobs use one GPU while a few large jobs
hold most of the GPU time; run times are heavy-tailed (many short runs, a long tail of runs
of hours to days); a few users submit most jobs; and users submit in bursts (a sweep or a
debugging session). The figures below are this generator's parameters, chosen for that
shape on a lab-sized cluster, not fitted to either trace.

Parameters (the ``--lab`` workload):

* **GPUs per job**: 1 with probability 0.70, 2 with 0.10, 4 with 0.12, 8 with 0.08 (a job
  runs on one node: 8 is the largest, "8+" of the studies). ``GPU_MIX``.
* **Run time**: log-normal, median 10 min x GPUs^0.75 (bigger jobs run longer), sigma 1.8
  (mean ≈ 5 x median), cut to [30 s, 3 days]. ``MEDIAN_S``, ``SIZE_EXP``, ``SIGMA``,
  ``MIN_S``, ``MAX_S``.
* **Time limit**: what the user asked for: the run time x a log-normal factor (median 2,
  sigma 0.5), rounded up to 15 min; for 5 % of jobs the limit is below the run time (they
  end ``timeout``) and 10 % give no limit. ``LIMIT_FACTOR``, ``LIMIT_SIGMA``, ``SHORT_P``,
  ``NO_LIMIT_P``, ``ROUND_S``.
* **Users**: ``USERS`` = 24, ``user01`` … ``user24``; user *k* starts sessions with weight
  1 / k^1.1 (Zipf: the first few users submit most jobs). ``ZIPF``.
* **Sessions**: a user's burst of jobs: its size is 1 + a geometric number of extra jobs
  (mean ``SESSION_MEAN`` = 8); within it jobs are ``GAP_S`` = 90 s apart on average
  (exponential gaps) and share one GPU count and median run time (a sweep), each job's run
  time drawn around it (sigma 0.6). Sessions start as a Poisson process.
* **Load**: the session rate is set so that the offered work (GPUs x run time, summed)
  over the submission span is ``--load`` (0.9) of ``--gpus`` (64, the default ``--nodes
  8x8`` of ``mgpu simulate``): queues form at bursts and drain between them.

``--two-users`` writes the fair-share workload of ``bench/scheduling.py``: users ``heavy``
and ``light`` submit 1-GPU jobs of ``--two-users-job-s`` (3600 s) at rates in the ratio
``--ratio`` : 1 (10 : 1), both at more than the cluster can run, for ``--hours`` (48): from
the first hour both users are backlogged for the rest of the trace.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from typing import TextIO

GPU_MIX = ((1, 0.70), (2, 0.10), (4, 0.12), (8, 0.08))
MEDIAN_S = 600.0
SIZE_EXP = 0.75
SIGMA = 1.8
MIN_S, MAX_S = 30.0, 3 * 86_400.0
LIMIT_FACTOR, LIMIT_SIGMA = 2.0, 0.5
SHORT_P, NO_LIMIT_P = 0.05, 0.10
ROUND_S = 900
USERS, ZIPF = 24, 1.1
SESSION_MEAN, GAP_S, IN_SESSION_SIGMA = 8.0, 90.0, 0.6

HEADER = ("submit", "user", "gpus", "duration", "time_limit")
Row = tuple[float, str, int, float, int | None]


def lab(jobs: int, seed: int, gpus: int, load: float) -> list[Row]:
    """The lab workload (module docstring), sorted by submission time."""
    rng = random.Random(seed)
    users = [f"user{k:02d}" for k in range(1, USERS + 1)]
    weights = [1 / k**ZIPF for k in range(1, USERS + 1)]
    sessions: list[list[tuple[str, int, float, int | None, float]]] = []  # before the clock
    made = 0
    while made < jobs:
        user = rng.choices(users, weights)[0]
        size = rng.choices([g for g, _ in GPU_MIX], [p for _, p in GPU_MIX])[0]
        median = MEDIAN_S * size**SIZE_EXP * math.exp(rng.gauss(0, SIGMA))
        count = min(jobs - made, 1 + _geometric(rng, SESSION_MEAN - 1))
        session = []
        for _ in range(count):
            run = min(MAX_S, max(MIN_S, median * math.exp(rng.gauss(0, IN_SESSION_SIGMA))))
            session.append((user, size, round(run), _limit(rng, run),
                            rng.expovariate(1 / GAP_S)))
        sessions.append(session)
        made += count
    work = sum(s[1] * s[2] for session in sessions for s in session)
    span = work / (load * gpus)  # seconds over which the sessions start
    rate = len(sessions) / span
    rows: list[Row] = []
    t = 0.0
    for session in sessions:
        at = t
        for user, size, run, limit, gap in session:
            rows.append((round(at, 1), user, size, run, limit))
            at += gap
        t += rng.expovariate(rate)
    rows.sort(key=lambda r: r[0])
    return rows


def two_users(ratio: float, hours: float, job_s: float, gpus: int) -> list[Row]:
    """``heavy`` submits ``ratio`` times as many 1-GPU jobs as ``light``; together 1.5 x
    what ``gpus`` GPUs can run, and ``light`` alone more than half of it, so that a fair
    policy keeps both backlogged (module docstring)."""
    light_per_hour = 0.6 * gpus * 3600 / job_s  # light alone: 0.6 of the cluster
    rows: list[Row] = []
    for user, per_hour in (("heavy", light_per_hour * ratio), ("light", light_per_hour)):
        gap = 3600 / per_hour
        n = int(hours * per_hour)
        rows.extend((round(i * gap, 3), user, 1, job_s, int(job_s)) for i in range(n))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def _geometric(rng: random.Random, mean: float) -> int:
    """A geometric number of trials before success, with ``mean``."""
    if mean <= 0:
        return 0
    p = 1 / (mean + 1)
    return int(math.log(1 - rng.random()) / math.log(1 - p))


def _limit(rng: random.Random, run: float) -> int | None:
    draw = rng.random()
    if draw < NO_LIMIT_P:
        return None
    if draw < NO_LIMIT_P + SHORT_P:
        factor = rng.uniform(0.3, 0.9)  # asked too little: stopped at the limit
        return max(60, int(run * factor))
    factor = max(1.05, LIMIT_FACTOR * math.exp(rng.gauss(0, LIMIT_SIGMA)))
    return math.ceil(run * factor / ROUND_S) * ROUND_S


def write(rows: list[Row], out: TextIO) -> None:
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for submit, user, gpus, run, limit in rows:
        w.writerow((f"{submit:g}", user, gpus, f"{run:g}", "" if limit is None else limit))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--gpus", type=int, default=64, help="the cluster the load is meant for")
    ap.add_argument("--load", type=float, default=0.9, help="offered work / capacity")
    ap.add_argument("--two-users", action="store_true", help="the fair-share workload")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--hours", type=float, default=48.0)
    ap.add_argument("--two-users-job-s", type=float, default=3600.0)
    a = ap.parse_args()
    rows = (two_users(a.ratio, a.hours, a.two_users_job_s, a.gpus) if a.two_users
            else lab(a.jobs, a.seed, a.gpus, a.load))
    write(rows, sys.stdout)


if __name__ == "__main__":
    main()
