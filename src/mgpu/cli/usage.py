"""``mgpu usage``: GPU-hours, job counts and average wait, like SLURM's ``sreport``/``sacct``.

``mgpu usage [--user U] [--since 2026-11-01] [--until ...] [--by user|node|day]
[--json|--csv]``: the caller's own usage (an admin's: everyone's, or ``--user``'s), this
month so far unless ``--since``/``--until`` say otherwise (``--until`` is exclusive).
"""

from __future__ import annotations

from mgpu.cli.shared import client_for, write
from mgpu.core.errors import UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse


def usage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--user", metavar="USER", help="one user's usage (others': admins)")
    p.add_argument("-S", "--since", metavar="WHEN",
                   help="from this date or time, UTC (2026-11-01, 2026-11-01T08:00; default: "
                   "the start of this month)")
    p.add_argument("-E", "--until", metavar="WHEN", help="up to this date or time, exclusive "
                   "(default: now)")
    p.add_argument("--by", choices=("user", "node", "day"), default="user",
                   help="a row per user (default), node or UTC day")
    p.add_argument("--json", action="store_true", help="the master's JSON")
    p.add_argument("--csv", action="store_true", help="comma-separated, with a header line")


def cmd_usage(ns: argparse.Namespace) -> int:
    from mgpu.client.usage import get_usage, usage_csv, usage_table

    if ns.json and ns.csv:
        raise UsageError("give one of --json and --csv")
    reply = get_usage(client_for(ns), ns.since, ns.until, ns.by, ns.user)
    if ns.json:
        from mgpu.utils import plainjson

        write(plainjson.dumps(reply) + "\n")
    elif ns.csv:
        write(usage_csv(reply))
    else:
        write(usage_table(reply) + "\n")
    return 0
