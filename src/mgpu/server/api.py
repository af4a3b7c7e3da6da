"""HTTP routes of the master, one small function per endpoint (see docs/protocol.md).

Every request but ``/api/v1/health`` is authenticated (``server/http.py``). A job belongs
to the user whose token submitted it; acting on a job (cancel, output, input, signal,
resize) is for its owner and admins, and with ``private_jobs`` so is seeing it. Admin
routes (tokens, the audit log) are in ``server/admin.py``. The route table
:data:`ROUTES` also feeds the OpenAPI document (``server/openapi.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import TYPE_CHECKING

from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.api_paths import API, NODE_WS
from mgpu.core.errors import ApiError, NotFound, StoreError, UsageError
from mgpu.core.frames import complete_frames
from mgpu.core.models import ENDED_STATES, JobState, SimpleJob
from mgpu.core.version import __version__ as VERSION
from mgpu.server import admin, api_controls, api_dash, api_metrics, api_nodes, api_usage, retention
from mgpu.server.api_sched import SCHED_ROUTES
from mgpu.server.gang_output import output_files
from mgpu.server.http import (
    MASTER,
    Route,
    body,
    encode,
    guard,
    identity,
    job_id_arg,
    master_of,
    query_flag,
    query_int,
    query_text,
    reply,
)
from mgpu.server.stats import StatsReply

if TYPE_CHECKING:
    from mgpu.server.context import Context

MAX_OFFSET = 10**18  # bytes: an output offset past any real output
MAX_STATES = 200  # characters of a state list (every state, comma-separated, is ~60)
MAX_USER = 256


# ---------------------------------------------------------------------- jobs


async def submit(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    req = await body(request, m.SubmitRequest)
    assert master.committer is not None
    if master.committer.full is not None:  # what room is left is for the running jobs' ends
        raise StoreError(master.committer.full.message, full=True)
    for spec in req.jobs:  # mgpu's own secrets are neither kept nor passed on
        spec.env = retention.strip_secrets(spec.env)
    now = time.time()
    owner = who.user if master.cfg.auth else None
    ids, effects = master.state.on_submit(req.jobs, now, user=owner, admin=who.admin)
    first = master.state.jobs[ids[0]]
    effects.audit(now, first.user, "submit", _submitted(master, ids))
    try:
        await master.apply(effects, now)
    except StoreError:
        master.state.forget_submit(ids)
        raise
    return reply(m.SubmitReply(job_ids=ids), 201)


def _submitted(master: Context, ids: list[int]) -> str:
    """The audit detail of a submit: the job (GPUs, command), or the range of a batch."""
    if len(ids) == 1:
        job = master.state.jobs[ids[0]]
        return f"job {job.id} ({job.gpus} GPU{'s' if job.gpus > 1 else ''}): {job.command[:200]}"
    return f"jobs {ids[0]}-{ids[-1]} ({len(ids)} jobs)"


async def list_jobs(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    private = master.cfg.private_jobs
    asked = query_text(request, "state", MAX_STATES)
    states: set[JobState] | None = None
    if asked is not None:
        try:
            states = {JobState(s.strip().lower()) for s in asked.split(",") if s.strip()}
        except ValueError:
            raise UsageError(
                f"unknown state in {asked[:100]!r}: use "
                + ", ".join(s.value for s in JobState)
            ) from None
    elif not query_flag(request, "all"):
        states = {JobState.PENDING, JobState.RUNNING}
    user = query_text(request, "user", MAX_USER)
    master.state.refresh_pending_reasons()
    jobs = [
        j for j in master.state.jobs.values()
        if (states is None or j.state in states) and (user is None or j.user == user)
        and (not private or who.owns(j))
    ]
    return reply(m.JobListReply(jobs=jobs))


async def show_job(request: web.Request) -> web.Response:
    master = master_of(request)
    job = await _job(request)
    if job.state is JobState.PENDING:
        master.state.refresh_pending_reasons()
    return reply(job)


async def cancel(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    req = await body(request, m.CancelRequest)
    now = time.time()
    results, effects = master.state.on_cancel(req.job_ids, now, who=who,
                                              private=master.cfg.private_jobs)
    done = [r.job_id for r in results if r.ok]
    if done:
        refused = len(results) - len(done)
        listed = ", ".join(map(str, done[:50]))
        effects.audit(now, who.user, "cancel", f"job{'s' if len(done) > 1 else ''} {listed}"
                      + (f" (+{len(done) - 50})" if len(done) > 50 else "")
                      + (f"; {refused} refused" if refused else ""))
    await master.apply(effects, now)
    return reply(m.CancelReply(results=results))


async def wait(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    req = await body(request, m.WaitRequest)
    jobs = [master.state.get(i, who, master.cfg.private_jobs) for i in req.job_ids]
    deadline = time.monotonic() + max(0.0, min(req.timeout, 300.0))
    waiting = [j for j in reversed(jobs) if j.state not in ENDED_STATES]
    async with master.ended:
        while True:
            while waiting and waiting[-1].state in ENDED_STATES:
                waiting.pop()  # each job is looked at until it ends: O(n) in all
            if not waiting or master.closing:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(master.ended.wait(), left)
            except TimeoutError:
                break
    return reply(m.JobListReply(jobs=jobs))


def _own_job(request: web.Request, what: str) -> SimpleJob:
    """The job of the route, if the caller may ``what`` it (owner or admin)."""
    master = master_of(request)
    return master.state.get_own(job_id_arg(request), identity(request),
                                master.cfg.private_jobs, what)


async def _job(request: web.Request, what: str | None = None) -> SimpleJob:
    """The job of the route for the caller to see (or to ``what``); a pruned job's 404
    says it was pruned."""
    master = master_of(request)
    try:
        if what is not None:
            return _own_job(request, what)
        return master.state.get(job_id_arg(request), identity(request),
                                master.cfg.private_jobs)
    except NotFound as e:
        raise await retention.missing(master, job_id_arg(request), identity(request), e
                                      ) from None


async def output(request: web.Request) -> web.StreamResponse:
    """Stream a job's framed output from ``offset``; with ``follow``, until it ends
    (``task=N``: a multi-task job's task N alone). ``status=1`` adds a STATUS frame whenever
    the job's placement changes (srun shows "queued" and "running on"); ``attach=1`` makes
    this stream one of an interactive job's clients, without which the job is cancelled
    after the grace period."""
    master = master_of(request)
    job = await _job(request, "read the output of")
    job_id = job.id
    offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
    follow, status, attach = (query_flag(request, n) for n in ("follow", "status", "attach"))
    files = output_files(job, query_int(request, "task", -1, 0, 65_535))  # (-1: all)
    spool = master.output
    assert spool is not None
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.enable_chunked_encoding()
    ev = asyncio.Event()
    master.watchers.setdefault(job_id, set()).add(ev)
    if attach:
        master.attach(job_id)
    shown: tuple[str, str | None] | None = None
    try:
        await resp.prepare(request)
        while True:
            ev.clear()
            ended = job.state in ENDED_STATES
            if status and (job.state.value, job.node) != shown:
                shown = (job.state.value, job.node)
                await resp.write(m.frame(m.STREAM_STATUS, encode(m.OutputStatus(
                    state=job.state.value, node=",".join(job.nodes_of()) or None,
                    gpu_ids=job.gpu_ids, gpus=job.gpus,
                    ahead=master.state.queue_position(job_id)))))
            if len(files) <= job.run:  # (requeued meanwhile)
                files = output_files(job, query_int(request, "task", -1, 0, 65_535))
            data = spool.read_across(files, offset)
            # Whole frames only: the copy may end inside a frame while the node's next
            # chunk is on its way, and a STATUS or END frame must not land inside one.
            whole = complete_frames(data)
            if whole:
                await resp.write(data[:whole] if whole < len(data) else data)
                offset += whole
                continue
            if ended or not follow or master.closing:
                break
            await ev.wait()
        if job.state in ENDED_STATES:
            end = m.OutputEnd(state=job.state.value, exit_code=job.exit_code,
                              reason=job.reason, started=job.started_at is not None)
            await resp.write(m.frame(m.STREAM_END, encode(end)))
        await resp.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        watchers = master.watchers.get(job_id)
        if watchers is not None:
            watchers.discard(ev)
            if not watchers:
                del master.watchers[job_id]
        if attach:
            master.detach(job_id)
    return resp


async def _until_running(master: Context, job_id: int) -> SimpleJob:
    """The job once it runs (for input, signals): 409 if it has ended by then."""
    job = master.state.get(job_id)
    ev = asyncio.Event()
    master.watchers.setdefault(job_id, set()).add(ev)
    try:
        while job.state is JobState.PENDING and not master.closing:
            ev.clear()
            await ev.wait()
    finally:
        master.watchers.get(job_id, set()).discard(ev)
    if job.state is not JobState.RUNNING or job.node is None:
        raise ApiError(f"job {job_id} is not running ({job.state.value})", 409)
    return job


async def stdin(request: web.Request) -> web.Response:
    """Stream the request body into a running job's stdin; its end closes the stdin."""
    master = master_of(request)
    job = _own_job(request, "write the input of")
    job_id = job.id
    if not job.stdin:
        raise ApiError(f"job {job_id} was not started with --stdin: it reads no input", 409)
    job = await _until_running(master, job_id)
    await master.audit(identity(request).user, "stdin", f"job {job_id}")
    node = job.node
    sent = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        conn = master.conns.get(node or "")
        if conn is None or job.state is not JobState.RUNNING:
            raise ApiError(f"job {job_id} is no longer running", 409)
        conn.send_input(m.JobInput(job_id, chunk))
        sent += len(chunk)
        # Read no more of the upload until the node has written enough of it: the
        # client's writes then block, and nothing in between holds more than a window.
        await conn.input_room(job_id, lambda: job.state is JobState.RUNNING)
    conn = master.conns.get(node or "")
    if conn is not None:
        conn.send(m.JobInput(job_id, b"", eof=True))
    return reply({"job_id": job_id, "bytes": sent})


async def send_signal(request: web.Request) -> web.Response:
    master = master_of(request)
    job = _own_job(request, "signal")
    req = await body(request, m.SignalRequest)
    if not 1 <= req.signum <= 64:
        raise UsageError(f"{req.signum} is not a signal number")
    conns = [c for n in job.nodes_of() if (c := master.conns.get(n))]  # (a gang: every node)
    if job.state is not JobState.RUNNING or not conns:
        raise ApiError(f"job {job.id} is not running ({job.state.value})", 409)
    await master.audit(identity(request).user, "signal", f"job {job.id}: signal {req.signum}")
    if job.state is not JobState.RUNNING:
        raise ApiError(f"job {job.id} is no longer running", 409)
    for conn in conns:
        conn.send(m.JobSignal(job.id, req.signum))
    return reply({"job_id": job.id, "signum": req.signum})


async def resize(request: web.Request) -> web.Response:
    master = master_of(request)
    job = _own_job(request, "resize the terminal of")
    req = await body(request, m.ResizeRequest)
    if not (0 < req.rows < 10000 and 0 < req.cols < 10000):
        raise UsageError("rows and cols must be between 1 and 9999")
    if job.state is JobState.RUNNING and job.node in master.conns:
        master.conns[job.node].send(m.JobResize(job.id, req.rows, req.cols))
    return reply({"job_id": job.id})


# ---------------------------------------------------------------------- cluster


async def stats(request: web.Request) -> web.Response:
    master = master_of(request)
    jobs = Counter(j.state.value for j in master.state.jobs.values())
    nodes = Counter(n.state.value for n in master.state.nodes.values())
    return reply(StatsReply(scheduling=master.scheduling, jobs=dict(jobs), nodes=dict(nodes)))


async def health(request: web.Request) -> web.Response:
    return reply(m.HealthReply(status="ok", version=VERSION))


async def openapi(request: web.Request) -> web.Response:
    from mgpu.server.openapi import document

    return web.Response(body=document(ROUTES), content_type="application/json")


async def node_ws(request: web.Request) -> web.StreamResponse:
    master = master_of(request)
    master.admit_node(request)  # the join secret, or 401 (logged and audited)
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    await master.serve_node(ws, request.remote or "?")
    return ws


# ---------------------------------------------------------------------- the table


ROUTES: tuple[Route, ...] = (
    Route("POST", f"{API}/jobs", submit, "Queue jobs (saved together)", m.SubmitRequest,
          m.SubmitReply, 201),
    Route("GET", f"{API}/jobs", list_jobs, "Jobs in queue order", None, m.JobListReply,
          query=(("state", f"comma list of states (at most {MAX_STATES} characters)"),
                 ("user", "one user's jobs"), ("all", "1: ended jobs too"))),
    Route("POST", f"{API}/jobs/cancel", cancel, "Cancel jobs (the caller's, or any: admins)",
          m.CancelRequest, m.CancelReply),
    Route("POST", f"{API}/jobs/wait", wait, "Long poll until the jobs end", m.WaitRequest,
          m.JobListReply),
    Route("GET", f"{API}/jobs/{{job_id}}", show_job, "One job", None, SimpleJob),
    Route("GET", f"{API}/jobs/{{job_id}}/output", output,
          "A job's framed output (owner or admin)", None, None,
          query=(("offset", f"byte to start at, 0 to {MAX_OFFSET}"),
                 ("follow", "1: until the job ends"),
                 ("status", "1: placement frames"), ("attach", "1: count as a client"))),
    Route("POST", f"{API}/jobs/{{job_id}}/stdin", stdin,
          "Stream the body into a job's stdin (owner or admin)"),
    Route("POST", f"{API}/jobs/{{job_id}}/signal", send_signal,
          "Signal a running job (owner or admin)", m.SignalRequest),
    Route("POST", f"{API}/jobs/{{job_id}}/resize", resize,
          "A job's terminal size (owner or admin)", m.ResizeRequest),
    Route("GET", f"{API}/nodes", api_nodes.nodes, "Nodes and their GPUs, and the node pools"),
    Route("GET", f"{API}/health", health, "Liveness (no token needed)", None, m.HealthReply),
    Route("GET", f"{API}/stats", stats, "The master's own figures: scheduling passes, jobs "
          "and nodes by state", None, StatsReply),
    Route("GET", f"{API}/whoami", admin.whoami, "The token's user", None, m.WhoAmIReply),
    Route("GET", f"{API}/openapi.json", openapi, "This document"),
    Route("POST", f"{API}/tokens", admin.create_token, "A new token (admins)", m.TokenCreateRequest,
          m.TokenCreated, 201),
    Route("GET", f"{API}/tokens", admin.list_tokens, "Active tokens (admins)", None,
          m.TokenListReply),
    Route("POST", f"{API}/tokens/revoke", admin.revoke_tokens, "Revoke tokens (admins)",
          m.TokenRevokeRequest, m.TokenRevokeReply),
    Route("DELETE", f"{API}/nodes/{{node_id}}/credential", admin.reset_node_credential,
          "Forget a node's credential: its next join gets a new one (admins)", None,
          m.NodeCredentialReset),
    Route("GET", f"{API}/events", admin.events, "The audit log (admins)", None, m.EventListReply,
          query=(("limit", f"entries, 1 to {admin.MAX_EVENTS} (default 50)"),
                 ("node", "only this node's entries (its joins, warnings and errors)"))),
    *api_nodes.ROUTES,
    Route("GET", NODE_WS, node_ws, "Node agents' WebSocket (join secret)"),
    *SCHED_ROUTES,
    *api_controls.ROUTES,
    *api_metrics.ROUTES,
    *api_usage.ROUTES,  # (server/api_usage.py)
)


def build_app(master: Context) -> web.Application:
    app = web.Application(middlewares=[guard],
                          client_max_size=master.cfg.max_request_bytes)
    app[MASTER] = master
    app.add_routes([web.route(r.method, r.path, r.handler) for r in ROUTES + api_dash.ROUTES])
    return app
