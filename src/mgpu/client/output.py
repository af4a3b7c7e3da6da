"""Rendering of every view the ``mgpu`` command shows: human tables and ``--json``.

Functions here take data (models from :mod:`mgpu.core.models`) and the current time, and
return the text to print, ending in a newline; they never fetch and never print. Tables are
built as one string so that ten thousand rows cost one write.

The ``--json`` contract is the structs' own JSON (msgspec): a job has ``id, name, user,
state, gpus, command, cwd, node, gpu_ids, exit_code, reason, end_cause, submitted_at, started_at,
ended_at, backend_id`` (a job on the SLURM bridge: its SLURM job id), a node ``node_id,
state, gpus [{index, name, memory_total_mib, job_id}],
last_seen, reason, users`` (``users``: whose jobs it runs, ``null`` for everyone's); times
are RFC 3339 in UTC (``2024-05-01T12:00:00Z``), absent values ``null``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from mgpu.client import gpu_views, tables
from mgpu.client.tables import QUEUE_HEADERS as QUEUE_HEADERS
from mgpu.client.tables import clean as _clean
from mgpu.client.tables import table as table
from mgpu.core.messages import AuditEvent, CancelResult, PoolInfo, TokenInfo
from mgpu.core.models import JobState, NodeInfo, SimpleJob
from mgpu.core.timefmt import format_elapsed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

# The elapsed-time form every view of a job uses (``mgpu show``, ``mgpu queue``).
duration = format_elapsed

NODE_HEADERS = ("NODE", "STATE", "GPUS", "USED", "FREE", "TYPE", "USERS", "JOBS", "OUTSIDE",
                "REASON")


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):  # a Path in a config
        return os.fspath(obj)
    raise NotImplementedError(f"cannot show {type(obj).__name__} as JSON")


def to_json(obj: Any) -> str:
    """``obj`` (structs, lists, dicts of them) as indented JSON with a final newline."""
    raw = msgspec.json.encode(obj, enc_hook=_enc_hook)
    return msgspec.json.format(raw, indent=2).decode() + "\n"


def elapsed(job: SimpleJob, now: datetime) -> float:
    """Seconds the job has run: until ``now`` while running, until its end once ended."""
    if job.started_at is None:
        return 0.0
    until = now
    if job.state is not JobState.RUNNING and job.ended_at is not None:
        until = job.ended_at
    return (until - job.started_at).total_seconds()


def queue_table(jobs: Sequence[SimpleJob], now: datetime) -> str:
    """The ``mgpu queue`` table (``tables.queue_table``) of jobs as models."""
    return tables.queue_table(
        [(j.id, j.name, j.user, j.state.value, j.gpus, ",".join(j.nodes_of()) or None,
          None if j.started_at is None else j.started_at.timestamp(),
          None if j.ended_at is None else j.ended_at.timestamp(),
          tables.reason_cell(j.pending_reason, j.reason)) for j in jobs],
        now.timestamp())


def _when(ts: datetime | None) -> str:
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z") if ts else "-"


def job_detail(job: SimpleJob, now: datetime) -> str:
    """``mgpu show``: every field of one job, one per line, named as in ``--json``."""
    fields = [
        ("id", str(job.id)),
        ("name", job.name),
        ("user", job.user),
        ("state", job.state.value),
        ("gpus", str(job.gpus)),
        ("node", job.node or "-"),
        ("backend_id", job.backend_id or "-"),
        ("backend_nodes", job.backend_nodes or "-"),  # (SLURM's nodes of a bridge's job)
        ("partition", job.partition or "(default)"),  # its -p (README "Mixed mode")
        ("gpu_ids", ",".join(map(str, job.gpu_ids)) or "-"),
        ("command", job.command),
        ("cwd", job.cwd),
        ("exit_code", "-" if job.exit_code is None else str(job.exit_code)),
        ("reason", job.reason or "-"),
        ("end_cause", job.end_cause.value if job.end_cause else "-"),
        ("time_limit", duration(job.time_limit)),
        ("requeues", str(job.requeues)),
        ("max_requeue", str(job.max_requeue)),
        ("retries", str(job.retries)),  # (after non-zero exits; requeues: lost nodes)
        ("interactive", "yes" if job.interactive else "no"),
        ("stdin", "yes" if job.stdin else "no"),
        ("pty", "yes" if job.pty else "no"),
        ("argv", "-" if job.argv is None else " ".join(job.argv)),
        ("submitted_at", _when(job.submitted_at)),
        ("started_at", _when(job.started_at)),
        ("ended_at", _when(job.ended_at)),
        *gpu_views.job_gpu_rows(job),
        ("mail_type", ",".join(job.mail_type) if job.mail_type else "-"),
        ("mail_user", job.mail_user or "-"),
        ("notify_url", job.notify_url or "-"),
        ("time", duration(elapsed(job, now))),
    ]
    fields.extend(_control_fields(job))
    fields.extend(_gang_fields(job))
    width = max(len(k) for k, _ in fields) + 1
    return "".join(f"{k + ':':<{width}} {_clean(v)}\n" for k, v in fields)


def _gang_fields(job: SimpleJob) -> list[tuple[str, str]]:
    """``mgpu show``'s lines of a multi-node job: its size, and each node's part in rank
    order (``node1:0,1=completed(0)``; a part still running shows its GPUs alone)."""
    parts = " ".join(
        f"{p.node}:{','.join(map(str, p.gpu_ids)) or '-'}"
        + (f"={p.state}" + ("" if p.exit_code is None else f"({p.exit_code})") if p.ended
           else "") for p in job.parts or ())
    return [("nodes", str(job.nodes)), ("ntasks_per_node", str(job.ntasks_per_node)),
            ("slurm_env", "yes" if job.slurm_env else "no"), ("parts", parts or "-"),
            ("rendezvous", job.rendezvous or "-")]


def _control_fields(job: SimpleJob) -> list[tuple[str, str]]:
    """``mgpu show``'s lines of the scheduling fields and the job controls (README "Job
    controls"): every field, ``-`` when it does not apply."""
    def opt(value: object) -> str:
        return "-" if value is None else str(value)

    throttle = f"; at most {job.array_throttle} at once" if job.array_throttle else ""
    return [
        ("pending_reason", opt(job.pending_reason)),
        ("expected_start", _when(job.expected_start)),
        ("priority", str(job.priority)),
        ("nice", str(job.nice)),
        ("dependency", opt(job.dependency)),
        ("kill_on_invalid_dep", "yes" if job.kill_on_invalid_dep else "no"),
        ("array_job_id", "-" if job.array_job_id is None else
         f"{job.array_job_id} (task {job.array_job_id}_{job.array_task_id}{throttle})"),
        ("array_task_id", opt(job.array_task_id)),
        ("array_throttle", opt(job.array_throttle)),
        ("held", "yes" if job.held else "no"),
        ("begin_at", _when(job.begin_at)),
        ("max_retries", str(job.max_retries)),
    ]


