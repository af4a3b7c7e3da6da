"""The ``mgpu`` command and the founding per-script entry points.

``main(argv)`` parses the arguments, runs one subcommand and returns the exit status. It
catches :class:`~mgpu.core.errors.MgpuError` once: ``error: <message>`` on stderr and the
error's ``exit_code`` (tracebacks only with ``-v``); argparse usage errors exit 2 and
Ctrl-C exits 130.

Start-up time is part of the interface (``mgpu submit`` costs at most 2.5 times ``python -c
pass``), so this module imports only os and sys; each subcommand imports what it needs when
it runs, and only ``server``, ``node`` and ``up`` import the master or the agent (and with
them aiohttp). Even argparse (with the ``re`` and ``enum`` it imports, as costly as the
interpreter's own start-up) is imported only for a command line that :mod:`mgpu.plainargs`
does not read: the same grammar functions below feed both (see ``_plain_args``).
"""

from __future__ import annotations

import os
import sys

from mgpu import __version__
from mgpu.core.errors import ConnectionFailed, MgpuError, UsageError
from mgpu.plainargs import REMAINDER

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from mgpu.client.client import SimpleClient

    Handler = Callable[[argparse.Namespace], int]

# SLURM's short state codes (squeue -t) and ours.
STATE_CODES = {
    "PD": "pending",
    "R": "running",
    "CD": "completed",
    "F": "failed",
    "CA": "cancelled",
    "TO": "timeout",
    "NF": "node_fail",
}
STATES = tuple(STATE_CODES.values())


# ----------------------------------------------------------------------------- helpers


def exit_status(state: str, exit_code: int | None) -> int:
    """The status for the shell from how a job ended: its exit code, 128+N for signal N,
    and never 0 unless it completed."""
    code = 0 if exit_code is None else exit_code
    if code < 0:  # a signal number, negated
        code = 128 - code
    if not 0 <= code <= 255:
        code = 1
    if code == 0 and state != "completed":
        code = 1
    return code


def _write(text: str, *, err: bool = False) -> None:
    (sys.stderr if err else sys.stdout).write(text)


def _load(ns: argparse.Namespace, cls: type[Any], flags: dict[str, Any]) -> Any:
    """``core.config.load(cls, flags)`` (flags not given left out); the config file is
    read once per command and kept on ``ns``. Returns (config, sources)."""
    from mgpu.core.config import load, read_file

    if getattr(ns, "config_file", None) is None:
        ns.config_file = read_file()
    data, path = ns.config_file
    given = {k: v for k, v in flags.items() if v is not None}
    return load(cls, given, file_data=data, file_path=path)


def _master_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """``--master HOST[:PORT]`` as ClientConfig flags (empty when not given)."""
    text = getattr(ns, "master", None)
    if not text:
        return {}
    from mgpu.core.config_sources import parse_hostport

    host, port = parse_hostport(text, "--master")
    return {"master_host": host, "master_port": port}


def _log_flags(ns: argparse.Namespace) -> dict[str, Any]:
    return {
        "level": getattr(ns, "log_level", None),
        "file": getattr(ns, "log_file", None),
        "format": getattr(ns, "log_format", None),
    }


def _client_flags(ns: argparse.Namespace) -> dict[str, Any]:
    """``--master`` and ``--ca`` as ClientConfig flags (empty when not given)."""
    flags = _master_flags(ns)
    ca = getattr(ns, "ca", None)
    if ca:
        flags["ca"] = ca
    return flags


def _client(ns: argparse.Namespace) -> SimpleClient:
    """A client of the master that ``--master``, the environment and the config file name:
    ``load(ClientConfig)``'s values, resolved without importing ``dataclasses``; its token
    from ``--token-file``, ``$MGPU_TOKEN`` or the default token file."""
    from mgpu.client.client import SimpleClient
    from mgpu.core.config_sources import client_settings

    host, port, timeout, ca, tls = client_settings(_client_flags(ns))
    return SimpleClient(host, port, timeout, token_file=getattr(ns, "token_file", None),
                        ca=ca, tls=tls)


