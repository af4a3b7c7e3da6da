"""What the SLURM bridge (:mod:`mgpu.node.slurm`) asks of SLURM, apart from how it asks.

* :class:`Submission` is one run's submission: its resources (a multi-node job's nodes and
  tasks too: :mod:`slurm_gang`), limits, files, environment, script and account, built from
  the master's order by :func:`submission_of`.
* :class:`SlurmCommands` carries the bridge's requests (submit, query, cancel; and hold,
  release, an array's tasks for the queue-in-SLURM mode) to SLURM through its commands (``sbatch``,
  ``squeue``, ``scancel``, ``scontrol``: :mod:`slurm_cli`), and counts a partition's GPUs
  (``sinfo``). :class:`~mgpu.node.slurm_rest.SlurmRest`, the other transport, asks
  slurmrestd the same; both are a :class:`SlurmTransport`.
"""

from __future__ import annotations

import pwd
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from mgpu.core import messages as m
from mgpu.node import slurm_cli as sc
from mgpu.node import slurm_gang
from mgpu.node.runs import job_environment


@dataclass
class Submission:
    """One run as SLURM gets it."""

    name: str
    comment: str  # slurm_runs.run_comment: how a lost submission is found again
    gpus: int  # on each node
    time_limit: float | None  # seconds (SLURM gets whole minutes, rounded up)
    cwd: str
    stdout: str  # the output files SLURM appends to
    stderr: str
    partition: str | None
    script: str  # the batch script ("#!/bin/sh" and the command)
    env: dict[str, str] = field(default_factory=dict)  # the job's whole environment
    account: pwd.struct_passwd | None = None  # whom to submit as (None: the bridge's user)
    # A gang run whole by SLURM (slurm_gang.py): its nodes, and its tasks on each.
    nodes: int = 1
    tasks_per_node: int = 1
    # Queue in SLURM (slurm_queue.py): what SLURM itself is to decide of the run.
    dependency: str | None = None  # in SLURM's ids: "afterok:101,afterany:103_4"
    hold: bool = False  # submitted held (its owner may release it)
    begin: float | None = None  # a Unix time: not before then
    array: str | None = None  # an array's tasks and throttle: "0-9%2"

    def sbatch_argv(self) -> list[str]:
        """The ``sbatch`` command line (the script comes on stdin)."""
        argv = sc.sbatch_argv(name=self.name, comment=self.comment, gpus=self.gpus,
                              time_limit=self.time_limit, cwd=self.cwd, stdout=self.stdout,
                              stderr=self.stderr, partition=self.partition, nodes=self.nodes,
                              tasks_per_node=self.tasks_per_node)
        if self.array:
            argv.append(f"--array={self.array}")
        if self.hold:
            argv.append("--hold")
        if self.begin is not None:
            argv.append(f"--begin={local_time(self.begin)}")
        if self.dependency:
            argv.append(f"--dependency={self.dependency}")
        return argv


def local_time(when: float) -> str:
    """A Unix time as ``sbatch --begin`` reads it: local time, to the second."""
    return datetime.fromtimestamp(when).strftime("%Y-%m-%dT%H:%M:%S")


def script_of(msg: m.StartJob) -> str:
    """The batch script of a run: its argv exec'ed, or its shell command."""
    body = "exec " + shlex.join(msg.argv) if msg.argv else msg.command
    return f"#!/bin/sh\n{body}\n"


def job_env(msg: m.StartJob, node_id: str, bridge_env: Mapping[str, str]) -> dict[str, str]:
    """The submitter's environment (no SLURM_*/SBATCH_* of theirs: they would steer
    sbatch), mgpu's job variables, and what SLURM's commands need of the bridge's."""
    env = {k: v for k, v in msg.env.items()
           if not k.startswith(("SLURM_", "SBATCH_", "CUDA_VISIBLE_DEVICES"))}
    env = job_environment(env, msg.job_id, msg.run, node_id, msg.gpu_ids, msg.name)
    del env["CUDA_VISIBLE_DEVICES"]  # SLURM sets it from the GPUs it gives
    if "PATH" in bridge_env:
        env.setdefault("PATH", bridge_env["PATH"])
    if "SLURM_CONF" in bridge_env:
        env["SLURM_CONF"] = bridge_env["SLURM_CONF"]
    return env


