"""Group commit, and what the master does when its disk is full.

Effects queued while a write is in flight are saved together, in FIFO order; after each
write, ``on_saved`` runs for every effect of the batch in order (so messages to nodes keep
their order), then the waiting callers are released. Nothing is sent or acknowledged
before it is saved.

When a write fails (a full disk: SQLite's "database or disk is full", or any
:class:`StoreError`), the callers' futures fail (a submit gets its 507), except those of
``durable`` effects: a node's reports that the master has already applied in memory (job
ends, lost nodes, registrations). Those are never dropped:

* their audit entries are let go first (logged instead): an audit row is not worth a
  job's end;
* then they are saved together if they fit, else one by one, in order; an effect that
  touches a job of an earlier one still held waits with it, so a job's rows are never
  saved out of order;
* what still does not fit is held and tried again every :data:`HOLD_RETRY` seconds, and
  before anything queued later. A held job end is not acknowledged to its node (the
  acknowledgement is sent once it is saved), so nothing acknowledged is ever lost, and a
  master that stops meanwhile gets the end again from the node.

While anything is held, :attr:`Committer.full` is the error, and new submits are refused
with it (what room there is, is for the running jobs' ends).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from mgpu.core.errors import StoreError
from mgpu.server.store import Batch, Store

if TYPE_CHECKING:
    from mgpu.server.effects import Effects

log = logging.getLogger("mgpu.master")

HOLD_RETRY = 1.0  # seconds between tries to save what a full disk held back

Item = tuple["Effects", "asyncio.Future[None]", bool]  # effects, their future, durable


class Committer:
    """One durable transaction per group of effects, on the store's own thread."""

    def __init__(self, store: Store, on_saved: Callable[[Effects], None],
                 on_commit: Callable[[float], None] | None = None) -> None:
        """``on_saved(effects)`` runs for each group once saved; ``on_commit(seconds)``
        for each transaction that succeeded, with how long it took on the store's thread
        (the master's ``mgpu_store_commit_seconds``)."""
        self._store = store
        self._on_saved = on_saved
        self._on_commit = on_commit
        self._queue: list[Item] = []
        self._held: list[Item] = []
        self.full: StoreError | None = None  # while changes are held for want of room
        self._retry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mgpu-store")

    def submit(self, effects: Effects, durable: bool = False) -> asyncio.Future[None]:
        """Save ``effects``; the future resolves once they are saved and sent (or fails
        with the :class:`StoreError`; never, for ``durable`` effects, until saved)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((effects, fut, durable))
        self._kick()
        return fut

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self._queue or self._held:
            items = self._held + self._queue
            self._held, self._queue = [], []
            error = await self._save(items)
            if error is None:
                self._set_full(None)
                continue
            for _, fut, durable in items:
                if not durable and not fut.done():
                    fut.set_exception(error)
            held = await self._save_durable([item for item in items if item[2]])
            self._set_full(error if held else None, len(held))
            if held:
                self._held = held
                if self._retry is not None:
                    self._retry.cancel()
                self._retry = asyncio.get_running_loop().call_later(HOLD_RETRY, self._kick)
                return

    def _set_full(self, error: StoreError | None, held: int = 0) -> None:
        if error is not None and self.full is None:
            log.error("%s; holding %d node reports (job ends) until they can be saved, "
                      "trying again every %gs", error.message, held, HOLD_RETRY)
        elif error is None and self.full is not None:
            log.warning("the master's database has room again: what was held is saved")
        self.full = error

    async def _save_durable(self, keep: list[Item]) -> list[Item]:
        """Save what ``keep`` holds that fits (its audit entries let go): together if it
        can be, else one by one in order. What could not be saved."""
        dropped = [a for effects, _, _ in keep for a in effects.batch.audit]
        for effects, _, _ in keep:
            effects.batch.audit = []
        for a in dropped:
            log.warning("audit entry not saved (the master's disk is full): %s %s %s",
                        a.user, a.action, a.detail)
        if not keep or await self._save(keep) is None:
            return []
        if len(keep) == 1:
            return keep
        held: list[Item] = []
        blocked: set[int] = set()  # jobs with an earlier change held: theirs wait too
        for item in keep:
            jobs = set(item[0].batch.updates) | {j.id for j, _ in item[0].batch.inserts}
            if jobs & blocked or await self._save([item]) is not None:
                held.append(item)
                blocked |= jobs
        return held

    async def _save(self, items: list[Item]) -> StoreError | None:
        """Write the items' changes in one transaction, then release them; or the error."""
        batch = Batch()
        for effects, _, _ in items:
            batch.merge(effects.batch)
        try:
            if batch:
                took = await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._write, batch)
                if self._on_commit is not None:
                    self._on_commit(took)
        except StoreError as e:
            if self.full is None and not e.full:
                log.error("%s", e.message)
            return e
        for effects, fut, _ in items:
            try:
                self._on_saved(effects)
            finally:
                if not fut.done():
                    fut.set_result(None)
        return None

    def _write(self, batch: Batch) -> float:
        """Save ``batch`` (on the store's thread); how long the transaction took."""
        started = time.perf_counter()
        self._store.write(batch)
        return time.perf_counter() - started

    async def read(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a read of the store) on the store's thread, between writes."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def drain(self) -> None:
        if self._retry is not None:
            self._retry.cancel()  # what is held was never acknowledged: the nodes resend it
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
