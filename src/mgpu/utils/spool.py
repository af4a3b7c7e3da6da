"""Append-only files of framed job output, read by byte offset.

The master keeps a copy of each run's output (``output/JOBID.RUN.out``, named by
:func:`~mgpu.core.models.run_key`), written as the node sends it. Appends carry the offset
they start at, so a resent chunk is written once and a resumed stream loses nothing; a
job's output is the concatenation of its runs' files (:meth:`SpoolDir.read_across`).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO


def read_at(path: Path, offset: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``path`` from ``offset`` (nothing when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


class SpoolDir:
    """One directory of output files, one per run, with open handles for runs writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._files: dict[str, BinaryIO] = {}
        self._sizes: dict[str, int] = {}

    def file(self, key: str) -> Path:
        return self.path / f"{key}.out"

    def size(self, key: str) -> int:
        size = self._sizes.get(key)
        if size is None:
            try:
                size = os.stat(self.file(key)).st_size
            except FileNotFoundError:
                size = 0
            self._sizes[key] = size
        return size

    def _handle(self, key: str) -> BinaryIO:
        f = self._files.get(key)
        if f is None:
            f = open(self.file(key), "ab")  # noqa: SIM115 - kept open while the job writes
            self._files[key] = f
        return f

    def append(self, key: str, data: bytes) -> int:
        """Append ``data``; return the offset it starts at."""
        start = self.size(key)
        f = self._handle(key)
        try:
            f.write(data)
            f.flush()
        except OSError:  # a full disk: the file goes back to what it held, then raise
            self._files.pop(key, None)
            self._sizes.pop(key, None)
            with contextlib.suppress(OSError):
                f.close()  # (its flush fails again; the file is closed all the same)
            with contextlib.suppress(OSError):
                os.truncate(self.file(key), start)
            raise
        self._sizes[key] = start + len(data)
        return start

    def append_at(self, key: str, offset: int, data: bytes) -> bool:
        """Append the part of ``data`` (which starts at ``offset``) not yet held.

        Returns False when ``offset`` is beyond the end (a gap: the caller must resend from
        :meth:`size`), True otherwise.
        """
        size = self.size(key)
        if offset > size:
            return False
        skip = size - offset
        if skip < len(data):
            self.append(key, data[skip:] if skip else data)
        return True

    def read(self, key: str, offset: int, limit: int = 1 << 20) -> bytes:
        if offset >= self.size(key):
            return b""
        return read_at(self.file(key), offset, limit)

    def read_across(self, keys: list[str], offset: int, limit: int = 1 << 20) -> bytes:
        """Read at ``offset`` of the files of ``keys`` taken end to end (a job's runs)."""
        for key in keys:
            size = self.size(key)
            if offset < size:
                return self.read(key, offset, limit)
            offset -= size
        return b""

    def close(self, key: str) -> None:
        f = self._files.pop(key, None)
        if f is not None:
            f.close()

    def close_all(self) -> None:
        for key in list(self._files):
            self.close(key)
