"""The master's outer layer: start-up, the HTTP/WebSocket server, timers, shutdown.

Start-up opens the store, rebuilds :class:`ClusterState` from it and starts listening; every
event (a request, a node message, a timer) goes to a state handler, whose effects pass
through :class:`Committer` (one durable transaction per group of events) before anything is
sent or acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.config import LogConfig, MasterConfig
from mgpu.core.errors import MgpuError, StoreError, Unauthorized
from mgpu.core.models import JobState, run_key
from mgpu.core.scheduler import Policy, load_policy
from mgpu.core.timefmt import parse_duration
from mgpu.core.version import __version__ as VERSION
from mgpu.server import retention
from mgpu.server.auth import (
    JOIN_HINT,
    REVOKED,
    JoinSecret,
    Tokens,
    bearer,
    load_secrets,
    tls_context,
)
from mgpu.server.committer import Committer
from mgpu.server.nodeauth import NodeCredentials
from mgpu.server.nodeconn import NodeConn, Violation
from mgpu.server.state import ClusterState, Effects
from mgpu.server.store import AuditRow, Store, TokenRow
from mgpu.server.validate import register_problem
from mgpu.utils.settings import from_options
from mgpu.utils.spool import SpoolDir

log = logging.getLogger("mgpu.master")

AUDIT_PRUNE_EVERY = 3600.0  # seconds between prunings of the audit log
LIVE_WAIT = 1.0  # seconds a node id's new registration waits for its old link to end
REFUSAL_QUIET = 60.0  # seconds: one peer's refusals are logged and audited at most this often


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
            max_pending_per_user=cfg.max_pending_per_user,
        )
        self.tokens = Tokens([], 0)
        self.join = JoinSecret("")
        # (peer, why) -> (when last logged, refusals since): a flood is logged once a minute
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}
        self.conns: dict[str, NodeConn] = {}
        self._registering: set[str] = set()  # node ids whose registration is being saved
        self.node_credentials = NodeCredentials([])
        # token id -> the handlers of requests made with it that still run (http.guard)
        self.open_requests: dict[int, set[asyncio.Task[Any]]] = {}
        self.output: SpoolDir | None = None
        self.output_lost: set[str] = set()  # runs whose output a full disk cut short
        self.store: Store | None = None
        self.committer: Committer | None = None
        self.watchers: dict[int, set[asyncio.Event]] = {}
        self.attached: dict[int, int] = {}  # interactive job -> clients following it
        self._detach_timers: dict[int, asyncio.TimerHandle] = {}
        self.ended = asyncio.Condition()
        self.port = 0
        self.closing = False
        self._unclaimed_checked = False
        self._runner: web.AppRunner | None = None
        self._tick: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._job_pruner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        _quiet_bad_requests()
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
        self.state.load(rows, self.store.last_id())
        self.state.nodes.clear()
        self._started_at = time.time()
        self.tokens, self.join = load_secrets(self.store, data_dir)
        self.node_credentials = NodeCredentials(self.store.load_node_credentials())
        self.committer = Committer(self.store, self._on_saved)
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
        if not self.cfg.auth:
            log.warning(
                "AUTHENTICATION IS OFF (auth = false / MGPU_AUTH=0): anyone who can reach port "
                "%d can run commands on your nodes as any user; this switch is for "
                "benchmarks only", self.port,
            )
        if ssl_context is None and self.cfg.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "listening on %s without TLS: requests are authenticated, but tokens, the "
                "join secret, commands, environments and job output cross the network in "
                "clear text, readable (and tokens reusable) by anyone on the path; use "
                "--tls-cert/--tls-key (`mgpu certs` makes them) unless the network is trusted",
                self.cfg.host,
            )
        write_json(data_dir / "master.json", {
            "host": self.cfg.host, "port": self.port, "pid": os.getpid(), "version": VERSION,
            "tls": ssl_context is not None,
        })
        self._tick = asyncio.create_task(self._ticker())
        self._pruner = asyncio.create_task(self._prune_audit())
        self._job_pruner = asyncio.create_task(self._prune_jobs())

    async def _prune_audit(self) -> None:
        """Keep the audit log to its last ``audit_days`` (0: keep it all): at start, then
        hourly, on the store's thread between writes."""
        days = self.cfg.audit_days
        assert self.committer is not None and self.store is not None
        store = self.store
        while days > 0:
            before = time.time() - days * 86400
            try:
                gone = await self.committer.read(partial(store.prune_audit, before))
            except StoreError as e:
                log.error("%s", e.message)
            else:
                if gone:
                    log.info("audit log: dropped %d events older than %g days (audit_days)",
                             gone, days)
            await asyncio.sleep(AUDIT_PRUNE_EVERY)

    async def _prune_jobs(self) -> None:
        """Prune jobs ended more than ``job_retention_days`` ago (0: keep them): at start,
        then every :func:`~mgpu.server.retention.prune_interval` (``server/retention.py``)."""
        days = self.cfg.job_retention_days
        while days > 0:
            gone, effects = retention.prune(self.state, time.time() - days * retention.DAY)
            if gone:
                try:
                    await self.apply(effects)
                except StoreError:
                    pass  # logged; they are pruned from the database at the next pass
                else:
                    assert self.output is not None
                    for job in gone:
                        for run in range(job.requeues + 1):
                            self.output.close(run_key(job.id, run))
                            with contextlib.suppress(OSError):
                                self.output.file(run_key(job.id, run)).unlink()
                    log.info("pruned %d jobs ended over %g days ago (job_retention_days); "
                             "their accounting records are kept", len(gone), days)
            await asyncio.sleep(retention.prune_interval(days))

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
        await self._notify_ended()  # and every long-poll wait
        if self._tick is not None:
            self._tick.cancel()
        for task in (self._pruner, self._job_pruner):
            if task is not None:
                task.cancel()
        for conn in list(self.conns.values()):
            conn.writer.cancel()
            await conn.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.committer is not None:
            await self.committer.drain()
            self.committer.close()
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
            self._fence_lost_nodes()
            # Nodes absent since the master started get the same grace as silent ones.
            self._check_unclaimed(now, effects)
            self.apply(effects, durable=True)

    def _fence_lost_nodes(self) -> None:
        """Cut off nodes declared down that are still connected (merely slow): they
        reconnect, and their registration tells them to kill the jobs ended here."""
        for node_id, conn in list(self.conns.items()):
            node = self.state.nodes.get(node_id)
            if node is not None and node.state == "down":
                log.warning("node %s is down but still connected: disconnecting it", node_id)
                del self.conns[node_id]
                conn.gone.set()
                conn.writer.cancel()
                self.spawn(_close(conn.ws, b"declared down: reconnect and re-register"))

    def _check_unclaimed(self, now: float, effects: Effects) -> None:
        """Jobs loaded as running whose node never came back after a restart."""
        if self._unclaimed_checked or now - self._started_at <= self.cfg.node_timeout:
            return
        self._unclaimed_checked = True
        for job in list(self.state.jobs.values()):
            if job.state is JobState.RUNNING and job.node not in self.state.nodes:
                effects.merge(self.state.node_lost(
                    job, f"node {job.node} did not return after the master restarted", now))

    # ------------------------------------------------------------------ events

    def apply(self, effects: Effects, now: float | None = None,
              durable: bool = False) -> asyncio.Future[None]:
        """Schedule, save, then send: the path every event takes. ``durable``: a node's
        report, already applied in memory, that must be saved however long that takes (see
        :class:`Committer`); otherwise a failed save fails the returned future."""
        now = time.time() if now is None else now
        effects.merge(self.state.schedule(now))
        assert self.committer is not None
        fut = self.committer.submit(effects, durable)
        fut.add_done_callback(lambda f: self._after_failed_save(f, effects))
        return fut

    def _after_failed_save(self, fut: asyncio.Future[None], effects: Effects) -> None:
        if fut.cancelled() or fut.exception() is None:
            return
        started = [msg.job_id for _, msg in effects.sends if isinstance(msg, m.StartJob)]
        if started:
            self.state.unplace(started, time.time(), "the master could not save its state")

    def _on_saved(self, effects: Effects) -> None:
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
                self.state.unplace([msg.job_id], time.time(), f"node {node_id} disconnected")
                self.apply(Effects())
        for node_id, keys in acks.items():
            conn = self.conns.get(node_id)
            if conn is not None:
                conn.send(m.EndedAck(keys))
        if effects.ended:
            for job_id in effects.ended:
                self.notify_output(job_id)
                job = self.state.jobs.get(job_id)
                if self.output is not None and job is not None:
                    self.output.close(run_key(job_id, job.requeues))
            self.spawn(self._notify_ended())

    async def _notify_ended(self) -> None:
        async with self.ended:
            self.ended.notify_all()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def notify_output(self, job_id: int) -> None:
        for ev in self.watchers.get(job_id, ()):
            ev.set()

    # ------------------------------------------------------------------ who may do what

    def admit_node(self, request: web.Request) -> None:
        """Let a node's WebSocket handshake through with the join secret, or refuse it with
        a 401 before anything changes (logged and audited, at most once a minute a peer)."""
        if not self.cfg.auth:
            return
        given = bearer(request.headers.get("Authorization"))
        if self.join.check(given):
            return
        why = "no join secret" if given is None else "a wrong join secret"
        self._refusal(request.remote or "?", why)
        raise Unauthorized(f"node refused: {why}; {JOIN_HINT}")

    def _refusal(self, peer: str, why: str, node: str | None = None) -> None:
        """Log and audit a refused node (at the handshake; or ``node``'s registration), at
        most once a minute for one peer and reason."""
        if node is not None:
            why = f"node {node[:128]!r}: {why}"
        now = time.time()
        last, since = self._refused.get((peer, why), (0.0, 0))
        if now - last < REFUSAL_QUIET:
            self._refused[peer, why] = (last, since + 1)
            return
        if len(self._refused) > 10_000:
            self._refused.clear()
        self._refused[peer, why] = (now, 0)
        more = f" ({since} more refused since the last report)" if since else ""
        if node is None:
            log.warning("refused a node from %s: %s%s; %s", peer, why, more, JOIN_HINT)
        else:
            log.warning("refused %s (from %s)%s", why, peer, more)
        effects = Effects()
        effects.audit(now, f"node@{peer}", "node.refused", f"{why}{more}")
        self.committer_submit(effects)

    def committer_submit(self, effects: Effects) -> asyncio.Future[None]:
        assert self.committer is not None
        fut = self.committer.submit(effects)
        fut.add_done_callback(_consume)
        return fut

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

    async def read_events(self, limit: int) -> list[AuditRow]:
        assert self.committer is not None and self.store is not None
        store = self.store
        rows: list[AuditRow] = await self.committer.read(lambda: store.events(limit))
        return rows

    # ------------------------------------------------------------------ interactive jobs

    def attach(self, job_id: int) -> None:
        """A client follows an interactive job (srun, attach)."""
        self.attached[job_id] = self.attached.get(job_id, 0) + 1
        timer = self._detach_timers.pop(job_id, None)
        if timer is not None:
            timer.cancel()

    def detach(self, job_id: int) -> None:
        """A client stopped following: with none left for the grace period, cancel the job."""
        left = self.attached.get(job_id, 1) - 1
        if left > 0:
            self.attached[job_id] = left
            return
        self.attached.pop(job_id, None)
        job = self.state.jobs.get(job_id)
        if job is None or not job.interactive or job.state.ended or self.closing:
            return
        self._detach_timers[job_id] = asyncio.get_running_loop().call_later(
            self.cfg.srun_grace, self._client_gone, job_id)

    def _client_gone(self, job_id: int) -> None:
        self._detach_timers.pop(job_id, None)
        job = self.state.jobs.get(job_id)
        if job is None or job.state.ended or self.attached.get(job_id):
            return
        log.warning("job %d: its interactive client has been gone for %gs: cancelling it",
                    job_id, self.cfg.srun_grace)
        _, effects = self.state.on_cancel([job_id], time.time(),
                                          reason="its srun client went away")
        self.apply(effects)

    # ------------------------------------------------------------------ node messages

    async def serve_node(self, ws: web.WebSocketResponse, peer: str = "?") -> None:
        """Run one agent's connection: register, then its messages until it goes. A node
        that sends what it could not honestly send is cut off (docs/protocol.md)."""
        try:
            first = await ws.receive(timeout=30)
        except TimeoutError:
            await ws.close(message=b"no register message within 30 s")
            return
        if first.type is not web.WSMsgType.BINARY:
            await ws.close(message=b"expected a register message")
            return
        try:
            msg = m.node_message_decoder.decode(first.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            log.error("node from %s sent a malformed register message (%s): cut off", peer,
                      str(e)[:200])
            await ws.close(code=1008, message=f"bad register message: {e}"[:120].encode())
            return
        if not isinstance(msg, m.Register):
            log.error("node from %s did not start with a register message: cut off", peer)
            await ws.close(code=1008, message=b"the first message must be register")
            return
        refusal = await self._admit_register(msg, peer)
        if refusal is not None:
            self._refusal(peer, refusal.error or "", node=msg.node_id)
            await ws.send_bytes(m.node_encoder.encode(refusal))
            await ws.close()
            return
        node_id = msg.node_id
        self._registering.add(node_id)  # (no second registration of the id meanwhile)
        try:
            credential = await self._credential_for(msg, peer)
        finally:
            self._registering.discard(node_id)
        now = time.time()
        reply, effects = self.state.on_register(msg, now)
        reply.credential = credential
        assert self.output is not None
        reply.output_offsets = {j: self.output.size(j) for j in reply.output_offsets}
        # Several heartbeats per timeout, so that a live node is never taken for a lost one.
        reply.heartbeat_interval = min(self.cfg.heartbeat_interval, self.cfg.node_timeout / 4)
        reply.node_timeout = self.cfg.node_timeout
        conn = NodeConn(node_id, ws, {r.key for r in msg.running}, peer)
        self.conns[node_id] = conn
        conn.send(reply)
        log.info(
            "node %s joined from %s with %d GPUs (%d jobs still running there)",
            node_id, peer, len(msg.gpus), len(reply.output_offsets),
        )
        effects.audit(now, f"node:{node_id}", "node.join",
                      f"{node_id} from {peer} ({msg.hostname[:64] or '?'}): {len(msg.gpus)} "
                      f"GPUs, {len(reply.output_offsets)} jobs running")
        if reply.kill:
            log.warning("node %s runs jobs %s that ended here: told to kill them",
                        node_id, reply.kill)
        self.apply(effects, now, durable=True)
        try:
            async for raw in ws:
                if raw.type is web.WSMsgType.ERROR:  # e.g. a frame over max_msg_size
                    log.error("node %s (%s): %s: cut off", node_id, peer, raw.data)
                    break
                if raw.type is not web.WSMsgType.BINARY:
                    continue
                why = self.on_node_frame(conn, raw.data)
                if why is None:
                    continue
                log.error("node %s (%s): %s: cut off", node_id, peer, why)
                self._drop(conn)  # first: a reconnect must not find it still live
                await ws.close(code=1008, message=why[:120].encode())
                break
        finally:
            self._drop(conn)

    def _drop(self, conn: NodeConn) -> None:
        """The node's connection ``conn`` is over (if it still stands for the node)."""
        conn.writer.cancel()
        if self.conns.get(conn.node_id) is conn:
            del self.conns[conn.node_id]
            conn.gone.set()
            self.state.on_disconnect(conn.node_id, time.time())
            log.warning("node %s disconnected", conn.node_id)

    async def _admit_register(self, msg: m.Register, peer: str) -> m.Registered | None:
        """The refusal to send for ``msg``, or None when the node may register: a register
        that cannot be true, a node id bound to a credential not presented, or a node id
        that is connected already (the live connection keeps its link)."""
        why = register_problem(msg) or self.node_credentials.refusal(msg.node_id,
                                                                     msg.credential)
        if why is not None:
            return m.Registered(accepted=False, error=why)
        live = self.conns.get(msg.node_id)
        if live is not None:  # a node that reconnects may come before its old link's end
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.gone.wait(), LIVE_WAIT)
        if msg.node_id in self.conns or msg.node_id in self._registering:
            live = self.conns.get(msg.node_id)
            return m.Registered(accepted=False, retry=True, error=(
                f"node {msg.node_id} is already connected"
                + (f" (from {live.peer})" if live is not None else "")
                + ": that connection keeps its link and this one is refused; if this is "
                "the same node, it registers again once its old link is gone"))
        return None

    async def _credential_for(self, msg: m.Register, peer: str) -> str | None:
        """A new credential for a node id that has none (saved before it is sent), else
        None. If it cannot be saved the node joins without one, and gets one next time."""
        if self.node_credentials.has(msg.node_id):
            return None
        now = time.time()
        credential, row = self.node_credentials.make(msg.node_id, now)
        effects = Effects()
        effects.batch.credentials.append(row)
        effects.audit(now, f"node:{msg.node_id}", "node.credential",
                      f"made the credential of node {msg.node_id} (joined from {peer}"
                      + (", presenting one this master did not know)" if msg.credential
                         else ")"))
        assert self.committer is not None
        try:
            await self.committer.submit(effects)
        except StoreError as e:
            log.error("node %s joins without a credential of its own for now: %s",
                      msg.node_id, e.message)
            return None
        self.node_credentials.add(row)
        return credential

    def on_node_frame(self, conn: NodeConn, data: bytes) -> str | None:
        """Handle a frame of the node's messages; why to cut the node off, if it must be.

        The ends a frame reports are scheduled and saved together: one pass of the
        scheduler and one write for a batch of ends, however many there are."""
        effects = Effects()
        ends = False
        try:
            for msg in m.decode_node_frame(data):
                conn.check(msg)
                self.on_node_message(conn.node_id, msg, effects)
                ends = ends or isinstance(msg, m.JobEnded)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return f"it sent a malformed message ({str(e)[:200]})"
        except Violation as e:
            return str(e)
        finally:
            if ends:  # (what came before a violation still counts)
                self.apply(effects, durable=True)
        return None

    def on_node_message(self, node_id: str, msg: m.NodeMessage, effects: Effects) -> None:
        """One message of a node's; what it changes goes into ``effects``."""
        now = time.time()
        self.state.on_heartbeat(node_id, now)
        if isinstance(msg, m.Heartbeat):
            conn = self.conns.get(node_id)
            if conn is not None:
                conn.send(msg)  # so the agent can tell a silent master from a quiet one
        elif isinstance(msg, m.JobOutput):
            assert self.output is not None
            job = self.state.jobs.get(msg.job_id)
            if (job is None or job.node != node_id or job.requeues != msg.run
                    or job.state is not JobState.RUNNING):
                return  # an old run's late output (or a killed one's): not kept
            key = run_key(msg.job_id, msg.run)
            try:
                kept = self.output.append_at(key, msg.offset, msg.data)
            except OSError as e:  # a full disk: drop this output, keep the link and the end
                if key not in self.output_lost:
                    self.output_lost.add(key)
                    log.error("job %d: cannot keep its output from node %s (%s): what does "
                              "not fit is dropped; free space in %s", msg.job_id, node_id,
                              e.strerror or e, self.cfg.data_dir)
                return
            if kept:
                self.notify_output(msg.job_id)
            elif key not in self.output_lost:
                log.error("gap in output of job %d from node %s", msg.job_id, node_id)
        elif isinstance(msg, m.JobEnded):
            effects.merge(self.state.on_job_ended(node_id, msg, now))
        elif isinstance(msg, m.JobStarted):
            log.debug("job %d started on %s as pid %d", msg.job_id, node_id, msg.pid)
        elif isinstance(msg, m.NodeHealth):
            log.log(logging.WARNING if msg.degraded else logging.INFO, "node %s: %s", node_id,
                    f"degraded, no new jobs: {msg.degraded}" if msg.degraded else "healthy")
            self.state.on_node_health(node_id, msg)
            self.apply(Effects())  # (healthy again: its GPUs may take pending jobs)
        elif isinstance(msg, m.JobInputAck):
            conn = self.conns.get(node_id)
            if conn is not None:
                conn.input_acked(msg.job_id, msg.delivered)


