"""Whose jobs a node agent runs.

A root agent runs each job under its owner's Unix account, so it may serve every user. An
agent that is not root cannot change accounts: every job it runs runs as the agent's own
user, with that user's files (the admin token, the join secret, other jobs' spools). Such
an agent therefore serves only its own user unless the operator opts in with
``allow_other_users`` (``MGPU_ALLOW_OTHER_USERS=1``). ``users`` (``MGPU_NODE_USERS``, a
comma-separated list) narrows either kind of agent to the users named.

The node tells the master whom it serves when it registers; the scheduler places no other
user's job there, and the agent itself refuses one that arrives all the same.
"""

from __future__ import annotations

import os

from mgpu.core.errors import ConfigError


def own_user() -> str:
    """The name of the account this process runs as (its uid when it has no name)."""
    import pwd

    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def served_users(listed: str | None, allow_other_users: bool, euid: int,
                 own: str) -> list[str] | None:
    """The users whose jobs the agent runs, sorted; None for every user.

    ``listed`` is the ``users`` setting, ``euid`` and ``own`` the agent's uid and user
    name. Raises :class:`ConfigError` when an agent that is not root, without
    ``allow_other_users``, is told to serve someone else.
    """
    names = sorted({u.strip() for u in (listed or "").split(",") if u.strip()})
    may_serve_others = euid == 0 or allow_other_users
    if not may_serve_others:
        others = [u for u in names if u != own]
        if others:
            raise ConfigError(
                f"this node agent runs as {own}, not root, so every job it runs runs as "
                f"{own}: it cannot serve {', '.join(others)}. Run the agent as root (jobs "
                "then run as their owners), or let it run other users' jobs as "
                f"{own} with allow_other_users (MGPU_ALLOW_OTHER_USERS=1)")
        return [own]
    return names or None


def describe(users: list[str] | None) -> str:
    """``all`` or ``only alice,bob``: the node's policy in a word or two."""
    return "all" if users is None else "only " + ",".join(users)


def refusal(node_id: str, user: str, users: list[str] | None) -> str | None:
    """Why ``node_id`` will not run ``user``'s job (None: it will)."""
    if users is None or user in users:
        return None
    return (f"node {node_id} runs jobs of {', '.join(users)} only, not of {user}: an agent "
            "that is not root runs every job as its own account. Its operator may run it "
            "as root, or set allow_other_users (MGPU_ALLOW_OTHER_USERS=1) or users "
            "(MGPU_NODE_USERS) on it")
