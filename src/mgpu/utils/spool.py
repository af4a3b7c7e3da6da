"""Append-only files of framed job output, read by byte offset.

The node writes each job's output to its spool (``spool/JOBID.out``); the master keeps a
copy of the same bytes (``output/JOBID.out``). Both use :class:`SpoolDir`. Appends carry the
offset they start at, so a resent chunk is written once and a resumed stream loses nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO


class SpoolDir:
    """One directory of per-job output files, with open handles for jobs still writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files: dict[int, BinaryIO] = {}
        self._sizes: dict[int, int] = {}

    def file(self, job_id: int) -> Path:
        return self.path / f"{job_id}.out"

    def size(self, job_id: int) -> int:
        size = self._sizes.get(job_id)
        if size is None:
            try:
                size = os.stat(self.file(job_id)).st_size
            except FileNotFoundError:
                size = 0
            self._sizes[job_id] = size
        return size

    def _handle(self, job_id: int) -> BinaryIO:
        f = self._files.get(job_id)
        if f is None:
            f = open(self.file(job_id), "ab")  # noqa: SIM115 - kept open while the job writes
            self._files[job_id] = f
        return f

    def append(self, job_id: int, data: bytes) -> int:
        """Append ``data``; return the offset it starts at."""
        start = self.size(job_id)
        f = self._handle(job_id)
        f.write(data)
        f.flush()
        self._sizes[job_id] = start + len(data)
        return start

    def append_at(self, job_id: int, offset: int, data: bytes) -> bool:
        """Append the part of ``data`` (which starts at ``offset``) not yet held.

        Returns False when ``offset`` is beyond the end (a gap: the caller must resend from
        :meth:`size`), True otherwise.
        """
        size = self.size(job_id)
        if offset > size:
            return False
        skip = size - offset
        if skip < len(data):
            self.append(job_id, data[skip:] if skip else data)
        return True

    def read(self, job_id: int, offset: int, limit: int = 1 << 20) -> bytes:
        if offset >= self.size(job_id):
            return b""
        try:
            with open(self.file(job_id), "rb") as f:
                f.seek(offset)
                return f.read(limit)
        except FileNotFoundError:
            return b""

    def close(self, job_id: int) -> None:
        f = self._files.pop(job_id, None)
        if f is not None:
            f.close()

    def close_all(self) -> None:
        for job_id in list(self._files):
            self.close(job_id)
