"""Multi-node jobs through the SLURM bridge (README "Multi-node jobs through SLURM"): the
batch script that starts a gang's tasks with ``srun``, and its labelled output as mgpu's task
frames.

The master sends a gang whole (``StartJob.nodes`` N >= 1, ``tasks`` K a node, ``gpu_ids``
all N*G): the bridge ``sbatch``-es it with ``--nodes=N --ntasks-per-node=K --gres=gpu:G`` and a
script that runs the command under ``srun --label --kill-on-bad-exit=1``, so that SLURM
allocates every node or none, starts each task, and stops the others when one fails. Each
task gets mgpu's gang contract (``core/gang.py``): ``RANK`` = ``SLURM_PROCID``,
``LOCAL_RANK`` = ``SLURM_LOCALID``, ``NODE_RANK``/``GROUP_RANK`` = ``SLURM_NODEID``,
``MASTER_ADDR`` = rank 0's node (``SLURM_LAUNCH_NODE_IPADDR``: the batch host, where srun
runs and task 0 starts), and the same ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_PORT``
(:func:`master_port`), ``MGPU_NODELIST`` (SLURM's host names, comma-separated),
``MGPU_NUM_NODES``, ``MGPU_NTASKS_PER_NODE`` for all.

Output: ``srun --label`` writes ``N: line`` (N right-aligned to the width of the highest
task number). :class:`LabelSplitter` turns each such line into a task frame (streams 4/5:
task number, then the line) and any other line (srun's own words) into a plain frame, so the
master's ``logs --label``/``--task`` read it as a gang on mgpu's own nodes. How many bytes of
SLURM's files a spool holds is read back from it (:func:`raw_length`). srun exits with the
highest status of its tasks (143 when the others were stopped), so the job's exit code is the
first failed task's, from srun's ``task N: Exited with exit code C`` (:func:`first_failure`).
"""

from __future__ import annotations

import re
import shlex
import signal

from mgpu.core import messages as m
from mgpu.core.gang import STREAM_TASK_STDERR, STREAM_TASK_STDOUT, task_frame

MAX_LINE = 64 * 1024  # a longer line is passed on in pieces of this size
LABEL = re.compile(rb"^ *(\d+): ")
# srun's words for a task that failed: "srun: error: NODE: task 3: Exited with exit code 3",
# "srun: error: NODE: tasks 0-2,4: Killed" (a signal, named as strsignal names it).
FAILED = re.compile(rb"^srun: error: ([^:\s]+): tasks? ([\d,\-\[\]]+): (.+?)\s*$")
EXITED = re.compile(rb"^Exited with exit code (\d+)$")
_SIGNALS = {signal.strsignal(s) or "": int(s) for s in signal.Signals}


def master_port(job_id: int, run: int) -> int:
    """``MASTER_PORT`` of a gang run in SLURM: the bridge cannot see which ports are free
    on the compute nodes, so it picks one from the run's id, in 20000-59999 (below the
    usual ephemeral range), that two runs close in time do not share."""
    return 20000 + (job_id * 16 + run) % 40000


def gang_env(msg: m.StartJob) -> dict[str, str]:
    """What every task of the gang ``msg`` gets the same of (the rest: :func:`script`)."""
    world = msg.nodes * msg.tasks
    return {"WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(msg.tasks),
            "MGPU_NUM_NODES": str(msg.nodes), "MGPU_NTASKS_PER_NODE": str(msg.tasks),
            "MASTER_PORT": str(master_port(msg.job_id, msg.run))}


# Each task: the ranks from SLURM's, then the command itself (exec: signals reach it).
TASK = ('export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" NODE_RANK="$SLURM_NODEID" '
        'GROUP_RANK="$SLURM_NODEID" MASTER_ADDR="$SLURM_LAUNCH_NODE_IPADDR"; exec "$@"')


def script(msg: m.StartJob, gpus_per_node: int) -> str:
    """The batch script of the gang ``msg``: srun starts its tasks, labelled."""
    inner = msg.argv if msg.argv else ["/bin/sh", "-c", msg.command]
    srun = ["srun", "--label", "--kill-on-bad-exit=1", f"--nodes={msg.nodes}",
            f"--ntasks-per-node={msg.tasks}"]
    if gpus_per_node:
        srun.append(f"--gres=gpu:{gpus_per_node}")
    return (
        "#!/bin/sh\n"
        f"# mgpu job {msg.job_id}.{msg.run}: {msg.nodes} node(s), {msg.tasks} task(s) each\n"
        'MGPU_NODELIST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null '
        "| paste -sd , -)\n"
        'export MGPU_NODELIST="${MGPU_NODELIST:-$SLURM_JOB_NODELIST}"\n'
        f"exec {shlex.join(srun)} /bin/sh -c {shlex.quote(TASK)} mgpu-task "
        f"{shlex.join(inner)}\n")


def raw_length(stream: int, payload: bytes, width: int) -> int:
    """The bytes of SLURM's file that the spool frame (``stream``, ``payload``) came from:
    a task frame's line had its label (``width`` digits, ':' and ' ') taken off."""
    if stream in (STREAM_TASK_STDOUT, STREAM_TASK_STDERR):
        return width + 2 + len(payload) - 2
    return len(payload)


def label_width(tasks: int) -> int:
    """The width srun pads task numbers to: that of the highest."""
    return len(str(max(0, tasks - 1)))


class LabelSplitter:
    """Cuts one of SLURM's output files (stdout or stderr) of a gang into frames, line by
    line; a line not ended yet waits (up to :data:`MAX_LINE`) for the rest."""

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.partial = bytearray()

    def feed(self, data: bytes, final: bool = False) -> list[tuple[int, bytes]]:
        """The frames (stream, payload) of the whole lines ``data`` completes (with
        ``final``, of what is left too: the job ended)."""
        self.partial += data
        frames: list[tuple[int, bytes]] = []
        while self.partial:
            end = self.partial.find(b"\n") + 1
            if end == 0:
                if not final and len(self.partial) < MAX_LINE:
                    break
                end = min(len(self.partial), MAX_LINE)
            line = bytes(self.partial[:end])
            del self.partial[:end]
            label = LABEL.match(line)
            if label is None:
                frames.append((self.stream, line))
            else:
                frames.append(task_frame(self.stream, int(label[1]), line[label.end():]))
        return frames


def first_failure(line: bytes) -> tuple[int, str] | None:
    """The exit code (128+N for signal N) and words of srun's line of a failed task, or
    None for any other line."""
    found = FAILED.match(line.rstrip(b"\n"))
    if found is None:
        return None
    node, tasks, what = (g.decode(errors="replace") for g in found.groups())
    exited = EXITED.match(found[3])
    if exited is not None:
        code = int(exited[1])
    elif what in _SIGNALS:
        code = 128 + _SIGNALS[what]
    else:
        return None
    which = "task" if tasks.isdigit() else "tasks"
    return code, f"{which} {tasks} on {node}: {what}"
