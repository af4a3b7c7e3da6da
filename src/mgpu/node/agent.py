"""The node agent's outer layer: connect, register, heartbeat, take orders, report, reconnect.

An agent dials the master's WebSocket (only the master needs an open port), registers its
GPUs and the jobs it still holds, then runs :class:`StartJob` / :class:`CancelJob` orders
through its :class:`Supervisor`. Output and ends go back over the same socket in order.
When the link drops, jobs keep running and their output stays in the spool; the agent
reconnects with back-off and resends from the offsets the master says it has.

The agent joins with the master's join secret (``Authorization: Bearer`` on the WebSocket
handshake): ``join_token`` (``MGPU_JOIN_TOKEN``), else ``join_token_file``, else the join
secret of a master on this machine (its default data dir), when readable. A master that
refuses the secret, or whose TLS certificate does not verify, is not retried: the agent
stops with an error that says what to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.config import LogConfig, NodeConfig, from_options, xdg_data_home
from mgpu.core.errors import ConfigError, MgpuError
from mgpu.core.models import GpuInfo
from mgpu.node import credential
from mgpu.node import users as policy
from mgpu.node.keeper_link import KeeperLink, NodeRun
from mgpu.node.outbox import Outbox
from mgpu.utils.secretfile import read_secret

MAX_BACKOFF = 2.0


class Agent:
    """One node agent. ``await start()`` returns once it listens; ``await stop()`` ends it."""

    def __init__(self, cfg: NodeConfig, gpus: list[GpuInfo] | None = None) -> None:
        self.cfg = cfg
        self.node_id = cfg.node_id
        self.log = logging.getLogger(f"mgpu.node.{cfg.node_id}")
        self.gpus = gpus
        self.gpu_source = "given" if gpus is not None else ""
        self.port = 0
        self.connected = False
        self.registered = asyncio.Event()
        self.heard = 0.0  # loop time of the last message from the master
        self._fenced: set[str] = set()  # run keys killed for want of the master
        self.fatal: MgpuError | None = None
        self._ready = False
        self._out: Outbox | None = None
        self.users: list[str] | None = None  # whose jobs it runs (None: everyone's)
        self.degraded: str | None = None  # why it takes no jobs now
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.supervisor: KeeperLink | None = None
        self._secret: str | None = None
        self._ssl_context: Any = None

    @property
    def tls(self) -> bool:
        return self.cfg.tls or self.cfg.ca is not None

    @property
    def master_url(self) -> str:
        host = self.cfg.master_host
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.cfg.master_port}/api/v1/node/ws"

    def join_secret(self) -> str | None:
        """The join secret to present: ``join_token``, else ``join_token_file``'s, else a
        local master's (its default data dir), when readable; None when there is none."""
        if self.cfg.join_token:
            return self.cfg.join_token.strip()
        if self.cfg.join_token_file is not None:
            return read_secret(self.cfg.join_token_file, "join secret file", must_exist=True)
        local = xdg_data_home() / "mgpu" / "master" / "join.token"
        try:
            return read_secret(local, "join secret file")
        except ConfigError as e:  # not ours to read, or too open: as if absent, but say so
            self.log.warning("not using %s: %s", local, e.message)
            return None

    def _ssl(self) -> Any:
        """The client SSL context that verifies the master (``ca``, else the system's)."""
        if not self.tls:
            return None
        import ssl

        try:
            ctx = ssl.create_default_context(
                cafile=str(self.cfg.ca) if self.cfg.ca is not None else None)
            if self.cfg.ca is not None:  # any certificate in the file may be the anchor
                ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            return ctx
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(f"cannot load the CA file {self.cfg.ca} ({e}): check --ca / "
                              "MGPU_CA") from e

    async def start(self) -> None:
        if self.gpus is None:
            from mgpu.utils.gpu import detect_gpus, parse_gpu_list

            restrict = parse_gpu_list(self.cfg.gpus) if self.cfg.gpus else None
            self.gpus, self.gpu_source = detect_gpus(restrict, self.cfg.fake_gpus)
            if not self.gpus:
                raise MgpuError(
                    "no GPUs found on this machine (NVML and nvidia-smi found none): "
                    "pass --fake-gpus N (or set MGPU_FAKE_GPUS) to declare some for testing"
                )
        self.users = policy.served_users(self.cfg.users, self.cfg.allow_other_users,
                                         os.geteuid(), policy.own_user())
        self._secret = self.join_secret()
        self._ssl_context = self._ssl()
        data_dir = self.cfg.effective_data_dir
        self.supervisor = KeeperLink(
            self.node_id, data_dir, self._on_output, self._on_ended, self.cfg.kill_grace,
            self.cfg.fence_timeout, self.cfg.allow_root_jobs, self.cfg.max_output_mib << 20,
            on_health=self._on_health, on_input_ack=self._on_input_ack,
            has_room=self._has_room,
        )
        try:
            data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            await self.supervisor.open()
        except OSError as e:
            raise MgpuError(
                f"cannot write to the node's data dir {data_dir}: {e.strerror or e}; "
                "pass --data-dir with a writable directory"
            ) from e
        await self._start_health(data_dir)
        self.log.info(
            "node %s: %d GPUs (%s), health on %s:%d, joining master %s:%d; runs jobs of "
            "%s users", self.node_id, len(self.gpus), self.gpu_source, self.cfg.host,
            self.port, self.cfg.master_host, self.cfg.master_port, policy.describe(self.users),
        )
        self._task = asyncio.create_task(self._connect_loop())

    async def _start_health(self, data_dir: Path) -> None:
        app = web.Application()
        app.add_routes([web.get("/health", self._health)])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            if e.errno == errno.EADDRINUSE:
                raise MgpuError(
                    f"port {self.cfg.port} on {self.cfg.host} is already in use: stop the other "
                    "process (maybe another `mgpu node`) or pass --port (0 picks a free one)"
                ) from e
            raise MgpuError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e}") from e
        self.port = self._runner.addresses[0][1]
        tmp = data_dir / "node.json.tmp"
        tmp.write_bytes(msgspec.json.encode(
            {"node_id": self.node_id, "port": self.port, "pid": os.getpid()}))
        os.replace(tmp, data_dir / "node.json")

    async def _health(self, request: web.Request) -> web.Response:
        sup = self.supervisor
        jobs = list(sup.jobs.values()) if sup else []
        body = {"status": "degraded" if self.degraded else "ok", "node_id": self.node_id,
                "connected": self.connected, "jobs": len(jobs), "gpus": len(self.gpus or []),
                "reason": self.degraded, "users": self.users,
                "keeper_pid": sup.keeper_pid if sup else 0,
                # output in the spools, the part not yet passed on, and the part passed on
                # but not yet sent
                "spooled_output": sum(j.known for j in jobs),
                "unsent_output": sum(j.known - j.forwarded for j in jobs),
                "queued_output": self._out.output if self._out else 0}
        return web.json_response(body)

    async def stop(self, kill_jobs: bool = True) -> None:
        """Stop the agent; with ``kill_jobs`` its jobs end too (the master, not told, takes
        them for lost with the node: batch jobs are requeued), else they go on under the
        keeper for a new agent to re-adopt (within the fence time)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.supervisor is not None:
            await self.supervisor.close(kill_jobs)
        if self._runner is not None:
            await self._runner.cleanup()

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
        fencer = asyncio.create_task(self._fence_on_disconnect())
        try:
            await self._dial(backoff, warned)
        finally:
            fencer.cancel()

    async def _fence_on_disconnect(self) -> None:
        """With ``fence_on_disconnect``, kill every job once the master has been silent for
        the fence time: a cluster that prefers a killed job to one that may run twice
        during a network partition (see docs/failures.md)."""
        if not self.cfg.fence_on_disconnect:
            return
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(0.1)
            sup = self.supervisor
            if sup is None or sup.fence is None or loop.time() - self.heard < sup.fence:
                continue
            for job in list(sup.jobs.values()):
                if job.ended is None and job.key not in self._fenced:
                    self._fenced.add(job.key)
                    self.log.warning("killing job %s: no word from the master for %.1fs "
                                     "(fence_on_disconnect)", job.key, sup.fence)
                    sup.kill(job.key, f"the node lost the master for over "
                             f"{sup.fence:g}s (fence_on_disconnect)")

    async def _dial(self, backoff: float, warned: bool) -> None:
        # A connect that hangs (a partition drops packets) gives up and is retried.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0)
        headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        ssl_arg: Any = self._ssl_context if self._ssl_context is not None else True
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not self._stopping:
                try:
                    async with session.ws_connect(
                        self.master_url, max_msg_size=64 * 1024 * 1024, heartbeat=None,
                        headers=headers, ssl=ssl_arg,
                    ) as ws:
                        backoff = 0.05
                        warned = False
                        await self._session(ws)
                except aiohttp.WSServerHandshakeError as e:
                    self._refused(e)
                    if self.fatal is None and not warned:
                        self.log.warning("the master at %s:%d refused the connection (HTTP "
                                         "%d %s); retrying", self.cfg.master_host,
                                         self.cfg.master_port, e.status, e.message)
                        warned = True
                except aiohttp.ClientConnectorCertificateError as e:
                    self.fatal = MgpuError(
                        f"cannot verify the TLS certificate of the master at "
                        f"{self.cfg.master_host}:{self.cfg.master_port} "
                        f"({e.certificate_error}): "
                        + (f"it is not signed by the CA in {self.cfg.ca}" if self.cfg.ca
                           else "pass --ca FILE (or set MGPU_CA) to the CA that signed it")
                    )
                    self.log.error("%s", self.fatal.message)
                except (aiohttp.ClientError, OSError, TimeoutError) as e:
                    if not warned:
                        # A TLS master drops a plain handshake without a word.
                        hint = ("; if it serves TLS, pass --ca FILE (or set MGPU_CA), or "
                                "MGPU_TLS=1 for a certificate from a public CA"
                                if isinstance(e, aiohttp.ServerDisconnectedError)
                                and not self.tls else "")
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

    def _refused(self, e: aiohttp.WSServerHandshakeError) -> None:
        """A 401 on the handshake: the join secret is missing or wrong. Not retried."""
        if e.status != 401:
            return
        where = f"{self.cfg.master_host}:{self.cfg.master_port}"
        if self._secret is None:
            why = "this node has no join secret"
        else:
            why = "it does not accept this node's join secret"
        self.fatal = MgpuError(
            f"the master at {where} refused node {self.node_id}: {why}; give the node the "
            "master's join secret (the master's DATA_DIR/join.token): --join-token-file FILE "
            "or MGPU_JOIN_TOKEN"
        )
        self.log.error("%s", self.fatal.message)

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
        data_dir = self.cfg.effective_data_dir
        register = m.Register(
            node_id=self.node_id, gpus=self.gpus, hostname=socket.gethostname(), running=held,
            credential=credential.load(data_dir, self.node_id),
            users=self.users, degraded=self.degraded,
        )
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
            credential.save(data_dir, self.node_id, reply.credential)
        out = Outbox()
        writer = asyncio.create_task(out.send_all(ws, self._pump))
        beat = asyncio.create_task(self._heartbeat(out, reply.heartbeat_interval))
        if self.cfg.fence_timeout is None:
            sup.fence = max(0.5, reply.node_timeout * 0.6)
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
        for key in reply.kill:
            self.log.warning("killing job %s: the master ended or requeued it while we were "
                             "apart", key)
            sup.kill(key, "ended by the master while the node was away")
            sup.forget(key)
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
        while True:
            await asyncio.sleep(interval)
            out.put(m.Heartbeat())

    def _on_message(self, msg: m.MasterMessage) -> None:
        sup = self.supervisor
        assert sup is not None
        if isinstance(msg, m.Heartbeat):
            return
        if isinstance(msg, m.StartJob):
            refused = policy.refusal(self.node_id, msg.user, self.users)
            if refused is None:
                sup.start(msg)
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
        if degraded:
            self.log.error("node degraded, taking no jobs: %s", degraded)
        else:
            self.log.info("node healthy again, taking jobs")
        self._send(m.NodeHealth(degraded))

    def _on_input_ack(self, job: NodeRun) -> None:
        self._send(m.JobInputAck(job.job_id, job.input_delivered))

    def _on_ended(self, job: NodeRun) -> None:
        assert job.ended is not None
        self.log.debug("job %s ended: %s", job.key, job.ended.state)
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


async def run_agents(agents: list[Agent]) -> None:
    """Start ``agents`` and run until SIGTERM/SIGINT or until one is refused."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started: list[Agent] = []
    try:
        for agent in agents:
            await agent.start()
            started.append(agent)
        waits = [asyncio.ensure_future(a.wait()) for a in agents]
        stopper = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        for fut in done:
            if fut is not stopper:
                fut.result()
    finally:
        for agent in started:
            await agent.stop(kill_jobs=agent.cfg.kill_jobs_on_exit)


