"""How the SLURM bridge (:mod:`mgpu.node.slurm`) follows its runs: SLURM's output files
copied into each run's spool every :data:`TAIL_INTERVAL` (framed; a gang's lines as task
frames), ``squeue`` asked every ``slurm_poll`` seconds (the bridge's ``_poll``), and the
node's health while SLURM does not answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

from mgpu.core import messages as m
from mgpu.core.config import NodeConfig
from mgpu.node import slurm_cli as sc
from mgpu.node.link_runs import READ_CHUNK, LinkRuns
from mgpu.node.slurm_runs import SlurmRun
from mgpu.utils.spool import read_at

log = logging.getLogger("mgpu.node.slurm")

TAIL_INTERVAL = 0.2  # seconds between looks at the output files


class SlurmFollow(LinkRuns):
    """The following half of :class:`~mgpu.node.slurm.SlurmLink` (which sets the
    attributes below)."""

    cfg: NodeConfig
    jobs: dict[str, SlurmRun]  # type: ignore[assignment]
    out_dir: Path
    down: str | None  # what SLURM said when it last failed us (None: it answers)
    on_health: Callable[[str | None], None]
    _wake: asyncio.Event

    @abstractmethod
    async def _poll(self) -> None:
        """Ask SLURM about the live runs and act on what it says."""

    def _outputs(self, key: str) -> tuple[Path, Path]:
        return self.out_dir / f"{key}.stdout", self.out_dir / f"{key}.stderr"

    async def _follow(self) -> None:
        """Copy new output every :data:`TAIL_INTERVAL`; ask squeue every ``slurm_poll``."""
        loop = asyncio.get_running_loop()
        next_poll = 0.0
        while True:
            for job in list(self.jobs.values()):
                if job.ended is None:
                    self._tail(job)
            if loop.time() >= next_poll or self._wake.is_set():
                self._wake.clear()
                next_poll = loop.time() + self.cfg.slurm_poll
                try:
                    await self._poll()
                except sc.SlurmError as e:
                    self._slurm_down(e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TAIL_INTERVAL)

    def _slurm_down(self, e: sc.SlurmError) -> None:
        """SLURM failed us: while its controller does not answer, the node is degraded
        (the master places nothing new here); other failures are logged once."""
        if self.down is None or self.down != e.message:
            if e.unreachable:
                self.on_health(f"SLURM does not answer: {e.message}")
            else:
                log.warning("cannot ask SLURM about its jobs: %s", e.message)
            self.down = e.message

    def _slurm_up(self) -> None:
        if self.down is not None:
            self.down = None
            self.on_health(None)

    def _tail(self, job: SlurmRun, final: bool = False) -> None:
        """Copy what SLURM's output files gained into the run's spool, framed (a gang's
        line by line, as task frames; ``final``: its last lines, ended or not)."""
        out, err = self._outputs(job.key)
        grew = False
        for stream, path in ((m.STREAM_STDOUT, out), (m.STREAM_STDERR, err)):
            while True:
                offset = job.out_read if stream == m.STREAM_STDOUT else job.err_read
                data = read_at(path, offset, READ_CHUNK)
                if not data and not final:
                    break
                frames = b"".join(m.frame(*f) for f in job.frames(stream, data, final))
                if frames:
                    with open(self.spool(job.key), "ab") as f:
                        f.write(frames)
                if not data:
                    break
                if stream == m.STREAM_STDOUT:
                    job.out_read += len(data)
                else:
                    job.err_read += len(data)
                grew = True
        if grew:
            self.pump(job.key)

