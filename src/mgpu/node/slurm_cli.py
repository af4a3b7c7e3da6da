"""SLURM's commands, as the SLURM bridge (:mod:`mgpu.node.slurm`) uses them, and what their
answers mean for mgpu.

* :func:`sbatch_argv` builds the submission of one run (``--parsable``; the script comes on
  stdin), :func:`parse_sbatch` reads the SLURM job id back.
* :func:`query` asks ``squeue -t all`` about many jobs at once: SLURM keeps ended jobs
  for ``MinJobAge`` seconds (300 by default), so their end and exit status are read there,
  without ``sacct`` (and without the accounting daemon ``sacct`` needs).
* :func:`end_of` maps a SLURM state to mgpu's end, a pure function (the table is
  :data:`ENDED` and :data:`ACTIVE`).
* :func:`partition_gpus` counts the GPUs (gres ``gpu``) of a partition's nodes, which
  :func:`offered_gpus` offers; :func:`account_of` says whom a job is submitted as.

Each command runs with a bounded time (:data:`TIMEOUT`); a failure raises
:class:`SlurmError` with SLURM's own words.
"""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mgpu.core.config import NodeConfig
from mgpu.core.errors import ConfigError, MgpuError
from mgpu.core.models import EndCause, GpuInfo

TIMEOUT = 30.0  # seconds a SLURM command may take
# What SLURM's commands say when its controller does not answer (then try again later).
UNREACHABLE = ("Unable to contact slurm controller", "Socket timed out",
               "Slurm backup controller in standby mode", "Connection refused")

# SLURM states of a job that is not over (it may still run, or run again).
ACTIVE = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "RESIZING",
    "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED",
    "RESV_DEL_HOLD", "SPECIAL_EXIT",
})

# SLURM's ended states -> mgpu's state and why it ended (None: from the exit status).
ENDED: dict[str, tuple[str, EndCause | None, str | None]] = {  # (state, cause, reason)
    "COMPLETED": ("completed", EndCause.EXITED, None),
    "FAILED": ("failed", None, None),
    "OUT_OF_MEMORY": ("failed", EndCause.SIGNALED, "SLURM: out of memory"),
    "BOOT_FAIL": ("node_fail", EndCause.NODE_LOST, "SLURM: its node failed to boot"),
    "DEADLINE": ("failed", EndCause.FAILED_TO_START, "SLURM: its deadline passed"),
    "CANCELLED": ("cancelled", EndCause.CANCELLED, "cancelled in SLURM (scancel)"),
    "REVOKED": ("cancelled", EndCause.CANCELLED, "SLURM: revoked (it ran on another "
                "cluster)"),
    "TIMEOUT": ("timeout", EndCause.TIME_LIMIT, "SLURM: time limit reached"),
    "NODE_FAIL": ("node_fail", EndCause.NODE_LOST, "SLURM: its node failed"),
    # Preempted and not requeued by SLURM (PreemptMode=CANCEL): lost like a failed node,
    # so mgpu requeues it when the job allows.
    "PREEMPTED": ("node_fail", EndCause.NODE_LOST, "SLURM: preempted"),
}


class SlurmError(MgpuError):
    """A SLURM command failed; the message holds its words and what to check.
    ``unreachable``: SLURM's controller did not answer (worth trying again later)."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass(frozen=True)
class SlurmJob:
    """What ``squeue`` says of one job."""

    id: int
    state: str  # SLURM's, e.g. "RUNNING"
    reason: str  # SLURM's state reason, e.g. "Resources"
    exit_status: int | None  # a wait status: exit code << 8, or the signal number
    start_time: float  # 0 until it starts
    comment: str
    nodes: str = ""  # the nodes it runs on, as SLURM writes them ("n[1-2]"); "" before


@dataclass(frozen=True)
class End:
    """How a run ended, in mgpu's words."""

    state: str
    exit_code: int | None
    reason: str | None
    cause: EndCause | None


