"""A gang job's output on the master: each node's part kept as it came, and merged line by
line into the run's own file as task frames (``core/gang.py``), so that ``mgpu logs``,
``srun -N`` and the dashboard read one stream, labelled by task.

A node sends its part's output in frames at offsets of its own (``JobOutput``), kept in the
part's file (``J.R.nK``) exactly as for a one-node job, so that a node that reconnects resends
from where the master's copy ends. After each piece the merger reads the part's new whole
frames, cuts them into lines, and appends each line as a task frame to ``J.R``; a line not
ended yet waits (at most :data:`MAX_LINE` bytes) until the part sends the rest or ends. With
several tasks a node, each line carries its task's number from the task launcher
(``node/tasks.py``), and is also kept in that task's own file (``J.R.tN``, ``logs --task``).
A master restarted mid-run merges from where the part's file ended (a line cut in two by the
restart is shown as two).
"""

from __future__ import annotations

from mgpu.core.errors import UsageError
from mgpu.core.frames import frame, split_frames
from mgpu.core.gang import LABEL_PREFIX, part_key, task_frame, task_key, untask
from mgpu.core.models import SimpleJob, run_key
from mgpu.utils.spool import SpoolDir

MAX_LINE = 64 * 1024  # a longer line is passed on in pieces of this size


class GangOutput:
    """Merges the parts of the running gang jobs (see the module docstring)."""

    def __init__(self, spool: SpoolDir) -> None:
        self.spool = spool
        self.cursors: dict[str, int] = {}  # part file -> bytes merged so far
        self.partial: dict[tuple[str, int], bytearray] = {}  # (part file, stream) -> a line

    def feed(self, job: SimpleJob, rank: int, since: int) -> None:
        """Merge what part ``rank`` of ``job`` has sent since the last call (``since``: where
        its file ended before this piece, for a part the merger has not seen yet)."""
        key = run_key(job.id, job.run)
        part = part_key(key, rank)
        cursor = self.cursors.setdefault(part, since)
        while True:
            data = self.spool.read(part, cursor)
            frames, used = split_frames(data)
            if not used:
                break
            cursor += used
            for stream, payload in frames:
                buf = self.partial.setdefault((part, stream), bytearray())
                buf += payload
                end = buf.rfind(b"\n") + 1
                if end == 0 and len(buf) >= MAX_LINE:
                    end = len(buf)
                if end:
                    for line in bytes(buf[:end]).splitlines(keepends=True):
                        self._line(job, key, rank, stream, line)
                    del buf[:end]
        self.cursors[part] = cursor

    def flush(self, job: SimpleJob, rank: int | None) -> None:
        """Part ``rank`` ended: pass on its unended lines and forget it (None: a run
        :meth:`split` followed ended)."""
        key = run_key(job.id, job.run)
        if rank is None:
            self.cursors.pop(key, None)
            return
        part = part_key(key, rank)
        self.cursors.pop(part, None)
        for stream in (1, 2):
            buf = self.partial.pop((part, stream), None)
            if buf:
                self._line(job, key, rank, stream, bytes(buf))

    def split(self, job: SimpleJob, since: int) -> None:
        """A gang that its node's engine runs whole (SLURM: ``server/slurm_gang.py``) sends
        its output as task frames already: keep each task's lines in the task's own file
        too (``--task N``), where a gang on mgpu's own nodes keeps them (its node part's
        file with one task a node, else the task's). ``since``: where the run's file ended
        before this piece, for a run the merger has not seen yet."""
        key = run_key(job.id, job.run)
        cursor = self.cursors.setdefault(key, since)
        while True:
            frames, used = split_frames(self.spool.read(key, cursor))
            if not used:
                break
            cursor += used
            for stream, payload in frames:
                plain, line = untask(stream, payload, label=False)
                if plain != stream:  # (srun's own words, unlabelled, stay in the run's)
                    task = int.from_bytes(payload[:2], "big")
                    file = (task_key(key, task) if job.ntasks_per_node > 1
                            else part_key(key, task))
                    self.spool.append(file, frame(plain, line))
        self.cursors[key] = cursor

    def _line(self, job: SimpleJob, key: str, rank: int, stream: int, line: bytes) -> None:
        per_node = job.ntasks_per_node
        task = rank * per_node
        if per_node > 1:
            if line.startswith(LABEL_PREFIX):
                number, _, line = line[len(LABEL_PREFIX):].partition(b" ")
                if number.isdigit():
                    task = int(number)
            self.spool.append(task_key(key, task), frame(stream, line))
        self.spool.append(key, frame(*task_frame(stream, task, line)))


def part_rank(job: SimpleJob | None, node_id: str) -> int | None:
    """The node rank of ``job``'s running part on ``node_id`` (None: not a gang's)."""
    for rank, part in enumerate(job.parts or () if job is not None else ()):
        if part.node == node_id and not part.ended:
            return rank
    return None


def node_key(job: SimpleJob | None, node_id: str, key: str) -> str:
    """The master's file of what ``node_id`` sends for run ``key``: the run's own, or for a
    gang, the node's part."""
    rank = part_rank(job, node_id)
    return key if rank is None else part_key(key, rank)


def output_files(job: SimpleJob, task: int) -> list[str]:
    """The files ``GET /jobs/{id}/output`` reads end to end, every run's: the run's own
    (a gang's merged, labelled output), or with ``task`` >= 0 that task's alone."""
    tasks = job.nodes * job.ntasks_per_node
    if task >= tasks:
        raise UsageError(f"job {job.id} has {tasks} task{'s' if tasks != 1 else ''}: give "
                         f"--task from 0 to {tasks - 1}")
    keys = [run_key(job.id, r) for r in range(job.run + 1)]
    if task < 0 or tasks == 1:
        return keys
    if job.ntasks_per_node > 1:
        return [task_key(k, task) for k in keys]
    return [part_key(k, task) for k in keys]
