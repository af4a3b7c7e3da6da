"""Job priority, as ``multifactor`` orders the queue: pure arithmetic, no clock.

A pending job's priority is the sum of three weighted factors (SLURM's multifactor plugin,
with fewer factors)::

    priority = w_age  * min(waited / max_age, 1)           age: 0 at submit, 1 after max_age
             + w_fair * 2 ** -(usage_share / share)         fair share: 1 unused, 0.5 at par
             + w_job  * (priority - nice)                   the job's own --priority/--nice

- ``usage_share`` is the user's decayed GPU-seconds over everyone's; ``share`` is the user's
  shares (``mgpu share set``, 1 by default) over the shares of every user known. A user who
  used exactly their share gets 0.5; one who used nothing gets 1.
- Usage decays with a half-life (7 days by default): a GPU-second used one half-life ago
  counts half. :func:`decayed` and :func:`accrued` are the exact continuous forms, so how
  often the master updates does not change the result.

The age term grows at the same rate for every job younger than ``max_age``, so two jobs of
one user keep their order as time passes; the master's queue (``server/queue.py``) relies on
that to keep each user's jobs sorted once, not on every pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mgpu.core.snapshot import PriorityFactors

LN2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class PriorityWeights:
    """The weights of the factors (``priority_weight_*`` settings) and the age at which the
    age factor stops growing (seconds)."""

    age: float = 1000.0
    fair_share: float = 10_000.0
    job: float = 1.0
    max_age: float = 7 * 86_400.0

    def age_factor(self, waited: float) -> float:
        """0 at submit, growing linearly to 1 at ``max_age``."""
        if self.max_age <= 0:
            return 1.0
        return min(max(waited, 0.0) / self.max_age, 1.0)

    def young_key(self, submitted_at: float, job_term: float) -> float:
        """The part of a young job's priority that does not change with time: its priority
        at ``now`` is this plus ``age * now / max_age`` plus its user's fair-share term."""
        return -self.age * submitted_at / self.max_age + self.job * job_term

    def factors(self, waited: float, fair_share: float, job_term: float) -> PriorityFactors:
        """The weighted factors of one job (their sum is its priority)."""
        return PriorityFactors(age=self.age * self.age_factor(waited),
                               fair_share=self.fair_share * fair_share,
                               job=self.job * job_term)


def job_term(priority: int, nice: int) -> float:
    """The job's own factor: its ``--priority`` less its ``--nice``."""
    return float(priority - nice)


def decayed(usage: float, elapsed: float, half_life: float) -> float:
    """``usage`` after ``elapsed`` seconds of decay."""
    if elapsed <= 0:
        return usage
    return usage * math.pow(2.0, -elapsed / half_life)


def accrued(gpus: float, elapsed: float, half_life: float) -> float:
    """The decayed GPU-seconds, as of the end, of ``gpus`` GPUs used for ``elapsed`` seconds
    (the integral of ``gpus * 2 ** -(age / half_life)`` over the interval)."""
    if elapsed <= 0 or gpus <= 0:
        return 0.0
    return gpus * half_life / LN2 * (1.0 - math.pow(2.0, -elapsed / half_life))


def fair_share_factor(usage: float, total_usage: float, shares: float,
                      total_shares: float) -> float:
    """``2 ** -(usage / total_usage) / (shares / total_shares)``: 1 for a user who used
    nothing, 0.5 at exactly their share, towards 0 far above it; 0 with no shares."""
    if shares <= 0 or total_shares <= 0:
        return 0.0
    if total_usage <= 0:
        return 1.0
    return math.pow(2.0, -(usage / total_usage) / (shares / total_shares))
