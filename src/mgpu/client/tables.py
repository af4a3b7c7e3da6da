"""Plain-text tables, and the ``mgpu queue`` table, from plain data.

``mgpu queue`` is the command users run most, so its table is built here from the JSON
the master sends, read by ``mgpu.utils.plainjson``: neither msgspec (about 25 ms of
imports) nor the models nor ``enum`` is loaded for it. ``output.queue_table`` renders
jobs as models through the same functions, so both give the same table.
"""

from __future__ import annotations

from mgpu.core.timefmt import format_elapsed

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

QUEUE_HEADERS = ("ID", "NAME", "USER", "STATE", "GPUS", "NODE", "TIME", "REASON")

# One job's row of the queue, as plain values: id (or an array's ``12_[5-99]``), name, user,
# state (its JSON name), GPUs, node (or None), started and ended (POSIX seconds, or None),
# reason (or None).
QueueRow = tuple["int | str", str, str, str, int, "str | None", "float | None", "float | None",
                 "str | None"]


def clean(text: str) -> str:
    """One table cell: no newlines or other control characters."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; ``right`` ones right-aligned.

    The last column is not padded and no line ends in spaces.
    """
    columns = zip(headers, *rows, strict=True)
    widths = [max(map(len, col)) for col in columns]
    right_set = set(right)
    last = len(headers) - 1
    specs = []
    for i, w in enumerate(widths):
        if i == last and i not in right_set:
            specs.append("%s")
        else:
            specs.append(f"%{'' if i in right_set else '-'}{w}s")
    fmt = "  ".join(specs)
    lines = [fmt % tuple(headers)]
    lines.extend([(fmt % tuple(row)).rstrip() for row in rows])  # an empty last cell
    return "\n".join(lines) + "\n"


def queue_table(jobs: Iterable[QueueRow], now: float) -> str:
    """The ``mgpu queue`` table: ``ID NAME USER STATE GPUS NODE TIME REASON``. TIME is how
    long the job has run: until ``now`` while it runs, until its end once it has ended."""
    rows = []
    for job_id, name, user, state, gpus, node, started, ended, reason in jobs:
        if started is None:
            ran = "0:00"
        else:
            ran = format_elapsed((now if state == "running" or ended is None else ended) - started)
        row = (str(job_id), name, user, state, str(gpus), node or "-", ran, reason or "")
        if not "".join(row).isprintable():
            row = tuple(map(clean, row))  # type: ignore[assignment]
        rows.append(row)
    return table(QUEUE_HEADERS, rows, right=(0, 4, 6))


def queue_rows(jobs: Iterable[dict[str, Any]]) -> list[QueueRow]:
    """Rows of jobs as the master's JSON has them (times in RFC 3339)."""
    from datetime import datetime

    def seconds(text: str | None) -> float | None:
        return None if text is None else datetime.fromisoformat(text).timestamp()

    return [(j["id"], j["name"], j["user"], j["state"], j["gpus"],
             ",".join(p["node"] for p in j["parts"]) if j.get("parts") else j["node"],
             seconds(j["started_at"]), seconds(j["ended_at"]),
             reason_cell(j.get("pending_reason"), j["reason"])) for j in jobs]


def reason_cell(code: str | None, words: str | None) -> str | None:
    """A pending job's REASON: its code first, as squeue shows it (``(Resources) waiting
    for 2 free GPUs``); any other job's reason words."""
    if code is None:
        return words
    return f"({code}) {words}" if words else f"({code})"