def _count(text: str, what: str) -> int:
    if text.isascii() and text.strip().isdigit() and int(text) > 0:
        return int(text)
    raise UsageError(f"{what} must be a positive whole number of GPUs, got {text!r}")


def _gpus(ns: argparse.Namespace) -> int:
    """The GPU count from ``-G/--gpus N`` and SLURM's ``--gres=gpu:N`` (default 1)."""
    count = None if ns.gpus is None else _count(ns.gpus, "-G/--gpus")
    if ns.gres is not None:
        kind, _, num = ns.gres.partition(":")
        if kind != "gpu" or ":" in num:
            raise UsageError(f"--gres takes gpu:N (GPU types are not supported), got {ns.gres!r}")
        from_gres = _count(num or "1", "--gres=gpu:N")
        if count is not None and count != from_gres:
            raise UsageError(f"-G/--gpus {count} and --gres={ns.gres} disagree; give one")
        count = from_gres
    return 1 if count is None else count


def _job_env(exports: list[str], envs: list[str]) -> dict[str, str]:
    """The job's environment: the submitter's whole environment (SLURM's ``ALL``) or, with
    ``--export=NONE``, nothing; then each ``KEY=VAL`` given, and each bare ``KEY`` copied
    from here. ``--export`` takes a comma list like SLURM; ``--env`` one variable."""
    exported = [i for e in exports for i in e.split(",") if i]
    words = {i.upper() for i in exported} & {"ALL", "NONE"}
    if len(words) == 2:
        raise UsageError("--export: ALL and NONE cannot both be given")
    env = {} if "NONE" in words else dict(os.environ)
    for item in [i for i in exported if i.upper() not in words] + envs:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"--export/--env takes KEY=VALUE, got {item!r}")
        if not sep:
            if key not in os.environ:
                raise UsageError(f"--export/--env {key}: {key} is not set here; use {key}=VALUE")
            value = os.environ[key]
        env[key] = value
    return env


def _command(words: list[str]) -> tuple[str, list[str] | None]:
    """The job's command: one word is a shell command line (``'python t.py'``), run by
    ``/bin/sh -c``; several words are run as they are, without a shell, as srun does (and
    shown joined as ``shlex.join`` does: ``python t.py --name 'a b'``)."""
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("a job needs a command: mgpu submit [options] 'COMMAND ...'")
    if len(words) == 1:
        return words[0], None
    return " ".join(map(_shell_quote, words)), list(words)


# The characters shlex.quote leaves unquoted: [\w@%+=:,./-] with re.ASCII.
_SHELL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-")


