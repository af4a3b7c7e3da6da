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
    """Why this node will not run ``msg``: a SLURM bridge runs a gang whole (``nodes``: it
    ``sbatch -N``-s it), never one node's part of an mgpu gang, which reaches it only when a
    partition mixes bridges and mgpu's own nodes; an mgpu node runs parts, not whole gangs."""
    if backend == "slurm" and (msg.rendezvous or "NODE_RANK" in msg.env or (
            msg.tasks > 1 and not msg.nodes)):
        return ("one node's part of a multi-node job cannot run through the SLURM bridge: "
                "submit the job to a partition of SLURM bridges alone (-p slurm), where "
                "SLURM runs it whole, or to mgpu's own nodes")
    if backend != "slurm" and msg.nodes:
        return ("a multi-node job to be run whole by SLURM reached a node that is no SLURM "
                "bridge: submit it again")
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
    if msg.tasks > 1 and not msg.nodes:  # (a bridge's whole gang: srun starts the tasks)
        inner = argv if argv else ["/bin/sh", "-c", msg.command]
        argv = [sys.executable, "-m", "mgpu.node.tasks", "--", *inner]
    if env is not msg.env or argv is not msg.argv:
        msg = msgspec.structs.replace(msg, env=env, argv=argv)
    if started is not None:
        send(started)
    return msg
