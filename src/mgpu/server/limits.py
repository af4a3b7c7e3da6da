"""Per-user limits (QoS-like), set by admins at run time and kept in the database.

They live in the ``meta`` table under ``user_limits``, as the JSON of
``{user: UserLimits}``; :func:`limits_batch` makes the change to save (with its audit
entry), and only once it is saved does the master use the new limits. What each limit
does is :class:`~mgpu.core.control_messages.UserLimits`'s docstring.
"""

from __future__ import annotations

import msgspec

from mgpu.core.control_messages import LIMIT_FIELDS as _FIELDS
from mgpu.core.control_messages import LimitsSetRequest, UserLimits, describe_limits
from mgpu.core.errors import UsageError
from mgpu.server.effects import Effects
from mgpu.server.store import Store

KEY = "user_limits"
_decoder = msgspec.json.Decoder(dict[str, UserLimits])


def load_limits(store: Store) -> dict[str, UserLimits]:
    """The saved limits (none before any was set)."""
    raw = store.meta(KEY)
    return {} if raw is None else _decoder.decode(raw)


def updated(current: dict[str, UserLimits], req: LimitsSetRequest) -> dict[str, UserLimits]:
    """Every user's limits once ``req`` is applied (a user left with none is dropped)."""
    bad = [f for f in req.unset if f not in _FIELDS]
    if bad:
        raise UsageError(f"cannot unset {bad[0]!r}: the limits are {', '.join(_FIELDS)}")
    old = UserLimits() if req.clear else current.get(req.user, UserLimits())
    new = UserLimits(**{
        f: None if f in req.unset else
        (getattr(req, f) if getattr(req, f) is not None else getattr(old, f))
        for f in _FIELDS})
    out = {u: v for u, v in current.items() if u != req.user}
    if any(getattr(new, f) is not None for f in _FIELDS):
        out[req.user] = new
    return dict(sorted(out.items()))


def limits_batch(limits: dict[str, UserLimits], who: str, user: str, now: float) -> Effects:
    """The change to save: the new limits, and the audit entry saying who set what."""
    effects = Effects()
    effects.batch.meta[KEY] = msgspec.json.encode(limits).decode()
    effects.audit(now, who, "limits.set", f"{user}: {describe_limits(limits.get(user))}")
    return effects

