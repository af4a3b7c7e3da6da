"""A node's share of a multi-node (gang) job (``core/gang.py``): the rendezvous that rank 0's
agent picks, and the task launcher that runs several tasks of a job on one node.

Rank 0's order comes with ``rendezvous``: this agent picks ``MASTER_ADDR`` (the node's
``--address``, else the address its link to the master leaves from, which is the interface
the other nodes reach it on too) and ``MASTER_PORT`` (a port free on that address now), puts
them in the task's environment and tells the master (``JobStarted.rendezvous``), which then
starts the other nodes' parts with the same two.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable

import msgspec

from mgpu.core import messages as m


def free_port(address: str) -> int:
    """A TCP port free on ``address`` now (the job binds it a moment later)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address, 0))
        except OSError:  # an address not on this machine (a NAT's): any interface
            s.bind(("", 0))
        port: int = s.getsockname()[1]
        return port


def refusal(msg: m.StartJob, backend: str) -> str | None:
    """Why this node will not run ``msg``: a part of a multi-task job reaches a SLURM
    bridge only if the policy put it there by mistake; SLURM would have to start its
    tasks (``sbatch -N``), which the bridge does not do yet."""
    if backend == "slurm" and (msg.rendezvous or msg.tasks > 1 or "NODE_RANK" in msg.env):
        return ("a multi-node or several-task job cannot run through the SLURM bridge: run "
                "it on mgpu's own nodes (drop -p/--partition), or submit it to SLURM itself")
    return None


def prepare(msg: m.StartJob, address: str, send: Callable[[m.JobStarted], None]) -> m.StartJob:
    """The order as this node runs it; rank 0's rendezvous is ``send``-t to the master.

    With several tasks a node the command runs under the task launcher
    (``python -m mgpu.node.tasks``), which starts each with its own ``RANK``/``LOCAL_RANK``.
    """
    started = None
    env = msg.env
    if msg.rendezvous:
        port = free_port(address)
        env = {**env, "MASTER_ADDR": address, "MASTER_PORT": str(port)}
        if "SLURM_PROCID" in env:
            env["SLURM_LAUNCH_NODE_IPADDR"] = address
        started = m.JobStarted(msg.job_id, -1, run=msg.run, rendezvous=f"{address}:{port}")
    argv = msg.argv
    if msg.tasks > 1:
        inner = argv if argv else ["/bin/sh", "-c", msg.command]
        argv = [sys.executable, "-m", "mgpu.node.tasks", "--", *inner]
    if env is not msg.env or argv is not msg.argv:
        msg = msgspec.structs.replace(msg, env=env, argv=argv)
    if started is not None:
        send(started)
    return msg
