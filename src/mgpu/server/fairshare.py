"""Fair share: each user's decayed GPU-seconds, and the shares admins give users.

Usage is not saved: it is derived from the jobs themselves. At start-up :meth:`charge` adds
every ended and running job's GPU-seconds, decayed to now (jobs pruned to accounting rows,
after ``job_retention_days``, no longer count; at the default 30 days and a 7-day half-life
they would count for less than a sixteenth). From then on each scheduling pass calls
:meth:`advance`, which adds the GPU-seconds of what ran since the last pass (the running
jobs as the last pass left them) and decays the rest. Shares are saved (the store's ``meta``
table, key ``shares``) by ``mgpu share set``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mgpu.core.config import MasterConfig
from mgpu.core.errors import ConfigError
from mgpu.core.priority import PriorityWeights, accrued, decayed, fair_share_factor

DEFAULT_SHARES = 1.0
META_KEY = "shares"

_shares_decoder = msgspec.json.Decoder(dict[str, float])


class FairShare:
    """Per-user decayed usage (GPU-seconds) and shares; see the module docstring."""

    def __init__(self, half_life: float = 7 * 86_400.0) -> None:
        self.half_life = half_life
        self.usage: dict[str, float] = {}  # as of ``as_of``
        self.as_of = 0.0
        self.running: dict[str, int] = {}  # GPUs each user ran at ``as_of``
        self.shares: dict[str, float] = {}  # set by admins; others have DEFAULT_SHARES
        self._factors: dict[str, float] = {}  # fair-share factors as of ``as_of``
        self._pending_users: set[str] = set()
        self._total_shares = 0.0
        self._total_usage = 0.0

    # ------------------------------------------------------------------ usage

    def charge(self, user: str, gpus: int, started: float, ended: float, now: float) -> None:
        """Add a run of ``gpus`` GPUs from ``started`` to ``ended``, decayed to ``now``
        (call :meth:`advance` to ``now`` first)."""
        used = decayed(accrued(gpus, ended - started, self.half_life), now - ended,
                       self.half_life)
        if used > 0:
            self.usage[user] = self.usage.get(user, 0.0) + used

    def advance(self, now: float, running: dict[str, int] | None = None,
                pending_users: set[str] | None = None) -> None:
        """Bring usage to ``now``: decay it, and add what the users in :attr:`running` ran
        since; then ``running`` (GPUs per user now), when given, replaces it. The factors
        are then worked out anew, their total of shares over every user who has used GPUs,
        has shares set, or is in ``pending_users`` (the users with pending jobs)."""
        elapsed = now - self.as_of
        if elapsed > 0 and self.as_of > 0:
            for user in self.usage.keys() | self.running.keys():
                self.usage[user] = decayed(self.usage.get(user, 0.0), elapsed,
                                           self.half_life) + accrued(
                    self.running.get(user, 0), elapsed, self.half_life)
        self.as_of = max(self.as_of, now)
        if running is not None:
            self.running = running
        if pending_users is not None:
            self._pending_users = pending_users
        self._factors.clear()
        users = self.usage.keys() | self.shares.keys() | self._pending_users
        self._total_shares = sum(self.shares_of(u) for u in users)
        self._total_usage = sum(self.usage.values())

    def started(self, user: str, gpus: int) -> None:
        """A job of ``user`` started in this pass: its GPUs count from now on."""
        self.running[user] = self.running.get(user, 0) + gpus

    # ------------------------------------------------------------------ shares

    def shares_of(self, user: str) -> float:
        return self.shares.get(user, DEFAULT_SHARES)

    def set_shares(self, user: str, shares: float) -> None:
        if shares == DEFAULT_SHARES:
            self.shares.pop(user, None)
        else:
            self.shares[user] = shares
        self.advance(self.as_of)

    def load_shares(self, saved: str | None) -> None:
        """The shares as :meth:`dump_shares` saved them (None: none saved yet)."""
        self.shares = _shares_decoder.decode(saved) if saved else {}

    def dump_shares(self) -> str:
        return msgspec.json.encode(self.shares).decode()

    # ------------------------------------------------------------------ factors

    def factor(self, user: str) -> float:
        """``user``'s fair-share factor (``core/priority.fair_share_factor``) as of the last
        :meth:`advance`."""
        cached = self._factors.get(user)
        if cached is not None:
            return cached
        total_shares = self._total_shares
        if user not in self.usage and user not in self.shares and (
                user not in self._pending_users):
            total_shares += self.shares_of(user)  # a user new since the last pass
        value = fair_share_factor(self.usage.get(user, 0.0), self._total_usage,
                                  self.shares_of(user), total_shares)
        self._factors[user] = value
        return value

    def rows(self, users: set[str]) -> list[tuple[str, float, float, float]]:
        """(user, shares, usage in GPU-hours, factor) of ``users`` and every user with
        usage or shares, by user."""
        everyone = users | self.usage.keys() | self.shares.keys()
        return [(u, self.shares_of(u), self.usage.get(u, 0.0) / 3600.0, self.factor(u))
                for u in sorted(everyone)]


def scheduling_options(cfg: MasterConfig) -> dict[str, Any]:
    """``ClusterState``'s priority keywords from the master's settings (weights, ages,
    backfill depth), or a :class:`ConfigError` naming the setting to fix."""
    from mgpu.core.timefmt import parse_duration

    durations = {}
    for name in ("priority_max_age", "fairshare_half_life"):
        seconds = parse_duration(getattr(cfg, name), name)
        if not seconds:
            raise ConfigError(f"{name} must be a duration above 0 (e.g. 7-00:00:00), got "
                              f"{getattr(cfg, name)!r}")
        durations[name] = float(seconds)
    for name in ("priority_weight_age", "priority_weight_fairshare", "priority_weight_job"):
        if not getattr(cfg, name) >= 0:
            raise ConfigError(f"{name} must be 0 or more, got {getattr(cfg, name)}")
    if cfg.backfill_depth < 1:
        raise ConfigError(f"backfill_depth must be 1 or more, got {cfg.backfill_depth}")
    return {"weights": PriorityWeights(cfg.priority_weight_age, cfg.priority_weight_fairshare,
                                       cfg.priority_weight_job, durations["priority_max_age"]),
            "half_life": durations["fairshare_half_life"],
            "backfill_depth": cfg.backfill_depth}
