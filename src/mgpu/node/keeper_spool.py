"""A job's spool file as the keeper writes it: framed output, a size cap, a full disk.

* The file is opened on the first output (a silent job costs no file) and written with
  ``os.write``, whole frames only: after a short or failed write the file is cut back to
  the last whole frame, so a reader never sees half a frame.
* ``max_output`` (bytes; 0 or less: no cap): once the spool reaches it, what the job writes next
  is read and discarded and one last line says so; the job goes on running.
* A write that fails (``ENOSPC``, ``EIO``, ...) never raises: the rest of the job's output
  is lost, :attr:`Spool.lost` says why, and the keeper reports the job's end as usual with
  that reason added.

Standard library only: the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import errno
import os

from mgpu.core.frames import STREAM_STDERR, frame

MIB = 1 << 20


def cut_line(max_output: int) -> bytes:
    return (f"[mgpu: output cut at {max_output / MIB:g} MiB (max_output_mib); "
            "the job went on running]\n").encode()


class Spool:
    """One job's spool file."""

    def __init__(self, path: str, max_output: int = 0) -> None:
        self.path = path
        self.max_output = max_output
        self.size = 0  # bytes of whole frames in the file
        self.fd = -1
        self.cut = False  # the cap was reached: output is discarded
        self.lost: str | None = None  # why output was lost (a failed write)

    def write(self, stream: int, data: bytes) -> None:
        """Append ``data`` as one frame, within the cap; never raises."""
        if self.cut or self.lost is not None:
            return
        if self.max_output > 0 and self.size + 5 + len(data) > self.max_output:
            room = self.max_output - self.size - 5
            if room > 0:
                self._append(frame(stream, data[:room]))
            self.cut = True
            self._append(frame(STREAM_STDERR, cut_line(self.max_output)))
            return
        self._append(frame(stream, data))

    def note(self, text: str) -> None:
        """A line of mgpu's own on the job's stderr (not counted against the cap)."""
        if self.lost is None:
            self._append(frame(STREAM_STDERR, text.encode()))

    def _append(self, data: bytes) -> None:
        try:
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            n = os.write(self.fd, data)
            if n != len(data):  # the disk filled up within the frame
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as e:
            self.lost = f"output lost after {self.size} bytes: {e.strerror or e}"
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(self.fd, self.size)  # no half frame for the reader
            self.close()
            return
        self.size += n

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
