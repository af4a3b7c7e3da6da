"""Job arrays: what one request of 10,000 tasks costs (README "Job arrays").

* over HTTP: ``mgpu submit --array=0-9999%8``'s request (``SimpleClient.submit_job(...,
  array=...)``, this process's whole environment as the job's) to a real master with one
  node of 8 fake GPUs, from send to reply (accepted, saved, placed); median and worst of
  ``--runs`` arrays, one after the other on the same master;
* in-process, the same array's parts: ``ClusterState.on_submit`` (expand, check, gate) and
  ``Store.write`` of its effects (the one batch the committer saves for the request: one
  transaction), and how much the database grew by.

Usage: ``python bench/arrays.py [--tasks 10000] [--runs 5]``. Target: under 1 s a request.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import cluster, median
from mgpu.client.client import SimpleClient
from mgpu.core.models import JobSpec
from mgpu.server.state import ClusterState
from mgpu.server.store import Store


def over_http(tasks: int, runs: int) -> list[float]:
    took = []
    with cluster({"node1": 8}) as c:
        client = SimpleClient("127.0.0.1", c.port)
        for _ in range(runs):
            started = time.perf_counter()
            client.submit_job(cmd="sleep 600", array=f"0-{tasks - 1}%8")
            took.append(time.perf_counter() - started)
    return took


def in_process(tasks: int) -> tuple[float, float, int]:
    """(on_submit s, write s, bytes the database grew by)."""
    spec = JobSpec(command="python train.py --lr 0.1", env=dict(os.environ), cwd="/tmp",
                   array=f"0-{tasks - 1}%8")
    state = ClusterState(max_batch_jobs=tasks)
    started = time.perf_counter()
    _, effects = state.on_submit([spec], time.time(), user="alice")
    submit = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "mgpu.db")
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        started = time.perf_counter()
        store.write(effects.batch)
        write = time.perf_counter() - started
        grown = sum(f.stat().st_size for f in Path(tmp).iterdir()) - size
        store.close()
    return submit, write, grown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"{args.tasks}-task array, environment of {len(os.environ)} variables")
    took = over_http(args.tasks, args.runs)
    print(f"  one request over HTTP: median {median(took) * 1000:.0f} ms, "
          f"worst {max(took) * 1000:.0f} ms ({args.runs} runs)")
    submit, write, grown = in_process(args.tasks)
    print(f"  in process: on_submit {submit * 1000:.0f} ms, Store.write {write * 1000:.0f} ms "
          f"(database +{grown / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
