"""Shared helpers for the benchmarks: start a real cluster as processes, time things."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.01)


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


@dataclass
class Cluster:
    """``mgpu server`` and ``mgpu node`` processes, each in its own session."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "MGPU_MASTER": self.master}

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "wb")  # noqa: SIM115 - kept for the process's life
        proc = subprocess.Popen([PY, "-m", "mgpu", "--log-level", "warning", *args],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_master(self, *extra: str) -> None:
        info = self.tmp / "master" / "master.json"
        self._spawn(["server", "--port", "0", "--data-dir", str(self.tmp / "master"), *extra],
                    "master.log")
        wait_for(info.exists, 30, "the master to listen")
        self.port = json.loads(info.read_text())["port"]

    def add_node(self, node_id: str, gpus: int) -> None:
        self._spawn(["node", "--node-id", node_id, "--master-port", str(self.port),
                     "--port", "0", "--fake-gpus", str(gpus),
                     "--data-dir", str(self.tmp / node_id)], f"{node_id}.log")

        def joined() -> bool:
            nodes = get_json(f"http://{self.master}/api/v1/nodes")
            assert isinstance(nodes, dict)
            return any(n["node_id"] == node_id and n["state"] == "up" for n in nodes["nodes"])

        wait_for(joined, 30, f"node {node_id} to join")

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextlib.contextmanager
def cluster(nodes: dict[str, int]) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix="mgpu-bench-") as tmp:
        c = Cluster(Path(tmp))
        try:
            c.start_master()
            for node_id, gpus in nodes.items():
                c.add_node(node_id, gpus)
            yield c
        finally:
            c.stop()


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]
