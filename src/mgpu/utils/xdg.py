"""Where mgpu keeps a user's files by default: the XDG base directories.

``$XDG_CONFIG_HOME`` (else ``~/.config``) holds the config file and the client's token;
``$XDG_DATA_HOME`` (else ``~/.local/share``) holds the master's and the nodes' data and the
certificates ``mgpu certs`` makes. Only ``os``: the client's start-up path uses it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping


def config_home(environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_CONFIG_HOME`` when set and not empty, else ``~/.config``."""
    env = os.environ if environ is None else environ
    return env.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")


def data_home(environ: Mapping[str, str] | None = None) -> str:
    """``$XDG_DATA_HOME`` when set and not empty, else ``~/.local/share``."""
    env = os.environ if environ is None else environ
    return env.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")


def mgpu_config_path(name: str, environ: Mapping[str, str] | None = None) -> str:
    """``name`` in mgpu's config directory: ``CONFIG_HOME/mgpu/NAME``."""
    return os.path.join(config_home(environ), "mgpu", name)


def mgpu_data_path(name: str, environ: Mapping[str, str] | None = None) -> str:
    """``name`` in mgpu's data directory: ``DATA_HOME/mgpu/NAME``."""
    return os.path.join(data_home(environ), "mgpu", name)
