"""The node agent's outer layer: connect, register, heartbeat, take orders, report, reconnect.

An agent dials the master's WebSocket (only the master needs an open port), registers its
GPUs and the jobs it still holds, then runs :class:`StartJob` / :class:`CancelJob` orders
through its :class:`KeeperLink`. Output and ends go back over the same socket in order.
When the link drops, jobs keep running and their output stays in the spool; the agent
reconnects with back-off and resends from the offsets the master says it has.

A master that refuses the join secret, or whose TLS certificate does not verify, is not
retried: the agent stops with an error that says what to fix (see :mod:`~mgpu.node.join`).

Beside it: ``join`` (the address, secret and TLS it joins with), ``fencing`` (when the node
kills its jobs for want of the master), ``health``, ``gangnode`` (a multi-node job's share)
and ``manager`` (``mgpu node``, :class:`SimpleNode`, :class:`NodeManager`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.core.errors import MgpuError
from mgpu.core.models import GpuInfo
from mgpu.node import credential, fencing, gangnode, join
from mgpu.node import users as policy
from mgpu.node.backends import offered_gpus, partition_of, queue_mode
from mgpu.node.gpuwatch import GpuWatch, open_watch
from mgpu.node.keeper_link import KeeperLink, NodeRun
from mgpu.node.logship import LogShipper
from mgpu.node.metrics import NodeMetrics, serve_listeners
from mgpu.node.outbox import Outbox

if TYPE_CHECKING:
    from mgpu.node.slurm import SlurmLink

MAX_BACKOFF = 2.0


class Agent:
    """One node agent. ``await start()`` returns once it listens; ``await stop()`` ends it."""

    def __init__(self, cfg: NodeConfig, gpus: list[GpuInfo] | None = None) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.log = logging.getLogger(f"mgpu.node.{cfg.node_id}")
        # Its warnings and errors, for the master (run_agents narrows it when it runs many).
        self.logs = LogShipper(self.log.name, everything=True)
        self.gpus = gpus
        self.gpu_source = "given" if gpus is not None else ""
        self.port, self.link_address = 0, "127.0.0.1"  # (its end of the link to the master)
        self.connected = False
        self.registered = asyncio.Event()
        self.heard = 0.0  # loop time of the last message from the master
        self.fatal: MgpuError | None = None
        self._ready = False
        self._out: Outbox | None = None
        self.users: list[str] | None = None  # whose jobs it runs (None: everyone's)
        self.degraded: str | None = None  # why it takes no jobs now
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.metrics: NodeMetrics | None = None  # its /metrics, when metrics_port is set
        self.supervisor: KeeperLink | SlurmLink | None = None
        self.gpuwatch: GpuWatch | None = None  # its GPUs' usage (node/gpuwatch.py)
        self._secret: str | None = None
        self._ssl_context: Any = None

    async def start(self) -> None:
        logging.getLogger("mgpu").addHandler(self.logs)
        self.gpus, self.gpu_source = await offered_gpus(self.cfg, self.gpus, self.gpu_source)
        self.users = policy.served_users(self.cfg.users, self.cfg.allow_other_users,
                                         os.geteuid(), policy.own_user())
        self._secret = join.join_secret(self.cfg, self.log)
        self._ssl_context = join.client_ssl(self.cfg)
        data_dir = self.cfg.effective_data_dir
        if self.cfg.backend == "slurm":  # jobs go to SLURM, not to this machine's keeper
            from mgpu.node.slurm_queue import bridge_link  # (queue in SLURM, or not)

            self.supervisor = bridge_link(self.cfg, self._on_output, self._on_ended,
                                          self._send, self._has_room, self._on_health)
        else:
            self.supervisor = KeeperLink(
                self.node_id, data_dir, self._on_output, self._on_ended, self.cfg.kill_grace,
                self.cfg.fence_timeout, self.cfg.allow_root_jobs, self.cfg.max_output_mib << 20,
                on_health=self._on_health, on_input_ack=self._on_input_ack,
                has_room=self._has_room)
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            await self.supervisor.open()
        except OSError as e:
            raise MgpuError(
                f"cannot write to the node's data dir {data_dir}: {e.strerror or e}; "
                "pass --data-dir with a writable directory"
            ) from e
        self.gpuwatch = open_watch(self.cfg, self.gpu_source, self.gpus,
                                   lambda: sup.keeper_pid if (sup := self.supervisor) else 0,
                                   self.log)
        self.gpuwatch.start()
        self.metrics, self._runner, self.port = await serve_listeners(
            self.cfg, self.gpus, self.gpu_source, self.supervisor.running_count, data_dir,
            self.node_id, self.health)
        self.log.info(
            "node %s: %d GPUs (%s), health on %s:%d, joining master %s:%d; runs jobs of "
            "%s users", self.node_id, len(self.gpus), self.gpu_source, self.cfg.host,
            self.port, self.cfg.master_host, self.cfg.master_port, policy.describe(self.users),
        )
        self._task = asyncio.create_task(self._connect_loop())

    def health(self) -> dict[str, object]:
        """The body of ``GET /health`` (see :mod:`mgpu.node.health`)."""
        sup = self.supervisor
        jobs = list(sup.jobs.values()) if sup else []
        return {"status": "degraded" if self.degraded else "ok", "node_id": self.node_id,
                "connected": self.connected, "jobs": len(jobs), "gpus": len(self.gpus or []),
                "reason": self.degraded, "users": self.users,
                "keeper_pid": sup.keeper_pid if sup else 0,
                # output in the spools, the part not yet passed on, and the part passed on
                # but not yet sent
                "spooled_output": sum(j.known for j in jobs),
                "unsent_output": sum(j.known - j.forwarded for j in jobs),
                "queued_output": self._out.output if self._out else 0}

    async def stop(self, kill_jobs: bool = True) -> None:
        """Stop the agent; with ``kill_jobs`` its jobs end too (the master, not told, takes
        them for lost with the node: batch jobs are requeued), else they go on under the
        keeper for a new agent to re-adopt (within the fence time)."""
        self._stopping = True
        logging.getLogger("mgpu").removeHandler(self.logs)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.gpuwatch is not None:
            await self.gpuwatch.close()
        if self.supervisor is not None:
            await self.supervisor.close(kill_jobs)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.metrics is not None:
            await self.metrics.close()

    async def wait(self) -> None:
        """Until the agent stops by itself (only when the master refuses it)."""
        if self._task is not None:
            await self._task
        if self.fatal is not None:
            raise self.fatal

    # ------------------------------------------------------------------ the link

    async def _connect_loop(self) -> None:
        backoff = 0.05
        warned = False
        fencer = (asyncio.create_task(fencing.watch_master(
            lambda: self.supervisor, lambda: self.heard, self.log))
            if self.cfg.fence_on_disconnect else None)
        try:
            await self._dial(backoff, warned)
        finally:
            if fencer is not None:
                fencer.cancel()

    async def _dial(self, backoff: float, warned: bool) -> None:
        # A connect that hangs (a partition drops packets) gives up and is retried.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0)
        headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        ssl_arg: Any = self._ssl_context if self._ssl_context is not None else True
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stopping:
                try:
                    async with session.ws_connect(
                        join.master_url(self.cfg), max_msg_size=64 * 1024 * 1024, heartbeat=None,
                        headers=headers, ssl=ssl_arg,
                    ) as ws:
                        self.link_address = (ws.get_extra_info("sockname") or ("",))[0]
                        backoff = 0.05
                        warned = False
                        await self._session(ws)
                except aiohttp.WSServerHandshakeError as e:
                    self.fatal = join.refusal(self.cfg, e.status, self._secret)
                    if self.fatal is not None:
                        self.log.error("%s", self.fatal.message)
                    if self.fatal is None and not warned:
                        self.log.warning("the master at %s:%d refused the connection (HTTP "
                                         "%d %s); retrying", self.cfg.master_host,
                                         self.cfg.master_port, e.status, e.message)
                        warned = True
                except aiohttp.ClientConnectorCertificateError as e:
                    self.fatal = join.certificate_error(self.cfg, e.certificate_error)
                    self.log.error("%s", self.fatal.message)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    if not warned:
                        hint = join.unreachable_hint(
                            self.cfg, isinstance(e, aiohttp.ServerDisconnectedError))
                        self.log.warning(
                            "cannot reach the master at %s:%d (%s%s); retrying",
                            self.cfg.master_host, self.cfg.master_port, e, hint,
                        )
                        warned = True
                finally:
                    self._lost_link()
                if self.fatal is not None:
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _lost_link(self) -> None:
        if self.connected:
            self.log.warning("lost the master; jobs keep running, reconnecting")
        self.connected = False
        self._ready = False
        self._out = None
        self.registered.clear()

    async def _session(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        sup = self.supervisor
        assert sup is not None and self.gpus is not None
        held = [m.RunningReport(j.job_id, j.run, sup.output_size(j.key))
                for j in sup.jobs.values()]
        register = m.Register(
            node_id=self.node_id, hostname=socket.gethostname(), running=held,
            gpus=self.gpuwatch.with_usage(self.gpus) if self.gpuwatch else self.gpus,
            credential=credential.load(self.cfg.effective_data_dir, self.node_id),
            users=self.users, degraded=self.degraded, pool=self.cfg.pool,
            foreign_gpu_policy=self.cfg.foreign_gpu_policy, min_free_mib=self.cfg.min_free_mib,
            partition=partition_of(self.cfg), slurm_queue=queue_mode(self.cfg),
            backend_nodes=sup.backend_nodes)
        await ws.send_bytes(m.node_encoder.encode(register))
        first = await ws.receive(timeout=30)
        if first.type is not aiohttp.WSMsgType.BINARY:
            raise aiohttp.ClientError(f"the master closed the connection ({first.extra})")
        reply, *after = _decode(first.data)
        if not isinstance(reply, m.Registered):
            raise aiohttp.ClientError("the master did not answer the registration")
        if not reply.accepted and reply.retry:  # e.g. its old link is not gone yet
            self.log.warning("the master refused node %s for now: %s", self.node_id,
                             reply.error)
            await asyncio.sleep(MAX_BACKOFF)
            return
        if not reply.accepted:
            self.fatal = MgpuError(f"the master refused node {self.node_id}: {reply.error}")
            self.log.error("%s", self.fatal.message)
            return
        if reply.credential is not None:  # the node id's first join: kept before anything
            credential.save(self.cfg.effective_data_dir, self.node_id, reply.credential)
        out = Outbox()
        writer = asyncio.create_task(out.send_all(ws, self._pump))
        beat = asyncio.create_task(self._heartbeat(out, reply.heartbeat_interval))
        sup.fence = fencing.fence_time(self.cfg.fence_timeout, reply.node_timeout)
        try:
            self._out = out
            self._ready = True
            self._resume(reply)
            self.connected = True
            self.registered.set()
            self.log.info("registered with the master")
            loop = asyncio.get_running_loop()
            self.heard = loop.time()
            for msg in after:
                self._on_message(msg)
            # The master answers every heartbeat: silence for the node timeout means the
            # link is gone even if TCP has not noticed (a partition drops, it does not reset).
            while True:
                try:
                    raw = await ws.receive(timeout=reply.node_timeout)
                except TimeoutError:
                    self.log.warning("no word from the master for %gs: reconnecting",
                                     reply.node_timeout)
                    return
                if raw.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return
                if raw.type is not aiohttp.WSMsgType.BINARY:
                    continue
                self.heard = loop.time()
                for msg in _decode(raw.data):
                    self._on_message(msg)
        finally:
            beat.cancel()
            writer.cancel()

    def _resume(self, reply: m.Registered) -> None:
        """After registering: kill fenced jobs, resend missing output and held ends."""
        sup = self.supervisor
        assert sup is not None
        fencing.kill_ended_while_apart(sup, reply.kill, self.log)
        sup.relink()
        for key, offset in reply.output_offsets.items():
            sup.rewind(key, offset)
        if self.degraded is not None:  # (a change after the register message was built)
            self._send(m.NodeHealth(self.degraded))
        sup.pump_all()

    def _pump(self) -> None:
        if self._has_room() and self.supervisor is not None:
            self.supervisor.pump_all()

    async def _heartbeat(self, out: Outbox, interval: float) -> None:
        watch = self.gpuwatch
        if watch is not None:
            watch.resend()  # (a new link: the master hears the whole usage again)
        while True:
            await asyncio.sleep(interval)
            out.put(m.Heartbeat(gpus=watch.report() if watch is not None else None))
            records = self.logs.take()
            if records:
                out.put(m.NodeLog(records=records))

    def _on_message(self, msg: m.MasterMessage) -> None:
        sup = self.supervisor
        assert sup is not None
        if isinstance(msg, m.StartJob):
            refused = (policy.refusal(self.node_id, msg.user, self.users)
                       or gangnode.refusal(msg, self.cfg.backend))
            if refused is None:
                sup.start(gangnode.prepare(msg, self.cfg.address or self.link_address,
                                           self._send))
                if self.gpuwatch is not None:
                    self.gpuwatch.started(msg.job_id, msg.gpu_ids)
            else:
                self.log.warning("refused job %d of %s: %s", msg.job_id, msg.user, refused)
                sup.refuse(msg, refused)
        elif isinstance(msg, m.JobInput):
            sup.write_stdin(msg.job_id, msg.data, msg.eof)
        elif isinstance(msg, m.JobSignal):
            sup.signal(msg.job_id, msg.signum)
        elif isinstance(msg, m.JobResize):
            sup.resize(msg.job_id, msg.rows, msg.cols)
        elif isinstance(msg, m.CancelJob):
            sup.cancel(msg.job_id, msg.reason)
        elif isinstance(msg, m.EndedAck):
            for key in msg.runs:
                sup.forget(key)
        elif isinstance(msg, m.HoldJob) and hasattr(sup, "hold"):  # (queue in SLURM)
            sup.hold(msg.job_id, msg.hold)
        # (A Heartbeat from the master says only that it is there: ``heard`` is set.)

    def _send(self, msg: m.NodeMessage) -> None:
        if self._ready and self._out is not None:
            self._out.put(msg)

    def _has_room(self) -> bool:
        return self._ready and self._out is not None and self._out.has_room()

    def _on_output(self, job: NodeRun, offset: int, data: bytes) -> None:
        self._send(m.JobOutput(job.job_id, job.run, offset, data))

    def _on_health(self, degraded: str | None) -> None:
        if degraded == self.degraded:
            return
        self.degraded = degraded
        self.log.log(logging.ERROR if degraded else logging.INFO, "node %s", f"degraded, "
                     f"taking no jobs: {degraded}" if degraded else "healthy again, taking jobs")
        self._send(m.NodeHealth(degraded))

    def _on_input_ack(self, job: NodeRun) -> None:
        self._send(m.JobInputAck(job.job_id, job.input_delivered))

    def _on_ended(self, job: NodeRun) -> None:
        assert job.ended is not None
        self.log.debug("job %s ended: %s", job.key, job.ended.state)
        if self.gpuwatch is not None:
            job.ended = self.gpuwatch.annotate(job.ended)
        self._send(job.ended)


def _decode(data: bytes) -> list[m.MasterMessage]:
    """The messages of a frame from the master; a frame this agent cannot read (a master
    of another version, say) drops the link, which is then dialled again."""
    try:
        return m.decode_master_frame(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise aiohttp.ClientError(f"the master sent a message this node cannot read ({e}): "
                                  "run the same mgpu version on the master and the nodes"
                                  ) from None


# The published names ``mgpu.node.agent.SimpleNode`` / ``NodeManager`` (DESIGN.md). They are
# defined in manager.py, which builds on Agent, so they are looked up on first use here.
_MANAGER_NAMES = ("SimpleNode", "NodeManager")


def __getattr__(name: str) -> object:
    if name not in _MANAGER_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module("mgpu.node.manager"), name)
    globals()[name] = value
    return value
