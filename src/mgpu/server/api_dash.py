"""The web dashboard: its static pages (``/``, ``/ui/NAME``) and its one live stream.

The pages are plain ES modules in ``server/web/`` (package data), read once and served
from memory without a token: they hold no data. Everything the dashboard shows comes from
``GET /api/v1/dash/stream``, a Server-Sent Events stream authenticated like any API call
(``Authorization: Bearer TOKEN``, sent by ``fetch``), that carries what one page shows:

* ``cluster``: counts of jobs by state and of GPUs, who is asking (always);
* ``nodes``: every node and its GPUs (``view=nodes``);
* ``queue``: one page of the queue, ``offset``/``limit`` of the jobs in ``state``
  (``view=queue``), with the total, so that 10,000 jobs cost the browser one page;
* both ``nodes`` and ``queue`` with ``view=top`` (``mgpu top``);
* ``job`` and ``log``: one job and its output as text from byte ``log`` on (``view=job``;
  the output only for its owner or an admin).

An event is sent when its data differ from what this stream sent last. The stream wakes
when the master saves a change (:meth:`OutputWatch.changed`), when the followed job has
output, and every :data:`REFRESH` seconds (for what nodes report between changes); a burst
of changes is one snapshot per :data:`COALESCE` seconds, so that an open dashboard costs
the master a bounded amount of work however busy it is.

These routes are outside :data:`mgpu.server.api.ROUTES` (and so outside the OpenAPI
document): the pages are not API, and the stream never ends by itself.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from mgpu.core.api_paths import API
from mgpu.core.errors import MgpuError, NotFound, UsageError
from mgpu.core.frames import STREAM_STDERR, STREAM_STDOUT, split_frames
from mgpu.core.gang import untask
from mgpu.core.models import JobState, run_key
from mgpu.server.http import Route, encode, identity, master_of, query_int, query_text

if TYPE_CHECKING:
    from mgpu.server.auth import Identity
    from mgpu.server.context import Context

WEB = Path(__file__).with_name("web")
STREAM = f"{API}/dash/stream"
PAGES = "/ui/"
COALESCE = 1.0  # seconds: at most one snapshot per stream this often
LOG_COALESCE = 0.2  # seconds: a followed job's output comes sooner
REFRESH = 5.0  # seconds: look again even without a change (node figures, elapsed times)
KEEPALIVE = 15.0  # seconds: a comment line when nothing was sent, so proxies keep it open
MAX_PAGE = 500  # jobs in one queue page
LOG_CHUNK = 1 << 18  # bytes of output read per event
VIEWS = ("nodes", "queue", "job", "usage", "top")  # top: nodes and queue (`mgpu top`)
DEFAULT_STATES = "pending,running"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
         ".txt": "text/plain; charset=utf-8"}

_files: dict[str, bytes] = {}  # name -> content, read on first request


def _static(name: str) -> web.Response:
    """The file ``name`` of ``web/`` (no sub-directories, no dot files): 404 otherwise."""
    suffix = Path(name).suffix
    if "/" in name or name.startswith(".") or suffix not in TYPES:
        raise NotFound(f"no dashboard file {name[:80]!r}: the dashboard is at /")
    data = _files.get(name)
    if data is None:
        try:
            data = _files[name] = (WEB / name).read_bytes()
        except OSError:
            raise NotFound(f"no dashboard file {name[:80]!r}: the dashboard is at /") from None
    # no-cache: the browser revalidates, so an upgraded master's pages are used at once.
    return web.Response(body=data, headers={"Content-Type": TYPES[suffix],
                                            "Cache-Control": "no-cache",
                                            "X-Content-Type-Options": "nosniff"})


async def index(request: web.Request) -> web.Response:
    return _static("index.html")


async def asset(request: web.Request) -> web.Response:
    return _static(request.match_info["name"])


# ---------------------------------------------------------------------- snapshots


def _sees(master: Context, who: Identity) -> str | None:
    """Whose jobs ``who`` sees: None for all of them, else the user's own."""
    return who.user if master.cfg.private_jobs and not who.admin else None


def _cluster(master: Context, who: Identity, now: float) -> dict[str, Any]:
    sees = _sees(master, who)

    def counts() -> dict[str, Any]:
        jobs = Counter(j.state.value for j in master.state.jobs.values()
                       if sees is None or j.user == sees)
        gpus = used = 0
        for node in master.state.nodes.values():
            gpus += len(node.gpus)
            used += sum(1 for g in node.gpus if g.job_id is not None)
        return {"jobs": dict(jobs), "nodes": len(master.state.nodes), "gpus": gpus,
                "gpus_used": used}

    return {"user": who.user, "admin": who.admin, **master.changes.memo(("cluster", sees), counts),
            "now": now}


def _nodes(master: Context, who: Identity) -> dict[str, Any]:
    """Every node, and who holds each held GPU (the job's user and name, where the caller
    may see the job)."""
    private = master.cfg.private_jobs
    holders: dict[int, dict[str, str]] = {}
    for node in master.state.nodes.values():
        for g in node.gpus:
            job = master.state.jobs.get(g.job_id) if g.job_id is not None else None
            if job is not None and (not private or who.owns(job)):
                holders[job.id] = {"user": job.user, "name": job.name}
    return {"nodes": [n.info() for n in master.state.nodes.values()], "holders": holders}


