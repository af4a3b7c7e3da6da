"""HTTP routes of the job controls (README "Job controls"): hold and release jobs, turn job
references (``12_[3-5]``) into ids, and per-user limits (read by all, set by admins).

``api.py``'s ``ROUTES`` ends with :data:`ROUTES` here.
"""

from __future__ import annotations

import time

from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.api_paths import API
from mgpu.core.control_messages import (
    JobIdsRequest,
    LimitsReply,
    LimitsSetRequest,
    ResolveReply,
    ResolveRequest,
    describe_limits,
)
from mgpu.server.effects import Effects
from mgpu.server.http import Route, admin_only, body, identity, master_of, reply
from mgpu.server.limits import limits_batch, updated


async def _hold(request: web.Request, hold: bool) -> web.Response:
    master = master_of(request)
    who = identity(request)
    req = await body(request, JobIdsRequest)
    now = time.time()
    results, effects = master.state.on_hold(req.job_ids, hold, now, who,
                                            master.cfg.private_jobs)
    done = [str(r.job_id) for r in results if r.ok]
    if done:
        effects.audit(now, who.user, "hold" if hold else "release",
                      f"job{'s' if len(done) > 1 else ''} {', '.join(done[:50])}"
                      + (f" (+{len(done) - 50})" if len(done) > 50 else ""))
    await master.apply(effects, now)
    return reply(m.CancelReply(results=results))


async def hold(request: web.Request) -> web.Response:
    return await _hold(request, True)


async def release(request: web.Request) -> web.Response:
    return await _hold(request, False)


async def resolve(request: web.Request) -> web.Response:
    master = master_of(request)
    req = await body(request, ResolveRequest)
    ids = master.state.resolve(req.refs, identity(request), master.cfg.private_jobs)
    return reply(ResolveReply(job_ids=ids))


async def get_limits(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    limits = master.state.limits
    if not who.admin:
        limits = {u: v for u, v in limits.items() if u == who.user}
    return reply(LimitsReply(limits=limits))


async def set_limits(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    admin_only(who, "setting users' limits")
    req = await body(request, LimitsSetRequest)
    new = updated(master.state.limits, req)
    now = time.time()
    assert master.committer is not None
    await master.committer.submit(limits_batch(new, who.user, req.user, now))
    master.state.limits = new  # saved: now in force (jobs waiting on a cap look again)
    master.state.limits_changed(req.user)
    await master.apply(Effects(), now)  # (its gate pass lets in what now fits)
    return reply({"user": req.user, "limits": describe_limits(new.get(req.user))})


ROUTES: tuple[Route, ...] = (
    Route("POST", f"{API}/jobs/hold", hold, "Hold pending jobs: kept from starting until "
          "released (owner or admin)", JobIdsRequest, m.CancelReply),
    Route("POST", f"{API}/jobs/release", release, "Release held jobs (owner or admin)",
          JobIdsRequest, m.CancelReply),
    Route("POST", f"{API}/jobs/resolve", resolve, "Job ids of references: 12, 12_4, "
          "12_[3-5] (12: every task of array 12 not ended)", ResolveRequest, ResolveReply),
    Route("GET", f"{API}/limits", get_limits, "Per-user limits (admins: everyone's; others: "
          "their own)", None, LimitsReply),
    Route("POST", f"{API}/limits", set_limits, "Set a user's limits (admins)",
          LimitsSetRequest),
)
