"""Interactive runs: how fast ``mgpu srun`` starts, how soon a line arrives, how much it carries.

Measured in one run on a warm cluster (a master and one node of 8 fake GPUs, as processes):

* start-up: median and p90 wall time of ``mgpu srun -G 1 true`` over N runs, against
  ``python -c pass`` and ``sh -c true`` in the same venv, the three round-robin (target:
  at most 2.5x python);
* latency: a job prints a line with its send time every 10 ms (``flush=True``); the
  client's receive time minus that, p50 and p99 (target: p99 under 20 ms on loopback);
* relay throughput: MB/s of a job's stdout through the node, the master and srun to a
  pipe (target: at least 100 MB/s).

Usage: ``python bench/srun.py [--runs 30] [--mb 200]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from common import cluster, median, pct

PY = sys.executable
MGPU = str(Path(PY).with_name("mgpu"))


def timed(commands: list[list[str]], env: dict[str, str], runs: int) -> list[list[float]]:
    """Wall times in ms of each command, run round-robin ``runs`` times: a change in the
    machine's load reaches every command alike."""
    out: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for argv, times in zip(commands, out, strict=True):
            start = time.perf_counter()
            subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
            times.append((time.perf_counter() - start) * 1000)
    return out


def latency(env: dict[str, str], lines: int = 300) -> list[float]:
    job = (f"import time\nfor i in range({lines}):\n"
           "    print(repr(time.time()), flush=True); time.sleep(0.01)")
    proc = subprocess.Popen([MGPU, "srun", "-q", PY, "-c", job], env=env,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    delays = [(time.time() - float(line)) * 1000 for line in proc.stdout]
    proc.wait()
    return delays[10:]  # past the start


def throughput(env: dict[str, str], mb: int) -> float:
    job = ("import sys\nb = bytes(1 << 20)\n"
           f"for _ in range({mb}): sys.stdout.buffer.write(b)")
    proc = subprocess.Popen([MGPU, "srun", "-q", PY, "-c", job], env=env,
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    first = proc.stdout.read(1)
    start = time.perf_counter()
    got = len(first)
    while chunk := proc.stdout.read1(1 << 20):
        got += len(chunk)
    took = time.perf_counter() - start
    proc.wait()
    assert got == mb << 20, f"got {got} bytes of {mb << 20}"
    return mb / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--mb", type=int, default=200)
    args = ap.parse_args()
    subprocess.run([PY, "-m", "compileall", "-q", str(Path(__file__).parent.parent / "src")],
                   check=True)
    with cluster({"n1": 8}) as c:
        env = {**c.env(), "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE", "")}
        commands = [[PY, "-c", "pass"], ["sh", "-c", "true"],
                    [MGPU, "srun", "-q", "-G", "1", "true"]]
        timed(commands, env, 3)  # warm up
        py, sh, srun = timed(commands, env, args.runs)
        print(f"python -c pass:        median {median(py):6.1f} ms  p90 {pct(py, 90):6.1f} ms")
        print(f"sh -c true:            median {median(sh):6.1f} ms  p90 {pct(sh, 90):6.1f} ms")
        print(f"mgpu srun -G 1 true:   median {median(srun):6.1f} ms  p90 {pct(srun, 90):6.1f} ms"
              f"  ({median(srun) / median(py):.2f} x python; target <= 2.5)")
        lat = latency(env)
        print(f"line latency:          p50 {pct(lat, 50):6.2f} ms  p99 {pct(lat, 99):6.2f} ms"
              "  (target p99 < 20 ms)")
        mbs = throughput(env, args.mb)
        print(f"relay throughput:      {mbs:6.0f} MB/s over {args.mb} MB (target >= 100)")


if __name__ == "__main__":
    main()
