"""The SLURM bridge's runs (:mod:`mgpu.node.slurm`): the record of each, kept on disk
in ``DATA/slurm/runs.json`` so that a restarted bridge re-adopts its SLURM jobs.

What is kept: each run's SLURM job id, the end mgpu asked for when it cancelled it, its time
limit, its ``--comment`` (to find a job whose submission was cut short) and, once known, its
end (to report it again until the master acknowledges it). How far SLURM's output files
were copied is not kept: the run's spool says it (:func:`copied`), so a bridge killed
between a copy and a save neither loses nor repeats output.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgpu.core import messages as m
from mgpu.core.gang import TASK_OFFSET
from mgpu.core.models import EndCause
from mgpu.node.runs import NodeRun
from mgpu.node.slurm_gang import LabelSplitter, first_failure, label_width, raw_length
from mgpu.utils.atomic import write_atomic


@dataclass
class SlurmRun(NodeRun):
    """A run as the bridge sees it: a NodeRun and its SLURM job."""

    slurm_id: int | None = None
    out_read: int = 0  # bytes of SLURM's stdout file copied to the spool
    err_read: int = 0  # ... of its stderr file
    wanted: tuple[str, str] | None = None  # the end mgpu asked for when it cancelled it
    time_limit: float | None = None
    comment: str = ""
    id_sent: bool = False  # the SLURM id (and nodes, once known) went to the master
    nodes: str = ""  # the SLURM nodes it runs on ("n[1-2]"), once squeue says
    missing: int = 0  # polls in a row that squeue did not list it
    # A task of a SLURM array (queue in SLURM): its task id, and its output files' stem.
    array_task: int | None = None
    array_base: str | None = None
    # A gang run whole by SLURM (slurm_gang.py): its tasks (1: not a gang), its output files'
    # lines not ended yet, and its first failed task's exit code and words.
    tasks: int = 1
    splitters: dict[int, LabelSplitter] = field(default_factory=dict)
    failure: tuple[int, str] | None = None

    def frames(self, stream: int, data: bytes, final: bool = False
               ) -> list[tuple[int, bytes]]:
        """The spool frames of ``data`` read from SLURM's ``stream`` file (a gang's: task
        frames of its labelled lines, noting srun's word of its first failed task)."""
        if self.tasks == 1:
            return [(stream, data)] if data else []
        out = self.splitters.setdefault(stream, LabelSplitter(stream)).feed(data, final)
        for kind, line in out:
            if kind == m.STREAM_STDERR and self.failure is None:
                self.failure = first_failure(line)
        return out


def run_comment(job_id: int, run: int, name: str, node_id: str) -> str:
    """A run's ``--comment`` in SLURM: ``mgpu job ID.RUN NAME (node N, TAG)``. A bridge that
    stopped while submitting finds its run in SLURM by this comment; the random ``TAG``
    keeps it from taking another job of the same id and run (SLURM remembers ended jobs
    for ``MinJobAge``, and a master started afresh numbers its jobs from 1 again)."""
    return f"mgpu job {job_id}.{run} {name} (node {node_id}, {secrets.token_hex(4)})"


def save_runs(path: Path, jobs: Mapping[str, SlurmRun]) -> None:
    """Replace ``path`` with the records of ``jobs``."""
    runs: dict[str, Any] = {}
    for key, j in jobs.items():
        ended = None if j.ended is None else [j.ended.state, j.ended.exit_code,
                                              j.ended.reason, j.ended.output_size,
                                              j.ended.end_cause]
        runs[key] = {"slurm_id": j.slurm_id, "wanted": j.wanted, "time_limit": j.time_limit,
                     "comment": j.comment, "ended": ended, "tasks": j.tasks,
                     "array": None if j.array_base is None else [j.array_base, j.array_task]}
    write_atomic(path, json.dumps(runs).encode(), 0o600)


def load_runs(path: Path, spool_of: Callable[[str], Path]) -> list[SlurmRun]:
    """The runs recorded in ``path`` (none when it does not exist), each with how far its
    output was copied, read from its spool (``spool_of(key)``)."""
    try:
        saved: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    runs = []
    for key, rec in saved.items():
        job_id, _, run = key.partition(".")
        job = SlurmRun(int(job_id), int(run), slurm_id=rec["slurm_id"],
                       wanted=tuple(rec["wanted"]) if rec["wanted"] else None,
                       time_limit=rec["time_limit"], comment=rec["comment"],
                       tasks=rec.get("tasks", 1))
        if rec.get("array"):
            job.array_base, job.array_task = rec["array"]
        spool = spool_of(key)
        job.out_read, job.err_read = copied(spool, job)
        job.known = spool.stat().st_size if spool.exists() else 0
        if rec["ended"]:
            state, code, reason, size, cause = rec["ended"]
            job.ended = m.JobEnded(job.job_id, job.run, state, code, reason, size,
                                   None if cause is None else EndCause(cause))
        runs.append(job)
    return runs


def copied(spool: Path, job: SlurmRun | None = None) -> tuple[int, int]:
    """The bytes of stdout and of stderr in a spool: how far SLURM's output files were
    copied into it (for ``job``'s gang: the labels its task frames lost counted back, and
    its first failed task found again). A frame cut short (the bridge died while writing
    it) is cut off."""
    width = label_width(job.tasks) if job is not None else 0
    counts = {m.STREAM_STDOUT: 0, m.STREAM_STDERR: 0}
    try:
        f = open(spool, "r+b")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return 0, 0
    with f:
        size = os.fstat(f.fileno()).st_size
        pos = 0
        while pos + m.FRAME_HEADER.size <= size:
            f.seek(pos)
            stream, length = m.FRAME_HEADER.unpack(f.read(m.FRAME_HEADER.size))
            if pos + m.FRAME_HEADER.size + length > size:
                break
            end = pos + m.FRAME_HEADER.size + length
            if job is not None and job.tasks > 1:
                payload = f.read(length)
                if stream == m.STREAM_STDERR and job.failure is None:
                    job.failure = first_failure(payload)
                length = raw_length(stream, payload, width)
                stream = stream - TASK_OFFSET if stream > m.STREAM_STDERR else stream
            counts[stream] = counts.get(stream, 0) + length
            pos = end
        if pos < size:
            f.truncate(pos)
    return counts[m.STREAM_STDOUT], counts[m.STREAM_STDERR]
