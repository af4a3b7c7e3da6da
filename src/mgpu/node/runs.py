"""A run of a job on a node, as the agent sees it, and the environment it starts with."""

from __future__ import annotations

from dataclasses import dataclass, field

from mgpu.core import keeper_messages as kp
from mgpu.core import messages as m
from mgpu.core.models import EndCause, run_key


def job_environment(
    base: dict[str, str], job_id: int, run: int, node_id: str, gpu_ids: list[int], name: str,
    node_dir: str = "",
) -> dict[str, str]:
    """The environment a job sees: the submitter's (none with ``--export=NONE``; never the
    agent's, which holds the node's join secret), plus exactly its GPUs. ``MGPU_NODE_DIR``
    (the node's data dir, one per keeper on a machine) and ``MGPU_JOB_RUN`` name the
    job's processes should its keeper die (``orphans.py``)."""
    env = dict(base)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_ids)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["MGPU_JOB_ID"] = str(job_id)
    env["MGPU_JOB_RUN"] = run_key(job_id, run)
    env["MGPU_NODE_ID"] = node_id
    env["MGPU_JOB_NAME"] = name
    env["MGPU_GPU_COUNT"] = str(len(gpu_ids))
    if node_dir:
        env["MGPU_NODE_DIR"] = node_dir
    return env


@dataclass
class NodeRun:
    """One run of a job under supervision, as the agent sees it."""

    job_id: int
    run: int
    pid: int = -1
    forwarded: int = 0  # spool bytes passed on to the master
    known: int = 0  # spool bytes the keeper said exist
    ended: m.JobEnded | None = None
    end_sent: bool = False  # on this link to the master
    input_got: int = 0  # bytes of input received from the master
    input_held: bytearray = field(default_factory=bytearray)  # received, not yet passed on
    input_passed: int = 0  # passed to the keeper
    input_written: int = 0  # written to the job's stdin (or dropped), as the keeper says
    input_eof: bool = False  # the master closed the input; passed on once all data is
    keeper_base: int = 0  # the keeper's count of written input when this agent adopted it
    link_base: int = 0  # input_got when the link to the master began (the master counts
    # the input it sends from there)

    @property
    def input_delivered(self) -> int:
        """Input written (or dropped), counted from the start of the link to the master."""
        return max(0, self.input_written - self.link_base)

    @property
    def key(self) -> str:
        return run_key(self.job_id, self.run)


def from_key(key: str) -> NodeRun:
    """A new record of the run named ``JOBID.RUN``."""
    job_id, _, run = key.partition(".")
    return NodeRun(int(job_id), int(run or 0))


def ended_of(exited: kp.Exited) -> m.JobEnded:
    """The end to report for what the keeper recorded."""
    job = from_key(exited.key)
    cause = exited.cause if exited.cause in _CAUSES else None
    return m.JobEnded(job.job_id, job.run, exited.state, exited.exit_code, exited.reason,
                      exited.size, None if cause is None else EndCause(cause))


_CAUSES = frozenset(c.value for c in EndCause)
