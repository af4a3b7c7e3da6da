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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgpu.core import messages as m
from mgpu.core.models import EndCause
from mgpu.node.runs import NodeRun
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
    id_sent: bool = False  # the SLURM id went to the master on this link
    missing: int = 0  # polls in a row that squeue did not list it
    # A task of a SLURM array (queue in SLURM): its task id, and its output files' stem.
    array_task: int | None = None
    array_base: str | None = None


def save_runs(path: Path, jobs: Mapping[str, SlurmRun]) -> None:
    """Replace ``path`` with the records of ``jobs``."""
    runs: dict[str, Any] = {}
    for key, j in jobs.items():
        ended = None if j.ended is None else [j.ended.state, j.ended.exit_code,
                                              j.ended.reason, j.ended.output_size,
                                              j.ended.end_cause]
        runs[key] = {"slurm_id": j.slurm_id, "wanted": j.wanted, "time_limit": j.time_limit,
                     "comment": j.comment, "ended": ended,
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
                       time_limit=rec["time_limit"], comment=rec["comment"])
        if rec.get("array"):
            job.array_base, job.array_task = rec["array"]
        spool = spool_of(key)
        job.out_read, job.err_read = copied(spool)
        job.known = spool.stat().st_size if spool.exists() else 0
        if rec["ended"]:
            state, code, reason, size, cause = rec["ended"]
            job.ended = m.JobEnded(job.job_id, job.run, state, code, reason, size,
                                   None if cause is None else EndCause(cause))
        runs.append(job)
    return runs


def copied(spool: Path) -> tuple[int, int]:
    """The bytes of stdout and of stderr in a spool: how far SLURM's output files were
    copied into it. A frame cut short (the bridge died while writing it) is cut off."""
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
            counts[stream] = counts.get(stream, 0) + length
            pos += m.FRAME_HEADER.size + length
        if pos < size:
            f.truncate(pos)
    return counts[m.STREAM_STDOUT], counts[m.STREAM_STDERR]
