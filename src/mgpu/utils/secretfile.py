"""Files that hold a secret (a token, the join secret): read and written with plain ``os``.

:func:`read_secret` refuses a file that group or others may read or write, as ssh refuses
such a key: the secret in it may already be known. :func:`write_secret` creates the file
0600 (its directory 0700) and replaces it atomically. Only ``os`` is imported: the
``mgpu submit`` path reads its token with this.
"""

from __future__ import annotations

import os

from mgpu.core.errors import ConfigError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from os import PathLike


def read_secret(path: str | PathLike[str], what: str, *, must_exist: bool = False
                ) -> str | None:
    """The secret in ``path`` (its first line, stripped); None when the file does not exist
    (a :class:`ConfigError` instead with ``must_exist``) or is empty. ``what`` names the
    file in errors ("token file")."""
    name = os.fspath(path)
    try:
        fd = os.open(name, os.O_RDONLY)
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"{what} {name} does not exist") from None
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {name}: {e.strerror or e}") from None
    try:
        mode = os.fstat(fd).st_mode
        if mode & 0o077:
            raise ConfigError(
                f"{what} {name} is accessible by others (mode {mode & 0o777:04o}): run "
                f"`chmod 600 {name}`, and replace the secret if others may have read it"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    text = data.decode("utf-8", "replace").strip().split("\n", 1)[0].strip()
    if not text and must_exist:
        raise ConfigError(f"{what} {name} is empty")
    return text or None


def write_secret(path: str | PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only (0600; dir 0700)."""
    from mgpu.utils.atomic import write_atomic

    name = os.fspath(path)
    os.makedirs(os.path.dirname(name) or ".", mode=0o700, exist_ok=True)
    write_atomic(name, f"{text}\n".encode(), 0o600, durable=True)
