"""The subcommands that set up and run a cluster rather than its jobs: ``config``,
``token``, ``events``, ``certs``, and ``server``, ``node`` and ``up``, which run a master,
an agent or both in this process.

Only those three import the master or the agent (and with them aiohttp), inside the
function, so that no other command pays for them; and :mod:`mgpu.cli.grammar` imports this
module only when one of these subcommands runs (start-up time, see :mod:`mgpu.cli`).
"""

from __future__ import annotations

import os

from mgpu.cli.shared import client_flags, client_for, load_config, log_flags, master_flags, write
from mgpu.core.errors import UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from typing import Any


def cmd_config(ns: argparse.Namespace) -> int:
    from mgpu.client import output
    from mgpu.core.config import BackendConfig, ClientConfig, LogConfig, MasterConfig, NodeConfig
    from mgpu.utils.settings import config_file

    sections = []
    for name, cls, flags in (
        ("client", ClientConfig, client_flags(ns)),
        ("master", MasterConfig, {}),
        ("node", NodeConfig, {}),
        ("log", LogConfig, log_flags(ns)),
        ("backend", BackendConfig, {}),
    ):
        cfg, sources = load_config(ns, cls, flags)
        sections.append((name, cfg, sources))
    path = ns.config_file[1]
    from mgpu.client.auth import token_source

    where = token_source(getattr(ns, "token_file", None))
    extra = [("client", "token", "(set)" if where else "none", where or "default")]
    from mgpu.cli.controls import limit_rows

    extra.extend(limit_rows(ns))
    if ns.json:
        write(output.config_json(sections, path, extra))
    else:
        write(output.config_table(sections, str(path or f"none (would read {config_file()})"),
                                   extra))
    return 0


def cmd_token(ns: argparse.Namespace) -> int:
    """``mgpu token create USER [--admin]`` | ``list`` | ``revoke USER|ID`` (admins)."""
    from mgpu.client import output

    client = client_for(ns)
    if ns.action == "list":
        if ns.name is not None:
            raise UsageError("mgpu token list takes no argument")
        tokens = client.list_tokens()
        write(output.to_json(tokens) if ns.json else output.tokens_table(tokens))
        return 0
    if ns.name is None:
        raise UsageError(f"mgpu token {ns.action} needs a user name"
                         + (" or a token id" if ns.action == "revoke" else ""))
    if ns.action == "create":
        made = client.create_token(ns.name, admin=ns.admin)
        if ns.json:
            write(output.to_json(made))
        else:
            kind = "admin token" if made.admin else "token"
            write(f"{made.token}\n")
            write(f"mgpu: {kind} {made.id} for {made.user}: shown only now. Give it to "
                   f"{made.user}, to put in ~/.config/mgpu/token (chmod 600) or "
                   "MGPU_TOKEN\n", err=True)
        return 0
    if ns.admin:
        raise UsageError("--admin goes with mgpu token create")
    if ns.name.isascii() and ns.name.isdigit():
        ids = client.revoke_tokens(token_id=int(ns.name))
    else:
        ids = client.revoke_tokens(user=ns.name)
    if ns.json:
        write(output.to_json({"revoked": ids}))
    else:
        write("".join(f"Revoked token {i}\n" for i in ids))
    return 0


def cmd_events(ns: argparse.Namespace) -> int:
    """The audit log (admins): who did what, and when."""
    from mgpu.client import output

    events = client_for(ns).events(ns.n, node=ns.node)
    write(output.to_json(events) if ns.json else output.events_table(events))
    return 0


def cmd_certs(ns: argparse.Namespace) -> int:
    """A self-signed CA and a server certificate for the master (``cryptography``)."""
    from mgpu.utils.certs import make_certs
    from mgpu.utils.xdg import mgpu_data_path

    out = ns.dir or mgpu_data_path("tls")
    hosts = ns.host or None
    made = make_certs(out, hosts)
    write(made)
    return 0


def _master_config(ns: argparse.Namespace) -> Any:
    from mgpu.core.config import MasterConfig

    flags = {"host": ns.host, "port": ns.port, "data_dir": ns.data_dir,
             "tls_cert": ns.tls_cert, "tls_key": ns.tls_key}
    flags["node_timeout"] = getattr(ns, "node_timeout", None)
    flags["job_retention_days"] = getattr(ns, "job_retention_days", None)
    flags["pools"] = getattr(ns, "pools", None)
    flags["metrics_token_file"] = getattr(ns, "metrics_token_file", None)
    flags["spill_partitions"] = getattr(ns, "spill_to", None)  # partitions (README "Mixed mode")
    flags["spill_after"] = getattr(ns, "spill_after", None)
    return load_config(ns, MasterConfig, flags)[0]


