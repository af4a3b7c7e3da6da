"""Configuration: frozen dataclasses, one precedence order, and where each value came from.

Precedence, highest first: command-line flag > ``MGPU_*`` environment variable > TOML file >
default. The file is ``$MGPU_CONFIG`` if set, else ``$XDG_CONFIG_HOME/mgpu/config.toml``
(``~/.config/mgpu/config.toml``); its tables are ``[master]``, ``[node]``, ``[client]`` and
``[log]``, with the field names below as keys. ``mgpu config`` prints the effective values.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mgpu.core.errors import ConfigError

DEFAULT_PORT = 8080
DEFAULT_NODE_PORT = 8081


def _env(name: str) -> dict[str, str]:
    return {"env": name}


def xdg_data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME")
    return Path(base) if base else Path.home() / ".local" / "share"


def xdg_config_home() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    return Path(base) if base else Path.home() / ".config"


@dataclass(frozen=True)
class MasterConfig:
    """The master: where it listens, where it keeps its data, how it watches nodes."""

    host: str = field(default="127.0.0.1", metadata=_env("MGPU_HOST"))
    port: int = field(default=DEFAULT_PORT, metadata=_env("MGPU_PORT"))
    data_dir: Path = field(
        default_factory=lambda: xdg_data_home() / "mgpu" / "master",
        metadata=_env("MGPU_DATA_DIR"),
    )
    node_timeout: float = field(default=10.0, metadata=_env("MGPU_NODE_TIMEOUT"))
    heartbeat_interval: float = field(default=2.0, metadata=_env("MGPU_HEARTBEAT_INTERVAL"))
    max_request_bytes: int = field(default=8 * 1024 * 1024, metadata=_env("MGPU_MAX_REQUEST"))
    default_time_limit: str = field(default="UNLIMITED",
                                    metadata=_env("MGPU_DEFAULT_TIME_LIMIT"))
    max_time_limit: str = field(default="UNLIMITED", metadata=_env("MGPU_MAX_TIME_LIMIT"))
    max_requeue: int = field(default=3, metadata=_env("MGPU_MAX_REQUEUE"))


@dataclass(frozen=True)
class NodeConfig:
    """A node agent: who it is, which master it joins, which GPUs it offers."""

    node_id: str = field(default_factory=socket.gethostname, metadata=_env("MGPU_NODE_ID"))
    master_host: str = field(default="localhost", metadata=_env("MGPU_MASTER_HOST"))
    master_port: int = field(default=DEFAULT_PORT, metadata=_env("MGPU_MASTER_PORT"))
    port: int = field(default=DEFAULT_NODE_PORT, metadata=_env("MGPU_NODE_PORT"))
    host: str = field(default="127.0.0.1", metadata=_env("MGPU_NODE_HOST"))
    gpus: str | None = field(default=None, metadata=_env("MGPU_GPUS"))
    fake_gpus: int | None = field(default=None, metadata=_env("MGPU_FAKE_GPUS"))
    data_dir: Path | None = field(default=None, metadata=_env("MGPU_NODE_DATA_DIR"))
    kill_grace: float = field(default=30.0, metadata=_env("MGPU_KILL_GRACE"))
    fence_timeout: float | None = field(default=None, metadata=_env("MGPU_FENCE_TIMEOUT"))
    fence_on_disconnect: bool = field(default=False, metadata=_env("MGPU_FENCE_ON_DISCONNECT"))

    @property
    def effective_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        return xdg_data_home() / "mgpu" / f"node-{self.node_id}"


@dataclass(frozen=True)
class ClientConfig:
    """Where the client finds the master."""

    master_host: str = field(default="localhost", metadata=_env("MGPU_MASTER_HOST"))
    master_port: int = field(default=DEFAULT_PORT, metadata=_env("MGPU_MASTER_PORT"))
    timeout: float = field(default=30.0, metadata=_env("MGPU_TIMEOUT"))


@dataclass(frozen=True)
class LogConfig:
    level: str = field(default="info", metadata=_env("MGPU_LOG_LEVEL"))
    file: Path | None = field(default=None, metadata=_env("MGPU_LOG_FILE"))
    format: str = field(default="text", metadata=_env("MGPU_LOG_FORMAT"))


C = TypeVar("C")

SECTIONS: dict[type[Any], str] = {
    MasterConfig: "master",
    NodeConfig: "node",
    ClientConfig: "client",
    LogConfig: "log",
}


def config_file() -> Path:
    explicit = os.environ.get("MGPU_CONFIG")
    if explicit:
        return Path(explicit)
    return xdg_config_home() / "mgpu" / "config.toml"


def read_file(path: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """The parsed TOML file and its path, or ({}, None) when there is none."""
    path = path or config_file()
    if not path.is_file():
        if os.environ.get("MGPU_CONFIG"):
            raise ConfigError(f"MGPU_CONFIG names {path}, which does not exist: fix or unset it")
        return {}, None
    import tomllib

    try:
        with path.open("rb") as f:
            return tomllib.load(f), path
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e


def _coerce(kind: Any, raw: Any, where: str) -> Any:
    """Turn a value from the environment, file or a flag into the field's type."""
    if raw is None:
        return None
    text = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if "Path" in text:
            return Path(os.path.expanduser(str(raw)))
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
        if text.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {raw!r} is not a valid {text.split(' ')[0]}") from None


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
    (None means not given).
    """
    flags = flags or {}
    env = os.environ if environ is None else environ
    if file_data is None:
        file_data, file_path = read_file()
    section = file_data.get(SECTIONS[cls], {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {file_path}: [{SECTIONS[cls]}] must be a table")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_name = f.metadata.get("env")
        if flags.get(f.name) is not None:
            values[f.name] = _coerce(f.type, flags[f.name], f"--{f.name.replace('_', '-')}")
            sources[f.name] = "flag"
        elif env_name and env.get(env_name):
            values[f.name] = _coerce(f.type, env[env_name], env_name)
            sources[f.name] = f"env {env_name}"
        elif f.name in section:
            values[f.name] = _coerce(f.type, section[f.name], f"{file_path} [{SECTIONS[cls]}]")
            sources[f.name] = f"file {file_path}"
        else:
            sources[f.name] = "default"
    if cls is ClientConfig:
        _apply_master_env(env, values, sources)
    return cls(**values), sources


def _apply_master_env(env: Any, values: dict[str, Any], sources: dict[str, str]) -> None:
    """``MGPU_MASTER=host:port`` wins over the founding MGPU_MASTER_HOST/PORT pair."""
    master = env.get("MGPU_MASTER")
    if not master:
        return
    host, port = parse_hostport(master, "MGPU_MASTER")
    # A flag still wins, field by field (``--master-port`` alone keeps MGPU_MASTER's host).
    if sources["master_host"] != "flag":
        values["master_host"] = host
        sources["master_host"] = "env MGPU_MASTER"
    if port is not None and sources["master_port"] != "flag":
        values["master_port"] = port
        sources["master_port"] = "env MGPU_MASTER"


def parse_hostport(text: str, where: str) -> tuple[str, int | None]:
    """``host``, ``host:port`` or ``[v6]:port`` → (host, port or None)."""
    text = text.strip()
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text.strip("[]"), None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {text!r} is not HOST:PORT (e.g. gpu-master:8080)")
    return host.strip("[]") or "localhost", int(port)


def describe(cfg: Any, sources: dict[str, str]) -> list[tuple[str, str, str]]:
    """Rows of (name, value, source) for ``mgpu config``."""
    return [
        (f.name, str(getattr(cfg, f.name)), sources.get(f.name, "default"))
        for f in dataclasses.fields(cfg)
    ]
