"""The subcommands about jobs and nodes: one function each, ``cmd_NAME(ns) -> exit status``.

Each reads its flags from ``ns`` (what :mod:`mgpu.cli.grammar` parsed), asks the master
through :func:`~mgpu.cli.shared.client_for`, prints what it got (rendered by
:mod:`mgpu.client.output` or :mod:`mgpu.client.tables`) and returns the status for the
shell. Of the standard library only ``os`` and ``sys`` are imported here, and of the client
only what a command uses, inside it (start-up time, see :mod:`mgpu.cli`).
"""

from __future__ import annotations

import os
import sys

from mgpu.cli.jobargs import control_fields, job_fields, notify_fields
from mgpu.cli.shared import client_for, exit_status, job_id_of, job_ids, now, write
from mgpu.core.errors import ConnectionFailed, UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse

    from mgpu.client.client import SimpleClient

# SLURM's short state codes (squeue -t) and ours.
STATE_CODES = {
    "PD": "pending",
    "R": "running",
    "CD": "completed",
    "F": "failed",
    "CA": "cancelled",
    "TO": "timeout",
    "NF": "node_fail",
}
STATES = tuple(STATE_CODES.values())


def parse_states(text: str) -> list[str]:
    """``-t/--states``: a comma list of states, by name or SLURM's code (``PD,R``)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        state = STATE_CODES.get(item.upper(), item.lower())
        if state not in STATES:
            codes = ", ".join(f"{k}={v}" for k, v in STATE_CODES.items())
            raise UsageError(f"-t/--states: unknown job state {item!r}; use any of {codes}")
        out.append(state)
    return out


def cmd_submit(ns: argparse.Namespace) -> int:
    fields = job_fields(ns)
    if ns.max_requeue is not None and ns.max_requeue < 0:
        raise UsageError("--max-requeue must be 0 or more")
    job_id = client_for(ns).submit_job(
        **fields, requeue=not ns.no_requeue, max_requeue=ns.max_requeue, stdin=ns.stdin,
        **control_fields(ns),
        notify=notify_fields(ns),
    )
    if ns.json:
        write(f'{{"job_id": {job_id}}}\n')
    elif ns.parsable:
        write(f"{job_id}\n")
    else:
        write(f"Submitted {'array ' if ns.array else ''}job {job_id}\n")
    return 0


def cmd_srun(ns: argparse.Namespace) -> int:
    """Run a command as an interactive job: wait for GPUs, then stream it here, live."""
    fields = job_fields(ns)
    client = client_for(ns)
    forward = ns.pty or _has_input()
    job_id = client.submit_job(**fields, interactive=True, stdin=forward, pty=ns.pty)
    return _interact(client, job_id, ns.quiet, forward, ns.pty, ns.label)


def cmd_attach(ns: argparse.Namespace) -> int:
    """Follow a job's output live, and feed its stdin if it was started with --stdin."""
    client = client_for(ns)
    job = client.get_job(ns.job_id)
    forward = job.stdin and (job.pty or _has_input())
    return _interact(client, ns.job_id, ns.quiet, forward, job.pty)


def _has_input() -> bool:
    """Whether this process has a stdin worth forwarding (open, and not /dev/null)."""
    import stat

    try:
        mine, null = os.fstat(0), os.stat(os.devnull)
    except OSError:
        return False
    return not (stat.S_ISCHR(mine.st_mode) and mine.st_rdev == null.st_rdev)


def _interact(client: SimpleClient, job_id: int, quiet: bool, forward: bool, pty: bool,
              label: bool = False) -> int:
    """Follow ``job_id`` as srun does; the status to exit with."""
    import _signal as signal  # type: ignore[import-not-found]  # `signal` imports enum

    from mgpu.client.srun import Interactive

    grace = float(os.environ.get("MGPU_SRUN_GRACE") or 10.0)
    tty = pty and os.isatty(0)
    session = Interactive(client, job_id, quiet=quiet, stdin_fd=0 if forward else None,
                          grace=grace)
    session.label = label  # (a multi-task job's lines behind their task numbers)
    restore = None
    if tty:
        import termios
        import tty as ttymod

        def size() -> None:
            cols, rows = os.get_terminal_size(0)
            session.resize(rows, cols)

        session.on_running = size
        signal.signal(signal.SIGWINCH, lambda *_: size())
        restore = termios.tcgetattr(0)
        ttymod.setraw(0)  # keys (Ctrl-C too) go to the job's terminal as they are typed
    else:
        signal.signal(signal.SIGINT, lambda *_: session.interrupt())
    try:
        return session.run()
    finally:
        if restore is not None:
            import termios

            termios.tcsetattr(0, termios.TCSAFLUSH, restore)


