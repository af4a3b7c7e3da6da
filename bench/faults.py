"""Failure handling, timed: how fast mgpu notices and recovers, and whether anything is lost.

Scenarios, each on a fresh cluster of real processes (master, agents, keepers, jobs):

1. an agent is killed (``kill -9``): time until the master shows its node ``down``
   (target: within the node timeout + 1 s);
2. from ``down`` to its requeued job running on another node (target: under 1 s);
3. the master is killed (``kill -9``) and restarted: time from its restart until every
   agent is registered again (target: under 5 s);
4. in each, jobs lost or run twice (target: 0), from marker files the jobs write.

Usage: ``python bench/faults.py [--node-timeout 3] [--nodes 4]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

from common import cluster, get_json, wait_for
from mgpu.client.client import SimpleClient


def nodes_state(addr: str) -> dict[str, dict[str, object]]:
    reply = get_json(f"http://{addr}/api/v1/nodes")
    assert isinstance(reply, dict)
    return {n["node_id"]: n for n in reply["nodes"]}


def job(addr: str, job_id: int) -> dict[str, object]:
    reply = get_json(f"http://{addr}/api/v1/jobs/{job_id}")
    assert isinstance(reply, dict)
    return reply


def marker_job(runs: Path, i: int) -> str:
    """A job that records each start, notes whether an earlier copy still ran, then waits."""
    return (f'f={runs}/{i}; if [ -s "$f" ]; then read pid < "$f"; '
            f'kill -0 "$pid" 2>/dev/null && echo twice >> {runs}/twice; fi; '
            'echo $$ >> "$f"; exec sleep 600')


def lost_node(timeout: float) -> tuple[float, float, int]:
    """Kill an agent running a job; time to `down`, then to the job running elsewhere."""
    with cluster({"a": 1, "b": 2}, master_env={"MGPU_NODE_TIMEOUT": str(timeout)}) as c:
        runs = c.tmp / "runs"
        runs.mkdir()
        client = SimpleClient("127.0.0.1", c.port)
        job_id = client.submit_job(gpus=1, cmd=marker_job(runs, 0), cwd="/", env=dict(os.environ))
        wait_for(lambda: job(c.master, job_id)["state"] == "running", 30, "the job to start")
        assert job(c.master, job_id)["node"] == "a"
        killed = time.monotonic()
        c.kill("a", signal.SIGKILL)
        wait_for(lambda: nodes_state(c.master)["a"]["state"] == "down", timeout + 10,
                 "node a to be marked down")
        down = time.monotonic()
        wait_for(lambda: job(c.master, job_id).get("node") == "b"
                 and job(c.master, job_id)["state"] == "running", 30, "the requeue")
        running = time.monotonic()
        wait_for(lambda: len((runs / "0").read_text().split()) == 2, 10, "the second start")
        twice = len((runs / "twice").read_text().split()) if (runs / "twice").exists() else 0
        client.cancel(job_id)
        client.close()
        return down - killed, running - down, twice


def master_restart(nodes: int, jobs: int) -> tuple[float, int, int]:
    """Kill -9 the master while jobs run; time until every agent is back; lost/twice."""
    with cluster({f"n{i}": 2 for i in range(nodes)}) as c:
        done = c.tmp / "done"
        done.mkdir()
        gate = c.tmp / "gate"
        client = SimpleClient("127.0.0.1", c.port)
        ids = [client.submit_job(
            gpus=1, cwd="/", env=dict(os.environ),
            cmd=f"while [ ! -e {gate} ]; do sleep 0.01; done; echo $$ >> {done}/{i}")
            for i in range(jobs)]
        client.close()
        c.kill_master(signal.SIGKILL)
        restarted = time.monotonic()
        c.start_master()
        wait_for(lambda: all(n["state"] == "up" for n in nodes_state(c.master).values())
                 and len(nodes_state(c.master)) == nodes, 30, "every agent to register")
        back = time.monotonic() - restarted
        gate.touch()
        client = SimpleClient("127.0.0.1", c.port, timeout=120)
        ended = client.wait(*ids, timeout=120)
        client.close()
        lost = sum(1 for j in ended if j.state.value != "completed")
        twice = sum(1 for i in range(jobs)
                    if (done / str(i)).exists() and len((done / str(i)).read_text().split()) > 1)
        lost += sum(1 for i in range(jobs) if not (done / str(i)).exists())
        return back, lost, twice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node-timeout", type=float, default=3.0)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=8)
    args = ap.parse_args()
    to_down, to_requeue, twice = lost_node(args.node_timeout)
    print(f"agent killed -> node down:          {to_down:6.2f} s "
          f"(node timeout {args.node_timeout:g} s; target <= {args.node_timeout + 1:g} s)")
    print(f"node down -> job running elsewhere: {to_requeue:6.2f} s (target < 1 s)")
    print(f"  jobs run twice: {twice} (target 0)")
    back, lost, twice = master_restart(args.nodes, args.jobs)
    print(f"master restarted -> {args.nodes} agents back:   {back:6.2f} s (target < 5 s)")
    print(f"  jobs lost: {lost}, run twice: {twice} (target 0)")
    print(json.dumps({"node_down_s": round(to_down, 3), "requeue_s": round(to_requeue, 3),
                      "agents_back_s": round(back, 3), "lost": lost, "twice": twice}))


if __name__ == "__main__":
    main()