def submission_of(msg: m.StartJob, *, comment: str, node_id: str, partition: str | None,
                  outputs: tuple[str, str], bridge_env: Mapping[str, str],
                  account: pwd.struct_passwd | None) -> Submission:
    """The submission of the master's order ``msg``, run as ``account``."""
    env = job_env(msg, node_id, bridge_env)
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name,
                   SHELL=account.pw_shell or "/bin/sh")
    gpus, script = len(msg.gpu_ids), script_of(msg)
    if msg.nodes:  # a gang run whole: srun starts its tasks (slurm_gang.py)
        gpus //= msg.nodes
        script = slurm_gang.script(msg, gpus)
        env.update(slurm_gang.gang_env(msg))
    return Submission(name=msg.name, comment=comment, gpus=gpus, time_limit=msg.time_limit,
                      cwd=msg.cwd, stdout=outputs[0], stderr=outputs[1], partition=partition,
                      script=script, env=env, account=account, nodes=max(1, msg.nodes),
                      tasks_per_node=msg.tasks if msg.nodes else 1)


class SlurmTransport(Protocol):
    """How the bridge asks SLURM: each method raises :class:`~slurm_cli.SlurmError` with
    SLURM's words (``unreachable`` when SLURM cannot be asked now: worth trying again).
    A job is named by its SLURM id, an array's task by ``"ID_TASK"``."""

    async def submit(self, sub: Submission) -> int:
        """Submit; return the SLURM job id."""

    async def query(self, ids: list[int]) -> dict[int, sc.SlurmJob]:
        """What SLURM says of the jobs ``ids`` (all its jobs when empty); a job SLURM does
        not know is left out."""

    async def query_tasks(self, ids: list[int]) -> dict[sc.TaskKey, sc.SlurmJob]:
        """What SLURM says of the jobs ``ids``, an array's tasks apart: by (the array's
        id, task); a job not an array's is (id, None)."""

    async def cancel(self, ids: Sequence[int | str], signal: int | None = None) -> None:
        """Cancel the jobs (or, with ``signal``, send it to all their processes)."""

    async def hold(self, ids: Sequence[int | str]) -> None:
        """Hold the pending jobs."""

    async def release(self, ids: Sequence[int | str]) -> None:
        """Release held jobs."""

    async def partition_gpus(self, partition: str | None) -> int:
        """The GPUs (gres ``gpu``) of the partition's nodes (of every node when None)."""

    async def partition_nodes(self, partition: str | None) -> dict[str, int]:
        """The partition's nodes (every node when None) and the GPUs of each."""


class SlurmCommands:
    """SLURM through its commands, with the bridge's environment ``env`` (``SLURM_CONF``,
    ``PATH``) for queries and cancels; a submission runs with its own."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)

    async def submit(self, sub: Submission) -> int:
        """Submit; return the SLURM job id (:class:`~slurm_cli.SlurmError` if refused)."""
        out = await sc.run(sub.sbatch_argv(), sub.env, sub.script.encode(), sub.account)
        return sc.parse_sbatch(out)

    async def query(self, ids: list[int]) -> dict[int, sc.SlurmJob]:
        """What SLURM says of the jobs ``ids`` (all its jobs when empty)."""
        return await sc.query(ids, self.env)

    async def query_tasks(self, ids: list[int]) -> dict[sc.TaskKey, sc.SlurmJob]:
        """What SLURM says of the jobs ``ids``, an array's tasks apart: by (id, task)."""
        return await sc.query_tasks(ids, self.env)

    async def cancel(self, ids: Sequence[int | str], signal: int | None = None) -> None:
        """Cancel the jobs (or, with ``signal``, send it to all their processes); an
        array's task is ``"ID_TASK"``."""
        await sc.scancel(ids, self.env, signal)

    async def hold(self, ids: Sequence[int | str]) -> None:
        """Hold the pending jobs (their owner may release them)."""
        await sc.scontrol_hold(ids, True, self.env)

    async def release(self, ids: Sequence[int | str]) -> None:
        """Release held jobs."""
        await sc.scontrol_hold(ids, False, self.env)

    async def partition_gpus(self, partition: str | None) -> int:
        """The GPUs of the partition's nodes, as ``sinfo`` lists them."""
        return await sc.partition_gpus(partition, self.env)

    async def partition_nodes(self, partition: str | None) -> dict[str, int]:
        """The partition's nodes and their GPUs, as ``sinfo`` lists them."""
        return await sc.partition_nodes(partition, self.env)