class _BadRequests(logging.Filter):
    """A malformed request (bad URL, header or method, turned away by aiohttp's parser with
    a 4xx) is a client's mistake, not the master's: one warning line, not a traceback a
    hostile client could fill the log with. Anything else passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        code = getattr(exc, "code", 0)
        if (exc is not None and type(exc).__module__.startswith("aiohttp.http_exceptions")
                and isinstance(code, int) and 400 <= code < 500):
            first = str(getattr(exc, "message", "") or exc).strip().splitlines()
            what = record.getMessage()
            record.msg = "%s: %d %s"
            record.args = (what, code, first[0][:200] if first else "")
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def _quiet_bad_requests() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _BadRequests) for f in server.filters):
        server.addFilter(_BadRequests())


def _consume(fut: asyncio.Future[None]) -> None:
    """Fire-and-forget saves: their failure is logged by the committer already."""
    if not fut.cancelled():
        fut.exception()


async def _close(ws: web.WebSocketResponse, why: bytes) -> None:
    await ws.close(message=why)


def prepare_data_dir(path: Path) -> None:
    """Create the data dir (mode 0700) and check that it can be written."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = path / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise MgpuError(
            f"cannot write to the data dir {path}: {e.strerror or e}; pass --data-dir with a "
            "writable directory (or set MGPU_DATA_DIR)"
        ) from e


def write_json(path: Path, obj: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(obj))
    os.replace(tmp, path)


async def serve_forever(master: Master) -> None:
    """Start ``master`` and run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
