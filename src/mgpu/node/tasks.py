"""The task launcher: runs a job's ``--ntasks-per-node K`` tasks on one node.

``python -m mgpu.node.tasks -- ARGV...`` is what a node's part of such a job runs (the agent
puts it in front of the command: ``node/gangnode.py``). It starts ``LOCAL_WORLD_SIZE`` copies
of ``ARGV``, each with its own ``RANK``/``LOCAL_RANK`` (``core/gang.task_env``), and writes
each line they print to its own stdout or stderr behind a marker and the task's number, which
the master reads to keep the tasks' output apart (``server/gang_output.py``). Task 0 of the
job gets the input; the others read nothing. When a task fails, the others are stopped
(SIGTERM, then SIGKILL after ``MGPU_TASK_GRACE`` seconds, 10 by default) and the launcher exits
with the first failure's status (128+N for signal N). Standard library only: it starts with
every job of this kind.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

from mgpu.core.gang import LABEL_PREFIX, task_env


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m mgpu.node.tasks -- COMMAND [ARGS...]\n")
        return 2
    env = dict(os.environ)
    count = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    first = int(env.get("NODE_RANK", "0")) * count
    grace = float(env.get("MGPU_TASK_GRACE", "10"))
    sel = selectors.DefaultSelector()
    procs: list[subprocess.Popen[bytes]] = []
    sinks = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    for local in range(count):
        proc = subprocess.Popen(
            argv, env=task_env(env, local), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=None if first + local == 0 else subprocess.DEVNULL)
        procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        for stream, pipe in ((1, proc.stdout), (2, proc.stderr)):
            os.set_blocking(pipe.fileno(), False)
            sel.register(pipe, selectors.EVENT_READ, (stream, first + local, bytearray()))
    signal.signal(signal.SIGTERM, lambda *_: _stop(procs, grace))
    failure: int | None = None
    while sel.get_map():
        for key, _ in sel.select(timeout=0.5):
            stream, task, partial = key.data
            chunk = os.read(key.fd, 65536)
            if chunk:
                partial += chunk
                *lines, rest = bytes(partial).split(b"\n")
                partial[:] = rest
                out = b"".join(b"%s%d %s\n" % (LABEL_PREFIX, task, line) for line in lines)
            else:
                sel.unregister(key.fileobj)
                out = b"%s%d %s" % (LABEL_PREFIX, task, bytes(partial)) if partial else b""
            if out:
                sinks[stream].write(out)
                sinks[stream].flush()
        for proc in procs:
            code = proc.poll()
            if code is not None and code != 0 and failure is None:
                failure = _status(code)
                _stop(procs, grace)
    codes = [proc.wait() for proc in procs]
    if failure is None:
        failure = next((_status(c) for c in codes if c != 0), 0)
    return failure


def _stop(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM the tasks still running; SIGKILL them after ``grace`` seconds."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + grace
    for p in alive:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
