"""Routes about nodes: the list (with the node pools), drain and resume (admins).

A drained node takes no new jobs; the jobs it runs finish. The drain is saved (the store's
``meta``, key ``drain:NODE``) with its audit entry before it takes effect, so it outlasts the
node's re-registrations and a restart of the master; ``resume`` undoes it. Any node id may be
drained, even one not registered yet (it joins drained).
"""

from __future__ import annotations

import time

from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.api_paths import API
from mgpu.core.errors import NotFound, UsageError
from mgpu.server.effects import Effects
from mgpu.server.http import Route, admin_only, body, identity, master_of, reply
from mgpu.server.pools import DRAIN_KEY
from mgpu.server.validate import MAX_NODE_ID

MAX_REASON = 500


async def nodes(request: web.Request) -> web.Response:
    master = master_of(request)
    nodes = list(master.state.nodes.values())
    pools = master.pools.statuses(nodes) if master.pools is not None else []
    return reply({"nodes": [n.info() for n in nodes], "pools": pools})


async def drain(request: web.Request) -> web.Response:
    req = await body(request, m.DrainRequest)
    reason = " ".join(req.reason.split())[:MAX_REASON] or "drained by an admin"
    return await _set(request, reason)


async def resume(request: web.Request) -> web.Response:
    return await _set(request, None)


async def _set(request: web.Request, reason: str | None) -> web.Response:
    master = master_of(request)
    who = identity(request)
    admin_only(who, "draining or resuming a node")
    node_id = request.match_info["node_id"]
    if len(node_id) > MAX_NODE_ID:
        raise UsageError(f"a node id is at most {MAX_NODE_ID} characters")
    state = master.state
    if reason is None and node_id not in state.drained:
        if node_id not in state.nodes:
            raise NotFound(f"no node {node_id[:128]!r}: `mgpu nodes` lists the nodes")
        raise UsageError(f"node {node_id} is not drained: nothing to resume")
    if master.pools is not None and any(node_id in p.releasing
                                        for p in master.pools.pools.values()):
        raise UsageError(f"node {node_id} is being released by its pool: wait for it to go")
    effects = Effects()
    effects.batch.meta[DRAIN_KEY + node_id] = reason
    effects.audit(time.time(), who.user, "node.drain" if reason else "node.resume",
                  f"node {node_id}" + (f": {reason}" if reason else ""))
    assert master.committer is not None
    await master.committer.submit(effects)
    state.set_drain(node_id, reason)
    if reason is None:
        master.reschedule()  # its GPUs are free for the queue again
    node = state.nodes.get(node_id)
    running = len({g.job_id for g in node.gpus if g.job_id is not None}) if node else 0
    return reply(m.DrainReply(node_id=node_id, draining=reason is not None,
                              running_jobs=running, registered=node is not None))


ROUTES: tuple[Route, ...] = (
    Route("POST", f"{API}/nodes/{{node_id}}/drain", drain,
          "Drain a node: no new jobs, its running jobs finish (admins)", m.DrainRequest,
          m.DrainReply),
    Route("POST", f"{API}/nodes/{{node_id}}/resume", resume,
          "Resume a drained node (admins)", None, m.DrainReply),
)