def _holders(node: NodeInfo) -> str:
    """``7:0,1 9:3``: each job on the node and the GPU indices it holds."""
    by_job: dict[int, list[str]] = {}
    for g in node.gpus:
        if g.job_id is not None:
            by_job.setdefault(g.job_id, []).append(str(g.index))
    return " ".join(f"{job}:{','.join(idx)}" for job, idx in sorted(by_job.items()))


def nodes_table(nodes: Sequence[NodeInfo], pools: Sequence[PoolInfo] = ()) -> str:
    """The ``mgpu nodes`` table: GPUs total, used and free (a job could get them now),
    their types, whose jobs the node runs (``all``, or ``only alice``), which job holds
    which GPU, the processes outside mgpu on its GPUs, and why a degraded or draining node
    takes no new jobs; a POOL column when pools exist, and a line per pool below; a
    PARTITION column when partitions exist."""
    rows = []
    pooled = any(n.pool for n in nodes) or bool(pools)
    parted = any(n.partition for n in nodes)  # a PARTITION column when partitions exist
    for n in nodes:
        used = sum(1 for g in n.gpus if g.job_id is not None)
        state = n.state
        if n.draining:
            state = f"{state},{'draining' if used else 'drained'}"
        row = (
            _clean(n.node_id),
            state,
            str(len(n.gpus)),
            str(used),
            str(gpu_views.node_free(n)),
            gpu_views.node_types(n),
            "all" if n.users is None else _clean("only " + ",".join(n.users)),
            _holders(n) or "-",
            gpu_views.node_outside(n),
            _clean((n.drain_reason if n.draining else n.reason) or ""),
        )
        extra: tuple[str, ...] = (_clean(n.pool or "-"),) if pooled else ()
        if parted:  # (README "Mixed mode")
            extra += (_clean(n.partition or "(default)"),)
        rows.append((*row[:2], *extra, *row[2:]))
    headers = (*NODE_HEADERS[:2], *(["POOL"] if pooled else []),
               *(["PARTITION"] if parted else []), *NODE_HEADERS[2:])
    shift = int(pooled) + int(parted)
    right = (2 + shift, 3 + shift, 4 + shift)
    if not pooled:
        return table(headers, rows, right=right)
    lines = [table(headers, rows, right=right)]
    for p in pools:
        lines.append(
            f"pool {_clean(p.name)}: {len(p.nodes)} node(s) of {p.gpus_per_node} GPUs "
            f"(min {p.min_nodes}, max {p.max_nodes}), {p.requested} requested"
            + (f", releasing {_clean(' '.join(p.releasing))}" if p.releasing else "") + "\n")
    return "".join(lines)


