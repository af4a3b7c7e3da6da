"""What the master accepts: bounds and sanity of jobs and node registrations.

Pure checks, each raising (or returning) an error a user can act on, the limit named:
a job's command, environment, GPUs, names and paths (a :class:`UsageError`, 400), and what
a registering node claims (its id, its GPUs). The limits that are settings (jobs per
submit, pending jobs per user) are the state's, in ``state.py``.
"""

from __future__ import annotations

from mgpu.core import messages as m
from mgpu.core.errors import Forbidden, UsageError
from mgpu.core.models import JobSpec

MAX_COMMAND = 128 * 1024  # bytes of a job's command line (argv: all its words together)
MAX_ENV = 1024 * 1024  # characters of a job's environment, as execve counts it (KEY=VALUE\0)
MAX_NAME = 256
MAX_PATH = 4096
MAX_REQUEUE = 1000
MAX_TIME_LIMIT = 10 * 366 * 86400  # ten years, in seconds
MAX_GPUS_PER_NODE = 1024
MAX_NODE_ID = 128
_NODE_ID_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-@:+"
)


def check_spec(spec: JobSpec, where: str) -> None:
    """Raise :class:`UsageError` if ``spec`` is out of bounds (``where``: which job of a
    batch, for the message). The time limit is checked by the state (it knows the maximum)."""
    if not 1 <= spec.gpus <= MAX_GPUS_PER_NODE:
        raise UsageError(f"{where}gpus must be from 1 to {MAX_GPUS_PER_NODE}, got {spec.gpus}")
    # Every string that reaches exec or the environment on the node: a NUL byte there is
    # refused here, with the field named, rather than failing (or crashing) on the node.
    for field_name, value in (("command", spec.command), ("name", spec.name),
                              ("user", spec.user), ("cwd", spec.cwd)):
        if value is not None and "\0" in value:
            raise UsageError(f"{where}{field_name} holds a NUL byte: remove it")
    if len(spec.cwd) > MAX_PATH or (spec.user and len(spec.user) > MAX_NAME):
        raise UsageError(f"{where}the working directory (or user) is too long")
    if not spec.command.strip():
        raise UsageError(f"{where}the command is empty")
    if spec.argv is not None and (not spec.argv or not spec.argv[0]
                                  or any("\0" in a for a in spec.argv)):
        raise UsageError(f"{where}argv must name a program and hold no NUL bytes")
    if len(spec.command) > MAX_COMMAND or (
            spec.argv is not None and sum(len(a) + 1 for a in spec.argv) > MAX_COMMAND):
        raise UsageError(f"{where}the command is longer than {MAX_COMMAND} bytes")
    check_env(spec.env, where)
    if spec.name is not None and len(spec.name) > MAX_NAME:
        raise UsageError(f"{where}the name is longer than {MAX_NAME} characters")
    if spec.max_requeue is not None and not 0 <= spec.max_requeue <= MAX_REQUEUE:
        raise UsageError(f"{where}max_requeue must be from 0 to {MAX_REQUEUE}")


def register_problem(msg: m.Register) -> str | None:
    """Why ``msg`` cannot be accepted, or None. (Sizes are bounded by the message types.)"""
    if msg.protocol != m.PROTOCOL_VERSION:
        return (f"protocol {msg.protocol} is not {m.PROTOCOL_VERSION}: "
                "run the same mgpu version on the master and the nodes")
    if not msg.node_id or len(msg.node_id) > MAX_NODE_ID or not _NODE_ID_CHARS.issuperset(
            msg.node_id):
        return (f"node id {msg.node_id[:MAX_NODE_ID]!r} is not 1-{MAX_NODE_ID} letters, digits "
                "or ._-@:+ : pass --node-id")
    if not msg.gpus:
        return "the node offers no GPUs"
    if len(msg.gpus) > MAX_GPUS_PER_NODE:
        return f"the node claims {len(msg.gpus)} GPUs (at most {MAX_GPUS_PER_NODE})"
    indices = [g.index for g in msg.gpus]
    if len(set(indices)) != len(indices):
        return f"the node claims the same GPU index twice ({sorted(indices)})"
    return None


def check_env(env: dict[str, str], where: str) -> None:
    """A job's environment must be one ``execve`` can take, and not too large."""
    size = 0
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise UsageError(f"{where}environment variable {key[:64]!r}: names must be "
                             "non-empty without '=' or NUL, values without NUL")
        size += len(key) + len(value) + 2
    if size > MAX_ENV:
        raise UsageError(
            f"{where}the environment is {size} characters, over the limit of {MAX_ENV}: submit "
            "with less of it (--export=NONE,VAR,... passes only the variables named)"
        )


MAX_PRIORITY = 1_000_000  # --priority, and the size of --nice either way


def check_priority(spec: JobSpec, admin: bool, where: str) -> None:
    """Raise if ``spec``'s ``--priority``/``--nice`` is out of bounds, or not the caller's to
    give: like SLURM, anyone may lower their job's priority (``--nice`` from 0 up), only an
    admin may set ``--priority`` or a negative ``--nice``."""
    if spec.priority is not None and not 0 <= spec.priority <= MAX_PRIORITY:
        raise UsageError(f"{where}--priority must be from 0 to {MAX_PRIORITY}")
    if not -MAX_PRIORITY <= spec.nice <= MAX_PRIORITY:
        raise UsageError(f"{where}--nice must be from -{MAX_PRIORITY} to {MAX_PRIORITY}")
    if admin:
        return
    if spec.priority is not None:
        raise Forbidden(f"{where}only an admin may set --priority: use --nice N to lower your "
                        "job's priority, or ask an admin")
    if spec.nice < 0:
        raise Forbidden(f"{where}only an admin may give a negative --nice: use --nice 0 or "
                        "more, or ask an admin")
