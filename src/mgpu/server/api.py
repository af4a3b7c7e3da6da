"""HTTP routes of the master, one small function per endpoint (see docs/protocol.md).

Bodies are decoded into the structs of ``core/messages.py`` with validation, so a malformed
request becomes a 400 that names the field; every ``MgpuError`` becomes its status with an
``ErrorReply``; a 500 only ever means a bug, and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.errors import ApiError, MgpuError, NotFound, Rejected, StoreError, UsageError
from mgpu.core.models import ENDED_STATES, JobState, SimpleJob, run_key

if TYPE_CHECKING:
    from mgpu.server.master import Master

log = logging.getLogger("mgpu.api")

MASTER: web.AppKey[Master] = web.AppKey("master")
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_encode = msgspec.json.Encoder().encode
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


def reply(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=_encode(obj), status=status, content_type="application/json")


def error(message: str, status: int, code: str) -> web.Response:
    return reply(m.ErrorReply(error=message, code=code), status)


async def body(request: web.Request, kind: type[T]) -> T:
    raw = await request.read()
    dec = _decoders.get(kind)
    if dec is None:
        dec = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        result: T = dec.decode(raw)
    except msgspec.ValidationError as e:
        raise UsageError(f"invalid request: {e}") from None
    except msgspec.DecodeError as e:
        raise UsageError(f"the request body is not valid JSON: {e}") from None
    return result


def job_id_arg(request: web.Request) -> int:
    text = request.match_info["job_id"]
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a job id: job ids are whole numbers") from None


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.reason if e.text is None else e.text, e.status, "http")
    except NotFound as e:
        return error(e.message, 404, "not_found")
    except Rejected as e:
        return error(e.message, 422, "rejected")
    except UsageError as e:
        return error(e.message, 400, "bad_request")
    except StoreError as e:
        return error(e.message, 507, "store")
    except ApiError as e:
        return error(e.message, e.status, "error")
    except MgpuError as e:
        return error(e.message, 400, "error")


def master_of(request: web.Request) -> Master:
    return request.app[MASTER]


async def submit(request: web.Request) -> web.Response:
    master = master_of(request)
    req = await body(request, m.SubmitRequest)
    now = time.time()
    ids, effects = master.state.on_submit(req.jobs, now)
    try:
        await master.apply(effects, now)
    except StoreError:
        master.state.forget_submit(ids)
        raise
    return reply(m.SubmitReply(job_ids=ids), 201)


async def list_jobs(request: web.Request) -> web.Response:
    master = master_of(request)
    q = request.query
    states: set[JobState] | None = None
    if "state" in q:
        try:
            states = {JobState(s.strip().lower()) for s in q["state"].split(",") if s.strip()}
        except ValueError:
            raise UsageError(
                f"unknown state in {q['state']!r}: use "
                + ", ".join(s.value for s in JobState)
            ) from None
    elif q.get("all") not in ("1", "true"):
        states = {JobState.PENDING, JobState.RUNNING}
    user = q.get("user")
    master.state.refresh_pending_reasons()
    jobs = [
        j for j in master.state.jobs.values()
        if (states is None or j.state in states) and (user is None or j.user == user)
    ]
    return reply(m.JobListReply(jobs=jobs))


async def show_job(request: web.Request) -> web.Response:
    master = master_of(request)
    job = master.state.get(job_id_arg(request))
    if job.state is JobState.PENDING:
        master.state.refresh_pending_reasons()
    return reply(job)


async def cancel(request: web.Request) -> web.Response:
    master = master_of(request)
    req = await body(request, m.CancelRequest)
    now = time.time()
    results, effects = master.state.on_cancel(req.job_ids, now)
    await master.apply(effects, now)
    return reply(m.CancelReply(results=results))


async def wait(request: web.Request) -> web.Response:
    master = master_of(request)
    req = await body(request, m.WaitRequest)
    jobs = [master.state.get(i) for i in req.job_ids]
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


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name) in ("1", "true")


async def output(request: web.Request) -> web.StreamResponse:
    """Stream a job's framed output from ``offset``; with ``follow``, until it ends.

    ``status=1`` adds a STATUS frame whenever the job's placement changes (srun shows
    "queued" and "running on"); ``attach=1`` makes this stream one of an interactive
    job's clients, without which the job is cancelled after the grace period.
    """
    master = master_of(request)
    job_id = job_id_arg(request)
    job = master.state.get(job_id)
    try:
        offset = int(request.query.get("offset", "0"))
    except ValueError:
        raise UsageError("offset must be a whole number of bytes") from None
    follow, status, attach = (_flag(request, n) for n in ("follow", "status", "attach"))
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
                await resp.write(m.frame(m.STREAM_STATUS, _encode(m.OutputStatus(
                    state=job.state.value, node=job.node, gpu_ids=job.gpu_ids, gpus=job.gpus,
                    ahead=master.state.queue_position(job_id)))))
            data = spool.read_across(
                [run_key(job_id, r) for r in range(job.requeues + 1)], offset)
            if data:
                await resp.write(data)
                offset += len(data)
                continue
            if ended or not follow or master.closing:
                break
            await ev.wait()
        if job.state in ENDED_STATES:
            end = m.OutputEnd(state=job.state.value, exit_code=job.exit_code,
                              reason=job.reason, started=job.started_at is not None)
            await resp.write(m.frame(m.STREAM_END, _encode(end)))
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


async def _until_running(master: Master, job_id: int) -> SimpleJob:
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
    job_id = job_id_arg(request)
    job = master.state.get(job_id)
    if not job.stdin:
        raise ApiError(f"job {job_id} was not started with --stdin: it reads no input", 409)
    job = await _until_running(master, job_id)
    node = job.node
    sent = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        conn = master.conns.get(node or "")
        if conn is None or job.state is not JobState.RUNNING:
            raise ApiError(f"job {job_id} is no longer running", 409)
        conn.send(m.JobInput(job_id, chunk))
        sent += len(chunk)
        await conn.drained()
    conn = master.conns.get(node or "")
    if conn is not None:
        conn.send(m.JobInput(job_id, b"", eof=True))
    return reply({"job_id": job_id, "bytes": sent})


async def send_signal(request: web.Request) -> web.Response:
    master = master_of(request)
    job_id = job_id_arg(request)
    req = await body(request, m.SignalRequest)
    if not 1 <= req.signum <= 64:
        raise UsageError(f"{req.signum} is not a signal number")
    job = master.state.get(job_id)
    if job.state is not JobState.RUNNING or job.node not in master.conns:
        raise ApiError(f"job {job_id} is not running ({job.state.value})", 409)
    master.conns[job.node].send(m.JobSignal(job_id, req.signum))
    return reply({"job_id": job_id, "signum": req.signum})


async def resize(request: web.Request) -> web.Response:
    master = master_of(request)
    job_id = job_id_arg(request)
    req = await body(request, m.ResizeRequest)
    if not (0 < req.rows < 10000 and 0 < req.cols < 10000):
        raise UsageError("rows and cols must be between 1 and 9999")
    job = master.state.get(job_id)
    if job.state is JobState.RUNNING and job.node in master.conns:
        master.conns[job.node].send(m.JobResize(job_id, req.rows, req.cols))
    return reply({"job_id": job_id})


async def nodes(request: web.Request) -> web.Response:
    master = master_of(request)
    return reply({"nodes": [n.info() for n in master.state.nodes.values()]})


async def health(request: web.Request) -> web.Response:
    from mgpu.server.master import VERSION

    return reply(m.HealthReply(status="ok", version=VERSION))


async def node_ws(request: web.Request) -> web.StreamResponse:
    master = master_of(request)
    ws = web.WebSocketResponse(max_msg_size=16 * 1024 * 1024)
    await ws.prepare(request)
    await master.serve_node(ws)
    return ws


def build_app(master: Master) -> web.Application:
    app = web.Application(middlewares=[errors], client_max_size=master.cfg.max_request_bytes)
    app[MASTER] = master
    app.add_routes(
        [
            web.post("/api/v1/jobs", submit),
            web.get("/api/v1/jobs", list_jobs),
            web.post("/api/v1/jobs/cancel", cancel),
            web.post("/api/v1/jobs/wait", wait),
            web.get("/api/v1/jobs/{job_id}", show_job),
            web.get("/api/v1/jobs/{job_id}/output", output),
            web.post("/api/v1/jobs/{job_id}/stdin", stdin),
            web.post("/api/v1/jobs/{job_id}/signal", send_signal),
            web.post("/api/v1/jobs/{job_id}/resize", resize),
            web.get("/api/v1/nodes", nodes),
            web.get("/api/v1/health", health),
            web.get("/api/v1/node/ws", node_ws),
        ]
    )
    return app
