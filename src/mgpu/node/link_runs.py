"""The runs the agent's keeper link holds: their files, their re-adoption, and the
forwarding of their output and ends to the master.

**Output** is forwarded from the spool as the link to the master has room (``has_room``),
never read ahead into memory; a run's end is reported once all its output has gone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mgpu.core import keeper_messages as kp
from mgpu.core import messages as m
from mgpu.core.models import EndCause
from mgpu.node.exitfile import read_exit
from mgpu.node.runs import NodeRun, ended_of, from_key
from mgpu.node.stdin import InputPump
from mgpu.utils.spool import read_at

log = logging.getLogger("mgpu.node.keeper_link")

READ_CHUNK = 1 << 20

OnOutput = Callable[[NodeRun, int, bytes], None]
OnEnded = Callable[[NodeRun], None]


class LinkRuns:
    """The runs by run key, for :class:`~mgpu.node.keeper_link.KeeperLink` (which sets the
    attributes below and talks to the keeper)."""

    spool_dir: Path
    jobs_dir: Path
    jobs: dict[str, NodeRun]
    on_output: OnOutput
    on_ended: OnEnded
    has_room: Callable[[], bool]
    input: InputPump
    # What the node registers of the engine behind it: a SLURM bridge's nodes (slurm.py).
    backend_nodes: list[m.BackendNode] | None = None

    def spool(self, key: str) -> Path:
        return self.spool_dir / f"{key}.out"

    def running_count(self) -> int:
        """Runs not yet ended (the node's ``mgpu_node_jobs_running``)."""
        return sum(1 for j in self.jobs.values() if j.ended is None)

    def _exit_file(self, key: str) -> str:
        return f"{self.jobs_dir}/{key}.exit"

    def output_size(self, key: str) -> int:
        try:
            return self.spool(key).stat().st_size
        except FileNotFoundError:
            return 0

    def read_output(self, key: str, offset: int, limit: int = READ_CHUNK) -> bytes:
        return read_at(self.spool(key), offset, limit)

    def _adopt(self, held: list[dict[str, Any]]) -> None:
        """Take back the jobs a former agent started: running, or ended while it was away."""
        for item in held:
            job = self.jobs.get(item["key"])  # known: the same keeper, after a lost link
            if job is None:
                job = self.jobs[item["key"]] = from_key(item["key"])
                job.keeper_base = item.get("stdin_written", 0)
            job.pid = item["pid"]
            job.known = max(job.known, item.get("size", 0))
            if item["exited"]:
                exited = kp.Exited(**item["exited"])
                job.known = exited.size
                job.ended = ended_of(exited)
            log.info("re-adopted job %s (%s)", job.key,
                     job.ended.state if job.ended else "running")
        for name in os.listdir(self.jobs_dir):
            key, dot, suffix = name.rpartition(".")
            if not dot or suffix != "exit" or key in self.jobs:
                continue
            left = read_exit(self._exit_file(key))
            if left is not None:  # the keeper that recorded it is gone
                job = from_key(key)
                job.known, job.ended = left.size, ended_of(left)
                self.jobs[key] = job

    def rewind(self, key: str, offset: int) -> None:
        """The master holds output up to ``offset``: forward from there on."""
        job = self.jobs.get(key)
        if job is not None:
            job.forwarded = offset

    def relink(self) -> None:
        """A new link to the master: every end is to be reported on it again, and input
        is counted afresh."""
        for job in self.jobs.values():
            job.end_sent = False
            job.link_base = job.input_got

    def pump(self, key: str, size: int | None = None) -> None:
        """The run's spool has ``size`` bytes (default: what the file has): forward what
        the link has room for, and the end once all output has gone."""
        job = self.jobs.get(key)
        if job is None:
            return
        job.known = max(job.known, self.output_size(key) if size is None else size)
        self._forward(job)

    def pump_all(self) -> None:
        """Forward what waits, job after job, while the link has room."""
        for job in list(self.jobs.values()):
            if not self._forward(job):
                return

    def _forward(self, job: NodeRun) -> bool:
        """Forward the run's output up to what is known, then its end; False when the
        link ran out of room first."""
        while job.forwarded < job.known:
            if not self.has_room():
                return False
            data = self.read_output(job.key, job.forwarded,
                                    min(READ_CHUNK, job.known - job.forwarded))
            if not data:
                break  # the spool is shorter than said (lost): the end tells the size
            self.on_output(job, job.forwarded, data)
            job.forwarded += len(data)
        if job.ended is not None and not job.end_sent:
            if not self.has_room():
                return False
            job.end_sent = True
            self.on_ended(job)
        return True

    def _conclude(self, job: NodeRun, exited: kp.Exited) -> None:
        if job.ended is not None:
            return
        job.known = max(job.known, exited.size)
        job.ended = ended_of(exited)
        self.input.dropped(job)
        self._forward(job)

    def _fail(self, job: NodeRun, reason: str, state: str = "failed",
              cause: EndCause = EndCause.FAILED_TO_START) -> None:
        if job.ended is not None:
            return
        with open(self.spool(job.key), "ab") as f:
            f.write(m.frame(m.STREAM_STDERR, f"mgpu: {reason}\n".encode()))
        size = self.output_size(job.key)
        job.known = size
        job.ended = m.JobEnded(job.job_id, job.run, state, None, reason, size, cause)
        self.input.dropped(job)
        self._forward(job)
