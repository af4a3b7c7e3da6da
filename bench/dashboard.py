"""The web dashboard's cost to the master: the first byte of ``/``, and job throughput with
dashboards open against without, on one master in the same run.

* ``/``: time to the first byte of the page, over a fresh connection each time (target:
  under 50 ms);
* throughput: N jobs of ``true`` submitted in one request to a master with one node of 8
  fake GPUs, completed/s, in rounds that alternate no dashboard and D dashboard streams
  open (the queue, nodes and ``top`` views, each read by a thread as a browser would);
  the median of each (target: with dashboards within 10 % of without);
* the first queue page of a stream with 10,000 jobs pending (what a browser waits for).

Usage: ``python bench/dashboard.py [--jobs 1000] [--rounds 5] [--streams 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import http.client
import os
import socket
import threading
import time

import psutil

from common import cluster, median, pct
from mgpu.client.client import SimpleClient
from mgpu.client.dash import STREAM, DashStream
from mgpu.core.models import JobSpec, JobState

VIEWS = ("queue", "nodes", "top")


def first_byte(port: int, n: int = 200) -> list[float]:
    times = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as s:
            t0 = time.perf_counter()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            s.recv(1)
            times.append(time.perf_counter() - t0)
            while s.recv(65536):
                pass
    return times


class Dashboards:
    """``count`` dashboard streams, each read by a thread; ``events`` counts what came.

    The events are counted, not decoded: a browser decodes them on another machine, and
    decoding them here would take the master's CPU on a small one."""

    def __init__(self, port: int, token: str, count: int) -> None:
        self.events = 0
        self.lock = threading.Lock()
        self.conns = []
        for i in range(count):
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", f"{STREAM}?view={VIEWS[i % len(VIEWS)]}",
                         headers={"Authorization": f"Bearer {token}"})
            self.conns.append((conn, conn.getresponse()))
        self.threads = [threading.Thread(target=self._read, args=(r,), daemon=True)
                        for _, r in self.conns]
        for t in self.threads:
            t.start()

    def _read(self, resp: http.client.HTTPResponse) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            while data := resp.read1(1 << 16):
                with self.lock:
                    self.events += data.count(b"\nevent: ") + data.startswith(b"event: ")

    def close(self) -> None:
        for conn, _ in self.conns:  # shutdown wakes the reader; it stops at the end
            if conn.sock is not None:
                conn.sock.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(10)
        for conn, _ in self.conns:
            conn.close()


def batch(client: SimpleClient, n: int, master: psutil.Process | None = None
          ) -> tuple[float, float]:
    """Jobs/s of ``n`` jobs submitted at once, first submit to last end; and the master's
    CPU seconds per 1,000 of them (less swayed than the rate by a busy machine)."""
    spec = JobSpec(command="true", gpus=1, cwd="/", env={"PATH": os.environ["PATH"]},
                   user=getpass.getuser())
    cpu = sum(master.cpu_times()[:2]) if master is not None else 0.0
    start = time.perf_counter()
    ids = client.submit_jobs([spec] * n)
    jobs = client.wait(*ids)
    rate = n / (time.perf_counter() - start)
    assert all(j.state is JobState.COMPLETED for j in jobs), "a job did not complete"
    used = sum(master.cpu_times()[:2]) - cpu if master is not None else 0.0
    return rate, used * 1000 / n


def singles(port: int, n: int, master: psutil.Process, threads: int = 8
            ) -> tuple[float, float]:
    """Jobs/s of one-job submits from ``threads`` clients at once (each acknowledged once
    saved): the master's own limit, as in bench/throughput.py; and the master's CPU
    seconds per 1,000 of them."""
    per = n // threads
    cpu = sum(master.cpu_times()[:2])

    def worker() -> None:
        client = SimpleClient("127.0.0.1", port)
        for _ in range(per):
            client.submit_job(gpus=1, cmd="true", cwd="/", env={})
        client.close()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    rate = per * threads / (time.perf_counter() - start)
    return rate, (sum(master.cpu_times()[:2]) - cpu) * 1000 / (per * threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--streams", type=int, default=3)
    args = ap.parse_args()
    with cluster({"n1": 8}) as c:
        client = SimpleClient("127.0.0.1", c.port, timeout=300)
        fb = first_byte(c.port)
        print(f"GET / first byte: median {median(fb) * 1000:.2f} ms, "
              f"p99 {pct(fb, 99) * 1000:.2f} ms, max {max(fb) * 1000:.2f} ms (target < 50)")
        master = psutil.Process(c.named["master"].pid)
        batch(client, min(args.jobs, 200))  # warm up: the node's keeper, the caches
        without: list[tuple[float, float]] = []
        with_: list[tuple[float, float]] = []
        events = []
        for _ in range(args.rounds):
            without.append(batch(client, args.jobs, master))
            open_ = Dashboards(c.port, c.token, args.streams)
            try:
                with_.append(batch(client, args.jobs, master))
            finally:
                open_.close()
            events.append(open_.events)
        a, b = median([r for r, _ in without]), median([r for r, _ in with_])
        ca, cb = median([u for _, u in without]), median([u for _, u in with_])
        print(f"completed, no dashboard:         {a:8.0f} jobs/s, master CPU {ca:.2f} s per "
              f"1,000 jobs (rounds: {', '.join(f'{r:.0f}' for r, _ in without)})")
        print(f"completed, {args.streams} dashboard streams:  {b:8.0f} jobs/s, master CPU "
              f"{cb:.2f} s per 1,000 jobs (rounds: {', '.join(f'{r:.0f}' for r, _ in with_)};"
              f" events read per round: {', '.join(map(str, events))})")
        print(f"with / without: throughput {b / a:.3f} (target >= 0.90), "
              f"master CPU per job {cb / ca:.3f}")
        client.close()
    with cluster({}) as c:  # no node: every job stays pending, and the queue grows
        master = psutil.Process(c.named["master"].pid)
        plain: list[tuple[float, float]] = []
        watched: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            plain.append(singles(c.port, 1000, master))
            open_ = Dashboards(c.port, c.token, args.streams)
            try:
                watched.append(singles(c.port, 1000, master))
            finally:
                open_.close()
        a, b = median([r for r, _ in plain]), median([r for r, _ in watched])
        ca, cb = median([u for _, u in plain]), median([u for _, u in watched])
        print(f"single submits, 8 clients, no dashboard: {a:6.0f} jobs/s, master CPU "
              f"{ca:.2f} s per 1,000 (rounds: {', '.join(f'{r:.0f}' for r, _ in plain)})")
        print(f"single submits, {args.streams} dashboard streams:  {b:6.0f} jobs/s, master CPU "
              f"{cb:.2f} s per 1,000 (rounds: {', '.join(f'{r:.0f}' for r, _ in watched)})")
        print(f"with / without: throughput {b / a:.3f}, master CPU per job {cb / ca:.3f} "
              f"(the queue grows to {2000 * args.rounds} pending jobs)")
    with cluster({}) as c:
        client = SimpleClient("127.0.0.1", c.port, timeout=300)
        spec = JobSpec(command="true", gpus=1, cwd="/", env={}, user=getpass.getuser())
        client.submit_jobs([spec] * 10_000)
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            stream = DashStream(client, view="queue", limit=100)
            for name, _data in stream.events():
                if name == "queue":
                    break
            times.append(time.perf_counter() - t0)
            stream.close()
        print(f"first queue page, 10,000 pending: median {median(times) * 1000:.1f} ms, "
              f"max {max(times) * 1000:.1f} ms")
        client.close()


if __name__ == "__main__":
    main()
