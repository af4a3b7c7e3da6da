"""Opening a listening port for an aiohttp app, with the error a user can act on."""

from __future__ import annotations

import errno
from typing import Any

from aiohttp import web

from mgpu.core.errors import MgpuError


async def listen(runner: web.AppRunner, host: str, port: int, command: str,
                 port_hint: str = "pass --port", ssl_context: Any = None) -> int:
    """Serve ``runner`` (set up already) on ``host:port`` and return the port it got. On
    failure the runner is cleaned up and :class:`MgpuError` says what to do: a port in use
    names ``mgpu COMMAND`` as the likely holder and ``port_hint`` as the way out."""
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        if e.errno == errno.EADDRINUSE:
            raise MgpuError(
                f"port {port} on {host} is already in use: stop the other process (maybe "
                f"another `mgpu {command}`) or {port_hint}"
            ) from e
        raise MgpuError(f"cannot listen on {host}:{port}: {e}") from e
    bound: int = runner.addresses[0][1]
    return bound
