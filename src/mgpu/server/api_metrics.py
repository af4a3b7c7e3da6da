"""``GET /metrics``: the master's Prometheus metrics (``metrics.py``), for scrapers.

Who may scrape is :mod:`mgpu.utils.metrics_auth`'s rule: the metrics token, or loopback
when none is set. :func:`mgpu.server.http.authenticate` lets the path through to this
handler, which checks the scrape itself, as the node WebSocket checks the join secret.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from mgpu.core.api_paths import METRICS
from mgpu.server.http import Route, master_of
from mgpu.utils.metrics_auth import check_scrape


async def metrics(request: web.Request) -> web.StreamResponse:
    master = master_of(request)
    if master.cfg.auth:
        check_scrape(request.remote, request.headers.get(hdrs.AUTHORIZATION),
                     master.metrics.token)
    return await master.metrics.handler(request)


ROUTES: tuple[Route, ...] = (
    Route("GET", METRICS, metrics, "Prometheus metrics, text format (the metrics token, or "
          "from loopback when none is set)"),
)
