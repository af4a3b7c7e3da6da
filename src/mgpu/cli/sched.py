"""The scheduling subcommands: ``mgpu explain ID``, ``mgpu share set USER N`` /
``mgpu share list``, and ``mgpu queue --start``. Loaded only when one of them runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mgpu.cli.shared import client_for, job_id_of, write
from mgpu.core.errors import UsageError

if TYPE_CHECKING:
    import argparse


def cmd_explain(ns: argparse.Namespace) -> int:
    """Why a job waits, in plain words (``--json``: the facts)."""
    from mgpu.client import output, scheduling

    client = client_for(ns)
    reply = scheduling.explain(client, job_id_of(client, ns.job_id))
    write(output.to_json(reply) if ns.json else "\n".join(reply.lines) + "\n")
    return 0


def cmd_share(ns: argparse.Namespace) -> int:
    """``mgpu share list`` | ``mgpu share set USER N`` (admins)."""
    from mgpu.client import output, scheduling

    client = client_for(ns)
    if ns.action == "list":
        if ns.user is not None:
            raise UsageError("mgpu share list takes no argument")
        reply = scheduling.shares(client)
    else:
        if ns.user is None or ns.shares is None:
            raise UsageError("mgpu share set needs a user and a number of shares: "
                             "mgpu share set alice 2")
        try:
            count = float(ns.shares)
        except ValueError:
            raise UsageError(f"shares must be a number, 0 or more, got {ns.shares!r}") from None
        if not 0 <= count <= 1_000_000:
            raise UsageError(f"shares must be from 0 to 1000000, got {ns.shares}")
        reply = scheduling.set_share(client, ns.user, count)
    write(output.to_json(reply) if ns.json else scheduling.shares_table(reply))
    return 0


def queue_start(ns: argparse.Namespace, states: list[str] | None) -> int:
    """``mgpu queue --start``: pending jobs and their expected start times (``states``
    other than pending list nothing more: only pending jobs have a start to come)."""
    from time import time

    from mgpu.client import scheduling

    jobs = client_for(ns).list_jobs_plain(states=states or ["pending"], user=ns.user,
                                          all=ns.all)
    write(scheduling.start_table(jobs, time()))
    return 0