def _shell_quote(word: str) -> str:
    """``shlex.quote(word)``, its rule written out: ``shlex`` imports ``re`` (start-up)."""
    if not word:
        return "''"
    if _SHELL_SAFE.issuperset(word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def _states(text: str) -> list[str]:
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        state = STATE_CODES.get(item.upper(), item.lower())
        if state not in STATES:
            codes = ", ".join(f"{k}={v}" for k, v in STATE_CODES.items())
            raise UsageError(f"-t/--states: unknown job state {item!r}; use any of {codes}")
        out.append(state)
    return out


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


# -------------------------------------------------------------------------- subcommands


def _time_limit(text: str | None) -> int | None:
    """``-t``: seconds in one of SLURM's formats; None when not given (the master's default)."""
    if text is None:
        return None
    from mgpu.core.timefmt import parse_duration

    limit = parse_duration(text, "-t/--time")
    return 0 if limit is None else limit  # 0: UNLIMITED, asked for explicitly


def cmd_submit(ns: argparse.Namespace) -> int:
    gpus = _gpus(ns)
    command, argv = _command(ns.command)
    env = _job_env(ns.export or [], ns.env or [])
    cwd = os.path.abspath(ns.chdir) if ns.chdir else os.getcwd()
    limit = _time_limit(ns.time)
    if ns.max_requeue is not None and ns.max_requeue < 0:
        raise UsageError("--max-requeue must be 0 or more")
    job_id = _client(ns).submit_job(
        gpus=gpus, cmd=command, name=ns.job_name, cwd=cwd, env=env, time_limit=limit,
        requeue=not ns.no_requeue, max_requeue=ns.max_requeue, stdin=ns.stdin, argv=argv,
    )
    if ns.json:
        _write(f'{{"job_id": {job_id}}}\n')
    elif ns.parsable:
        _write(f"{job_id}\n")
    else:
        _write(f"Submitted job {job_id}\n")
    return 0


def cmd_srun(ns: argparse.Namespace) -> int:
    """Run a command as an interactive job: wait for GPUs, then stream it here, live."""
    gpus = _gpus(ns)
    command, argv = _command(ns.command)
    env = _job_env(ns.export or [], ns.env or [])
    cwd = os.path.abspath(ns.chdir) if ns.chdir else os.getcwd()
    client = _client(ns)
    forward = ns.pty or _has_input()
    job_id = client.submit_job(
        gpus=gpus, cmd=command, name=ns.job_name, cwd=cwd, env=env,
        time_limit=_time_limit(ns.time), interactive=True, stdin=forward, pty=ns.pty,
        argv=argv,
    )
    return _interact(client, job_id, ns.quiet, forward, ns.pty)


def cmd_attach(ns: argparse.Namespace) -> int:
    """Follow a job's output live, and feed its stdin if it was started with --stdin."""
    client = _client(ns)
    job = client.get_job(ns.job_id)
    forward = job.stdin and (job.pty or _has_input())
    return _interact(client, ns.job_id, ns.quiet, forward, job.pty)


def _has_input() -> bool:
    """Whether this process has a stdin worth forwarding (open, and not /dev/null)."""
    import stat

    try:
        mine, null = os.fstat(0), os.stat(os.devnull)
    except OSError:
        return False
    return not (stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev)


def _interact(client: SimpleClient, job_id: int, quiet: bool, forward: bool, pty: bool) -> int:
    """Follow ``job_id`` as srun does; the status to exit with."""
    import _signal as signal  # type: ignore[import-not-found]  # `signal` imports enum

    from mgpu.client.srun import Interactive

    grace = float(os.environ.get("MGPU_SRUN_GRACE") or 10.0)
    tty = pty and os.isatty(0)
    session = Interactive(client, job_id, quiet=quiet, stdin_fd=0 if forward else None,
                          grace=grace)
    restore = None
    if tty:
        import termios
        import tty as ttymod

        def size() -> None:
            cols, rows = os.get_terminal_size(0)
            session.resize(rows, cols)

        session.on_running = size
        signal.signal(signal.SIGWINCH, lambda *_: size())
        restore = termios.tcgetattr(0)
        ttymod.setraw(0)  # keys (Ctrl-C too) go to the job's terminal as they are typed
    else:
        signal.signal(signal.SIGINT, lambda *_: session.interrupt())
    try:
        return session.run()
    finally:
        if restore is not None:
            import termios

            termios.tcsetattr(0, termios.TCSAFLUSH, restore)


def cmd_queue(ns: argparse.Namespace) -> int:
    states = _states(ns.states) if ns.states else None
    if ns.json:
        jobs = _client(ns).list_jobs(states=states, user=ns.user, all=ns.all)
        from mgpu.client import output

        _write(output.to_json(jobs))
        return 0
    # The table needs no models: the plain path starts in a third of the time.
    plain = _client(ns).list_jobs_plain(states=states, user=ns.user, all=ns.all)
    from time import time

    from mgpu.client import tables

    _write(tables.queue_table(tables.queue_rows(plain), time()))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    job = _client(ns).get_job(ns.job_id)
    from mgpu.client import output

    _write(output.to_json(job) if ns.json else output.job_detail(job, _now()))
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    stream = _client(ns).stream_output(ns.job_id, follow=ns.follow)
    sinks = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    last = None
    for kind, data in stream:
        sink = sinks.get(kind)
        if sink is None:
            continue
        if last is not None and last is not sink:
            last.flush()  # keep stdout and stderr in the order they were written
        sink.write(data)
        if ns.follow:
            sink.flush()
        last = sink
    for sink in sinks.values():
        sink.flush()
    if not ns.follow:
        return 0
    if stream.end is None:
        # Say why if the master says (a revoked token, say); else that it stopped.
        _client(ns).get_job(ns.job_id)
        raise ConnectionFailed(f"the output of job {ns.job_id} stopped before the job ended")
    return exit_status(stream.end.state, stream.end.exit_code)


def cmd_wait(ns: argparse.Namespace) -> int:
    jobs = _client(ns).wait(*ns.job_ids, timeout=ns.timeout)
    from mgpu.client import output

    _write(output.to_json(jobs) if ns.json else output.wait_report(jobs))
    if not all(j.state.ended for j in jobs):
        left = ", ".join(f"{j.id} ({j.state.value})" for j in jobs if not j.state.ended)
        _write(f"error: timed out after {ns.timeout:g} s; not ended yet: {left}\n", err=True)
        return 124
    return next((c for j in jobs if (c := exit_status(j.state.value, j.exit_code))), 0)


def cmd_cancel(ns: argparse.Namespace) -> int:
    results = _client(ns).cancel(*ns.job_ids)
    from mgpu.client import output

    if ns.json:
        _write(output.to_json(results))
    else:
        out, err = output.cancel_report(results)
        _write(out)
        _write(err, err=True)
    # One kind of failure gives its own status (4 unknown job, 6 not allowed), else 1.
    kinds = {r.code or "" for r in results if not r.ok}
    if not kinds:
        return 0
    return {"not_found": 4, "forbidden": 6}.get(kinds.pop(), 1) if len(kinds) == 1 else 1


def cmd_nodes(ns: argparse.Namespace) -> int:
    nodes = _client(ns).nodes()
    from mgpu.client import output

    _write(output.to_json(nodes) if ns.json else output.nodes_table(nodes))
    return 0


def cmd_config(ns: argparse.Namespace) -> int:
    from mgpu.client import output
    from mgpu.core.config import ClientConfig, LogConfig, MasterConfig, NodeConfig, config_file

    sections = []
    for name, cls, flags in (
        ("client", ClientConfig, _client_flags(ns)),
        ("master", MasterConfig, {}),
        ("node", NodeConfig, {}),
        ("log", LogConfig, _log_flags(ns)),
    ):
        cfg, sources = _load(ns, cls, flags)
        if isinstance(cfg, NodeConfig) and cfg.data_dir is None:  # show where it will be
            import dataclasses

            cfg = dataclasses.replace(cfg, data_dir=cfg.effective_data_dir)
        sections.append((name, cfg, sources))
    path = ns.config_file[1]
    from mgpu.client.auth import token_source

    where = token_source(getattr(ns, "token_file", None))
    extra = [("client", "token", "(set)" if where else "none", where or "default")]
    if ns.json:
        _write(output.config_json(sections, path, extra))
    else:
        _write(output.config_table(sections, str(path or f"none (would read {config_file()})"),
                                   extra))
    return 0


def cmd_token(ns: argparse.Namespace) -> int:
    """``mgpu token create USER [--admin]`` | ``list`` | ``revoke USER|ID`` (admins)."""
    from mgpu.client import output

    client = _client(ns)
    if ns.action == "list":
        if ns.name is not None:
            raise UsageError("mgpu token list takes no argument")
        tokens = client.list_tokens()
        _write(output.to_json(tokens) if ns.json else output.tokens_table(tokens))
        return 0
    if ns.name is None:
        raise UsageError(f"mgpu token {ns.action} needs a user name"
                         + (" or a token id" if ns.action == "revoke" else ""))
    if ns.action == "create":
        made = client.create_token(ns.name, admin=ns.admin)
        if ns.json:
            _write(output.to_json(made))
        else:
            kind = "admin token" if made.admin else "token"
            _write(f"{made.token}\n")
            _write(f"mgpu: {kind} {made.id} for {made.user}: shown only now. Give it to "
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
        _write(output.to_json({"revoked": ids}))
    else:
        _write("".join(f"Revoked token {i}\n" for i in ids))
    return 0


def cmd_events(ns: argparse.Namespace) -> int:
    """The audit log (admins): who did what, and when."""
    from mgpu.client import output

    events = _client(ns).events(ns.n)
    _write(output.to_json(events) if ns.json else output.events_table(events))
    return 0


def cmd_certs(ns: argparse.Namespace) -> int:
    """A self-signed CA and a server certificate for the master (``cryptography``)."""
    from mgpu.utils.certs import make_certs

    out = ns.dir or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "mgpu", "tls")
    hosts = ns.host or None
    made = make_certs(out, hosts)
    _write(made)
    return 0


def _master_config(ns: argparse.Namespace) -> Any:
    from mgpu.core.config import MasterConfig

    flags = {"host": ns.host, "port": ns.port, "data_dir": ns.data_dir,
             "tls_cert": ns.tls_cert, "tls_key": ns.tls_key}
    flags["node_timeout"] = getattr(ns, "node_timeout", None)
    return _load(ns, MasterConfig, flags)[0]


def _node_config(ns: argparse.Namespace, **extra: Any) -> Any:
    from dataclasses import replace

    from mgpu.core.config import NodeConfig

    flags = {
        "node_id": ns.node_id,
        "gpus": ns.gpus,
        "fake_gpus": ns.fake_gpus,
        "ca": getattr(ns, "ca", None),
        **extra,
    }
    cfg = _load(ns, NodeConfig, flags)[0]
    if extra.get("join_token_file"):  # the flag wins over MGPU_JOIN_TOKEN
        cfg = replace(cfg, join_token=None)
    return cfg


def _log_config(ns: argparse.Namespace) -> Any:
    from mgpu.core.config import LogConfig

    return _load(ns, LogConfig, _log_flags(ns))[0]


def cmd_server(ns: argparse.Namespace) -> int:
    from mgpu.server.master import run_master

    return int(run_master(_master_config(ns), _log_config(ns)))


def cmd_node(ns: argparse.Namespace) -> int:
    master = _master_flags(ns)
    node = _node_config(
        ns,
        master_host=ns.master_host or master.get("master_host"),
        master_port=ns.master_port or master.get("master_port"),
        port=ns.port,
        data_dir=ns.data_dir,
        join_token_file=ns.join_token_file,
    )
    from mgpu.node.agent import run_node

    return int(run_node(node, _log_config(ns)))


def cmd_up(ns: argparse.Namespace) -> int:
    master = _master_config(ns)
    node_dir = os.path.join(ns.data_dir, "node") if ns.data_dir else None
    node = _node_config(ns, master_port=master.port, data_dir=node_dir)
    from mgpu.up import run_up

    return int(run_up(master, node, _log_config(ns)))


# ------------------------------------------------------------------------------- parser


def _bad_value(message: str) -> Exception:
    """The error for an argument its ``type`` refuses (argparse words it as a usage error)."""
    import argparse

    return argparse.ArgumentTypeError(message)


def _port(text: str) -> int:
    if text.isdigit() and int(text) < 65536:
        return int(text)
    raise _bad_value(f"must be a port number (0-65535), got {text!r}")


def _job_id(text: str) -> int:
    if text.isascii() and text.isdigit() and int(text) > 0:
        return int(text)
    raise _bad_value(f"not a job id: {text!r}")


def _count_arg(text: str) -> int:
    if text.isascii() and text.isdigit():
        return int(text)
    raise _bad_value(f"must be a whole number, got {text!r}")


def _positive(text: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) <= 10_000:
        return int(text)
    raise _bad_value(f"must be a whole number from 1 to 10000, got {text!r}")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value >= 0:
        return value
    raise _bad_value(f"must be a number of seconds, got {text!r}")


_FORMATTER: type[argparse.HelpFormatter] | None = None  # made by _formatter()


def _formatter() -> type[argparse.HelpFormatter]:
    """argparse's help formatter, minus its ``import shutil`` and its terminal query on
    every ``add_argument`` (both show in the start-up time): the width is found once.
    The class is made on first use, when argparse is imported."""
    global _FORMATTER
    if _FORMATTER is None:
        import argparse

        columns = _terminal_columns()

        class Formatter(argparse.HelpFormatter):
            def __init__(
                self,
                prog: str,
                indent_increment: int = 2,
                max_help_position: int = 24,
                width: int | None = None,
            ) -> None:
                width = columns - 2 if width is None else width
                super().__init__(prog, indent_increment, max_help_position, width)

        _FORMATTER = Formatter
    return _FORMATTER


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``: $COLUMNS, else the terminal's, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _global_args(p: argparse.ArgumentParser, suppress: str) -> None:
    """Global options, accepted before or after the subcommand (defaults suppressed so a
    subcommand's parser does not overwrite what was given before it). ``suppress`` is
    ``argparse.SUPPRESS`` itself for argparse (which tests it by identity), else
    ``mgpu.plainargs.SUPPRESS``."""
    g = p.add_argument_group("global options")
    g.add_argument(
        "--master",
        metavar="HOST:PORT",
        default=suppress,
        help="the master to talk to (else $MGPU_MASTER, else localhost:8080)",
    )
    g.add_argument("--token-file", metavar="PATH", default=suppress,
                   help="your token (else $MGPU_TOKEN, else ~/.config/mgpu/token)")
    g.add_argument("--ca", metavar="PATH", default=suppress,
                   help="CA file to verify the master's TLS certificate (else $MGPU_CA)")
    g.add_argument("-v", "--verbose", action="store_true", default=suppress, help="tracebacks")
    g.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=suppress)
    g.add_argument("--log-file", metavar="PATH", default=suppress)
    g.add_argument("--log-format", choices=("text", "json"), default=suppress)


