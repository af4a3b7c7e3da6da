"""Multi-node (gang) jobs, the pure part: what each task's environment says, the names of a
gang run's output files, and the frames of its merged output.

A gang job asks for ``nodes`` nodes with ``gpus // nodes`` GPUs on each, all at once
(``-N 2 --gpus-per-node 4``). Each node runs ``ntasks_per_node`` tasks of it (one by
default); task ``RANK`` is ``NODE_RANK * ntasks_per_node + LOCAL_RANK``. Rank 0's agent picks
``MASTER_ADDR`` (its address as the other nodes reach it) and ``MASTER_PORT`` (a free port on
it); the master then starts the other nodes' parts with the same two, which is what
``torch.distributed`` (``env://``) and ``torchrun`` read.

Output: each node's part is kept as its node sent it (``J.R.nK``), and the master merges the
parts line by line into the run's own file (``J.R``) as *task frames*: streams 4 (stdout) and
5 (stderr), whose data starts with the task number (2 bytes, big-endian). ``mgpu logs``
prints them bare, or with ``--label`` as ``0: line``. With several tasks on a node, that node's
tasks are kept apart too (``J.R.tN``), since they share the node's part.
"""

from __future__ import annotations

STREAM_TASK_STDOUT = 4  # a merged gang run's stdout line: u16 task number, then the line
STREAM_TASK_STDERR = 5
TASK_OFFSET = STREAM_TASK_STDOUT - 1  # task stream = plain stream + this
LABEL_PREFIX = b"\x1emgpu-task "  # what a node's task launcher writes before a task's line


def part_key(run_key: str, rank: int) -> str:
    """The output file of node rank ``rank``'s part of the run named ``run_key``."""
    return f"{run_key}.n{rank}"


def task_key(run_key: str, task: int) -> str:
    """The output file of task ``task`` alone (kept when a node runs several tasks)."""
    return f"{run_key}.t{task}"


def spool_keys(run_key: str, nodes: int, tasks_per_node: int) -> list[str]:
    """Every output file of a run: its own and, for a gang, its parts' and tasks'."""
    keys = [run_key]
    if nodes > 1 or tasks_per_node > 1:
        keys += [part_key(run_key, r) for r in range(nodes)]
    if tasks_per_node > 1:
        keys += [task_key(run_key, t) for t in range(nodes * tasks_per_node)]
    return keys


def task_frame(stream: int, task: int, line: bytes) -> tuple[int, bytes]:
    """A merged output frame (stream, data) for ``line`` of task ``task``."""
    return stream + TASK_OFFSET, task.to_bytes(2, "big") + line


def untask(stream: int, data: bytes, label: bool) -> tuple[int, bytes]:
    """A task frame as the plain stream it came from, its line bare or labelled
    (``0: line``); any other frame as it is."""
    if stream not in (STREAM_TASK_STDOUT, STREAM_TASK_STDERR) or len(data) < 2:
        return stream, data
    line = data[2:]
    if label:
        line = b"%d: " % int.from_bytes(data[:2], "big") + line
    return stream - TASK_OFFSET, line


def nodelist(nodes: list[str]) -> str:
    """``MGPU_NODELIST``: the job's node ids in node-rank order, comma-separated."""
    return ",".join(nodes)


def part_env(
    *, job_id: int, nodes: list[str], rank: int, tasks_per_node: int, gpus_per_node: int,
    master_addr: str | None = None, master_port: int | None = None, slurm_env: bool = False,
) -> dict[str, str]:
    """What node rank ``rank``'s part of a gang job adds to its environment.

    With one task a node the part is the task (``RANK`` = ``NODE_RANK``, ``LOCAL_RANK`` 0);
    with several, the node's task launcher (``mgpu.node.tasks``) sets ``RANK``,
    ``LOCAL_RANK`` (and ``SLURM_PROCID``/``SLURM_LOCALID``) for each from these.
    ``master_addr``/``master_port`` are None in rank 0's order: its agent fills them in.
    """
    world = len(nodes) * tasks_per_node
    env = {
        "WORLD_SIZE": str(world),
        "NODE_RANK": str(rank),
        "GROUP_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(tasks_per_node),
        "RANK": str(rank * tasks_per_node),
        "LOCAL_RANK": "0",
        "MGPU_NODELIST": nodelist(nodes),
        "MGPU_NUM_NODES": str(len(nodes)),
        "MGPU_NTASKS_PER_NODE": str(tasks_per_node),
    }
    if master_addr is not None:
        env["MASTER_ADDR"] = master_addr
    if master_port is not None:
        env["MASTER_PORT"] = str(master_port)
    if slurm_env:
        env.update({
            "SLURM_JOB_ID": str(job_id),
            "SLURM_JOBID": str(job_id),
            "SLURM_NNODES": str(len(nodes)),
            "SLURM_JOB_NUM_NODES": str(len(nodes)),
            "SLURM_NODEID": str(rank),
            "SLURM_NTASKS": str(world),
            "SLURM_NPROCS": str(world),
            "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
            "SLURM_TASKS_PER_NODE": f"{tasks_per_node}(x{len(nodes)})",
            "SLURM_PROCID": str(rank * tasks_per_node),
            "SLURM_LOCALID": "0",
            "SLURM_NODELIST": nodelist(nodes),
            "SLURM_JOB_NODELIST": nodelist(nodes),
            "SLURM_GPUS_ON_NODE": str(gpus_per_node),
        })
        if master_addr is not None:
            env["SLURM_LAUNCH_NODE_IPADDR"] = master_addr
    return env


def task_env(env: dict[str, str], local_rank: int) -> dict[str, str]:
    """The environment of local task ``local_rank`` of a node's part (``part_env``'s)."""
    out = dict(env)
    per_node = int(env.get("LOCAL_WORLD_SIZE", "1"))
    rank = int(env.get("NODE_RANK", "0")) * per_node + local_rank
    out["RANK"] = str(rank)
    out["LOCAL_RANK"] = str(local_rank)
    if "SLURM_PROCID" in env:
        out["SLURM_PROCID"] = str(rank)
        out["SLURM_LOCALID"] = str(local_rank)
    return out
