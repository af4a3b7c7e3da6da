"""Who the client is: its token, where it comes from, and the Unix user it submits as; read
with plain ``os`` calls (start-up time).

Precedence: a token file named by the caller (``--token-file``), else ``$MGPU_TOKEN`` (the
token itself), else ``$XDG_CONFIG_HOME/mgpu/token`` (``~/.config/mgpu/token``), which the
master writes for the Unix user it runs as. No token at all is not an error here: the
request goes without one and the master's 401 says what to do.

A token file that group or others may read or write is refused, as ssh refuses such a
key (a :class:`~mgpu.core.errors.ConfigError` naming the ``chmod`` that fixes it).
"""

from __future__ import annotations

import os

from mgpu.utils.secretfile import read_secret
from mgpu.utils.xdg import mgpu_config_path

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping


def default_token_file(environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_CONFIG_HOME/mgpu/token``, else ``~/.config/mgpu/token``."""
    return mgpu_config_path("token", environ)


def find_token(token_file: str | None = None,
               environ: Mapping[str, str] | None = None) -> str | None:
    """The token to send: ``token_file``'s, else ``$MGPU_TOKEN``, else the default file's."""
    env = os.environ if environ is None else environ
    if token_file:
        return read_secret(os.path.expanduser(token_file), "token file", must_exist=True)
    token = env.get("MGPU_TOKEN", "").strip()
    if token:
        return token
    return read_secret(default_token_file(env), "token file")


def token_source(token_file: str | None = None,
                 environ: Mapping[str, str] | None = None) -> str | None:
    """Where :func:`find_token` takes the token from (``--token-file PATH``,
    ``env MGPU_TOKEN`` or ``file PATH``), or None when there is none (``mgpu config``)."""
    env = os.environ if environ is None else environ
    if token_file:
        return f"--token-file {os.path.expanduser(token_file)}"
    if env.get("MGPU_TOKEN", "").strip():
        return "env MGPU_TOKEN"
    path = default_token_file(env)
    return f"file {path}" if os.path.isfile(path) else None


def login_name() -> str:
    """``getpass.getuser()``: $LOGNAME, $USER, $LNAME or $USERNAME, else the password
    database; without importing ``getpass`` (and its ``termios`` and ``contextlib``)."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        user = os.environ.get(name)
        if user:
            return user
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
