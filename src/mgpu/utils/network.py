"""Small helpers for ports, URLs and the JSON state files components write.

``write_json_atomic`` is how ``master.json`` and ``node.json`` (see docs/protocol.md) are
written: a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mgpu.core.errors import MgpuError
from mgpu.utils.atomic import write_atomic

if TYPE_CHECKING:
    from aiohttp import web

_MISSING: Any = object()


def port_in_use_message(host: str, port: int) -> str:
    """The one-line error for a port another process already holds."""
    return f"port {port} on {host} is already in use: stop the other process or pass --port"


async def listen(runner: web.AppRunner, host: str, port: int, command: str,
                 port_hint: str = "pass --port", ssl_context: Any = None) -> int:
    """Serve ``runner`` (set up already) on ``host:port`` and return the port it got. On
    failure the runner is cleaned up and :class:`MgpuError` says what to do: a port in use
    names ``mgpu COMMAND`` as the likely holder and ``port_hint`` as the way out."""
    import errno

    from aiohttp import web  # here: a client that imports this module needs no aiohttp

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


def format_host(host: str) -> str:
    """``host`` ready to put before ``:port`` (IPv6 literals in brackets)."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def http_url(host: str, port: int) -> str:
    """``http://host:port`` with IPv6 hosts bracketed."""
    return f"http://{format_host(host)}:{port}"


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, readable only by its owner (0o600).

    Writes a temporary file in the same directory, fsyncs it and renames it over ``path``.
    Creates the parent directory if needed. Raises OSError if it cannot.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_atomic(target, data.encode("utf-8"), 0o600, durable=True)


def read_json(path: str | os.PathLike[str], default: Any = _MISSING) -> Any:
    """The JSON value in ``path``.

    A missing file returns ``default`` when one is given, else raises FileNotFoundError.
    A file that is not valid JSON raises :class:`MgpuError` naming it.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        if default is not _MISSING:
            return default
        raise
    try:
        return json.loads(text)
    except ValueError as e:
        raise MgpuError(f"{target} is not valid JSON ({e}): remove it and try again") from None
