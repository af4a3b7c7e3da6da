"""Many nodes against one master: ``NodeManager`` runs N simulated nodes (8 fake GPUs each by
default) in one process, against a master in another.

Measured: how long the N nodes take to register; the master's RSS with no node, with N nodes
and after the jobs; then a batch of short jobs (``true``, 1 GPU each, twice as many as there
are GPUs) submitted in one request and waited for: completed jobs/s, and the master's
scheduling passes (count, mean and maximum duration, as the master reports them in
``/api/v1/stats``). Each node's keeper is a process of its own, so N nodes cost N keepers.

Usage: ``python bench/nodes.py [--nodes 200] [--gpus 8] [--jobs 0]`` (``--jobs 0``: twice
the GPUs).
"""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
import time

import psutil

from common import PY, cluster, get_json, wait_for
from mgpu.client.client import SimpleClient
from mgpu.core.models import JobSpec, JobState

MANAGER = """
import sys
from mgpu import NodeManager

port, count, gpus, tmp, join = sys.argv[1:]
manager = NodeManager("127.0.0.1", int(port))
for i in range(int(count)):
    manager.add_node(f"sim{i:04d}", fake_gpus=int(gpus), port=0, data_dir=f"{tmp}/sim{i:04d}",
                     join_token_file=join)
manager.run()
"""


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and every process it started (keepers left their session, not its
    tree: the manager process alone when they are not its children)."""
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / (1 << 20)


def scheduling(url: str) -> dict[str, float]:
    reply = get_json(f"{url}/api/v1/stats")
    assert isinstance(reply, dict)
    stats = reply["scheduling"]
    assert isinstance(stats, dict)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=0)
    args = ap.parse_args()
    jobs = args.jobs or 2 * args.nodes * args.gpus

    with cluster({}) as c:
        master_pid = c.named["master"].pid
        url = f"http://{c.master}"
        rss_idle = rss_mib(master_pid)
        log = open(c.tmp / "manager.log", "ab")  # noqa: SIM115 - kept for the process's life
        start = time.perf_counter()
        manager = subprocess.Popen(
            [PY, "-c", MANAGER, str(c.port), str(args.nodes), str(args.gpus), str(c.tmp),
             str(c.tmp / "master" / "join.token")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MGPU_ALLOW_ROOT_JOBS": "1", "MGPU_LOG_LEVEL": "warning"})
        c.procs.append(manager)

        def all_up() -> bool:
            if manager.poll() is not None:
                sys.exit(f"bench: the node manager exited ({manager.returncode}): see "
                         f"{c.tmp / 'manager.log'}")
            nodes = get_json(f"{url}/api/v1/nodes")
            assert isinstance(nodes, dict)
            return sum(n["state"] == "up" for n in nodes["nodes"]) == args.nodes

        wait_for(all_up, 600, f"{args.nodes} nodes to register")
        joined = time.perf_counter() - start
        rss_nodes = rss_mib(master_pid)
        manager_rss = rss_mib(manager.pid)
        before = scheduling(url)

        client = SimpleClient("127.0.0.1", c.port, timeout=600)
        spec = JobSpec(command="true", gpus=1, cwd="/", env={"PATH": os.environ["PATH"]},
                       user=getpass.getuser())
        t0 = time.perf_counter()
        ids = client.submit_jobs([spec] * jobs)
        done = client.wait(*ids)
        took = time.perf_counter() - t0
        client.close()
        assert all(j.state is JobState.COMPLETED for j in done), "a job did not complete"
        after = scheduling(url)
        rss_jobs = rss_mib(master_pid)

    passes = after.get("passes", 0) - before.get("passes", 0)
    spent = after.get("total_ms", 0.0) - before.get("total_ms", 0.0)
    print(f"nodes: {args.nodes} x {args.gpus} fake GPUs in one NodeManager process")
    print(f"  all registered in {joined:.1f} s; manager process RSS {manager_rss:.0f} MiB")
    print(f"master RSS: {rss_idle:.0f} MiB idle, {rss_nodes:.0f} MiB with the nodes, "
          f"{rss_jobs:.0f} MiB after {jobs} jobs")
    print(f"jobs: {jobs} x `true` in one batch, completed in {took:.1f} s "
          f"({jobs / took:.0f} jobs/s)")
    if passes:  # (none when every job found its GPU at submit)
        print(f"scheduling passes during the jobs: {passes:.0f}, mean "
              f"{spent / passes:.2f} ms, max {after.get('max_ms', 0.0):.2f} ms "
              f"(over the master's life)")


if __name__ == "__main__":
    main()
