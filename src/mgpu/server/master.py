"""The master's outer layer: start-up, the HTTP/WebSocket server, timers, shutdown.

Start-up opens the store, rebuilds :class:`ClusterState` from it and starts listening; every
event (a request, a node message, a timer) goes to a state handler, whose effects pass
through :class:`Committer` (one durable transaction per group of events) before anything is
sent or acknowledged. :class:`Master` assembles the parts: the routes (``api.py``), the node
sessions (``nodelink.py``) and the output watchers (``watch.py``), which see it only as a
:class:`~mgpu.server.context.Context`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.config import LogConfig, MasterConfig
from mgpu.core.errors import MgpuError
from mgpu.core.gang import spool_keys
from mgpu.core.models import JobState, run_key
from mgpu.core.scheduler import Policy, load_policy
from mgpu.core.timefmt import parse_duration
from mgpu.core.version import __version__ as VERSION
from mgpu.server import retention
from mgpu.server.auth import (
    REVOKED,
    JoinSecret,
    Tokens,
    load_secrets,
    tls_context,
    warn_if_exposed,
)
from mgpu.server.committer import Committer
from mgpu.server.datadir import prepare_data_dir, write_json
from mgpu.server.effects import Effects
from mgpu.server.fairshare import META_KEY as SHARES_KEY
from mgpu.server.fairshare import scheduling_options
from mgpu.server.http import quiet_bad_requests
from mgpu.server.limits import load_limits
from mgpu.server.metrics import MasterMetrics
from mgpu.server.nodeauth import NodeCredentials
from mgpu.server.nodeconn import NodeConn
from mgpu.server.nodelink import NodeLink
from mgpu.server.notify import Notifier
from mgpu.server.notify import policy as notify_policy
from mgpu.server.partitions import spill_rule
from mgpu.server.pools import DRAIN_KEY, Pools, read_pools
from mgpu.server.state import ClusterState
from mgpu.server.stats import SchedulingStats
from mgpu.server.store import AuditRow, Store, TokenRow
from mgpu.server.watch import OutputWatch
from mgpu.utils.settings import from_options
from mgpu.utils.signals import stop_on_signals
from mgpu.utils.spool import SpoolDir

log = logging.getLogger("mgpu.master")

__all__ = ["VERSION", "Master", "SimpleMaster", "run_master", "serve_forever"]


class Master:
    """A running master. ``await start()``, then ``await stop()``."""

    def __init__(self, cfg: MasterConfig, policy: Policy | None = None) -> None:
        """``policy``: the scheduling policy; by default the one ``cfg.scheduler`` names
        (a :class:`ConfigError` if none is installed under that name)."""
        self.cfg = cfg
        self.state = ClusterState(
            policy or load_policy(cfg.scheduler),
            node_timeout=cfg.node_timeout,
            default_time_limit=parse_duration(cfg.default_time_limit, "default_time_limit"),
            max_time_limit=parse_duration(cfg.max_time_limit, "max_time_limit"),
            max_requeue=cfg.max_requeue,
            max_batch_jobs=cfg.max_batch_jobs,
            max_pending_per_user=cfg.max_pending_per_user, **scheduling_options(cfg))
        for key in ("retry_backoff", "retry_backoff_max", "foreign_gpu_policy", "min_free_mib"):
            setattr(self.state, key, getattr(cfg, key))  # settings the state reads as it goes
        self.state.spill = spill_rule(cfg)  # spill-over to other partitions (partitions.py)
        self.tokens = Tokens([], 0)
        self.join = JoinSecret("")
        self.conns: dict[str, NodeConn] = {}
        self.nodelink = NodeLink(self)
        self.node_credentials = NodeCredentials([])
        # token id -> the handlers of requests made with it that still run (http.guard)
        self.open_requests: dict[int, set[asyncio.Task[Any]]] = {}
        self.output: SpoolDir | None = None
        self.output_lost: set[str] = set()  # runs whose output a full disk cut short
        self.store: Store | None = None
        self.committer: Committer | None = None
        self.watch = OutputWatch(self)
        self.watchers = self.watch.watchers  # (the routes add and drop their own)
        self.changes = self.watch.changes  # (the dashboard's streams add their own)
        self.ended = asyncio.Condition()
        self.port = 0
        self.closing = False
        self.scheduling = SchedulingStats()
        self.metrics = MasterMetrics(cfg, self.state, self.scheduling)
        self.notifier = Notifier(cfg)  # mail and webhooks, in the background (notify.py)
        self.state.notify_policy = notify_policy(cfg)
        self._unclaimed_checked = False
        self._runner: web.AppRunner | None = None
        self._loops: list[asyncio.Task[None]] = []  # timers, pruners, pools: till stop()
        self.pools: Pools | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        quiet_bad_requests()
        data_dir = self.cfg.data_dir
        prepare_data_dir(data_dir)
        ssl_context = tls_context(self.cfg)
        self.store = Store(data_dir / "mgpu.db", self.cfg.db_max_pages)
        self.output = SpoolDir(data_dir / "output")
        rows = self.store.load()
        scrubbed = retention.scrub(rows)  # a database written before secrets were kept out
        if scrubbed:
            self.store.write(scrubbed)
            log.warning("took mgpu's secrets out of the saved environments of %d jobs",
                        len(scrubbed.envs))
        self.state.load(rows, self.store.last_id(), time.time(), self.store.meta(SHARES_KEY))
        self.state.start_controls(load_limits(self.store), time.time(), self.store.load_env)
        self.state.nodes.clear()
        self.state.drained.update(self.store.meta_items(DRAIN_KEY))
        if self.cfg.pools is not None:  # a mistake in the file stops the start, named
            self.pools = Pools(read_pools(self.cfg.pools))
        self._started_at = time.time()
        self.tokens, self.join = load_secrets(self.store, data_dir)
        self.node_credentials = NodeCredentials(self.store.load_node_credentials())
        self.committer = Committer(self.store, self.metrics.counting(self._on_saved),
                                   self.metrics.commit_seconds.observe)
        from mgpu.server.api import build_app

        app = build_app(self)
        # handler_cancellation: a client that goes away ends its handler (and so detaches
        # from an interactive job) at once, even while the handler waits for output.
        # lingering_time: after an early error (413, 408) the rest of a body is read and
        # dropped for at most 1 s, not aiohttp's 10; keepalive_timeout: a connection that
        # sends nothing, or headers that never end, is closed after the read timeout (a
        # slow client holds nothing long; an idle client reconnects).
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     handler_cancellation=True, lingering_time=1.0,
                                     keepalive_timeout=self.cfg.read_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True,
                           ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            if e.errno == errno.EADDRINUSE:
                raise MgpuError(
                    f"port {self.cfg.port} on {self.cfg.host} is already in use: stop the "
                    "other process (maybe another `mgpu server`) or pass --port"
                ) from e
            raise MgpuError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e}") from e
        self.port = self._runner.addresses[0][1]
        n_jobs = len(self.state.jobs)
        running = sum(1 for j in self.state.jobs.values() if j.state is JobState.RUNNING)
        scheme = "https" if ssl_context is not None else "http"
        log.info(
            "listening on %s://%s:%d (data in %s; %d jobs loaded, %d pending, %d running)",
            scheme, self.cfg.host, self.port, data_dir, n_jobs, len(self.state.pending),
            running,
        )
        warn_if_exposed(self.cfg, self.port, tls=ssl_context is not None)
        write_json(data_dir / "master.json", {
            "host": self.cfg.host, "port": self.port, "pid": os.getpid(), "version": VERSION,
            "tls": ssl_context is not None,
        })
        self.notifier.start(f"{scheme}://{self.cfg.host}:{self.port}")
        self._loops = [asyncio.create_task(c) for c in (
            self._ticker(), retention.prune_audit(self), retention.prune_jobs(self),
            *([self.pools.run(self)] if self.pools is not None else []))]

    async def reset_node_credential(self, node_id: str, user: str) -> None:
        """Forget ``node_id``'s credential (saved with its audit entry, then in effect)."""
        effects = Effects()
        effects.batch.credential_resets.append(node_id)
        effects.audit(time.time(), user, "node.credential.reset",
                      f"node {node_id}: its next join gets a new credential")
        assert self.committer is not None
        await self.committer.submit(effects)
        self.node_credentials.remove(node_id)

    async def stop(self) -> None:
        self.closing = True
        for watchers in self.watchers.values():  # end every output stream being followed
            for ev in watchers:
                ev.set()
        self.watch.changed()  # and every dashboard stream
        await self._notify_ended()  # and every long-poll wait
        for task in self._loops:
            task.cancel()
        if self.pools is not None:
            await self.pools.stop()
        for conn in list(self.conns.values()):
            conn.writer.cancel()
            await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.committer is not None:
            await self.committer.drain()
            self.committer.close()
        await self.notifier.stop()
        if self.output is not None:
            self.output.close_all()
        if self.store is not None:
            self.store.close()
        log.info("stopped")

    async def _ticker(self) -> None:
        interval = max(0.05, min(1.0, self.cfg.node_timeout / 10))
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            effects = self.state.on_tick(now)
            for node in self.state.nodes.values():
                if node.down_since == now:
                    log.warning("node %s silent for over %gs: marked down (%d jobs requeued "
                                "or ended)", node.node_id, self.cfg.node_timeout,
                                len(effects.batch.updates))
            self.nodelink.fence_lost_nodes()
            # Nodes absent since the master started get the same grace as silent ones.
            if not self._unclaimed_checked and now - self._started_at > self.cfg.node_timeout:
                self._unclaimed_checked = True  # nodes absent since the start: lost now
                effects.merge(self.state.unclaimed(now))
            self.apply(effects, durable=True)

    # ------------------------------------------------------------------ events

    def apply(self, effects: Effects, now: float | None = None,
              durable: bool = False) -> asyncio.Future[None]:
        """Schedule, save, then send: the path every event takes. ``durable``: a node's
        report, already applied in memory, that must be saved however long that takes (see
        :class:`Committer`); otherwise a failed save fails the returned future."""
        now = time.time() if now is None else now
        pending = len(self.state.pending)
        started = time.perf_counter()
        effects.merge(self.state.gate_pass(effects, now))  # jobs the controls let in
        effects.merge(self.state.schedule(now))
        if pending:
            self.metrics.scheduling_pass(time.perf_counter() - started, pending)
        assert self.committer is not None
        fut = self.committer.submit(effects, durable)
        fut.add_done_callback(lambda f: self._after_failed_save(f, effects))
        return fut

    def _after_failed_save(self, fut: asyncio.Future[None], effects: Effects) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        started = [msg.job_id for _, msg in effects.sends if isinstance(msg, m.StartJob)]
        if started:
            # (A gang's stop is not re-applied here: its save could fail again, and spin.)
            self.state.unplace(started, time.time(), "the master could not save its state")

    def _on_saved(self, effects: Effects) -> None:
        self.watch.changed()
        acks: dict[str, list[str]] = {}
        for node_id, msg in effects.sends:
            if isinstance(msg, m.EndedAck):  # one ack per node per batch
                acks.setdefault(node_id, []).extend(msg.runs)
                continue
            conn = self.conns.get(node_id)
            if conn is not None:
                conn.send(msg)
                if isinstance(msg, m.StartJob):
                    self.notify_output(msg.job_id)  # followers see it placed
            elif isinstance(msg, m.StartJob):
                # The node left between placement and send: it never got the job.
                self.apply(self.state.unplace([msg.job_id], time.time(),
                                              f"node {node_id} disconnected"))
        for node_id, keys in acks.items():
            conn = self.conns.get(node_id)
            if conn is not None:
                conn.send(m.EndedAck(keys))
        if effects.ended:
            for job_id in effects.ended:
                self.notify_output(job_id)
                job = self.state.jobs.get(job_id)
                if self.output is not None and job is not None:
                    for key in spool_keys(run_key(job_id, job.run), job.nodes,
                                          job.ntasks_per_node):
                        self.output.close(key)
            self.spawn(self._notify_ended())
        self.notifier.saved(effects, self.state.jobs)

    async def _notify_ended(self) -> None:
        async with self.ended:
            self.ended.notify_all()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ passed on

    def notify_output(self, job_id: int) -> None:
        self.watch.notify_output(job_id)

    def attach(self, job_id: int) -> None:
        self.watch.attach(job_id)

    def detach(self, job_id: int) -> None:
        self.watch.detach(job_id)

    def admit_node(self, request: web.Request) -> None:
        self.nodelink.admit_node(request)

    async def serve_node(self, ws: web.WebSocketResponse, peer: str = "?") -> None:
        await self.nodelink.serve_node(ws, peer)

    # ------------------------------------------------------------------ who may do what

    def committer_submit(self, effects: Effects) -> asyncio.Future[None]:
        assert self.committer is not None
        fut = self.committer.submit(effects)
        fut.add_done_callback(_consume)
        return fut

    def reschedule(self) -> None:
        """A pass of the scheduler now (something outside the state changed: a drain)."""
        self.apply(Effects()).add_done_callback(_consume)

    async def audit(self, user: str, action: str, detail: str) -> None:
        """Save an audit entry for a request that changes nothing else, before acting."""
        effects = Effects()
        effects.audit(time.time(), user, action, detail)
        assert self.committer is not None
        await self.committer.submit(effects)

    async def save_tokens(self, new: list[TokenRow], revoked: dict[int, float], user: str,
                          action: str, detail: str, now: float) -> None:
        """Save token changes with their audit entry; then they take effect."""
        effects = Effects()
        effects.batch.tokens.extend(new)
        effects.batch.revokes.update(revoked)
        effects.audit(now, user, action, detail)
        assert self.committer is not None
        await self.committer.submit(effects)
        for row in new:
            self.tokens.add(row)
        self.tokens.revoke(set(revoked))
        me = asyncio.current_task()
        for token_id in revoked:  # what is still open with a revoked token ends now
            for task in self.open_requests.pop(token_id, set()):
                if task is not me:
                    task.cancel(REVOKED)

    async def read_events(self, limit: int, user: str | None = None) -> list[AuditRow]:
        assert self.committer is not None and self.store is not None
        store = self.store
        rows: list[AuditRow] = await self.committer.read(lambda: store.events(limit, user))
        return rows

def _consume(fut: asyncio.Future[None]) -> None:
    """Fire-and-forget saves: their failure is logged by the committer already."""
    if not fut.cancelled():
        fut.exception()


async def serve_forever(master: Master) -> None:
    """Start ``master`` and run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    stop_on_signals(asyncio.get_running_loop(), stop.set)
    await master.start()
    try:
        await stop.wait()
    finally:
        await master.stop()


def run_master(cfg: MasterConfig, log_cfg: LogConfig | None = None) -> int:
    """The ``mgpu server`` command: run a master in the foreground until stopped."""
    from mgpu.utils.logging import setup_logging

    setup_logging(log_cfg or LogConfig(), "master")
    asyncio.run(serve_forever(Master(cfg)))
    return 0


class SimpleMaster:
    """The founding API: ``SimpleMaster('0.0.0.0', 8080).start_server()`` blocks."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080,
                 data_dir: str | Path | None = None, **options: float) -> None:
        self.config = from_options(MasterConfig, {
            "host": host, "port": port, "data_dir": data_dir, **options})

    def start_server(self) -> None:
        run_master(self.config)
