"""The agent's own Prometheus ``/metrics``: its GPUs, as NVML reads them, and its jobs.

Off by default; ``metrics_port`` (``mgpu node --metrics-port PORT``, ``MGPU_METRICS_PORT``)
turns it on, on the agent's ``host`` (0: any free port; ``node.json`` says which). Scrapes
are checked as the master's are (:mod:`mgpu.utils.metrics_auth`: the metrics token, or
loopback only). Each scrape reads the GPUs anew (:mod:`mgpu.utils.gpu_readings`) on a
worker thread, so a slow NVML call never stalls the agent's link to the master.

Series (every one labelled ``node`` and, per GPU, ``gpu``, its index):
``mgpu_node_gpu_utilization_percent``, ``mgpu_node_gpu_memory_used_bytes``,
``mgpu_node_gpu_memory_total_bytes``, ``mgpu_node_gpu_temperature_celsius``,
``mgpu_node_jobs_running``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from mgpu.core.api_paths import METRICS
from mgpu.core.errors import MgpuError
from mgpu.utils.gpu_readings import GpuReader, GpuReading
from mgpu.utils.metrics_auth import check_scrape, metrics_token
from mgpu.utils.network import listen

if TYPE_CHECKING:
    from pathlib import Path

    from mgpu.core.config import NodeConfig
    from mgpu.core.models import GpuInfo

# (name, help, the reading's field) of each per-GPU series
GPU_SERIES = (
    ("mgpu_node_gpu_utilization_percent", "GPU utilisation over the last sample period "
     "(NVML), percent", "utilization_percent"),
    ("mgpu_node_gpu_memory_used_bytes", "GPU memory in use (NVML)", "memory_used_bytes"),
    ("mgpu_node_gpu_memory_total_bytes", "GPU memory in all", "memory_total_bytes"),
    ("mgpu_node_gpu_temperature_celsius", "GPU core temperature (NVML)",
     "temperature_celsius"),
)


class NodeMetrics:
    """One agent's metrics listener. ``await start()`` (returns the port), ``close()``."""

    def __init__(self, cfg: NodeConfig, gpus: list[GpuInfo], source: str,
                 jobs_running: Callable[[], int]) -> None:
        """Reads the metrics token now: a :class:`ConfigError` if its file is unreadable."""
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.token = metrics_token(cfg.metrics_token, cfg.metrics_token_file)
        self.reader = GpuReader(gpus, source)
        self.jobs_running = jobs_running
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> int:
        app = web.Application()
        app.add_routes([web.get(METRICS, self.handle)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        assert self.cfg.metrics_port is not None
        self.port = await listen(self._runner, self.cfg.host, self.cfg.metrics_port,
                                 "node", "pass another --metrics-port (0 picks a free one)")
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await asyncio.to_thread(self.reader.close)

    async def handle(self, request: web.Request) -> web.Response:
        try:
            check_scrape(request.remote, request.headers.get(hdrs.AUTHORIZATION), self.token)
        except MgpuError as e:
            return web.Response(status=e.status, text=e.message + "\n")
        jobs = self.jobs_running()  # the agent's memory: read on its loop
        encoder, content_type = choose_encoder(request.headers.get(hdrs.ACCEPT, ""))
        body = await asyncio.to_thread(self._render, encoder, jobs)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def _render(self, encoder: Callable[[CollectorRegistry], bytes], jobs: int) -> bytes:
        registry = CollectorRegistry()
        registry.register(_Snapshot(self.node_id, self.reader.read(), jobs))
        return encoder(registry)


class _Snapshot:
    """The series of one scrape, from readings already taken."""

    def __init__(self, node_id: str, readings: list[GpuReading], jobs: int) -> None:
        self.node_id = node_id
        self.readings = readings
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        for name, text, field in GPU_SERIES:
            family = GaugeMetricFamily(name, text, labels=["node", "gpu"])
            for r in self.readings:
                reading = getattr(r, field)
                if reading is not None:
                    family.add_metric([self.node_id, str(r.index)], reading)
            yield family
        jobs = GaugeMetricFamily("mgpu_node_jobs_running", "Jobs running on this node",
                                 labels=["node"])
        jobs.add_metric([self.node_id], self.jobs)
        yield jobs


async def start_metrics(cfg: NodeConfig, gpus: list[GpuInfo], source: str,
                        jobs_running: Callable[[], int]) -> NodeMetrics | None:
    """The agent's metrics listener, started; None when ``metrics_port`` is not set."""
    if cfg.metrics_port is None:
        return None
    metrics = NodeMetrics(cfg, gpus, source, jobs_running)
    await metrics.start()
    return metrics


async def serve_listeners(
    cfg: NodeConfig, gpus: list[GpuInfo], source: str, running: Callable[[], int],
    data_dir: Path, node_id: str, report: Callable[[], dict[str, object]],
) -> tuple[NodeMetrics | None, web.AppRunner, int]:
    """The agent's listeners: its ``/metrics`` (when ``metrics_port`` is set), then its
    health port (:func:`mgpu.node.health.serve_health`, which writes ``node.json`` with
    both). When the health port cannot be had, no metrics listener is left behind."""
    from mgpu.node.health import serve_health

    metrics = await start_metrics(cfg, gpus, source, running)
    try:
        runner, port = await serve_health(cfg.host, cfg.port, data_dir, node_id, report,
                                          metrics.port if metrics else None)
    except BaseException:  # (its port in use)
        if metrics is not None:
            await metrics.close()
        raise
    return metrics, runner, port