def _queue(master: Context, who: Identity, states: frozenset[JobState], offset: int,
           limit: int) -> dict[str, Any]:
    """One page of the jobs in ``states``, in queue order, and how many there are: once a
    change for every stream that shows the same page."""
    sees = _sees(master, who)

    def page() -> dict[str, Any]:
        if JobState.PENDING in states:
            master.changes.memo("reasons", master.state.refresh_pending_reasons)
        jobs = []
        total = 0
        for j in master.state.jobs.values():
            if j.state in states and (sees is None or j.user == sees):
                if offset <= total < offset + limit:
                    jobs.append(j)
                total += 1
        return {"total": total, "offset": offset, "limit": limit, "jobs": jobs}

    result: dict[str, Any] = master.changes.memo(("queue", sees, states, offset, limit), page)
    return result


def _states(text: str) -> frozenset[JobState]:
    try:
        return frozenset(JobState(s.strip().lower()) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"unknown state in {text[:100]!r}: use "
                         + ", ".join(s.value for s in JobState)) from None


class _Log:
    """A job's output as text, from a byte offset on (stdout and stderr interleaved)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset
        # One decoder: a character split across two frames is still whole on screen.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self, master: Context, job_id: int, runs: int) -> str | None:
        """The next piece of output, or None when there is none yet."""
        assert master.output is not None
        data = master.output.read_across([run_key(job_id, r) for r in range(runs)],
                                         self.offset, LOG_CHUNK)
        frames, used = split_frames(data)
        if not used:
            return None
        self.offset += used
        plain = (untask(s, d, label=True) for s, d in frames)  # (a gang's lines: "0: ...")
        return "".join(self.decoder.decode(d) for s, d in plain
                       if s in (STREAM_STDOUT, STREAM_STDERR))


# ---------------------------------------------------------------------- the stream


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events for the dashboard page ``view`` (see the module docstring)."""
    master = master_of(request)
    who = identity(request)
    view = query_text(request, "view", 10) or "queue"
    if view not in VIEWS:
        raise UsageError(f"view must be one of {', '.join(VIEWS)}, not {view[:20]!r}")
    states = _states(query_text(request, "state", 200) or DEFAULT_STATES)
    offset = query_int(request, "offset", 0, 0, 10**9)
    limit = query_int(request, "limit", 100, 1, MAX_PAGE)
    job_id = query_int(request, "job", 0, 0, 10**18) if view == "job" else 0
    if view == "job":
        master.state.get(job_id, who, master.cfg.private_jobs)  # 404 before the stream
    log = _Log(query_int(request, "log", 0, 0, 10**18)) if view == "job" else None
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    ev = asyncio.Event()
    master.changes.events.add(ev)
    if job_id:
        master.watchers.setdefault(job_id, set()).add(ev)
    sent: dict[str, bytes] = {}
    try:
        await resp.prepare(request)
        last_write = time.monotonic()
        while not master.closing:
            ev.clear()
            out = _events(master, who, view, states, offset, limit, job_id, log, sent)
            if out:
                await resp.write(out)
                last_write = time.monotonic()
            elif time.monotonic() - last_write >= KEEPALIVE:
                await resp.write(b": keepalive\n\n")
                last_write = time.monotonic()
            if log is not None and out and b"event: log\n" in out:
                await asyncio.sleep(LOG_COALESCE)  # more output may be waiting: read it next
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ev.wait(), REFRESH)
            if master.closing:
                break
            await asyncio.sleep(LOG_COALESCE if job_id else COALESCE)
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        master.changes.events.discard(ev)
        watchers = master.watchers.get(job_id)
        if watchers is not None:
            watchers.discard(ev)
            if not watchers:
                del master.watchers[job_id]
    return resp


def _events(master: Context, who: Identity, view: str, states: frozenset[JobState], offset: int,
            limit: int, job_id: int, log: _Log | None, sent: dict[str, bytes]) -> bytes:
    """The events whose data changed since ``sent`` (which this updates), as SSE bytes."""
    now = time.time()
    data: dict[str, object] = {"cluster": _cluster(master, who, now)}
    if view in ("nodes", "top"):
        data["nodes"] = _nodes(master, who)
    if view in ("queue", "top"):
        data["queue"] = _queue(master, who, states, offset, limit)
    if view == "job":
        try:
            job = master.state.get(job_id, who, master.cfg.private_jobs)
        except MgpuError as e:  # pruned while shown
            data["error"] = {"error": e.message, "code": e.code}
        else:
            if job.state is JobState.PENDING:
                master.changes.memo("reasons", master.state.refresh_pending_reasons)
            data["job"] = {"job": job, "may_act": who.owns(job),
                           "ahead": master.state.queue_position(job_id)
                           if job.state is JobState.PENDING else None}
            if log is not None and who.owns(job):
                text = log.read(master, job_id, job.requeues + 1)
                if text is not None:
                    data["log"] = {"offset": log.offset, "text": text}
    out = []
    for name, value in data.items():
        body = encode(value)
        if name == "log" or sent.get(name) != _without_now(name, body, value):
            sent[name] = _without_now(name, body, value)
            out.append(b"event: %s\ndata: %s\n\n" % (name.encode(), body))
    return b"".join(out)


def _without_now(name: str, body: bytes, value: object) -> bytes:
    """What tells two snapshots apart: ``cluster``'s clock does not count as a change."""
    if name == "cluster" and isinstance(value, dict):
        return encode({k: v for k, v in value.items() if k != "now"})
    return body


ROUTES: tuple[Route, ...] = (
    Route("GET", "/", index, "The web dashboard (no token: the page asks for one)"),
    Route("GET", f"{PAGES}{{name}}", asset, "The dashboard's scripts and styles"),
    Route("GET", STREAM, stream, "The dashboard's live Server-Sent Events",
          query=(("view", "nodes, queue, job, usage or top"), ("state", "queue: comma list"),
                 ("offset", "queue: first job"), ("limit", f"queue: 1 to {MAX_PAGE}"),
                 ("job", "job: its id"), ("log", "job: output byte to start at"))),
)