def exit_code_of(status: int | None) -> int | None:
    """A wait status as an exit code: the code, or 128+N for signal N."""
    if status is None:
        return None
    signal = status & 0x7F
    return 128 + signal if signal else (status >> 8) & 0xFF


def end_of(job: SlurmJob, wanted: tuple[str, str] | None) -> End | None:
    """mgpu's end of a SLURM job, None while it is not over. ``wanted`` is the state and
    reason mgpu asked for when it cancelled the job itself (a cancel, a time limit, a
    fence): SLURM then says CANCELLED, and mgpu's words win."""
    if job.state in ACTIVE:
        return None
    code = exit_code_of(job.exit_status)
    if job.state == "CANCELLED" and wanted is not None:
        want, words = wanted
        return End(want, code, words, wanted_cause(want))
    state, cause, why = ENDED.get(
        job.state, ("failed", None, f"SLURM ended it as {job.state}"))
    if state == "failed" and cause is None:
        signaled = job.exit_status is not None and job.exit_status & 0x7F
        cause = EndCause.SIGNALED if signaled else EndCause.EXITED
        if job.state == "FAILED":
            why = f"exit code {code}" if code else f"SLURM: {job.reason}"
    return End(state, code, why, cause)


def wanted_cause(state: str) -> EndCause:
    """Why a run that mgpu itself stopped, to end in ``state``, ended."""
    return {"timeout": EndCause.TIME_LIMIT, "node_fail": EndCause.NODE_LOST}.get(
        state, EndCause.CANCELLED)


def sbatch_argv(*, name: str, comment: str, gpus: int, time_limit: float | None, cwd: str,
                stdout: str, stderr: str, partition: str | None, nodes: int = 1,
                tasks_per_node: int = 1) -> list[str]:
    """The ``sbatch`` command line of one run (its script comes on stdin). SLURM counts
    time limits in whole minutes: mgpu's limit is rounded up for SLURM, and the bridge
    holds the job to the exact one. SLURM never requeues it (``--no-requeue``): a run that
    SLURM's node failure or a preemption ends is requeued by mgpu, as a new run, when the
    job allows (its ``requeue`` and ``max_requeue``). A multi-node or several-task job asks
    for ``nodes`` nodes with ``tasks_per_node`` tasks and ``gpus`` GPUs on each."""
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--comment={comment}",
            f"--chdir={cwd}", f"--output={stdout}", f"--error={stderr}",
            "--open-mode=append", "--export=ALL", "--no-requeue"]
    if nodes > 1 or tasks_per_node > 1:
        argv += [f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}"]
    if gpus > 0:
        argv.append(f"--gres=gpu:{gpus}")
    if time_limit:
        argv.append(f"--time={minutes(time_limit)}")
    if partition:
        argv.append(f"--partition={partition}")
    return argv


def minutes(time_limit: float) -> int:
    """A time limit in seconds as SLURM's whole minutes, rounded up (at least 1)."""
    return max(1, math.ceil(time_limit / 60))


def parse_sbatch(out: str) -> int:
    """The job id in ``sbatch --parsable``'s answer (``ID`` or ``ID;CLUSTER``)."""
    first = out.strip().splitlines()[-1] if out.strip() else ""
    head = first.split(";")[0]
    if not head.isdigit():
        raise SlurmError(f"sbatch answered {out.strip()[:200]!r}, not a job id")
    return int(head)


# ``squeue -O``: fields cut by "|", the comment (free text) last. (``squeue --json`` would
# be safer to read, but it ignores ``-j`` and lists every job of the cluster, each poll.)
SQUEUE_FORMAT = "JobID:|,State:|,Reason:|,exit_code:|,StartTime:|,NodeList:|,Comment:"


