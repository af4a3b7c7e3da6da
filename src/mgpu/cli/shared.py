"""What the subcommands share: writing out, the client and the configuration that the global
options (``--master``, ``--ca``, ``--token-file``, ``--log-*``) name, and the exit status a
job's end gives.

Only ``sys`` and the stdlib-only ``core/exitstatus`` are imported here; the client and the
config dataclasses are imported by the functions that make them (start-up time, see
:mod:`mgpu.cli`).
"""

from __future__ import annotations

import sys

from mgpu.core.exitstatus import shell_status

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from mgpu.client.client import SimpleClient


def exit_status(state: str, exit_code: int | None) -> int:
    """The status for the shell from how a job ended (see :func:`shell_status`)."""
    return shell_status(state, exit_code)


def job_id_of(client: SimpleClient, ref: str) -> int:
    """The job that ``ref`` names: ``12``, or an array's task ``12_4`` (asked of the
    master; never ``int("12_4")``, which Python reads as 124)."""
    return job_ids(client, [ref])[0] if "_" in ref else int(ref)


def job_ids(client: SimpleClient, refs: list[str]) -> list[int]:
    """The job ids that ``refs`` name (``12``: every task of array 12 not ended)."""
    from mgpu.client.controls import resolve

    return resolve(client, refs)


def write(text: str, *, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(text)


def load_config(ns: argparse.Namespace, cls: type[Any], flags: dict[str, Any]) -> Any:
    """``utils.settings.load(cls, flags)`` (flags not given left out); the config file is
    read once per command and kept on ``ns``. Returns (config, sources)."""
    from mgpu.utils.settings import load, read_file

    if getattr(ns, "config_file", None) is None:
        ns.config_file = read_file()
    data, path = ns.config_file
    given = {k: v for k, v in flags.items() if v is not None}
    return load(cls, given, file_data=data, file_path=path)


def master_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """``--master HOST[:PORT]`` as ClientConfig flags (empty when not given)."""
    text = getattr(ns, "master", None)
    if not text:
        return {}
    from mgpu.core.config_sources import parse_hostport

    host, port = parse_hostport(text, "--master")
    return {"master_host": host, "master_port": port}


def log_flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        "level": getattr(ns, "log_level", None),
        "file": getattr(ns, "log_file", None),
        "format": getattr(ns, "log_format", None),
    }


def client_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """``--master`` and ``--ca`` as ClientConfig flags (empty when not given)."""
    flags = master_flags(ns)
    ca = getattr(ns, "ca", None)
    if ca:
        flags["ca"] = ca
    return flags


def client_for(ns: argparse.Namespace) -> SimpleClient:
    """A client of the master that ``--master``, the environment and the config file name:
    ``load(ClientConfig)``'s values, resolved without importing ``dataclasses``; its token
    from ``--token-file``, ``$MGPU_TOKEN`` or the default token file."""
    from mgpu.client.client import SimpleClient
    from mgpu.utils.config_file import client_settings

    host, port, timeout, ca, tls = client_settings(client_flags(ns))
    return SimpleClient(host, port, timeout, token_file=getattr(ns, "token_file", None),
                        ca=ca, tls=tls)


def now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