def _top_args(p: argparse.ArgumentParser, suppress: str) -> None:
    """What ``mgpu`` itself takes before the subcommand."""
    _global_args(p, suppress)
    p.add_argument("--version", action="version", version=f"mgpu {__version__}")


def _job_options(p: argparse.ArgumentParser) -> None:
    """What a job needs, for ``submit`` and ``srun`` alike."""
    p.add_argument("-G", "--gpus", metavar="N", help="GPUs the job needs (default 1)")
    p.add_argument("--gres", metavar="gpu:N", help="SLURM's form of -G")
    p.add_argument("-J", "--job-name", metavar="NAME")
    p.add_argument("-D", "--chdir", metavar="DIR", help="where it runs (default: here)")
    p.add_argument(
        "--export",
        action="append",
        metavar="VARS",
        help="ALL (default), NONE, or KEY=VAL,KEY2,... added to the environment",
    )
    p.add_argument("--env", action="append", metavar="KEY=VAL", help="one variable to set")
    p.add_argument("-t", "--time", metavar="TIME",
                   help="time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")


def _submit_args(p: argparse.ArgumentParser) -> None:
    _job_options(p)
    p.add_argument("--no-requeue", action="store_true",
                   help="do not requeue the job if its node is lost")
    p.add_argument("--max-requeue", type=int, metavar="N",
                   help="requeue at most N times (default: the master's, 3)")
    p.add_argument("--stdin", action="store_true",
                   help="keep the job's stdin open, for `mgpu attach` to write to")
    p.add_argument("--parsable", action="store_true", help="print only the job id")
    p.add_argument("--json", action="store_true")
    p.add_argument("command", nargs=REMAINDER, help="the command line")