def parse_squeue(text: str) -> dict[int, SlurmJob]:
    """The jobs of ``squeue -h -O SQUEUE_FORMAT``'s answer, by id."""
    jobs: dict[int, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.split("|", 6)
        if len(parts) < 7 or not parts[0].strip().isdigit():
            continue
        sid, state, reason, status, start, nodes, comment = (p.strip() for p in parts)
        jobs[int(sid)] = SlurmJob(
            int(sid), state.split()[0] if state else "PENDING", reason,
            int(status) if status.isdigit() else None, _time(start),
            "" if comment == "(null)" else comment, "" if nodes == "(null)" else nodes)
    return jobs


# ``squeue -O`` with an array's tasks told apart (queue in SLURM: ``slurm_queue.py``).
TASK_FORMAT = "ArrayJobID:|,ArrayTaskID:|,State:|,Reason:|,exit_code:|,StartTime:|,Comment:"
TaskKey = tuple[int, int | None]  # (the SLURM id, the array task; None: not an array's)


def parse_tasks(text: str) -> dict[TaskKey, SlurmJob]:
    """The jobs of ``squeue -h -O TASK_FORMAT``'s answer by (SLURM id, array task). An
    array's task that started has a row of its own (``ArrayTaskID`` 3); those still pending
    share one (``2-9%2``, or ``[2-9%2]``), read as one row each."""
    jobs: dict[TaskKey, SlurmJob] = {}
    for line in text.splitlines():
        parts = line.split("|", 6)
        if len(parts) < 7 or not parts[0].strip().isdigit():
            continue
        sid, tasks, state, reason, status, start, comment = (p.strip() for p in parts)
        job = SlurmJob(int(sid), state.split()[0] if state else "PENDING", reason,
                       int(status) if status.isdigit() else None, _time(start),
                       "" if comment == "(null)" else comment)
        for task in task_ids(tasks):
            jobs[int(sid), task] = job
    return jobs


def task_ids(text: str) -> list[int | None]:
    """The task ids squeue's ``ArrayTaskID`` names: ``N/A`` (no array: [None]), ``3``, or
    a pending set ``[2-9:2,12%2]``."""
    body = text.strip().strip("[]").partition("%")[0]
    if not body or not body[0].isdigit():
        return [None]
    ids: list[int | None] = []
    for part in body.split(","):
        span, _, step = part.partition(":")
        first, _, last = span.partition("-")
        if first.isdigit() and (not last or last.isdigit()) and (not step or step.isdigit()):
            ids.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return ids


async def query_tasks(ids: list[int], env: Mapping[str, str] | None = None
                      ) -> dict[TaskKey, SlurmJob]:
    """As :func:`query`, each array task apart (keyed by SLURM id and task)."""
    argv = ["squeue", "-h", "-t", "all", "-O", TASK_FORMAT, "-j", ",".join(map(str, ids))]
    try:
        return parse_tasks(await run(argv, env))
    except SlurmError as e:
        if "Invalid job id" in e.message:
            return {}
        raise


def _time(text: str) -> float:
    """A time squeue prints (local time), as a Unix time; 0 for none (N/A, Unknown)."""
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


GRES_GPU = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def parse_gres(lines: str) -> int:
    """The GPUs of ``sinfo -h -N -o '%N|%G'`` lines (a node listed once per partition)."""
    return sum(parse_gres_nodes(lines).values())


def parse_gres_nodes(lines: str) -> dict[str, int]:
    """Each node's GPUs in ``sinfo -h -N -o '%N|%G'`` lines, in the order sinfo lists them
    (a node listed once per partition counts once)."""
    seen: dict[str, int] = {}
    for line in lines.splitlines():
        node, _, gres = line.partition("|")
        node = node.strip()
        if node:
            seen[node] = sum(int(n) for n in GRES_GPU.findall(gres.strip()))
    return seen


async def run(argv: list[str], env: Mapping[str, str] | None = None, stdin: bytes = b"",
              account: pwd.struct_passwd | None = None) -> str:
    """Run a SLURM command (as ``account`` when given: SLURM then runs the job as that
    user), return its output; :class:`SlurmError` if it fails."""
    kwargs: dict[str, Any] = {}
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid,
                  "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=None if env is None else dict(env),
            start_new_session=True, **kwargs)
    except OSError as e:
        raise SlurmError(f"cannot run {argv[0]} ({e.strerror or e}): install SLURM's "
                         "client commands (Debian: slurm-client) on the bridge's machine"
                         ) from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SlurmError(f"{argv[0]} took more than {TIMEOUT:g}s: is slurmctld up "
                         "(scontrol ping) and SLURM_CONF right?", unreachable=True) from None
    if proc.returncode != 0:
        words = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        raise SlurmError(f"{' '.join(argv[:2])} failed (exit {proc.returncode}): "
                         f"{words[:1000]}", unreachable=any(w in words for w in UNREACHABLE))
    return out.decode(errors="replace")


