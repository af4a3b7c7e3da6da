"""Where a setting comes from: flag > ``MGPU_*`` environment variable > TOML file > default.

The rule itself, pure: given the flags, an environment mapping and the parsed file, each
field's value and its source (:func:`resolve`, :func:`coerce`), ``HOST:PORT`` and
``MGPU_MASTER``. Reading the real environment and the file is :mod:`mgpu.utils.config_file`
(the client's light path) and :mod:`mgpu.utils.settings` (the dataclasses). It imports
nothing heavy (``pathlib`` only to word an error or make a path), because every client
command resolves its master with it: ``mgpu submit`` has a start-up budget (at most 2.5 times
``python -c pass``) that ``dataclasses``, ``pathlib`` and ``typing`` alone would spend.
"""

from __future__ import annotations

from mgpu.core.errors import ConfigError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from os import PathLike
    from typing import Any

    Field = tuple[str, Any, str | None]  # (name, type or its name, environment variable)

DEFAULT_PORT = 8080

# ClientConfig's fields (name, type, variable) and defaults, for the path that does not
# build the dataclass; test_config checks them against ``dataclasses.fields(ClientConfig)``.
CLIENT_FIELDS: tuple[Field, ...] = (
    ("master_host", "str", "MGPU_MASTER_HOST"),
    ("master_port", "int", "MGPU_MASTER_PORT"),
    ("timeout", "float", "MGPU_TIMEOUT"),
    ("ca", "str | None", "MGPU_CA"),
    ("tls", "bool", "MGPU_TLS"),
)
CLIENT_DEFAULTS: dict[str, Any] = {
    "master_host": "localhost",
    "master_port": DEFAULT_PORT,
    "timeout": 30.0,
    "ca": None,
    "tls": False,
}


def shown_path(path: str | PathLike[str] | None) -> str:
    """``path`` as messages show it: as ``pathlib`` prints it (imported only for errors)."""
    from pathlib import PurePath

    return str(PurePath(path)) if path is not None else "None"


TABLES = ("master", "node", "client", "log", "backend")  # the tables a config file may have


def check_tables(data: Mapping[str, Any], path: str | PathLike[str] | None) -> None:
    """A :class:`ConfigError` when the parsed config file ``data`` has a table that is not
    one of :data:`TABLES` (a typo would otherwise be ignored without a word)."""
    unknown = sorted(set(data) - set(TABLES))
    if unknown:
        raise ConfigError(f"config file {shown_path(path)}: unknown table [{unknown[0]}]: the "
                          f"tables are {', '.join(f'[{t}]' for t in TABLES)}")


def coerce(kind: Any, raw: Any) -> Any:
    """``raw`` (from a flag, the environment or the file) as the field's type ``kind`` (a
    type or, under ``from __future__ import annotations``, its name, e.g. ``"int | None"``);
    ``ValueError`` or ``TypeError`` when it is not one."""
    if raw is None:
        return None
    text = _type_name(kind)
    if "Path" in text:  # a leading ``~`` is expanded by the reader (utils.settings.load)
        from pathlib import Path

        return Path(str(raw))
    if text.startswith("int | str"):  # a count, or words (--fake-gpus 4 or 4:A100:80G)
        word = str(raw).strip()
        return int(word) if word.isascii() and word.isdigit() else word
    if text.startswith("int"):
        return int(raw)
    if text.startswith("float"):
        return float(raw)
    if text.startswith("bool"):
        if isinstance(raw, bool):
            return raw
        return str(raw).strip().lower() in ("1", "true", "yes", "on")
    if isinstance(raw, list):  # a TOML list, for a comma-separated setting
        return ",".join(str(item) for item in raw)
    return str(raw)


def _type_name(kind: Any) -> str:
    return kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))


def resolve(
    table: str,
    fields: Iterable[Field],
    flags: Mapping[str, Any],
    env: Mapping[str, str],
    file_data: Mapping[str, Any],
    file_path: str | PathLike[str] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each field's value from ``flags`` (None: not given), else its non-empty environment
    variable, else the file's ``[table]``, as the field's type; fields found nowhere are
    left out (their default applies). Returns (values, sources), a source being ``"flag"``,
    ``"env MGPU_X"``, ``"file PATH"`` or ``"default"``. A value that is not of its field's
    type is a :class:`ConfigError` naming where it came from (``--port``, ``MGPU_PORT``,
    ``PATH [master]``)."""
    section = file_data.get(table, {})
    if not isinstance(section, dict):
        raise ConfigError(f"config file {shown_path(file_path)}: [{table}] must be a table")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    fields = list(fields)
    unknown = sorted(set(section) - {name for name, _, _ in fields})
    if unknown:
        raise ConfigError(f"config file {shown_path(file_path)}: [{table}] has no setting "
                          f"{unknown[0]!r}: its settings are "
                          f"{', '.join(name for name, _, _ in fields)}")
    for name, kind, env_name in fields:
        if flags.get(name) is not None:
            raw, source = flags[name], "flag"
        elif env_name and env.get(env_name):
            raw, source = env[env_name], f"env {env_name}"
        elif name in section:
            raw, source = section[name], f"file {file_path}"
        else:
            sources[name] = "default"
            continue
        try:
            values[name] = coerce(kind, raw)
        except (TypeError, ValueError):
            if source == "flag":
                where = f"--{name.replace('_', '-')}"
            elif source.startswith("env "):
                where = source[4:]
            else:
                where = f"{shown_path(file_path)} [{table}]"
            kind_name = _type_name(kind).split(" ")[0]
            raise ConfigError(f"{where}: {raw!r} is not a valid {kind_name}") from None
        sources[name] = source
    return values, sources


def apply_master_env(
    env: Mapping[str, str], values: dict[str, Any], sources: dict[str, str]
) -> None:
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
