"""``mgpu explain``: why a job waits, in facts and plain words, from the last pass's plan.

Built from what the master already has: the job's reason code and words (``refresh_pending_
reasons``), its priority and factors now (the queue), its place in line, the reservation of
the backfill plan, and its user's fair share. Nothing is saved; nothing here does I/O.
"""

from __future__ import annotations

from mgpu.core import controls as c
from mgpu.core.models import JobState, SimpleJob, utc
from mgpu.core.sched_messages import ExplainReply, PriorityInfo, ShareInfo, ShareListReply
from mgpu.core.scheduler import PendingReason
from mgpu.core.timefmt import format_elapsed
from mgpu.server.partitions import partition_words
from mgpu.server.state import ClusterState

# The words of each reason code: the policy's (PendingReason) and the gate's (controls.py).
_CODE_WORDS: dict[str, str] = {
    c.ARRAY_LIMIT: "its array runs as many tasks as its %N allows",
    c.DEPENDENCY_NEVER: "its dependency can no longer be met (kept: --kill-on-invalid-dep no)",
    PendingReason.PRIORITY: "jobs of higher priority are ahead of it",
    PendingReason.RESOURCES: "it is next, but not enough GPUs are free yet",
    PendingReason.RESERVED: "the GPUs it could use are held for a job of higher priority",
    PendingReason.DEPENDENCY: "it waits for a job it depends on",
    PendingReason.HELD: "it is held (`mgpu release` lets it go)",
    PendingReason.BEGIN_TIME: "its --begin time has not come",
    PendingReason.QOS_MAX_GPUS: "its user already runs as many GPUs as allowed",
    PendingReason.NODE_DOWN: "no node that could run it is up",
    PendingReason.NO_NODE_FITS: "no node could run it as asked",
    PendingReason.GPUS_BUSY_OUTSIDE: "the free GPUs are in use by processes outside mgpu",
}


def share_rows(state: ClusterState, now: float) -> ShareListReply:
    """Every user with shares, usage or pending jobs: ``mgpu share list``."""
    fs = state.fairshare
    running: dict[str, int] = dict(fs.running)
    rows = [ShareInfo(user=u, shares=s, usage_gpu_hours=round(h, 3), fair_share=round(f, 4),
                      pending=state.pending_by_user.get(u, 0), running_gpus=running.get(u, 0))
            for u, s, h, f in fs.rows(set(state.pending_by_user))]
    return ShareListReply(users=rows, half_life_s=fs.half_life)


def explain(state: ClusterState, job: SimpleJob, now: float) -> ExplainReply:
    """The facts and words of ``mgpu explain`` for ``job``."""
    out = ExplainReply(job_id=job.id, state=job.state.value)
    who = f"Job {job.id} ({job.user}, {job.gpus} GPU{'s' if job.gpus > 1 else ''}" + (
        f" on {job.nodes} nodes)" if job.nodes > 1 else ")")
    if job.state is JobState.RUNNING:
        out.lines.append(f"{who} is running on {job.node} (GPUs "
                         f"{', '.join(map(str, job.gpu_ids))}): it is not waiting.")
        _partition_line(state, job, out, now)
        return out
    if job.state is not JobState.PENDING:
        out.lines.append(f"{who} has ended ({job.state.value}"
                         f"{': ' + job.reason if job.reason else ''}).")
        return out
    if job.id in state.handed:  # (queue in SLURM: server/handoff.py)
        out.pending_reason, out.reason = job.pending_reason, job.reason
        out.lines.append(
            f"{who} is pending in SLURM's queue, through node {job.node} (SLURM job "
            f"{job.backend_id or 'not known yet'}): {job.pending_reason}. SLURM decides "
            "when it starts (its priority, hold, begin time and dependency there): "
            f"`squeue -j {job.backend_id or 'ID'}` shows it.")
        return out
    state.refresh_pending_reasons()
    out.pending_reason, out.reason = job.pending_reason, job.reason
    out.expected_start = job.expected_start
    out.pending = len(state.pending)
    words = _CODE_WORDS.get(job.pending_reason or "", "")
    out.lines.append(f"{who} is pending: {job.pending_reason}" + (f", {words}" if words else "")
                     + "." + (f" {job.reason[0].upper()}{job.reason[1:]}." if job.reason
                              else ""))
    _partition_line(state, job, out, now)
    said = state.plan.reasons.get(job.id)
    if said is not None and said.job_id is not None:
        out.held_for = said.job_id
    if job.id in state.pending:
        for ahead, snap in enumerate(state.pending_in_order()):
            if snap.job_id == job.id:
                f = snap.factors
                out.ahead = ahead
                out.priority = PriorityInfo(priority=round(snap.priority, 3),
                                            age=round(f.age, 3),
                                            fair_share=round(f.fair_share, 3),
                                            job=round(f.job, 3))
                break
    if out.priority is not None and out.ahead is not None:
        p = out.priority
        out.lines.append(
            f"Priority {p.priority:.1f} = age {p.age:.1f} + fair share {p.fair_share:.1f} + "
            f"job {p.job:.1f} (--priority {job.priority}, --nice {job.nice}).")
        out.lines.append(f"Place in line: {out.ahead + 1} of {out.pending} pending "
                         f"({out.ahead} ahead).")
    else:
        out.lines.append("It is not in line yet: it becomes eligible first (see its reason).")
    share = next((r for r in share_rows(state, now).users if r.user == job.user), None)
    if share is not None:
        out.share = share
        out.lines.append(
            f"{job.user}'s fair share: {share.fair_share:.2f} ({share.shares:g} share"
            f"{'s' if share.shares != 1 else ''}; {share.usage_gpu_hours:.2f} GPU-hours used, "
            f"halving every {format_elapsed(state.fairshare.half_life)}).")
    out.lines.append(_start_words(state, job, out, now))
    return out


def _partition_line(state: ClusterState, job: SimpleJob, out: ExplainReply,
                    now: float) -> None:
    """Where the job runs or may run, and whether it spilled or why not (partitions.py)."""
    words = partition_words(state, job, state.pending.get(job.id), now)
    if words is not None:
        out.lines.append(words)


def _start_words(state: ClusterState, job: SimpleJob, out: ExplainReply, now: float) -> str:
    if job.expected_start is not None:
        start = job.expected_start.timestamp()
        node = next((", ".join((r.node_id, *r.more_nodes)) for r in state.plan.reservations
                     if r.job_id == job.id), None)
        return (f"Expected start: {utc(start):%Y-%m-%d %H:%M:%S} UTC (in "
                f"{format_elapsed(max(start - now, 0))}) on {node}, when the running jobs "
                "there reach their time limits; GPUs there are held for it meanwhile.")
    code = job.pending_reason
    if code == PendingReason.RESERVED and out.held_for is not None:
        return (f"No expected start: only the first blocked job (job {out.held_for}) gets a "
                "reservation; this one starts after it, or sooner if a shorter time limit "
                "(-t) lets it end before that job's start.")
    if code in (PendingReason.NO_NODE_FITS, PendingReason.NODE_DOWN):
        return "No expected start: no node that is up can run it (see above)."
    if code == PendingReason.PRIORITY:
        return ("No expected start: only the first blocked job gets a reservation; jobs of "
                "higher priority are ahead of this one.")
    return "No expected start yet: it is worked out at the next scheduling pass."