def cmd_queue(ns: argparse.Namespace) -> int:
    states = parse_states(ns.states) if ns.states else None
    if ns.start:
        from mgpu.cli.sched import queue_start

        return queue_start(ns, states)
    if ns.json:
        jobs = client_for(ns).list_jobs(states=states, user=ns.user, all=ns.all)
        from mgpu.client import output

        write(output.to_json(jobs))
        return 0
    # The table needs no models: the plain path starts in a third of the time.
    plain = client_for(ns).list_jobs_plain(states=states, user=ns.user, all=ns.all)
    from time import time

    from mgpu.client import tables
    from mgpu.client.arrayrows import folded_rows

    write(tables.queue_table(folded_rows(plain), time()))
    return 0


def cmd_show(ns: argparse.Namespace) -> int:
    client = client_for(ns)
    job = client.get_job(job_id_of(client, ns.job_id))
    from mgpu.client import output

    write(output.to_json(job) if ns.json else output.job_detail(job, now()))
    return 0


def cmd_logs(ns: argparse.Namespace) -> int:
    client = client_for(ns)
    job_id = job_id_of(client, ns.job_id)
    stream = client.stream_output(job_id, follow=ns.follow, task=ns.task, label=ns.label)
    sinks = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    last = None
    for kind, data in stream:
        sink = sinks.get(kind)
        if sink is None:
            continue
        if last is not None and last is not sink:
            last.flush()  # keep stdout and stderr in the order they were written
        sink.write(data)
        if ns.follow:
            sink.flush()
        last = sink
    for sink in sinks.values():
        sink.flush()
    if not ns.follow:
        return 0
    if stream.end is None:
        # Say why if the master says (a revoked token, say); else that it stopped.
        client.get_job(job_id)
        raise ConnectionFailed(f"the output of job {ns.job_id} stopped before the job ended")
    return exit_status(stream.end.state, stream.end.exit_code)


def cmd_wait(ns: argparse.Namespace) -> int:
    jobs = client_for(ns).wait(*ns.job_ids, timeout=ns.timeout)
    from mgpu.client import output

    write(output.to_json(jobs) if ns.json else output.wait_report(jobs))
    if not all(j.state.ended for j in jobs):
        left = ", ".join(f"{j.id} ({j.state.value})" for j in jobs if not j.state.ended)
        write(f"error: timed out after {ns.timeout:g} s; not ended yet: {left}\n", err=True)
        return 124
    return next((c for j in jobs if (c := exit_status(j.state.value, j.exit_code))), 0)


def cmd_cancel(ns: argparse.Namespace) -> int:
    client = client_for(ns)
    results = client.cancel(*job_ids(client, ns.job_ids))
    from mgpu.client import output

    if ns.json:
        write(output.to_json(results))
    else:
        out, err = output.cancel_report(results)
        write(out)
        write(err, err=True)
    # One kind of failure gives its own status (4 unknown job, 6 not allowed), else 1.
    kinds = {r.code or "" for r in results if not r.ok}
    if not kinds:
        return 0
    return {"not_found": 4, "forbidden": 6}.get(kinds.pop(), 1) if len(kinds) == 1 else 1



def cmd_nodes(ns: argparse.Namespace) -> int:
    if ns.log is not None:
        from mgpu.client import output

        events = client_for(ns).events(50, node=ns.log)
        write(output.to_json(events) if ns.json else output.events_table(events))
        return 0
    if ns.reset_credential is not None:
        node_id = client_for(ns).reset_node_credential(ns.reset_credential)
        write(f"{node_id}: credential forgotten; its next join with the join secret gets a "
              "new one\n")
        return 0
    from mgpu.client import output
    from mgpu.client.nodeadmin import nodes_and_pools

    nodes, pools = nodes_and_pools(client_for(ns))
    write(output.to_json(nodes) if ns.json else output.nodes_table(nodes, pools))
    return 0


