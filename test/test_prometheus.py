"""A real Prometheus (Debian's ``prometheus``, /usr/bin/prometheus) scrapes a real master
and a real agent (``mgpu server``, ``mgpu node --metrics-port 0``), with the metrics token,
and answers queries about them through its HTTP API.

Prometheus runs in its own process group with a temp config and TSDB, listening on a port
of 127.0.0.1 it picks itself (found from its open sockets: no port race); it is stopped at
teardown, SIGTERM then SIGKILL. ``.ci/system-packages`` installs it, so CI runs this test;
only a machine without the package skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import Cluster, wait_until
from mgpu.utils.gpu import FAKE_GPU_MEMORY_MIB
from mgpu.utils.secretfile import write_secret
from test_metrics import dashboard_exprs

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
STOP_GRACE = 15.0
SCRAPED = 60.0  # seconds for Prometheus to start and scrape both targets


class Prometheus:
    """A Prometheus process: ``query()`` its HTTP API; ``stop()`` its process group."""

    def __init__(self, tmp: Path, targets: dict[str, str], token_file: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        config = tmp / "prometheus.yml"
        # JSON is YAML: the config is written with the json module, no YAML library needed.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{
                "job_name": job,
                "metrics_path": "/metrics",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [target]}],
            } for job, target in targets.items()],
        }, indent=2))
        self.log_path = tmp / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}",
                 f"--storage.tsdb.path={tmp / 'data'}", "--web.listen-address=127.0.0.1:0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=tmp)
        self.url = ""

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])

    def wait_listening(self) -> None:
        """Until its web port listens (its own pick: read from its sockets)."""

        def port() -> int | None:
            if self.proc.poll() is not None:
                pytest.fail(f"prometheus exited {self.proc.returncode}:\n{self.log_tail()}")
            ports = [c.laddr.port for c in psutil.Process(self.proc.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
            return ports[0] if ports else None

        found = wait_until(port, 30, message=lambda: f"prometheus to listen\n{self.log_tail()}")
        self.url = f"http://127.0.0.1:{found}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """The instant vector of ``expr``: (labels, value) of each series."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                return self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[dict[str, str], Path], Prometheus]]:
    """A factory: ``prometheus(targets, token_file)`` → a started :class:`Prometheus`."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} is not installed (.ci/system-packages installs it)")
    started: list[Prometheus] = []

    def start(targets: dict[str, str], token_file: Path) -> Prometheus:
        p = Prometheus(tmp_path / "prometheus", targets, token_file)
        started.append(p)
        p.wait_listening()
        return p

    yield start
    for p in started:
        code = p.stop()
        assert code in (0, -signal.SIGTERM), f"prometheus exited {code}:\n{p.log_tail()}"


def test_a_real_prometheus_scrapes_the_master_and_an_agent(
        make_cluster: Callable[..., Cluster],
        prometheus: Callable[[dict[str, str], Path], Prometheus], tmp_path: Path) -> None:
    token_file = tmp_path / "metrics.token"
    write_secret(token_file, "prometheus-test-metrics-token")
    cluster = make_cluster(nodes=0, env={"MGPU_METRICS_TOKEN_FILE": str(token_file)})
    cluster.add_node("node1", 2, "--metrics-port", "0")
    node_info = json.loads((cluster.tmp / "node1" / "node.json").read_text())
    done = cluster.wait_job(cluster.submit("true"))
    assert done["state"] == "completed", done
    failed = cluster.wait_job(cluster.submit("exit 3"))
    assert failed["state"] == "failed", failed

    prom = prometheus({"mgpu-master": cluster.master_addr,
                       "mgpu-node": f"127.0.0.1:{node_info['metrics_port']}"}, token_file)

    def both_up() -> bool:
        targets = prom.api("targets")["activeTargets"]
        return len(targets) == 2 and all(t["health"] == "up" for t in targets)

    wait_until(both_up, SCRAPED, ignore=(OSError,),
               message=lambda: f"both targets scraped: {prom.api('targets')}\n{prom.log_tail()}")
    # Series from the master, as the master's own API counts them (an end is counted once
    # saved: a scrape may come just before; the next one has it).
    ended: dict[str, float] = {}

    def both_ended() -> bool:
        ended.update((m["state"], v) for m, v in prom.query("mgpu_jobs_ended_total"))
        return ended.get("completed") == 1 and ended.get("failed") == 1

    wait_until(both_ended, SCRAPED, message=lambda: f"both ends counted: {ended}")
    assert ended["cancelled"] == 0, ended
    [(labels, submitted)] = prom.query('mgpu_jobs_submitted_total{job="mgpu-master"}')
    assert submitted == 2, labels
    [(_, gpus)] = prom.query('mgpu_gpus{node="node1"}')
    assert gpus == 2
    [(_, up)] = prom.query('mgpu_nodes{state="up"}')
    assert up == 1
    [(_, waits)] = prom.query("mgpu_job_queue_wait_seconds_count")
    assert waits == 2
    # Series from the agent: its fake GPUs' fixed readings.
    memory = prom.query('mgpu_node_gpu_memory_total_bytes{job="mgpu-node",node="node1"}')
    assert sorted((m["gpu"], v) for m, v in memory) == [
        ("0", FAKE_GPU_MEMORY_MIB * 2**20), ("1", FAKE_GPU_MEMORY_MIB * 2**20)]
    [(_, running)] = prom.query('mgpu_node_jobs_running{node="node1"}')
    assert running == 0
    # Every panel of the Grafana dashboard is a query this Prometheus accepts.
    for expr in dashboard_exprs():
        prom.query(expr.replace("$__rate_interval", "1m"))
    [(_, share)] = prom.query("sum(mgpu_gpus_used) / sum(mgpu_gpus)")
    assert share == 0
