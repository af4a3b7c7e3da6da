"""The settings as the commands and the Python API see them: :mod:`mgpu.core.config`'s
dataclasses built from flags, the real environment, the config file and the defaults.

:mod:`mgpu.core` holds the dataclasses and the rule; this module does the reading: of
``os.environ``, of the config file (:mod:`mgpu.utils.config_file`) and of the defaults
that depend on them, the master's and the node's data directories under
``$XDG_DATA_HOME``. ``mgpu config`` shows what :func:`load` returns.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from mgpu.core.config import SECTIONS, ClientConfig, MasterConfig, NodeConfig
from mgpu.core.config_sources import apply_master_env, resolve
from mgpu.core.errors import ConfigError
from mgpu.utils.config_file import config_path, read_config
from mgpu.utils.xdg import mgpu_data_path

C = TypeVar("C")


def default_master_data_dir() -> Path:
    """``$XDG_DATA_HOME/mgpu/master`` (``~/.local/share/mgpu/master``): the master's data
    when no setting names one; a node on the same machine finds its join secret there."""
    return Path(mgpu_data_path("master"))


def default_node_data_dir(node_id: str) -> Path:
    """``$XDG_DATA_HOME/mgpu/node-NODE_ID``: a node's data when no setting names one."""
    return Path(mgpu_data_path(f"node-{node_id}"))


def config_file() -> Path:
    """``$MGPU_CONFIG``, else ``$XDG_CONFIG_HOME/mgpu/config.toml``; it need not exist."""
    return Path(config_path())


def read_file(path: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The parsed TOML file and its path, or ({}, None) when there is none."""
    data, found = read_config(path)
    return data, (None if found is None else Path(found))


def load(
    cls: type[C],
    flags: dict[str, Any] | None = None,
    *,
    file_data: dict[str, Any] | None = None,
    file_path: Path | None = None,
    environ: dict[str, str] | None = None,
) -> tuple[C, dict[str, str]]:
    """Build ``cls`` from flags, environment, file and defaults.

    Returns the config and, for each field, where its value came from ("flag",
    "env MGPU_X", "file PATH" or "default"). ``flags`` holds only flags the user gave
    (None means not given). The rule is :func:`mgpu.core.config_sources.resolve`. The data
    directories' defaults follow the process's ``$XDG_DATA_HOME`` (not ``environ``).
    """
    env = os.environ if environ is None else environ
    if file_data is None:
        file_data, file_path = read_file()
    fields = [
        (f.name, f.type, f.metadata.get("env"))
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    ]
    values, sources = resolve(SECTIONS[cls], fields, flags or {}, env, file_data, file_path)
    if cls is ClientConfig:
        apply_master_env(env, values, sources)
    for name, value in values.items():
        if isinstance(value, Path):  # ``~`` is the user's home, whichever source said it
            values[name] = Path(os.path.expanduser(value))
    if cls is MasterConfig and "data_dir" not in values:
        values["data_dir"] = default_master_data_dir()
    cfg = cls(**values)
    if isinstance(cfg, NodeConfig) and cfg.data_dir is None:  # its default names the node
        cfg = dataclasses.replace(cfg, data_dir=default_node_data_dir(cfg.node_id))
    return cfg, sources


def from_options(cls: type[C], options: dict[str, Any]) -> C:
    """``cls`` built as the Python API's classes build it (``SimpleMaster(..., port=0)``):
    ``options`` are the flags (a string is fine where a path or a number is wanted), then
    the ``MGPU_*`` environment, the config file and the defaults, as for the commands. An
    option that is not a setting of ``cls`` is a :class:`ConfigError` naming the settings."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no setting {unknown[0]!r}: its settings are "
                          f"{', '.join(names)}")
    return load(cls, options)[0]