def cancel_report(results: Sequence[CancelResult]) -> tuple[str, str]:
    """``mgpu cancel``: (lines for stdout, lines for stderr), one per job."""
    out = []
    err = []
    for r in results:
        if r.ok:
            out.append(f"Cancelled job {r.job_id}\n")
        else:
            why = r.error or f"job {r.job_id} cannot be cancelled"
            err.append(f"error: {why}\n")  # (the master's reason names the job)
    return "".join(out), "".join(err)


def wait_report(jobs: Sequence[SimpleJob]) -> str:
    """``mgpu wait``: how each job ended (or that it has not)."""
    lines = []
    for j in jobs:
        line = f"Job {j.id} {j.state.value}"
        if j.exit_code is not None:
            line += f" (exit code {j.exit_code})"
        if j.reason and j.reason not in (j.state.value, f"exit code {j.exit_code}"):
            line += f": {_clean(j.reason)}"
        lines.append(line + "\n")
    return "".join(lines)


def tokens_table(tokens: Sequence[TokenInfo]) -> str:
    """``mgpu token list``: one row per active token (never the token itself)."""
    rows = [(str(t.id), _clean(t.user), "yes" if t.admin else "no", _when(t.created_at))
            for t in tokens]
    return table(("ID", "USER", "ADMIN", "CREATED"), rows, right=(0,))


def events_table(events: Sequence[AuditEvent]) -> str:
    """``mgpu events``: the audit log, oldest first."""
    rows = [(_when(e.time), _clean(e.user), e.action, _clean(e.detail)) for e in events]
    return table(("TIME", "USER", "ACTION", "DETAIL"), rows)


Section = tuple[str, Any, dict[str, str]]  # (name, config dataclass, sources)


# A row of ``mgpu config`` beyond the config dataclasses: (section, key, shown, source).
ExtraRow = tuple[str, str, str, str]


def config_table(sections: Sequence[Section], file: str,
                 extra: Sequence[ExtraRow] = ()) -> str:
    """``mgpu config``: every effective value and where it came from (``file``: which
    config file was read, in words); ``extra`` rows go after their section's."""
    from mgpu.core.config import describe

    rows: list[ExtraRow] = []
    for name, cfg, sources in sections:
        rows.extend((name, key, value, source) for key, value, source in describe(cfg, sources))
        rows.extend((name, key, value, source) for section, key, value, source in extra
                    if section == name)
    head = f"config file: {file}\n"
    return head + table(("SECTION", "KEY", "VALUE", "SOURCE"), rows)


def config_json(sections: Sequence[Section], file: Path | None,
                extra: Sequence[ExtraRow] = ()) -> str:
    """``mgpu config --json``: ``{"file": ..., SECTION: {KEY: {"value", "source"}}}``."""
    from mgpu.core.config import describe

    data: dict[str, Any] = {"file": str(file) if file else None}
    for name, cfg, sources in sections:
        data[name] = {
            key: {"value": shown if shown == "(set)" else getattr(cfg, key), "source": source}
            for key, shown, source in describe(cfg, sources)
        }
    for section, key, shown, source in extra:
        data[section][key] = {"value": shown, "source": source}
    return to_json(data)
