"""The scheduling routes: ``explain`` a job, list and set fair-share ``shares``.

Setting shares is for admins; it is saved (the ``meta`` table) with its audit entry and
runs a scheduling pass, since every waiting job's priority may have changed.
"""

from __future__ import annotations

import time

from aiohttp import web

from mgpu.core.api_paths import API
from mgpu.core.sched_messages import ExplainReply, ShareListReply, ShareSetRequest
from mgpu.server.effects import Effects
from mgpu.server.explain import explain, share_rows
from mgpu.server.fairshare import META_KEY
from mgpu.server.http import Route, admin_only, body, identity, job_id_arg, master_of, reply


async def explain_job(request: web.Request) -> web.Response:
    master = master_of(request)
    job = master.state.get(job_id_arg(request), identity(request), master.cfg.private_jobs)
    return reply(explain(master.state, job, time.time()))


async def list_shares(request: web.Request) -> web.Response:
    return reply(share_rows(master_of(request).state, time.time()))


async def set_share(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    admin_only(who, "setting shares")
    req = await body(request, ShareSetRequest)
    now = time.time()
    fs = master.state.fairshare
    before = fs.shares_of(req.user)
    fs.set_shares(req.user, req.shares)
    effects = Effects()
    effects.batch.meta[META_KEY] = fs.dump_shares()
    effects.audit(now, who.user, "share.set", f"{req.user}: {before:g} -> {req.shares:g}")
    try:
        await master.apply(effects, now)
    except Exception:
        fs.set_shares(req.user, before)  # not saved: not set
        raise
    return reply(share_rows(master.state, now))


SCHED_ROUTES: tuple[Route, ...] = (
    Route("GET", f"{API}/jobs/{{job_id}}/explain", explain_job,
          "Why a job waits: reason code, priority factors, place in line, expected start",
          None, ExplainReply),
    Route("GET", f"{API}/shares", list_shares, "Fair share: each user's shares, decayed usage "
          "and factor", None, ShareListReply),
    Route("POST", f"{API}/shares", set_share, "Set a user's shares (admins)", ShareSetRequest,
          ShareListReply),
)
