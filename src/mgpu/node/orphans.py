"""Finding and killing the processes of runs whose keeper died.

Every process of a job inherits ``MGPU_NODE_DIR`` (the node's data dir: one keeper per
data dir, so this names the node even among several on one machine, or with the same node
id in several clusters) and ``MGPU_JOB_RUN`` from the environment the agent gave it. When
the keeper that watched a node's jobs dies, its jobs are reparented to init and nobody
watches them: before their GPUs may go to other jobs, the agent finds them by these
variables (``/proc/PID/environ``, readable by the agent: the jobs run as its own user, or
it is root) and kills them with their process groups.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any

import psutil

log = logging.getLogger("mgpu.node.orphans")

WARN_AFTER = 10.0  # seconds of killing after which the agent says what still lives


def run_processes(node_dir: str, keys: set[str] | None) -> dict[int, str]:
    """The live processes (pid → run key) of the node using ``node_dir`` whose
    ``MGPU_JOB_RUN`` is one of ``keys`` (None: any). Zombies have no environment and are
    not listed."""
    node = f"MGPU_NODE_DIR={node_dir}".encode()
    found: dict[int, str] = {}
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if node not in env:
            continue
        for item in env:
            if item.startswith(b"MGPU_JOB_RUN="):
                key = item[13:].decode(errors="replace")
                if keys is None or key in keys:
                    found[int(name)] = key
                break
    return found


def kill_runs(node_dir: str, keys: set[str] | None, poll: float = 0.02) -> None:
    """SIGKILL every process of these runs (None: of any run of the node), and their
    process groups, until none lives.

    Blocks (run it in a thread); it does not give up, since a run whose processes may
    live must not be reported ended: a process in uninterruptible sleep dies when it
    wakes. Says which processes resist after :data:`WARN_AFTER` seconds."""
    own_group = os.getpgrp()
    start = time.monotonic()
    warned = False
    while True:
        found = run_processes(node_dir, keys)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if not warned and time.monotonic() - start > WARN_AFTER:
            warned = True
            log.warning("processes %s of runs whose keeper died still live after SIGKILL; "
                        "still trying", sorted(found))
        _wait_gone(found, poll)


def _wait_gone(pids: Iterable[int], timeout: float) -> None:
    """Until these processes are gone (reaped or zombies), or ``timeout`` seconds."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
    psutil.wait_procs(procs, timeout=timeout)


def peer_pid(writer: Any) -> int:
    """The pid of the process at the other end of a Unix socket stream (0 if unknown)."""
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return 0
    pid: int = struct.unpack("3i", creds)[0]
    return pid


def is_keeper(pid: int) -> bool:
    """``pid`` is alive and is a node keeper (not a process that took its pid since)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mgpu.node.keeper" in f.read()
    except OSError:
        return False