async def query(ids: list[int], env: Mapping[str, str] | None = None
                ) -> dict[int, SlurmJob]:
    """What SLURM says of the jobs ``ids`` (all its jobs when empty), ended ones included
    while it remembers them."""
    argv = ["squeue", "-h", "-t", "all", "-O", SQUEUE_FORMAT]
    if ids:
        argv += ["-j", ",".join(str(i) for i in ids)]
    try:
        return parse_squeue(await run(argv, env))
    except SlurmError as e:
        if "Invalid job id" in e.message:  # none of them is known any more
            return {}
        raise


async def scancel(ids: Sequence[int | str], env: Mapping[str, str] | None = None,
                  signal: int | None = None) -> None:
    """Cancel the jobs (or, with ``signal``, send it to every process of theirs)."""
    if not ids:
        return
    argv = ["scancel"] + (["--full", f"--signal={signal}"] if signal else [])
    await run(argv + [str(i) for i in ids], env)


async def scontrol_hold(ids: Sequence[int | str], hold: bool,
                        env: Mapping[str, str] | None = None) -> None:
    """Hold the pending jobs (``scontrol uhold``: a hold their owner may release, shown as
    ``JobHeldUser`` even when root holds them) or release them (``scontrol release``)."""
    if ids:
        await run(["scontrol", "uhold" if hold else "release",
                   ",".join(str(i) for i in ids)], env)


async def partition_gpus(partition: str | None, env: Mapping[str, str] | None = None) -> int:
    """The GPUs of the partition's nodes (of every partition's when None)."""
    return sum((await partition_nodes(partition, env)).values())


async def partition_nodes(partition: str | None, env: Mapping[str, str] | None = None
                          ) -> dict[str, int]:
    """The partition's nodes (every partition's when None) and the GPUs of each."""
    argv = ["sinfo", "-h", "-N", "-o", "%N|%G"] + (["-p", partition] if partition else [])
    return parse_gres_nodes(await run(argv, env))


async def offered_gpus(cfg: NodeConfig, count_gpus: Callable[[str | None], Awaitable[int]]
                       | None = None) -> tuple[list[GpuInfo], str]:
    """The GPUs the bridge offers: ``--fake-gpus N`` when given, else the partition's, as
    ``count_gpus`` (the transport's) counts them (default: ``sinfo``'s)."""
    where = f"SLURM partition {cfg.partition}" if cfg.partition else "SLURM"
    if cfg.fake_gpus is not None:  # (a count, or a spec as `4:A100:80G`: its count)
        from mgpu.utils.gpu import parse_fake_spec

        count = len(parse_fake_spec(cfg.fake_gpus))
    else:
        count = await (count_gpus or partition_gpus)(cfg.partition)
    if count <= 0:
        raise ConfigError(f"{where} has no GPUs (no gres gpu on its nodes): pass --partition "
                          "with a partition that has some, or --fake-gpus N to offer N")
    name = f"slurm:{cfg.partition or 'default'}"
    return [GpuInfo(index=i, name=name, memory_total_mib=0) for i in range(count)], where


def account_of(user: str) -> pwd.struct_passwd | None:
    """Whom to submit as: the job's owner when the bridge is root (None: the bridge's own
    account, or root's). LookupError, saying what to do, for an owner with no account."""
    if os.geteuid() != 0 or not user or user == "root":
        return None
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"user {user!r} has no account on the SLURM bridge's machine: "
                          "create it (same name as on the master and in SLURM)") from None