def _srun_args(p: argparse.ArgumentParser) -> None:
    _job_options(p)
    p.add_argument("--pty", action="store_true", help="run it on a terminal (bash, vim, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no 'queued'/'running' lines")
    p.add_argument("command", nargs=REMAINDER, help="the command line")


def _attach_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=_job_id)
    p.add_argument("-q", "--quiet", action="store_true", help="no 'queued'/'running' lines")


def _queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="ended jobs too")
    p.add_argument("-u", "--user", metavar="USER")
    p.add_argument(
        "-t", "--states", metavar="STATES", help="comma list, e.g. pending,running or PD,R"
    )
    p.add_argument("--json", action="store_true")


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=_job_id)
    p.add_argument("--json", action="store_true")


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=_job_id)
    p.add_argument(
        "-f", "--follow", action="store_true", help="until the job ends; exit with its code"
    )


def _jobs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_ids", type=_job_id, nargs="+", metavar="JOB_ID")
    p.add_argument("--json", action="store_true")


def _wait_args(p: argparse.ArgumentParser) -> None:
    _jobs_args(p)
    p.add_argument("--timeout", type=_seconds, metavar="S", help="give up after S seconds")


def _json_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to listen on (default 8080; 0: any)")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", metavar="PEM", help="... and this private key")


