"""Replacing a small file whole: a reader sees the old content or the new, never a part.

Standard library only, so that modules kept light for start-up time may use it.
"""

from __future__ import annotations

import contextlib
import os


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *,
                 durable: bool = False) -> None:
    """Write ``data`` to a new file beside ``path`` with permissions ``mode``, then rename
    it over ``path``. ``durable``: fsync the file before the rename and the directory
    after it, so the new content survives a crash (where the filesystem allows a
    directory fsync). The directory must exist; OSError if it cannot be written, and
    then no temporary file is left behind."""
    name = os.fspath(path)
    directory = os.path.dirname(name) or "."
    tmp = os.path.join(directory, f".{os.path.basename(name)}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crash of a process of the same pid
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dir_fd)
        except OSError:
            pass  # not every filesystem allows fsync on a directory
        finally:
            os.close(dir_fd)
