"""The ``mgpu`` command and the founding per-script entry points.

``main(argv)`` parses the arguments, runs one subcommand and returns the exit status. It
catches :class:`~mgpu.core.errors.MgpuError` once: ``error: <message>`` on stderr and the
error's ``exit_code`` (tracebacks only with ``-v``); argparse usage errors exit 2 and
Ctrl-C exits 130.

The package, in the order a command line goes through it:

* :mod:`~mgpu.cli.grammar`: the subcommands and their flags; reads a command line.
* :mod:`~mgpu.cli.plainargs`: reads the plain ones without argparse, from the same grammar.
* :mod:`~mgpu.cli.jobargs`: the job flags of ``submit`` and ``srun``, turned into a job.
* :mod:`~mgpu.cli.commands`: one function per subcommand about jobs and nodes.
* :mod:`~mgpu.cli.admin_commands`: ``config``, ``token``, ``events``, ``certs``, and
  ``server``, ``node`` and ``up``, which run a master or an agent (imported only for them).
* :mod:`~mgpu.cli.shared`: what they share (the client the global options name, output).

Start-up time is part of the interface (``mgpu submit`` costs at most 2.5 times ``python -c
pass``), so these modules import only os and sys at their top; each subcommand imports what
it needs when it runs, and only ``server``, ``node`` and ``up`` import the master or the
agent (and with them aiohttp). Even argparse (with the ``re`` and ``enum`` it imports, as
costly as the interpreter's own start-up) is imported only for a command line that
:mod:`~mgpu.cli.plainargs` does not read: the same grammar functions feed both (see
:func:`~mgpu.cli.grammar.plain_args`).
"""

from __future__ import annotations

import os
import sys

from mgpu.cli.commands import cmd_attach, cmd_srun
from mgpu.cli.grammar import build_parser, plain_args, subcommand_of
from mgpu.cli.shared import write
from mgpu.core.errors import MgpuError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable


def main(argv: list[str] | None = None) -> int:
    """Run ``mgpu`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    ns = plain_args(args)
    if ns is None:
        parser = build_parser(subcommand_of(args))
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
        write(f"error: {e.message}\n", err=True)
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
        write(
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
