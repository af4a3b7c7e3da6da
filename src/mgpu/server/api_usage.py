"""``GET /api/v1/usage``: GPU-hours, jobs and average wait from the accounting of runs
(``server/accounting.py``), what ``mgpu usage`` and the dashboard's usage page show.

Query: ``since`` and ``until`` (an ISO 8601 date or time, UTC unless it says otherwise, or
POSIX seconds; ``until`` is exclusive; default: from the start of this month, UTC, to
now), ``by`` (``user``, ``node``, ``day`` or ``total``; default ``user``) and ``user``.
A user sees only their own usage (``user`` may name only themselves); an admin sees
everyone's, or one user's with ``user``. The sums are SQL aggregates over the indexed
``runs`` table, run on the store's thread between writes.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial

import msgspec
from aiohttp import web

from mgpu.core.api_paths import API
from mgpu.core.errors import Forbidden, StoreError, UsageError
from mgpu.server.accounting import UsageQuery, UsageRow, usage_rows, usage_sql
from mgpu.server.http import Route, identity, master_of, query_text, reply

MAX_WHEN = 64  # characters of since / until
MAX_USER = 256
LAST_SECOND = 253402300799.0  # 9999-12-31T23:59:59Z: a time a reply can show


class UsageGroup(msgspec.Struct, kw_only=True):
    """One group's sums (README "Accounting")."""

    key: str  # the user, the node, the day (YYYY-MM-DD), or "total"
    gpu_hours: float
    gpu_seconds: float
    jobs: int  # jobs with a run in the window
    runs: int  # runs in the window (a requeued job has several)
    avg_wait_s: float | None  # mean queue wait of the runs that started in the window


class UsageReply(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    by: str
    user: str | None  # whose usage (None: everyone's)
    rows: list[UsageGroup]
    total: UsageGroup


def parse_when(text: str, name: str) -> float:
    """``since``/``until`` as a POSIX time: ISO 8601 (``2026-11-01``,
    ``2026-11-01T08:00``, ``...Z`` or ``+02:00``; UTC when it names no zone) or seconds."""
    bad = UsageError(f"{name} takes a date or time like 2026-11-01 or 2026-11-01T08:00:00Z "
                     f"(or POSIX seconds), got {text[:MAX_WHEN]!r}")
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise bad from None
        seconds = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not 0 <= seconds <= LAST_SECOND:  # (also NaN and infinities)
        raise bad
    return seconds


def month_start(now: float) -> float:
    """The start of ``now``'s month, UTC."""
    day = datetime.fromtimestamp(now, UTC)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def _group(row: UsageRow) -> UsageGroup:
    return UsageGroup(key=row.key, gpu_hours=round(row.gpu_seconds / 3600, 6),
                      gpu_seconds=round(row.gpu_seconds, 3), jobs=row.jobs, runs=row.runs,
                      avg_wait_s=None if row.avg_wait is None else round(row.avg_wait, 3))


async def usage(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    now = time.time()
    since_text, until_text = (query_text(request, n, MAX_WHEN) for n in ("since", "until"))
    user = query_text(request, "user", MAX_USER)
    if not who.admin:
        if user is not None and user != who.user:
            raise Forbidden(f"{who.user} may see only their own usage, not {user}'s: ask an "
                            "admin for everyone's")
        user = who.user
    q = UsageQuery(
        since=month_start(now) if since_text is None else parse_when(since_text, "since"),
        until=now if until_text is None else parse_when(until_text, "until"),
        by=query_text(request, "by", 16) or "user", user=user)
    q.check()
    store, committer = master.store, master.committer
    if store is None or committer is None:
        raise StoreError("the master is starting: try again")
    sql, args = usage_sql(q)
    rows = usage_rows(await committer.read(partial(store.query, sql, args)))
    total_sql, total_args = usage_sql(UsageQuery(q.since, q.until, "total", user))
    total = usage_rows(await committer.read(partial(store.query, total_sql, total_args)))
    return reply(UsageReply(
        since=datetime.fromtimestamp(q.since, UTC), until=datetime.fromtimestamp(q.until, UTC),
        by=q.by, user=user, rows=[_group(r) for r in rows],
        total=_group(total[0] if total else UsageRow("total", 0.0, 0, 0, None))))


ROUTES: tuple[Route, ...] = (
    Route("GET", f"{API}/usage", usage, "GPU-hours, jobs and average wait (the caller's; "
          "anyone's: admins)", None, UsageReply,
          query=(("since", "ISO 8601 date or time, or POSIX seconds (default: this month)"),
                 ("until", "exclusive end, as since (default: now)"),
                 ("by", "user, node, day or total (default user)"),
                 ("user", "one user's usage (others': admins)"))),
)
