"""Admin routes (and ``whoami``): tokens, node credentials and the audit log (README
"Security").

Tokens are made, listed and revoked by admins only; a new token is shown once, in the
reply that creates it, and saved only as its digest. Each change is saved with its audit
entry before it takes effect.
"""

from __future__ import annotations

import time

from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.errors import NotFound, Rejected, UsageError
from mgpu.core.models import utc
from mgpu.server.http import admin_only, body, identity, master_of, query_int, query_text, reply
from mgpu.server.validate import MAX_NODE_ID

MAX_EVENTS = 10_000


async def whoami(request: web.Request) -> web.Response:
    who = identity(request)
    return reply(m.WhoAmIReply(user=who.user, admin=who.admin))


async def create_token(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    admin_only(who, "creating tokens")
    req = await body(request, m.TokenCreateRequest)
    now = time.time()
    token, row = master.tokens.make(req.user, req.admin, now)
    await master.save_tokens(
        [row], {}, who.user, "token.create",
        f"token {row.id} for {row.user}{' (admin)' if row.admin else ''}", now)
    return reply(m.TokenCreated(id=row.id, user=row.user, admin=row.admin, token=token), 201)


async def list_tokens(request: web.Request) -> web.Response:
    master = master_of(request)
    admin_only(identity(request), "listing tokens")
    tokens = [m.TokenInfo(id=r.id, user=r.user, admin=r.admin, created_at=utc(r.created))
              for r in master.tokens.active()]
    return reply(m.TokenListReply(tokens=tokens))


async def revoke_tokens(request: web.Request) -> web.Response:
    master = master_of(request)
    who = identity(request)
    admin_only(who, "revoking tokens")
    req = await body(request, m.TokenRevokeRequest)
    if (req.id is None) == (req.user is None):
        raise UsageError("give exactly one of id (a token) or user (all of a user's tokens)")
    active = master.tokens.active()
    gone = [r for r in active if r.id == req.id or r.user == req.user]
    if not gone:
        what = f"token {req.id}" if req.id is not None else f"token of {req.user!r}"
        raise NotFound(f"no active {what}: `mgpu token list` shows the tokens there are")
    if any(r.admin for r in gone) and not any(r.admin for r in active if r not in gone):
        raise Rejected(
            "that would leave no admin token: first create another "
            "(`mgpu token create NAME --admin`)"
        )
    now = time.time()
    ids = [r.id for r in gone]
    detail = (f"token {req.id} of {gone[0].user}" if req.id is not None
              else f"{len(ids)} token{'s' if len(ids) > 1 else ''} of {req.user}")
    await master.save_tokens([], {i: now for i in ids}, who.user, "token.revoke", detail, now)
    return reply(m.TokenRevokeReply(revoked=ids))


async def reset_node_credential(request: web.Request) -> web.Response:
    """Forget a node id's credential (``server/nodeauth.py``): the node's next registration,
    with the join secret, gets a new one. For a node that lost its data dir."""
    master = master_of(request)
    who = identity(request)
    admin_only(who, "resetting a node's credential")
    node_id = request.match_info["node_id"]
    if not master.node_credentials.has(node_id):
        raise NotFound(f"node {node_id[:128]!r} has no credential: `mgpu nodes` lists the "
                       "nodes; a node gets one when it first joins")
    await master.reset_node_credential(node_id, who.user)
    return reply(m.NodeCredentialReset(node_id=node_id))


async def events(request: web.Request) -> web.Response:
    master = master_of(request)
    admin_only(identity(request), "the audit log")
    node = query_text(request, "node", MAX_NODE_ID)
    rows = await master.read_events(query_int(request, "limit", 50, 1, MAX_EVENTS),
                                    None if node is None else f"node:{node}")
    return reply(m.EventListReply(events=[
        m.AuditEvent(id=r.id or 0, time=utc(r.ts), user=r.user, action=r.action,
                     detail=r.detail) for r in rows]))