def run_node(cfg: NodeConfig, log_cfg: LogConfig | None = None) -> int:
    """The ``mgpu node`` command: run one agent in the foreground until stopped."""
    from mgpu.utils.logging import setup_logging

    setup_logging(log_cfg or LogConfig(), "node")
    asyncio.run(run_agents([Agent(cfg)]))
    return 0


class SimpleNode:
    """The founding API: ``SimpleNode('node1', 'localhost', 8080, 8081).start_agent()``."""

    def __init__(self, node_id: str, master_host: str = "localhost", master_port: int = 8080,
                 node_port: int = 8081, **options: object) -> None:
        self.config = from_options(NodeConfig, {
            "node_id": node_id, "master_host": master_host, "master_port": master_port,
            "port": node_port, **options})

    def start_agent(self) -> None:
        asyncio.run(run_agents([Agent(self.config)]))


class NodeManager:
    """Several agents in one process (tests and benchmarks use it to simulate many nodes)."""

    def __init__(self, master_host: str = "localhost", master_port: int = 8080) -> None:
        self.master_host = master_host
        self.master_port = master_port
        self.agents: list[Agent] = []

    def add_node(self, node_id: str, fake_gpus: int | None = None, gpus: str | None = None,
                 port: int = 0, data_dir: str | Path | None = None,
                 **options: object) -> Agent:
        cfg = from_options(NodeConfig, {
            "node_id": node_id, "master_host": self.master_host,
            "master_port": self.master_port, "port": port, "fake_gpus": fake_gpus,
            "gpus": gpus, "data_dir": data_dir, **options})
        agent = Agent(cfg)
        self.agents.append(agent)
        return agent

    async def start(self) -> None:
        for agent in self.agents:
            await agent.start()

    async def stop(self) -> None:
        for agent in self.agents:
            await agent.stop()

    def run(self) -> None:
        """Run every agent until SIGTERM/SIGINT (blocks)."""
        asyncio.run(run_agents(self.agents))
