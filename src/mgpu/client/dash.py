"""The master's dashboard stream (``GET /api/v1/dash/stream``) for a terminal client.

:class:`DashStream` reads the Server-Sent Events the web dashboard reads, as
``(name, data)`` pairs with the data as plain JSON (:mod:`mgpu.utils.plainjson`: no
msgspec, for start-up). ``mgpu top`` follows ``view=top`` with it.
"""

from __future__ import annotations

import contextlib
import socket

from mgpu.client.replies import error_from_reply, unreadable
from mgpu.core.api_paths import API
from mgpu.core.errors import MgpuError
from mgpu.utils import plainjson

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from mgpu.client.client import SimpleClient

STREAM = f"{API}/dash/stream"


class DashStream:
    """One open dashboard stream, on a connection of its own.

    ``query`` is the stream's: ``view`` (nodes, queue, job, usage, top), ``state``,
    ``offset``, ``limit``, ``job``, ``log``. Opening raises the master's error (a bad
    token, a bad query) at once. Iterate :meth:`events` in one thread; :meth:`close` may
    be called from another, and ends that iteration.
    """

    def __init__(self, client: SimpleClient, **query: str | int) -> None:
        from urllib.parse import urlencode

        self._conn = client.connection(client.timeout)
        path = f"{STREAM}?{urlencode(query)}"
        # endless: the stream may be quiet for as long as nothing changes.
        self._resp = self._conn.request("GET", path, endless=True)
        if self._resp.status >= 300:
            data = self._resp.read()
            self._conn.close()
            raise error_from_reply(self._resp.status, data)
        self._closed = False

    def events(self) -> Iterator[tuple[str, Any]]:
        """Each event as ``(name, data)``, until the stream ends or is closed."""
        buf = b""
        try:
            for chunk in self._resp.chunks():
                buf += chunk
                while (end := buf.find(b"\n\n")) >= 0:
                    block, buf = buf[:end], buf[end + 2:]
                    name, data = "message", []
                    for line in block.split(b"\n"):
                        if line.startswith(b"event: "):
                            name = line[7:].decode()
                        elif line.startswith(b"data: "):
                            data.append(line[6:])
                    if data:
                        try:
                            yield name, plainjson.loads(b"\n".join(data))
                        except ValueError as e:
                            raise unreadable(e) from None
        except (OSError, MgpuError):  # (the transport turns a socket's errors into these)
            if not self._closed:
                raise

    def close(self) -> None:
        """End the stream; a thread reading :meth:`events` stops at once."""
        self._closed = True
        sock = self._conn._sock
        if sock is not None:
            # shutdown, not close: it wakes a recv() blocked in another thread
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._resp.close()
