"""When a node kills its own jobs for want of the master: the node's side of fencing.

Fencing keeps a job from running twice (once here, once where the master requeued it) and
keeps a node from running a job the master has given up on. The whole rule, in time order
after a node falls silent:

1. **The fence time** (:func:`fence_time`) is ``fence_timeout`` when set, else a share
   (:data:`FENCE_SHARE`) of the master's ``node_timeout``, learned when the node registers.
   It must stay shorter than ``node_timeout``: the node's side acts first.
2. **The keeper** kills every job once the agent has said nothing to it for the fence time
   (the agent died, hung or was stopped). The agent passes the fence time on in its pings.
3. **The agent**, with ``fence_on_disconnect``, kills every job once the *master* has said
   nothing for the fence time (:func:`watch_master`): a cluster that prefers a killed job
   to one that may run twice during a network partition.
4. **The master** marks a node silent for ``node_timeout`` down, requeues or ends its jobs,
   and cuts off its link if it is still connected (merely slow).
5. **On return**, the master's registration reply lists the runs it ended or requeued while
   the node was away; the agent kills and forgets them (:func:`kill_ended_while_apart`).

Steps 2 and 4 are the keeper's and the master's own (they run in other processes); this
module holds the agent's steps 1, 3 and 5. See docs/failures.md for what a user sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

FENCE_SHARE = 0.6  # of the master's node timeout: the node kills well before it requeues
MIN_FENCE = 0.5  # seconds: a fence shorter than a few pings would fire on any hiccup
CHECK_INTERVAL = 0.1  # seconds between looks at how long the master has been silent


class _Run(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def ended(self) -> object | None: ...


class Jobs(Protocol):
    """What fencing needs of the node's job holder: its fence time, its runs, a kill."""

    @property
    def fence(self) -> float | None: ...

    @property
    def jobs(self) -> Mapping[str, _Run]: ...

    def kill(self, key: str, reason: str) -> None: ...

    def forget(self, key: str) -> None: ...


def fence_time(configured: float | None, node_timeout: float) -> float:
    """The node's fence time: ``configured`` (``fence_timeout``) when set, else
    :data:`FENCE_SHARE` of the master's ``node_timeout``, at least :data:`MIN_FENCE`."""
    if configured is not None:
        return configured
    return max(MIN_FENCE, node_timeout * FENCE_SHARE)


async def watch_master(holder: Callable[[], Jobs | None], heard: Callable[[], float],
                       log: logging.Logger) -> None:
    """Step 3: kill each running job once, as soon as the master has been silent (``heard``
    is the loop time of its last message) for the fence time. Runs until cancelled."""
    loop = asyncio.get_running_loop()
    fenced: set[str] = set()  # run keys already killed for want of the master
    while True:
        await asyncio.sleep(CHECK_INTERVAL)
        jobs = holder()
        if jobs is None or jobs.fence is None or loop.time() - heard() < jobs.fence:
            continue
        for job in list(jobs.jobs.values()):
            if job.ended is None and job.key not in fenced:
                fenced.add(job.key)
                log.warning("killing job %s: no word from the master for %.1fs "
                            "(fence_on_disconnect)", job.key, jobs.fence)
                jobs.kill(job.key, f"the node lost the master for over "
                          f"{jobs.fence:g}s (fence_on_disconnect)")


def kill_ended_while_apart(jobs: Jobs, keys: list[str], log: logging.Logger) -> None:
    """Step 5: kill and forget the runs the master ended or requeued while the node was
    away (its registration reply's ``kill``)."""
    for key in keys:
        log.warning("killing job %s: the master ended or requeued it while we were "
                    "apart", key)
        jobs.kill(key, "ended by the master while the node was away")
        jobs.forget(key)
