"""The config file and the client's settings, read with plain ``os`` calls (start-up time).

The file is ``$MGPU_CONFIG`` if set, else ``$XDG_CONFIG_HOME/mgpu/config.toml``
(``~/.config/mgpu/config.toml``). :func:`client_settings` is ``load(ClientConfig)``
(:mod:`mgpu.utils.settings`) without the dataclass: every client command resolves its
master here, and ``mgpu submit`` cannot afford ``dataclasses``, ``pathlib`` or ``typing``
(a test holds the two equal, another the imports).
"""

from __future__ import annotations

import os

from mgpu.core import config_sources as rule
from mgpu.core.errors import ConfigError
from mgpu.utils.xdg import mgpu_config_path

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from os import PathLike
    from typing import Any


def config_path() -> str:
    """The config file to read: ``$MGPU_CONFIG``, else ``$XDG_CONFIG_HOME/mgpu/config.toml``
    (``~/.config/mgpu/config.toml``). It need not exist."""
    explicit = os.environ.get("MGPU_CONFIG")
    if explicit:
        return explicit
    return mgpu_config_path("config.toml")


def read_config(path: str | PathLike[str] | None = None) -> tuple[dict[str, Any], str | None]:
    """The parsed TOML file and its path (default :func:`config_path`), or ({}, None) when
    there is none; a ``$MGPU_CONFIG`` that names no file is an error."""
    path = os.fspath(path) if path is not None else config_path()
    if not os.path.isfile(path):
        if os.environ.get("MGPU_CONFIG"):
            raise ConfigError(
                f"MGPU_CONFIG names {rule.shown_path(path)}, which does not exist: fix or unset it"
            )
        return {}, None
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {rule.shown_path(path)}: {e}") from e
    rule.check_tables(data, path)
    return data, path


def client_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    file_data: Mapping[str, Any] | None = None,
    file_path: str | PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, int, float, str | None, bool]:
    """``(master_host, master_port, timeout, ca, tls)``: what ``load(ClientConfig, ...)``
    gives, by the same rule and with the same errors, without building the dataclass."""
    env = os.environ if environ is None else environ
    if file_data is None:
        file_data, file_path = read_config()
    values, sources = rule.resolve("client", rule.CLIENT_FIELDS, flags or {}, env, file_data,
                                   file_path)
    rule.apply_master_env(env, values, sources)
    merged = {**rule.CLIENT_DEFAULTS, **values}
    return (merged["master_host"], merged["master_port"], merged["timeout"], merged["ca"],
            merged["tls"])
