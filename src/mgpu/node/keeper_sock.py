"""The keeper's socket: private to the agent's account, one client at a time.

``DATA_DIR/run/keeper.sock``, mode 0600, in a directory of mode 0700 owned by the
keeper's user, whatever the umask and whatever was there before (a directory of that name
has its mode fixed; one that is a symlink or another user's is refused). On top of the
file modes, each connection's peer credentials (``SO_PEERCRED``) are checked: only the
keeper's own uid, or root, may talk to it.

Standard library only: the keeper imports this at start.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
from collections.abc import Iterator

SOCKET_DIR = "run"
SOCKET_NAME = "keeper.sock"
UNIX_PATH_MAX = 107  # bytes of a socket's path that AF_UNIX takes (sun_path, less its NUL)
_UCRED = struct.Struct("3i")  # pid, uid, gid


def socket_dir(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_DIR)


def socket_path(data_dir: str) -> str:
    return os.path.join(data_dir, SOCKET_DIR, SOCKET_NAME)


@contextlib.contextmanager
def socket_address(data_dir: str) -> Iterator[str]:
    """The address to bind or connect the keeper's socket by: its path, or, when that is
    longer than AF_UNIX takes (a deep data dir), the same file reached through
    ``/proc/self/fd/N/`` of its directory, for as long as the block lasts."""
    path = socket_path(data_dir)
    if len(os.fsencode(path)) <= UNIX_PATH_MAX:
        yield path
        return
    try:
        fd = os.open(socket_dir(data_dir), os.O_PATH | os.O_DIRECTORY)
    except FileNotFoundError:  # no keeper made it yet: connecting fails as it should
        yield path
        return
    try:
        yield f"/proc/self/fd/{fd}/{SOCKET_NAME}"
    finally:
        os.close(fd)


def private_dir(data_dir: str) -> str:
    """Make (or fix) the socket's directory: 0700 and the keeper's user's. PermissionError,
    naming the fix, when it is a symlink or belongs to another user."""
    path = socket_dir(data_dir)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise PermissionError(
            f"{path} is not a directory of this user's (uid {os.geteuid()}): remove it, "
            "the node agent makes it again")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def bind(data_dir: str) -> socket.socket:
    """A listening socket at :func:`socket_path`, mode 0600 from its creation on."""
    private_dir(data_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path(data_dir))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket file is born 0600: no window with a wider mode
    try:
        with socket_address(data_dir) as address:
            listener.bind(address)
    finally:
        os.umask(old)
    os.chmod(socket_path(data_dir), 0o600)
    listener.listen(16)
    return listener


def peer_refusal(conn: socket.socket) -> str | None:
    """Why the peer of ``conn`` may not talk to the keeper, or None when it may (its uid
    is the keeper's, or root)."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as e:
        return f"its credentials cannot be read ({e})"
    pid, uid, _ = _UCRED.unpack(raw)
    if uid in (0, os.geteuid()):
        return None
    return (f"process {pid} of uid {uid} may not talk to the keeper: only uid "
            f"{os.geteuid()} (the node agent's) or root may")
