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


def get_json(url: str, token: str | None = None) -> object:
    """GET ``url`` with ``token`` (default: ``MGPU_TOKEN``, which ``cluster`` sets)."""
    req = urllib.request.Request(url)
    token = token or os.environ.get("MGPU_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@dataclass
class Cluster:
    """``mgpu server`` and ``mgpu node`` processes, each in its own session."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0
    master_env: dict[str, str] = field(default_factory=dict)
    named: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str = ""  # the master's admin token, once it has started

    @property
    def master(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "MGPU_MASTER": self.master, "MGPU_TOKEN": self.token}

    def _spawn(self, args: list[str], log: str, name: str,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        out = open(self.tmp / log, "ab")  # noqa: SIM115 - kept for the process's life
        proc = subprocess.Popen([PY, "-m", "mgpu", "--log-level", "warning", *args],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        self.named[name] = proc
        return proc

    def start_master(self, *extra: str) -> None:
        """Start the master (again on the same port, once it has one). Its admin token goes
        to ``MGPU_TOKEN`` in this process's environment, so that clients made here and
        ``mgpu`` commands run from here use it (the master writes its token file under
        the run's temporary dir, not the real home)."""
        info = self.tmp / "master" / "master.json"
        info.unlink(missing_ok=True)
        env = {"XDG_CONFIG_HOME": str(self.tmp / "config"), **self.master_env}
        self._spawn(["server", "--port", str(self.port), "--data-dir", str(self.tmp / "master"),
                     *extra], "master.log", "master", env)
        wait_for(info.exists, 30, "the master to listen")
        self.port = json.loads(info.read_text())["port"]
        self.token = (self.tmp / "master" / "admin.token").read_text().strip()
        os.environ["MGPU_TOKEN"] = self.token

    def kill(self, name: str, sig: int) -> None:
        """Signal a component's process group (a node's keeper and jobs are not in it)."""
        proc = self.named[name]
        os.killpg(proc.pid, sig)
        proc.wait()

    def kill_master(self, sig: int) -> None:
        self.kill("master", sig)

    def add_node(self, node_id: str, gpus: int) -> None:
        self._spawn(["node", "--node-id", node_id, "--master-port", str(self.port),
                     "--port", "0", "--fake-gpus", str(gpus),
                     "--data-dir", str(self.tmp / node_id),
                     "--join-token-file", str(self.tmp / "master" / "join.token")],
                    f"{node_id}.log", node_id,
                    {"MGPU_ALLOW_ROOT_JOBS": "1"})  # benchmarks may run as root

        def joined() -> bool:
            nodes = get_json(f"http://{self.master}/api/v1/nodes", self.token)
            assert isinstance(nodes, dict)
            return any(n["node_id"] == node_id and n["state"] == "up" for n in nodes["nodes"])

        wait_for(joined, 30, f"node {node_id} to join")

    def stop(self) -> None:
        keepers = self._keepers()
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for pid in keepers:  # keepers outlive killed agents: stop them and their jobs
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def _keepers(self) -> list[int]:
        import psutil

        found = []
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if "mgpu.node.keeper" in cmd and any(str(self.tmp) in a for a in cmd):
                found.append(proc.pid)
        return found


@contextlib.contextmanager
def cluster(nodes: dict[str, int], master_env: dict[str, str] | None = None
            ) -> Iterator[Cluster]:
    token = os.environ.get("MGPU_TOKEN")
    with tempfile.TemporaryDirectory(prefix="mgpu-bench-") as tmp:
        c = Cluster(Path(tmp), master_env=master_env or {})
        try:
            c.start_master()
            for node_id, gpus in nodes.items():
                c.add_node(node_id, gpus)
            yield c
        finally:
            c.stop()
            if token is None:  # the token was this cluster's: leave the environment as it was
                os.environ.pop("MGPU_TOKEN", None)
            else:
                os.environ["MGPU_TOKEN"] = token


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]
