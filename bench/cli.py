"""CLI start-up: how long ``mgpu`` commands take, against ``python -c pass`` in the same run.

Starts a real master with one node of fake GPUs, and a second master with no node holding
10,000 pending jobs (submitted through ``SimpleClient.submit_jobs`` in batches, so they stay
pending), then times, round-robin so that drift in the machine's load hits every command
alike, each of:

* ``python -c pass`` in the same interpreter (the floor any Python command pays);
* ``mgpu submit true`` through the installed console script (``.venv/bin/mgpu``) and
  through ``python -m mgpu``; each submitted job is waited for, untimed, before the next
  command, so a job's start and end do not land in another command's time;
* ``mgpu queue`` on an empty queue and on 10,000 pending jobs (table on a pipe).

Each figure is the wall time of ``subprocess.run`` (``time.perf_counter``), in ms, median
and p90 over ``--runs`` rounds (after ``--warmup`` untimed ones). Targets (issue #2):
``mgpu submit`` median at most 2.5 x ``python -c pass``; ``mgpu queue`` with 10,000 jobs
under 250 ms (SLURM's squeue: 267 ms on the reference machine).

It first runs ``python -m compileall -q src``: with PYTHONDONTWRITEBYTECODE set (as here),
nothing else writes the bytecode of an editable install, and every command would
recompile mgpu. Usage: ``python bench/cli.py [--runs 30] [--jobs 10000] [--json FILE]``;
bounded by ``--max-seconds`` (rounds stop early, saying so, when it is spent).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import PY, cluster, median, pct
from mgpu.client.client import SimpleClient
from mgpu.core.models import JobSpec

ROOT = Path(__file__).resolve().parent.parent
MGPU = str(Path(PY).parent / "mgpu")  # the console script installed beside this python
SUBMIT_TARGET = 2.5  # x python -c pass
QUEUE_TARGET_MS = 250.0
SQUEUE_MS = 267.0  # SLURM's squeue on the reference machine (issue #2)


def token_home(home: Path, token: str) -> str:
    """A config home holding ``mgpu/token`` (mode 0600), as a master writes it for its user."""
    (home / "mgpu").mkdir(parents=True, mode=0o700)
    path = home / "mgpu" / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(home)


def compile_src() -> None:
    subprocess.run([PY, "-m", "compileall", "-q", str(ROOT / "src")], check=True)


def fill(port: int, token: str, n: int, batch: int = 1000) -> None:
    """Queue ``n`` one-GPU jobs on a master with no node: they stay pending."""
    spec = JobSpec(command="true", gpus=1, cwd="/", env={})
    with SimpleClient("127.0.0.1", port, timeout=300, token=token) as client:
        left = n
        while left:
            k = min(batch, left)
            client.submit_jobs([spec] * k)
            left -= k
        got = len(client.list_jobs())
    if got != n:
        raise SystemExit(f"bench: {got} jobs in the queue, expected {n}")


class Timed:
    """One command to time; ``after`` runs untimed after each run (e.g. wait for its job)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str],
                 after: Callable[[str], None] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.after = after
        self.ms: list[float] = []

    def run(self, record: bool = True) -> None:
        start = time.perf_counter()
        done = subprocess.run(self.argv, env=self.env, capture_output=True, text=True,
                              check=False)
        took = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            raise SystemExit(f"bench: {' '.join(self.argv)} exited {done.returncode}: "
                             f"{done.stderr.strip()}")
        if record:
            self.ms.append(took)
        if self.after is not None:
            self.after(done.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30, help="timed rounds (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    ap.add_argument("--jobs", type=int, default=10_000, help="pending jobs for the big queue")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="stop rounds after this")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON here")
    args = ap.parse_args()
    deadline = time.monotonic() + args.max_seconds

    compile_src()
    with tempfile.TemporaryDirectory(prefix="mgpu-bench-cfg-") as cfg, \
            cluster({"n1": 4}) as small, cluster({}) as big:
        fill(big.port, big.token, args.jobs)
        client = SimpleClient("127.0.0.1", small.port, timeout=60, token=small.token)
        # No user config file or MGPU_* settings of this machine's user: only MGPU_MASTER,
        # and each master's token in the file where the CLI looks for it (as users have it).
        base = {k: v for k, v in os.environ.items() if not k.startswith("MGPU_")}
        env = {**base, "MGPU_MASTER": small.master,
               "XDG_CONFIG_HOME": token_home(Path(cfg) / "small", small.token)}
        big_env = {**base, "MGPU_MASTER": big.master,
                   "XDG_CONFIG_HOME": token_home(Path(cfg) / "big", big.token)}

        def wait_job(stdout: str) -> None:
            job_id = int(stdout.split()[-1])  # "Submitted job N"
            [job] = client.wait(job_id, timeout=60)
            if job.state.value != "completed":
                raise SystemExit(f"bench: job {job_id} ended {job.state.value}")

        floor = Timed("python -c pass", [PY, "-c", "pass"], env)
        submit = Timed("mgpu submit true", [MGPU, "submit", "true"], env, wait_job)
        submit_m = Timed("python -m mgpu submit true", [PY, "-m", "mgpu", "submit", "true"],
                         env, wait_job)
        queue = Timed("mgpu queue (empty)", [MGPU, "queue"], env)
        queue_big = Timed(f"mgpu queue ({args.jobs:,} pending)", [MGPU, "queue"], big_env)
        timed = [floor, submit, submit_m, queue, queue_big]

        for _ in range(args.warmup):
            for t in timed:
                t.run(record=False)
        rounds = 0
        while rounds < args.runs and time.monotonic() < deadline:
            for t in timed:
                t.run()
            rounds += 1
        client.close()

    if rounds < args.runs:
        print(f"bench: stopped after {rounds} of {args.runs} rounds (--max-seconds)")
    base_ms = median(floor.ms)
    print(f"{'command':<30} {'median':>8} {'p90':>8} {'x pass':>7}  target")
    results = {}
    for t in timed:
        med, p90 = median(t.ms), pct(t.ms, 90)
        ratio = med / base_ms
        if t in (submit, submit_m):
            goal = f"<= {SUBMIT_TARGET:g} x pass: {'ok' if ratio <= SUBMIT_TARGET else 'MISSED'}"
        elif t is queue_big:
            ok = med < QUEUE_TARGET_MS
            goal = (f"< {QUEUE_TARGET_MS:g} ms (squeue {SQUEUE_MS:g} ms): "
                    f"{'ok' if ok else 'MISSED'}")
        else:
            goal = ""
        print(f"{t.name:<30} {med:6.1f}ms {p90:6.1f}ms {ratio:6.2f}x  {goal}".rstrip())
        results[t.name] = {"median_ms": round(med, 2), "p90_ms": round(p90, 2),
                           "ratio_to_pass": round(ratio, 3)}
    print(f"({rounds} rounds, {os.cpu_count()} CPUs, Python {sys.version.split()[0]})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
