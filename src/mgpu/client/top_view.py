"""What ``mgpu top`` shows: the screen as lines, from the dashboard stream's plain data.

A pure function of the data, the screen's size and ``now`` (:func:`screen`), so that the
layout is tested without a terminal; ``cli/top.py`` draws the lines and reads the keys.
"""

from __future__ import annotations

from mgpu.client.tables import clean, table
from mgpu.core.timefmt import format_elapsed

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any

HEADERS = ("ID", "NAME", "USER", "STATE", "GPUS", "NODE", "TIME", "LIMIT", "REASON")
HELP = "q quit  n/p next/previous page"


def _seconds(text: str | None) -> float | None:
    from datetime import datetime

    return None if text is None else datetime.fromisoformat(text).timestamp()


def _gpus(node: dict[str, Any]) -> str:
    """A node's GPUs in one cell: ``index:job`` (``-`` when free), with the utilisation
    when the node reports it and ``!`` when something outside mgpu uses the GPU."""
    cells = []
    for g in node["gpus"]:
        cell = f"{g['index']}:{g['job_id'] if g.get('job_id') is not None else '-'}"
        util = g.get("utilization")
        if util is not None:
            cell += f"({util}%)"
        if g.get("busy_outside"):
            cell += "!"
        cells.append(cell)
    return " ".join(cells)


def node_lines(nodes: list[dict[str, Any]], most: int) -> list[str]:
    """The nodes table, at most ``most`` lines (a last line counts those left out)."""
    rows = []
    for n in nodes:
        used = sum(1 for g in n["gpus"] if g.get("job_id") is not None)
        rows.append((clean(n["node_id"]), n["state"], f"{used}/{len(n['gpus'])}", _gpus(n),
                     clean(n.get("reason") or "")))
    lines = table(("NODE", "STATE", "USED", "GPUS (index:job)", "REASON"), rows,
                  right=(2,)).splitlines()
    if len(lines) > most:
        left = len(lines) - (most - 1)
        lines = [*lines[: most - 1], f"... {left} more node{'s' if left > 1 else ''}"]
    return lines


def queue_lines(jobs: list[dict[str, Any]], now: float) -> list[str]:
    """The queue table of ``jobs``: TIME is how long a running job has run."""
    rows = []
    for j in jobs:
        started = _seconds(j.get("started_at"))
        ran = format_elapsed(now - started) if started is not None and \
            j["state"] == "running" else ""
        limit = j.get("time_limit")
        reason = j.get("reason") or ""
        if j.get("expected_start"):
            reason = f"{reason} (starts ~{j['expected_start']})".strip()
        rows.append(tuple(map(clean, (
            str(j["id"]), j["name"], j["user"], j["state"], str(j["gpus"]),
            j.get("node") or "-", ran, format_elapsed(limit) if limit else "none", reason))))
    return table(HEADERS, rows, right=(0, 4, 6, 7)).splitlines()


def screen(data: dict[str, Any], width: int, height: int, now: float,
           title: str, status: str) -> tuple[list[str], int]:
    """The screen's lines (each cut to ``width``), and how many queue rows it shows.

    ``data`` holds the last ``cluster``, ``nodes`` and ``queue`` events (any may be
    missing before the first); ``status`` says how the stream is (live, reconnecting).
    """
    lines = [f"mgpu top  {title}  {status}"]
    cluster = data.get("cluster")
    if cluster is not None:
        jobs = cluster["jobs"]
        other = sum(v for k, v in jobs.items() if k not in ("running", "pending"))
        lines.append(f"{cluster['user']}{' (admin)' if cluster['admin'] else ''}  "
                     f"jobs: {jobs.get('running', 0)} running, {jobs.get('pending', 0)} "
                     f"pending, {other} ended  GPUs: {cluster['gpus_used']}/{cluster['gpus']}"
                     f" used  nodes: {cluster['nodes']}")
    nodes = data.get("nodes")
    if nodes is not None:
        lines.append("")
        lines += node_lines(nodes["nodes"], max(2, height // 3)) if nodes["nodes"] else [
            "no node has joined yet"]
    shown = 0
    queue = data.get("queue")
    footer = HELP
    if queue is not None:
        lines.append("")
        room = max(0, height - len(lines) - 2)  # the header and the footer
        body = queue_lines(queue["jobs"][:room], now)
        shown = len(body) - 1
        lines += body if shown else ["the queue is empty"]
        if queue["total"]:
            first = queue["offset"] + 1
            footer = f"jobs {first}-{queue['offset'] + shown} of {queue['total']}  {HELP}"
    lines = lines[: height - 1]
    lines += [""] * (height - 1 - len(lines))
    lines.append(footer)
    return [line[:width] for line in lines], shown