def _gpu_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpus", metavar="0,1", help="the GPU indices to offer (default: all)")
    g.add_argument("--fake-gpus", type=_count_arg, metavar="N", help="declare N fake GPUs")


def _master_args(p: argparse.ArgumentParser) -> None:
    _server_args(p)
    p.add_argument("--node-timeout", type=_seconds, metavar="S", help="mark a silent node lost")


def _node_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node-id", metavar="ID", help="default: the host name")
    p.add_argument("--master-host", metavar="HOST")
    p.add_argument("--master-port", type=_port, metavar="PORT")
    p.add_argument("--port", type=_port, help="the agent's health port")
    p.add_argument("--data-dir", metavar="DIR")
    p.add_argument("--join-token-file", metavar="PATH",
                   help="the master's join secret (else $MGPU_JOIN_TOKEN, else the local "
                   "master's, when readable)")
    _gpu_args(p)


def _token_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("create", "list", "revoke"),
                   help="create USER [--admin] | list | revoke USER|ID")
    p.add_argument("name", nargs="?", metavar="USER|ID")
    p.add_argument("--admin", action="store_true", help="create: an admin's token")
    p.add_argument("--json", action="store_true")


def _events_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", type=_positive, default=50, metavar="N",
                   help="the last N entries (default 50)")
    p.add_argument("--json", action="store_true")


