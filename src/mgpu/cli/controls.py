"""The job-control subcommands: ``mgpu hold``, ``mgpu release`` and ``mgpu limits``
(README "Job controls"). Loaded only when one of them runs."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from mgpu.cli.shared import client_for, job_ids, write
from mgpu.core.errors import UsageError


def _hold(ns: argparse.Namespace, hold: bool) -> int:
    from mgpu.client import controls, output

    client = client_for(ns)
    ids = job_ids(client, ns.job_ids)
    results = controls.hold(client, ids) if hold else controls.release(client, ids)
    if ns.json:
        write(output.to_json(results))
    else:
        verb = "Held" if hold else "Released"
        write("".join(f"{verb} job {r.job_id}\n" for r in results if r.ok))
        write("".join(f"error: {r.error}\n" for r in results if not r.ok), err=True)
    kinds = {r.code or "" for r in results if not r.ok}
    if not kinds:
        return 0
    return {"not_found": 4, "forbidden": 6}.get(kinds.pop(), 1) if len(kinds) == 1 else 1


def cmd_hold(ns: argparse.Namespace) -> int:
    """``mgpu hold ID...``: keep pending jobs from starting until released."""
    return _hold(ns, True)


def cmd_release(ns: argparse.Namespace) -> int:
    """``mgpu release ID...``: let held jobs start."""
    return _hold(ns, False)


def _limit(text: str | None, flag: str, time: bool = False) -> tuple[int | None, bool]:
    """(value, unset) from a limit flag: a number (a duration for ``time``), or ``none``."""
    if text is None:
        return None, False
    if text.strip().lower() in ("none", "unlimited"):
        return None, True
    if time:
        from mgpu.core.timefmt import parse_duration

        return parse_duration(text, flag), False
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{flag} takes a whole number or 'none', got {text!r}")
    return int(text), False


def cmd_limits(ns: argparse.Namespace) -> int:
    """``mgpu limits [list]`` | ``set USER --max-gpus N ...`` | ``clear USER`` (admins)."""
    from mgpu.client import controls, output
    from mgpu.core.control_messages import LimitsSetRequest

    client = client_for(ns)
    if ns.action == "list":
        limits = controls.limits(client)
        write(output.to_json(limits) if ns.json else limits_table(limits))
        return 0
    if ns.user is None:
        raise UsageError(f"mgpu limits {ns.action} needs a user: mgpu limits {ns.action} alice")
    values: dict[str, int | None] = {}
    unset: list[str] = []
    for name, text, is_time in (("max_gpus", ns.max_gpus, False),
                                ("max_pending", ns.max_pending, False),
                                ("max_time", ns.max_time, True)):
        value, off = _limit(text, "--" + name.replace("_", "-"), is_time)
        values[name] = value
        if off:
            unset.append(name)
    if ns.action == "set" and not unset and all(v is None for v in values.values()):
        raise UsageError("mgpu limits set USER needs --max-gpus, --max-pending or --max-time")
    shown = controls.set_limits(client, LimitsSetRequest(
        user=ns.user, clear=ns.action == "clear", unset=unset, **values))
    write(f"{ns.user}: {shown}\n")
    return 0


def limits_table(limits: Mapping[str, object]) -> str:
    """``mgpu limits list``: one row per user with limits ("-": none)."""
    from mgpu.client.tables import table
    from mgpu.core.timefmt import format_duration

    rows = []
    for user, lim in limits.items():
        gpus, pending, most = (getattr(lim, f) for f in ("max_gpus", "max_pending", "max_time"))
        rows.append((user, "-" if gpus is None else str(gpus),
                     "-" if pending is None else str(pending),
                     "-" if most is None else format_duration(most)))
    return table(("USER", "MAX_GPUS", "MAX_PENDING", "MAX_TIME"), rows)


def limit_rows(ns: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """``mgpu config``'s rows of the per-user limits the master has (none when it cannot be
    asked: the rest of the configuration is still worth showing)."""
    from mgpu.client import controls
    from mgpu.core.errors import MgpuError

    try:
        limits = controls.limits(client_for(ns))
    except MgpuError:
        return []
    from mgpu.core.control_messages import describe_limits

    return [("master", f"limits.{user}", describe_limits(lim), "mgpu limits set")
            for user, lim in limits.items()]
