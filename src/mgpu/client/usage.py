"""GPU usage, as the client gets and shows it: :func:`get_usage` asks the master
(``GET /api/v1/usage``, README "Accounting") and returns its JSON as plain data;
:func:`usage_table` and :func:`usage_csv` render it (``--json`` prints it as it came).
Read with :mod:`mgpu.utils.plainjson`, like ``mgpu queue`` (start-up time).
"""

from __future__ import annotations

from mgpu.client.paths import API, quote
from mgpu.client.replies import error_from_reply, unreadable
from mgpu.client.tables import clean, table
from mgpu.core.timefmt import format_elapsed
from mgpu.utils import plainjson

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    from typing import Any

    from mgpu.client.client import SimpleClient

BY = ("user", "node", "day")
HEADERS = ("USER", "GPU-HOURS", "JOBS", "RUNS", "AVG-WAIT")
CSV_FIELDS = ("key", "gpu_hours", "jobs", "runs", "avg_wait_s")


def usage_path(since: str | None = None, until: str | None = None, by: str = "user",
               user: str | None = None) -> str:
    """The ``GET`` path of a usage query (None: the master's default)."""
    params = [(k, v) for k, v in (("since", since), ("until", until), ("by", by),
                                  ("user", user)) if v is not None]
    return f"{API}/usage?" + "&".join(f"{k}={quote(v)}" for k, v in params)


def get_usage(client: SimpleClient, since: str | None = None, until: str | None = None,
              by: str = "user", user: str | None = None) -> dict[str, Any]:
    """GPU-hours, jobs, runs and average wait in ``[since, until)`` (ISO 8601 dates or
    times; default: this month so far), grouped ``by`` user, node or day, of ``user``
    only when given. A user gets their own usage; an admin anyone's. The master's JSON
    (``since``, ``until``, ``by``, ``user``, ``rows``, ``total``) as plain data."""
    conn = client.connection(client.timeout)
    try:
        resp = conn.request("GET", usage_path(since, until, by, user))
        data = resp.read()
    finally:
        conn.close()
    if resp.status >= 300:
        raise error_from_reply(resp.status, data)
    try:
        reply: dict[str, Any] = plainjson.loads(data)
        if not isinstance(reply["rows"], list) or not isinstance(reply["total"], dict):
            raise TypeError("rows or total of the wrong type")
    except (ValueError, TypeError, KeyError) as e:
        raise unreadable(e) from None
    return reply


def _hours(value: Any) -> str:
    return f"{float(value):.2f}"


def _wait(value: Any) -> str:
    return "-" if value is None else format_elapsed(float(value))


def usage_table(reply: dict[str, Any]) -> str:
    """A table like ``sreport``'s: a row per group, then the total; the window above it."""
    headers = (reply.get("by", "user").upper(), *HEADERS[1:])
    rows = [(clean(str(r["key"])), _hours(r["gpu_hours"]), str(r["jobs"]), str(r["runs"]),
             _wait(r["avg_wait_s"])) for r in reply["rows"]]
    t = reply["total"]
    rows.append(("TOTAL", _hours(t["gpu_hours"]), str(t["jobs"]), str(t["runs"]),
                 _wait(t["avg_wait_s"])))
    whose = f" of {clean(reply['user'])}" if reply.get("user") else ""
    head = f"Usage{whose} from {reply['since']} to {reply['until']} (UTC)\n"
    return head + table(headers, rows, right=(1, 2, 3, 4))


def usage_csv(reply: dict[str, Any]) -> str:
    """CSV with a header line: ``key,gpu_hours,jobs,runs,avg_wait_s`` (the total last)."""
    lines = [",".join((reply.get("by", "user"), *CSV_FIELDS[1:]))]
    for row in [*reply["rows"], reply["total"]]:
        cells = ["" if row[f] is None else str(row[f]) for f in CSV_FIELDS]
        key = cells[0]
        if any(c in key for c in ',"\n\r'):
            cells[0] = '"' + key.replace('"', '""') + '"'
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"
