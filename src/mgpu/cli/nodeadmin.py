"""``mgpu drain NODE`` and ``mgpu resume NODE`` (admins)."""

from __future__ import annotations

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse


def cmd_drain(ns: argparse.Namespace) -> int:
    from mgpu.cli.shared import client_for, write
    from mgpu.client.nodeadmin import drain

    done = drain(client_for(ns), ns.node, ns.reason or "")
    if not done.registered:
        write(f"{done.node_id}: drained; it takes no jobs when it joins\n")
    elif done.running_jobs:
        write(f"{done.node_id}: draining; no new jobs go there, its {done.running_jobs} "
              f"running job(s) finish (`mgpu nodes` says drained once they have)\n")
    else:
        write(f"{done.node_id}: drained; no job runs there\n")
    return 0


def cmd_resume(ns: argparse.Namespace) -> int:
    from mgpu.cli.shared import client_for, write
    from mgpu.client.nodeadmin import resume

    done = resume(client_for(ns), ns.node)
    write(f"{done.node_id}: resumed; it takes jobs again\n")
    return 0