def _node_config(ns: argparse.Namespace, **extra: Any) -> Any:
    from dataclasses import replace

    from mgpu.core.config import NodeConfig

    flags = {
        "node_id": ns.node_id,
        "gpus": ns.gpus,
        "fake_gpus": ns.fake_gpus,
        "ca": getattr(ns, "ca", None),
        "users": ns.users,
        "allow_other_users": ns.allow_other_users,
        "kill_jobs_on_exit": getattr(ns, "kill_jobs_on_exit", None),
        "pool": getattr(ns, "pool", None),
        "address": getattr(ns, "address", None),
        "metrics_port": getattr(ns, "metrics_port", None),
        "metrics_token_file": getattr(ns, "metrics_token_file", None),
        "mgpu_partition": getattr(ns, "mgpu_partition", None),
        "slurm_queue": getattr(ns, "slurm_queue", None),
        **extra,
    }
    cfg = load_config(ns, NodeConfig, flags)[0]
    if extra.get("join_token_file"):  # the flag wins over MGPU_JOIN_TOKEN
        cfg = replace(cfg, join_token=None)
    return cfg


def _rest_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """The SLURM bridge's slurmrestd flags (``--slurm-rest``, ``--slurm-jwt-file``)."""
    return {"slurm_rest": ns.slurm_rest, "slurm_jwt_file": ns.slurm_jwt_file}


def _log_config(ns: argparse.Namespace) -> Any:
    from mgpu.core.config import LogConfig

    return load_config(ns, LogConfig, log_flags(ns))[0]


def cmd_server(ns: argparse.Namespace) -> int:
    from mgpu.core.config import BackendConfig

    backend = load_config(ns, BackendConfig, {
        "kind": None if ns.backend in (None, "local") else ns.backend,
        "partition": ns.partition, "slurm_poll": ns.slurm_poll,
        "mgpu_partition": ns.mgpu_partition, "slurm_queue": ns.slurm_queue,
        **_rest_flags(ns)})[0]
    if ns.backend == "local":
        raise UsageError("mgpu server --backend local: the master runs no jobs itself; start "
                         "`mgpu node` on each GPU machine (or `mgpu up` for one machine)")
    given = [f for f, v in (("--partition", ns.partition), ("--slurm-poll", ns.slurm_poll),
                            ("--mgpu-partition", ns.mgpu_partition),
                            ("--slurm-queue", ns.slurm_queue), ("--slurm-rest", ns.slurm_rest),
                            ("--slurm-jwt-file", ns.slurm_jwt_file)) if v is not None]
    if given and backend.kind != "slurm":
        raise UsageError(f"mgpu server {given[0]} goes with --backend slurm (a master that "
                         "runs its own SLURM bridge)")
    if backend.kind == "slurm":  # a master with its own SLURM bridge (cli/server_backend.py)
        from mgpu.cli.server_backend import run_server_with_backend

        return run_server_with_backend(_master_config(ns), backend, _log_config(ns))
    from mgpu.server.master import run_master

    return int(run_master(_master_config(ns), _log_config(ns)))


def cmd_node(ns: argparse.Namespace) -> int:
    master = master_flags(ns)
    node = _node_config(
        ns,
        master_host=ns.master_host or master.get("master_host"),
        master_port=ns.master_port or master.get("master_port"),
        port=ns.port,
        data_dir=ns.data_dir,
        join_token_file=ns.join_token_file,
        max_output_mib=ns.max_output_mib,
        backend=ns.backend, partition=ns.partition, slurm_poll=ns.slurm_poll,
        **_rest_flags(ns),
    )
    from mgpu.node.manager import run_node

    return int(run_node(node, _log_config(ns)))


def cmd_up(ns: argparse.Namespace) -> int:
    master = _master_config(ns)
    node_dir = os.path.join(ns.data_dir, "node") if ns.data_dir else None
    node = _node_config(ns, master_port=master.port, data_dir=node_dir, backend=ns.backend,
                        partition=ns.partition, slurm_poll=ns.slurm_poll, **_rest_flags(ns))
    from mgpu.cli.up import run_up

    return int(run_up(master, node, _log_config(ns)))


def cmd_top(ns: argparse.Namespace) -> int:
    # Found here with the other commands loaded on use (grammar._admin): curses and
    # threads are for `mgpu top` alone. (Not an admin's command: anyone may run it.)
    from mgpu.cli.top import cmd_top as top

    return top(ns)
