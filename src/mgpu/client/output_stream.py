"""``OutputStream``: one job's framed output, read from the master as it comes.

Its iteration is on the path of ``mgpu srun``'s start-up, so it reads frames without msgspec
(:mod:`mgpu.utils.plainjson` reads the END frame); only :attr:`OutputStream.end` decodes.
"""

from __future__ import annotations

from mgpu.utils import plainjson

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from mgpu.client.transport import Connection, Response
    from mgpu.core.messages import OutputEnd


class OutputStream:
    """A job's output as ``(stream, data)`` frames, in the order it was written.

    ``stream`` is 1 for stdout and 2 for stderr; ``data`` is raw bytes (a gang's merged
    lines: bare, or ``0: line`` with ``label``). With ``status``,
    frames of stream 3 carry JSON ``OutputStatus`` (the job's placement, when it changes).
    Iterate once. When iteration stops, :attr:`end` holds how the job ended if the master
    sent the END frame (it does once the job has ended), else ``None``; :attr:`offset` is
    where to resume (it counts the job's output only, not status frames).
    The stream has a connection of its own, closed when iteration stops or by
    :meth:`close`.
    """

    def __init__(self, conn: Connection, response: Response, offset: int,
                 label: bool = False) -> None:
        self._conn = conn
        self._response = response
        self.offset = offset
        self.label = label  # a gang's lines as "0: line" (else bare: core/gang.py)
        self.end_fields: dict[str, Any] | None = None  # the END frame, as plain JSON

    @property
    def end(self) -> OutputEnd | None:
        """How the job ended (the END frame), or None if the stream stopped before it."""
        if self.end_fields is None:
            return None
        import msgspec

        from mgpu.core.messages import OutputEnd

        return msgspec.convert(self.end_fields, OutputEnd)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        # No msgspec here: srun's start-up goes through this loop.
        from mgpu.core.frames import FRAME_HEADER, STREAM_END, split_frames
        from mgpu.core.gang import untask

        buf = b""
        try:
            for chunk in self._response.chunks():
                buf = buf + chunk if buf else chunk
                frames, used = split_frames(buf)
                buf = buf[used:]
                for stream, data in frames:
                    if stream == STREAM_END:
                        self.end_fields = plainjson.loads(data)
                        continue
                    if stream in (1, 2, 4, 5):
                        self.offset += FRAME_HEADER.size + len(data)
                    if stream in (4, 5):  # a gang's line, with its task's number
                        stream, data = untask(stream, data, self.label)
                    yield stream, data
        finally:
            self._conn.close()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> OutputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["OutputStream"]
