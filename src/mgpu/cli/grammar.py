"""The ``mgpu`` grammar: its subcommands, their flags, and reading a command line.

``COMMANDS`` names each subcommand's handler, its one-line help and the function that adds
its arguments. Those functions take an ``argparse.ArgumentParser`` or a
:class:`mgpu.cli.plainargs.Grammar`, which records the same calls: :func:`plain_args` reads
most command lines with the latter, without importing argparse (start-up time, see
:mod:`mgpu.cli`), and :func:`build_parser` builds argparse's parser for the rest (``--help``,
errors, abbreviations).
"""

from __future__ import annotations

import os
import sys

from mgpu.cli import daemon_args
from mgpu.cli.argtypes import job_id, job_ref, seconds
from mgpu.cli.commands import (
    cmd_attach,
    cmd_cancel,
    cmd_logs,
    cmd_nodes,
    cmd_queue,
    cmd_show,
    cmd_srun,
    cmd_submit,
    cmd_wait,
)
from mgpu.cli.jobargs import control_args, gang_args, notify_args, partition_args
from mgpu.cli.plainargs import REMAINDER, SUPPRESS, Grammar, Namespace, parse
from mgpu.cli.simulate import cmd_simulate, simulate_args
from mgpu.cli.usage import cmd_usage, usage_args
from mgpu.core.version import __version__

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    Handler = Callable[[argparse.Namespace], int]


def _admin(name: str, module: str = "admin_commands") -> Handler:
    """The handler ``mgpu.cli.<module>.cmd_<name>``, imported when its subcommand runs: the
    job commands, whose start-up time counts, do not load that module."""

    def run(ns: argparse.Namespace) -> int:
        handler: Handler
        if module == "sched":
            from mgpu.cli import sched

            handler = getattr(sched, f"cmd_{name}")
        else:
            import mgpu.cli.admin_commands as admin_commands

            handler = getattr(admin_commands, f"cmd_{name}")
        return handler(ns)

    run.__name__ = run.__qualname__ = f"cmd_{name}"
    return run


def _lazy(module: str, name: str) -> Handler:
    """The handler ``module.name``, imported only when its subcommand runs."""

    def run(ns: argparse.Namespace) -> int:
        import importlib

        handler: Handler = getattr(importlib.import_module(module), name)
        return handler(ns)

    run.__name__ = run.__qualname__ = name
    run.target = (module, name)  # type: ignore[attr-defined]  # for test_cli_package
    return run


def _controls(name: str) -> Handler:
    """The handler ``mgpu.cli.controls.cmd_<name>``, imported when its subcommand runs."""

    def run(ns: argparse.Namespace) -> int:
        import mgpu.cli.controls as controls

        handler: Handler = getattr(controls, f"cmd_{name}")
        return handler(ns)

    run.__name__ = run.__qualname__ = f"cmd_{name}"
    return run


