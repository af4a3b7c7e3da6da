"""The node's health endpoint: ``GET /health`` on the node's own port, and ``node.json``.

The agent needs no open port to work (it dials the master); this one is for operators and
supervisors (systemd, Kubernetes probes) on the node's machine. ``node.json`` in the data
dir says which port it got (``--port 0`` picks a free one), which process serves it and,
when on, the port of its ``/metrics``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from mgpu.utils.network import listen, write_json_atomic


async def serve_health(host: str, port: int, data_dir: Path, node_id: str,
                       report: Callable[[], dict[str, object]],
                       metrics_port: int | None = None) -> tuple[web.AppRunner, int]:
    """Listen on ``host:port`` and answer ``GET /health`` with ``report()`` as JSON; write
    ``data_dir/node.json`` (atomically) once listening, with ``metrics_port`` when the
    agent serves ``/metrics`` (:mod:`mgpu.node.metrics`). Returns the runner (``cleanup()``
    it to stop) and the port it listens on. A port in use raises :class:`MgpuError` that
    names the fix (see :func:`mgpu.utils.network.listen`)."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response(report())

    app = web.Application()
    app.add_routes([web.get("/health", health)])
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    bound = await listen(runner, host, port, "node", "pass --port (0 picks a free one)")
    info: dict[str, object] = {"node_id": node_id, "port": bound, "pid": os.getpid()}
    if metrics_port is not None:
        info["metrics_port"] = metrics_port
    write_json_atomic(data_dir / "node.json", info)
    return runner, bound