def _certs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", metavar="DIR",
                   help="where to write them (default ~/.local/share/mgpu/tls)")
    p.add_argument("--host", action="append", metavar="NAME",
                   help="a name or address clients use for the master (repeatable; "
                   "default: this host's name, localhost, 127.0.0.1)")


def _up_args(p: argparse.ArgumentParser) -> None:
    _server_args(p)
    p.add_argument("--node-id", metavar="ID", help="default: the host name")
    _gpu_args(p)


# name -> (handler, one-line help, adds the subcommand's own arguments)
COMMANDS: dict[str, tuple[Handler, str, Callable[[argparse.ArgumentParser], None]]] = {
    "submit": (cmd_submit, "queue a command to run on GPUs", _submit_args),
    "srun": (cmd_srun, "run a command interactively, output here, live", _srun_args),
    "attach": (cmd_attach, "follow a job's output live (and feed its stdin)", _attach_args),
    "queue": (cmd_queue, "list pending and running jobs", _queue_args),
    "show": (cmd_show, "one job in full", _job_args),
    "logs": (cmd_logs, "a job's output", _logs_args),
    "wait": (cmd_wait, "wait for jobs to end; exit with the first non-zero code", _wait_args),
    "cancel": (cmd_cancel, "cancel jobs", _jobs_args),
    "nodes": (cmd_nodes, "nodes and their GPUs", _json_args),
    "config": (cmd_config, "the effective configuration and where it came from", _json_args),
    "token": (cmd_token, "create, list or revoke tokens (admins)", _token_args),
    "events": (cmd_events, "the audit log: who did what (admins)", _events_args),
    "certs": (cmd_certs, "make a CA and a TLS certificate for the master", _certs_args),
    "server": (cmd_server, "run the master", _master_args),
    "node": (cmd_node, "run a node agent", _node_args),
    "up": (cmd_up, "run a master and a local node in one process", _up_args),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``mgpu`` parser; with ``only``, the parser for that subcommand alone.

    Building every subcommand's parser is a noticeable part of a command's start-up, and
    a run needs one: ``main`` passes ``only`` when it can tell the subcommand from argv.
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="mgpu",
        description="A multi-GPU job scheduler: submit, watch and cancel GPU jobs.",
        formatter_class=_formatter(),
    )
    _top_args(parser, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND", required=True)
    for name, (handler, help, add_args) in COMMANDS.items():
        if only is None or name == only:
            p = sub.add_parser(name, help=help, description=help, formatter_class=_formatter())
            _global_args(p, argparse.SUPPRESS)
            add_args(p)
            p.set_defaults(func=handler)
    return parser


def _plain_args(args: list[str]) -> argparse.Namespace | None:
    """``build_parser().parse_args(args)`` for the plain command lines :mod:`mgpu.plainargs`
    reads (most of them), from the same grammar functions, without importing argparse;
    None for the others."""
    from mgpu import plainargs

    def grammar(name: str) -> plainargs.Grammar | None:
        if name not in COMMANDS:
            return None
        g = plainargs.Grammar()
        _global_args(g, plainargs.SUPPRESS)  # type: ignore[arg-type]
        COMMANDS[name][2](g)  # type: ignore[arg-type]
        return g

    top = plainargs.Grammar()
    _top_args(top, plainargs.SUPPRESS)  # type: ignore[arg-type]
    values = plainargs.parse(args, top, grammar)
    if values is None:
        return None
    values["func"] = COMMANDS[values["subcommand"]][0]
    return plainargs.Namespace(**values)  # type: ignore[return-value]


def _subcommand(argv: list[str]) -> str | None:
    """The subcommand ``argv`` runs, if it is plain without parsing (else ``None``)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in COMMANDS:
            return arg
        elif arg in ("--master", "--log-level", "--log-file", "--log-format", "--token-file",
                     "--ca"):
            skip = True  # the option's value follows
        elif arg in ("-h", "--help", "--version") or not arg.startswith("-"):
            return None
    return None


# --------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Run ``mgpu`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    ns = _plain_args(args)
    if ns is None:
        parser = build_parser(_subcommand(args))
        try:
            ns = parser.parse_args(args)
        except SystemExit as e:  # --help, --version and usage errors
            return e.code if isinstance(e.code, int) else 2
    verbose = getattr(ns, "verbose", False)
    try:
        return int(ns.func(ns))
    except KeyboardInterrupt:
        return 130
    except MgpuError as e:
        if verbose:
            import traceback

            traceback.print_exc()
        _write(f"error: {e.message}\n", err=True)
        return _failed(ns, e.exit_code)
    except BrokenPipeError:
        # The reader went away (`mgpu queue | head`): stop quietly, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:
        if verbose:
            import traceback

            traceback.print_exc()
        _write(
            f"error: unexpected {type(e).__name__}: {e} (run with -v for the traceback)\n",
            err=True,
        )
        return _failed(ns, 1)


def _failed(ns: argparse.Namespace, code: int) -> int:
    """The status for a command that failed with ``code``. srun and attach exit with their
    job's own status, so their own failures (refused, the master unreachable or lost) must
    not look like one: the job did not run (a mistake on the command line stays 2)."""
    if ns.func in (cmd_srun, cmd_attach) and code != 2:
        from mgpu.client.srun import NOT_RUN

        return NOT_RUN
    return code


def _as(subcommand: str) -> Callable[[list[str] | None], int]:
    def entry(argv: list[str] | None = None) -> int:
        return main([subcommand, *(sys.argv[1:] if argv is None else argv)])

    entry.__name__ = f"{subcommand}_main"
    entry.__doc__ = f"The founding script for ``mgpu {subcommand}``."
    return entry


server_main = _as("server")  # python src/mgpu_server.py --host 0.0.0.0 --port 8080
node_main = _as("node")  # python src/mgpu_node.py --node-id node1 --master-host localhost
client_main = _as("submit")  # python src/mgpu_client.py --gpus 2 'python train.py'
srun_main = _as("srun")  # python src/mgpu_srun.py --gpus 2 'python train.py'
queue_main = _as("queue")  # python src/mgpu_queue.py
cancel_main = _as("cancel")  # python src/mgpu_cancel.py 3 4
