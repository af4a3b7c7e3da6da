"""Output frames, kept apart from the messages so the lean shepherd can use them alone.

A frame is ``stream:u8 | length:u32 big-endian | data``; stream 1 is stdout, 2 is stderr.
Streams to a client also carry 3 (:data:`STREAM_STATUS`, JSON ``OutputStatus``: the job was
placed, ...) and end with 0 (:data:`STREAM_END`, JSON ``OutputEnd``). Offsets count bytes of
the job's output (frames 1 and 2 only), so a reader resumes exactly where it stopped.
"""

from __future__ import annotations

import struct

STREAM_END = 0
STREAM_STDOUT = 1
STREAM_STDERR = 2
STREAM_STATUS = 3  # to a client only, never in a spool: JSON ``OutputStatus``
FRAME_HEADER = struct.Struct(">BI")


def frame(stream: int, data: bytes) -> bytes:
    """One output frame."""
    return FRAME_HEADER.pack(stream, len(data)) + data


def complete_frames(buf: bytes) -> int:
    """How many bytes at the start of ``buf`` are whole frames."""
    pos = 0
    size = FRAME_HEADER.size
    end = len(buf)
    while pos + size <= end:
        length = FRAME_HEADER.unpack_from(buf, pos)[1]
        if pos + size + length > end:
            break
        pos += size + length
    return pos


def split_frames(buf: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """Parse complete frames from ``buf``; return them and how many bytes they used."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    size = FRAME_HEADER.size
    end = len(buf)
    while pos + size <= end:
        stream, length = FRAME_HEADER.unpack_from(buf, pos)
        if pos + size + length > end:
            break
        out.append((stream, buf[pos + size : pos + size + length]))
        pos += size + length
    return out, pos
