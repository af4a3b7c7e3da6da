"""The node session, as the master runs it: the join-secret handshake, registration
(admission, credentials), then each node message until the link ends.

A node that sends what it could not honestly send is cut off (``nodeconn.py`` holds the
checks, docs/protocol.md the rules); refusals are logged and audited at most once a minute
per peer. What a message changes is decided by :class:`~mgpu.server.state.ClusterState`'s
handlers and goes through ``Context.apply`` like every other event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from mgpu.core import messages as m
from mgpu.core.errors import StoreError, Unauthorized
from mgpu.core.gang import part_key
from mgpu.core.models import JobState, NodeState, run_key
from mgpu.server.auth import JOIN_HINT, bearer
from mgpu.server.effects import Effects
from mgpu.server.gang_output import GangOutput, node_key, part_rank
from mgpu.server.nodeconn import NodeConn, Violation
from mgpu.server.nodelog import NodeLogs
from mgpu.server.validate import register_problem

if TYPE_CHECKING:
    from mgpu.server.context import Context

log = logging.getLogger("mgpu.master")

LIVE_WAIT = 1.0  # seconds a node id's new registration waits for its old link to end
REFUSAL_QUIET = 60.0  # seconds: one peer's refusals are logged and audited at most this often


class NodeLink:
    """The master's side of every node's link: admits, registers and serves node agents,
    and cuts off those declared down or caught lying."""

    def __init__(self, master: Context) -> None:
        self.master = master
        # (peer, why) -> (when last logged, refusals since): a flood is logged once a minute
        self._refused: dict[tuple[str, str], tuple[float, int]] = {}
        self._registering: set[str] = set()  # node ids whose registration is being saved
        self.logs = NodeLogs()  # what nodes logged, into the audit log (bounded)
        self._gang_output: GangOutput | None = None

    def gang_output(self) -> GangOutput:
        """The merger of gang jobs' parts (made once the output directory is open)."""
        if self._gang_output is None:
            assert self.master.output is not None
            self._gang_output = GangOutput(self.master.output)
        return self._gang_output

    def admit_node(self, request: web.Request) -> None:
        """Let a node's WebSocket handshake through with the join secret, or refuse it with
        a 401 before anything changes (logged and audited, at most once a minute a peer)."""
        if not self.master.cfg.auth:
            return
        given = bearer(request.headers.get("Authorization"))
        if self.master.join.check(given):
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
        self.master.committer_submit(effects)

    def fence_lost_nodes(self) -> None:
        """Cut off nodes declared down that are still connected (merely slow): they
        reconnect, and their registration tells them to kill the jobs ended here."""
        for node_id, conn in list(self.master.conns.items()):
            node = self.master.state.nodes.get(node_id)
            if node is not None and node.state is NodeState.DOWN:
                log.warning("node %s is down but still connected: disconnecting it", node_id)
                del self.master.conns[node_id]
                conn.gone.set()
                conn.writer.cancel()
                self.master.spawn(_close(conn.ws, b"declared down: reconnect and re-register"))

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
        reply, effects = self.master.state.on_register(msg, now)
        reply.credential = credential
        assert self.master.output is not None
        jobs = self.master.state.jobs
        reply.output_offsets = {  # (a gang's part: that node's file, gang_output.py)
            j: self.master.output.size(node_key(jobs.get(int(j.partition(".")[0])), node_id, j))
            for j in reply.output_offsets}
        # Several heartbeats per timeout, so that a live node is never taken for a lost one.
        reply.heartbeat_interval = min(self.master.cfg.heartbeat_interval,
                                       self.master.cfg.node_timeout / 4)
        reply.node_timeout = self.master.cfg.node_timeout
        conn = NodeConn(node_id, ws, {r.key for r in msg.running}, peer)
        self.master.conns[node_id] = conn
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
        self.master.apply(effects, now, durable=True)
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
        if self.master.conns.get(conn.node_id) is conn:
            del self.master.conns[conn.node_id]
            conn.gone.set()
            self.master.state.on_disconnect(conn.node_id, time.time())
            log.warning("node %s disconnected", conn.node_id)

    async def _admit_register(self, msg: m.Register, peer: str) -> m.Registered | None:
        """The refusal to send for ``msg``, or None when the node may register: a register
        that cannot be true, a node id bound to a credential not presented, or a node id
        that is connected already (the live connection keeps its link)."""
        why = register_problem(msg) or self.master.node_credentials.refusal(
            msg.node_id, msg.credential)
        if why is not None:
            return m.Registered(accepted=False, error=why)
        live = self.master.conns.get(msg.node_id)
        if live is not None:  # a node that reconnects may come before its old link's end
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(live.gone.wait(), LIVE_WAIT)
        if msg.node_id in self.master.conns or msg.node_id in self._registering:
            live = self.master.conns.get(msg.node_id)
            return m.Registered(accepted=False, retry=True, error=(
                f"node {msg.node_id} is already connected"
                + (f" (from {live.peer})" if live is not None else "")
                + ": that connection keeps its link and this one is refused; if this is "
                "the same node, it registers again once its old link is gone"))
        return None

    async def _credential_for(self, msg: m.Register, peer: str) -> str | None:
        """A new credential for a node id that has none (saved before it is sent), else
        None. If it cannot be saved the node joins without one, and gets one next time."""
        if self.master.node_credentials.has(msg.node_id):
            return None
        now = time.time()
        credential, row = self.master.node_credentials.make(msg.node_id, now)
        effects = Effects()
        effects.batch.credentials.append(row)
        effects.audit(now, f"node:{msg.node_id}", "node.credential",
                      f"made the credential of node {msg.node_id} (joined from {peer}"
                      + (", presenting one this master did not know)" if msg.credential
                         else ")"))
        assert self.master.committer is not None
        try:
            await self.master.committer.submit(effects)
        except StoreError as e:
            log.error("node %s joins without a credential of its own for now: %s",
                      msg.node_id, e.message)
            return None
        self.master.node_credentials.add(row)
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
                # (a start's report: a SLURM id, or a gang's rendezvous, saved then sent on)
                ends = ends or isinstance(msg, (m.JobEnded, m.JobStarted, m.JobQueued))
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return f"it sent a malformed message ({str(e)[:200]})"
        except Violation as e:
            return str(e)
        finally:
            if ends:  # (what came before a violation still counts)
                self.master.apply(effects, durable=True)
        return None

    def on_node_message(self, node_id: str, msg: m.NodeMessage, effects: Effects) -> None:
        """One message of a node's; what it changes goes into ``effects``."""
        now = time.time()
        self.master.state.on_heartbeat(node_id, now)
        if isinstance(msg, m.Heartbeat):
            conn = self.master.conns.get(node_id)
            if conn is not None:
                conn.send(m.Heartbeat())  # so the agent can tell a silent master from a quiet one
            if msg.gpus is not None and self.master.state.on_gpu_usage(node_id, msg.gpus):
                self.master.apply(Effects())  # (a GPU freed outside mgpu may take jobs)
        elif isinstance(msg, m.JobOutput):
            assert self.master.output is not None
            job = self.master.state.jobs.get(msg.job_id)
            key = run_key(msg.job_id, msg.run)
            rank = part_rank(job, node_id)  # (a gang's part: its own file, merged)
            if (job is None or (rank is None and (job.parts is not None or job.node != node_id))
                    or job.run != msg.run or job.state is not JobState.RUNNING):
                return  # an old run's late output (or a killed one's): not kept
            file = key if rank is None else part_key(key, rank)
            try:
                before = self.master.output.size(file)
                kept = self.master.output.append_at(file, msg.offset, msg.data)
                if kept and rank is not None:
                    self.gang_output().feed(job, rank, before)
                elif kept and job.nodes * job.ntasks_per_node > 1:  # (run whole, by SLURM)
                    self.gang_output().split(job, before)
            except OSError as e:  # a full disk: drop this output, keep the link and the end
                if key not in self.master.output_lost:
                    self.master.output_lost.add(key)
                    log.error("job %d: cannot keep its output from node %s (%s): what does "
                              "not fit is dropped; free space in %s", msg.job_id, node_id,
                              e.strerror or e, self.master.cfg.data_dir)
                return
            if kept:
                self.master.notify_output(msg.job_id)
            elif key not in self.master.output_lost:
                log.error("gap in output of job %d from node %s", msg.job_id, node_id)
        elif isinstance(msg, m.JobEnded):
            job = self.master.state.jobs.get(msg.job_id)
            rank = part_rank(job, node_id)
            if job is not None and job.run == msg.run and (
                    rank is not None or job.nodes * job.ntasks_per_node > 1):
                with contextlib.suppress(OSError):  # (a full disk: said with its output)
                    self.gang_output().flush(job, rank)
            effects.merge(self.master.state.on_job_ended(node_id, msg, now))
        elif isinstance(msg, m.JobStarted):
            log.debug("job %d started on %s as pid %d", msg.job_id, node_id, msg.pid)
            effects.merge(self.master.state.on_job_started(node_id, msg))
        elif isinstance(msg, m.JobQueued):  # (queue in SLURM: server/handoff.py)
            effects.merge(self.master.state.on_job_queued(node_id, msg, now))
        elif isinstance(msg, m.NodeHealth):
            log.log(logging.WARNING if msg.degraded else logging.INFO, "node %s: %s", node_id,
                    f"degraded, no new jobs: {msg.degraded}" if msg.degraded else "healthy")
            self.master.state.on_node_health(node_id, msg)
            self.master.apply(Effects())  # (healthy again: its GPUs may take pending jobs)
        elif isinstance(msg, m.NodeLog):
            logs = Effects()
            self.logs.keep(node_id, msg, now, logs)
            self.master.committer_submit(logs)
        elif isinstance(msg, m.JobInputAck):
            conn = self.master.conns.get(node_id)
            if conn is not None:
                conn.input_acked(msg.job_id, msg.delivered)


async def _close(ws: web.WebSocketResponse, why: bytes) -> None:
    await ws.close(message=why)