def _limits_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "set", "clear"), nargs="?", default="list")
    p.add_argument("user", nargs="?", help="the user (set, clear)")
    p.add_argument("--max-gpus", metavar="N", help="GPUs running at once (none: no limit)")
    p.add_argument("--max-pending", metavar="N", help="jobs pending at once (none: no limit)")
    p.add_argument("--max-time", metavar="TIME",
                   help="longest time limit, e.g. 24:00:00 or 1-00 (none: no limit)")
    p.add_argument("--json", action="store_true")


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
    ``mgpu.cli.plainargs.SUPPRESS``."""
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
        help="ALL (default: all but mgpu's secrets, MGPU_TOKEN and MGPU_JOIN_TOKEN), "
        "NONE, or KEY=VAL,KEY2,... added to the environment",
    )
    p.add_argument("--env", action="append", metavar="KEY=VAL", help="one variable to set")
    p.add_argument("-t", "--time", metavar="TIME",
                   help="time limit: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS")
    # Scheduling (issue 11): the job's own priority points.
    p.add_argument("--nice", type=int, metavar="N",
                   help="lower the job's priority by N points (below 0: admins)")
    p.add_argument("--priority", type=int, metavar="N",
                   help="admins: add N points to the job's priority")
    # GPU constraints (README "GPUs as they are"; cli/jobargs.py: gpu_constraints)
    p.add_argument("--gpu-mem", metavar="SIZE",
                   help="each of its GPUs must have this much free memory (20G, 512M)")
    p.add_argument("--gpu-type", metavar="TYPE",
                   help="GPUs of this type only (a100, h200, rtx4090; any case)")
    p.add_argument("--constraint", metavar="gpu=TYPE", help="SLURM's form of --gpu-type")
    gang_args(p)  # multi-node jobs (README "Multi-node jobs")
    partition_args(p)  # partitions (README "Mixed mode"): -p NAME


def _submit_args(p: argparse.ArgumentParser) -> None:
    _job_options(p)
    p.add_argument("--no-requeue", action="store_true",
                   help="do not requeue the job if its node is lost")
    p.add_argument("--max-requeue", type=int, metavar="N",
                   help="requeue at most N times (default: the master's, 3)")
    p.add_argument("--stdin", action="store_true",
                   help="keep the job's stdin open, for `mgpu attach` to write to")
    notify_args(p)
    p.add_argument("--parsable", action="store_true", help="print only the job id")
    p.add_argument("--json", action="store_true")
    control_args(p)
    p.add_argument("command", nargs=REMAINDER, help="the command line")


def _srun_args(p: argparse.ArgumentParser) -> None:
    _job_options(p)
    p.add_argument("--pty", action="store_true", help="run it on a terminal (bash, vim, ...)")
    p.add_argument("-q", "--quiet", action="store_true", help="no 'queued'/'running' lines")
    p.add_argument("-l", "--label", action="store_true",
                   help="put each line of a multi-task job behind its task number (0: ...)")
    p.add_argument("command", nargs=REMAINDER, help="the command line")


def _attach_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=job_id)
    p.add_argument("-q", "--quiet", action="store_true", help="no 'queued'/'running' lines")


def _queue_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="ended jobs too")
    p.add_argument("-u", "--user", metavar="USER")
    p.add_argument(
        "-t", "--states", metavar="STATES", help="comma list, e.g. pending,running or PD,R"
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--start", action="store_true",
                   help="pending jobs with their expected start times")


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=job_ref, help="a job id, or an array's task: 12_4")
    p.add_argument("--json", action="store_true")


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_id", type=job_ref, help="a job id, or an array's task: 12_4")
    p.add_argument(
        "-f", "--follow", action="store_true", help="until the job ends; exit with its code"
    )
    p.add_argument("-l", "--label", action="store_true",
                   help="a multi-task job: put each line behind its task number (0: ...)")
    p.add_argument("--task", type=int, metavar="N", help="a multi-task job: task N's output only")


def _jobs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_ids", type=job_id, nargs="+", metavar="JOB_ID")
    p.add_argument("--json", action="store_true")


def _refs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job_ids", type=job_ref, nargs="+", metavar="JOB_ID",
                   help="job ids; 12 (every task of array 12), 12_4, 12_[3-5]")
    p.add_argument("--json", action="store_true")


def _wait_args(p: argparse.ArgumentParser) -> None:
    _jobs_args(p)
    p.add_argument("--timeout", type=seconds, metavar="S", help="give up after S seconds")


def _share_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("list", "set"), help="list | set USER N (admins)")
    p.add_argument("user", nargs="?", metavar="USER")
    p.add_argument("shares", nargs="?", metavar="N", help="shares (everyone has 1 by default)")
    p.add_argument("--json", action="store_true")


def _json_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")


def _no_args(p: argparse.ArgumentParser) -> None:
    """A subcommand of no arguments of its own (the global options only)."""


def _nodes_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true")
    p.add_argument("--log", metavar="NODE",
                   help="admins: NODE's log, as the master has it (its joins, warnings and "
                   "errors; as `mgpu events --node NODE`)")
    p.add_argument("--reset-credential", metavar="NODE",
                   help="admins: forget NODE's credential, so that its next join with the "
                   "join secret gets a new one (a node that lost its data dir)")


COMMANDS: dict[str, tuple[Handler, str, Callable[[argparse.ArgumentParser], None]]] = {
    "submit": (cmd_submit, "queue a command to run on GPUs", _submit_args),
    "srun": (cmd_srun, "run a command interactively, output here, live", _srun_args),
    "attach": (cmd_attach, "follow a job's output live (and feed its stdin)", _attach_args),
    "queue": (cmd_queue, "list pending and running jobs", _queue_args),
    "show": (cmd_show, "one job in full", _job_args),
    "logs": (cmd_logs, "a job's output", _logs_args),
    "wait": (cmd_wait, "wait for jobs to end; exit with the first non-zero code", _wait_args),
    "cancel": (cmd_cancel, "cancel jobs", _refs_args),
    "hold": (_controls("hold"), "keep pending jobs from starting", _refs_args),
    "release": (_controls("release"), "let held jobs start", _refs_args),
    "limits": (_controls("limits"), "per-user limits: list (all), set or clear (admins)",
               _limits_args),
    "nodes": (cmd_nodes, "nodes and their GPUs", _nodes_args),
    "explain": (_admin("explain", "sched"), "why a job waits: reason, priority, place in "
                "line, expected start", _job_args),
    "share": (_admin("share", "sched"), "fair-share shares and usage; set a user's (admins)",
              _share_args),
    "usage": (cmd_usage, "GPU-hours, jobs and average wait, like sreport (cli/usage.py)",
              usage_args),
    "top": (_admin("top"), "nodes, GPUs and the queue, redrawn live (q quits)", _no_args),
    "config": (_admin("config"), "the effective configuration and where it came from", _json_args),
    "token": (_admin("token"), "create, list or revoke tokens (admins)", daemon_args.token_args),
    "events": (_admin("events"), "the audit log: who did what (admins)", daemon_args.events_args),
    "certs": (_admin("certs"), "make a CA and a TLS certificate for the master",
              daemon_args.certs_args),
    "server": (_admin("server"), "run the master", daemon_args.master_args),
    "node": (_admin("node"), "run a node agent", daemon_args.node_args),
    "up": (_admin("up"), "run a master and a local node in one process", daemon_args.up_args),
    "drain": (_lazy("mgpu.cli.nodeadmin", "cmd_drain"),
              "admins: no new jobs on a node; its running jobs finish", daemon_args.drain_args),
    "resume": (_lazy("mgpu.cli.nodeadmin", "cmd_resume"), "admins: undo `mgpu drain`",
               daemon_args.resume_args),
    "k8s": (_lazy("mgpu.cli.k8s", "cmd_k8s"), "print the Kubernetes manifests that would run a job",
            daemon_args.k8s_args),
    "simulate": (cmd_simulate, "replay a job trace through a scheduling policy, offline",
                 simulate_args),
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
        # Options after the subcommand are its own: the top level must not take `nodes
        # --log` for an abbreviation of its --log-level/--log-file/--log-format.
        allow_abbrev=False,
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


def plain_args(args: list[str]) -> argparse.Namespace | None:
    """``build_parser().parse_args(args)`` for the plain command lines
    :mod:`mgpu.cli.plainargs` reads (most of them), from the same grammar functions, without
    importing argparse; None for the others."""

    def grammar(name: str) -> Grammar | None:
        if name not in COMMANDS:
            return None
        g = Grammar()
        _global_args(g, SUPPRESS)  # type: ignore[arg-type]
        COMMANDS[name][2](g)  # type: ignore[arg-type]
        return g

    top = Grammar()
    _top_args(top, SUPPRESS)  # type: ignore[arg-type]
    values = parse(args, top, grammar)
    if values is None:
        return None
    values["func"] = COMMANDS[values["subcommand"]][0]
    return Namespace(**values)  # type: ignore[return-value]


def subcommand_of(argv: list[str]) -> str | None:
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
