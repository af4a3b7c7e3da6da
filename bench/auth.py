"""Authentication's cost: requests per second of a simple endpoint, auth on vs off.

Starts two masters (no node) from ``common.py``'s ``cluster()``: one as users get it, one
with ``MGPU_AUTH=0`` (the insecure switch, for this measurement only). Load comes from
``--procs`` client processes, each keeping ``--conns`` HTTP/1.1 connections busy with
``GET /api/v1/whoami`` (the token checked, the identity answered: the smallest
authenticated handler) through asyncio streams, every request with the same
``Authorization`` header, so the only difference is the master's check. Rounds alternate
on/off (``--rounds`` of ``--seconds`` each) so that drift in the machine's load hits both;
the figure is the median round. Target (issue #5): auth on at most 10% slower.

Each round also reads the master's CPU time (user + system, ``psutil``) per request served:
on two cores the load generator competes with the master, and CPU per request is the
steadier figure. It also times the check alone in this process (``Tokens.check``: SHA-256
of the token, a dict lookup, ``hmac.compare_digest``), for the per-request cost without
HTTP around it.

Usage: ``python bench/auth.py [--rounds 5] [--seconds 3] [--procs 2] [--conns 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
import timeit

import psutil

from common import Cluster, cluster

TARGET = 0.10  # at most 10% slower with auth on


async def _load(port: int, token: str, conns: int, seconds: float) -> int:
    request = (f"GET /api/v1/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               f"Authorization: Bearer {token}\r\n\r\n").encode()
    deadline = time.monotonic() + seconds
    done = 0

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise SystemExit(f"bench: the master answered {head[:40]!r}")
                length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                await reader.readexactly(length)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return done


def _client(port: int, token: str, conns: int, seconds: float, out: mp.Queue[int]) -> None:
    out.put(asyncio.run(_load(port, token, conns, seconds)))


def measure(c: Cluster, token: str, procs: int, conns: int, seconds: float
            ) -> tuple[float, float]:
    """Requests per second from ``procs`` processes of ``conns`` connections each, and the
    master's CPU time per request in microseconds."""
    master = psutil.Process(c.named["master"].pid)
    out: mp.Queue[int] = mp.Queue()
    workers = [mp.Process(target=_client, args=(c.port, token, conns, seconds, out))
               for _ in range(procs)]
    before = master.cpu_times()
    for w in workers:
        w.start()
    total = sum(out.get() for _ in workers)
    for w in workers:
        w.join()
    after = master.cpu_times()
    cpu = (after.user + after.system) - (before.user + before.system)
    return total / seconds, cpu / max(total, 1) * 1e6


def check_cost() -> float:
    """Microseconds per ``Tokens.check`` of a valid token, among 1,000 tokens."""
    from mgpu.server.auth import Tokens

    tokens = Tokens([], 0)
    for i in range(1000):
        _, row = tokens.make(f"user{i}", False, 0.0)
        tokens.add(row)
    token, row = tokens.make("me", False, 0.0)
    tokens.add(row)
    n = 200_000
    return timeit.timeit(lambda: tokens.check(token), number=n) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--conns", type=int, default=8)
    args = ap.parse_args()
    with cluster({}) as on, cluster({}, master_env={"MGPU_AUTH": "0"}) as off:
        for c in (on, off):  # warm up both
            measure(c, on.token, 1, 2, 0.5)
        rates: dict[str, list[float]] = {"on": [], "off": []}
        cpus: dict[str, list[float]] = {"on": [], "off": []}
        for i in range(args.rounds):
            pair = [("off", off), ("on", on)]
            for name, c in pair if i % 2 == 0 else pair[::-1]:  # neither always goes first
                rate, cpu = measure(c, on.token, args.procs, args.conns, args.seconds)
                rates[name].append(rate)
                cpus[name].append(cpu)
    med = {k: statistics.median(v) for k, v in rates.items()}
    cpu_med = {k: statistics.median(v) for k, v in cpus.items()}
    for name in ("off", "on"):
        runs = ", ".join(f"{r:,.0f}" for r in rates[name])
        print(f"auth {name:<3}: {med[name]:8,.0f} requests/s, master CPU "
              f"{cpu_med[name]:5.1f} us/request (medians; rounds: {runs})")
    slower = 1 - med["on"] / med["off"]
    costlier = cpu_med["on"] / cpu_med["off"] - 1
    verdict = "ok" if slower <= TARGET else "MISSED"
    print(f"auth on: {slower * 100:+.1f}% fewer requests/s (target <= {TARGET * 100:.0f}%: "
          f"{verdict}); {costlier * 100:+.1f}% master CPU per request")
    print(f"Tokens.check alone: {check_cost():.2f} us per request")
    print(f"({args.procs} client processes x {args.conns} connections, {os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
