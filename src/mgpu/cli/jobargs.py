"""The job flags of ``mgpu submit`` and ``mgpu srun``, turned into what a job is queued with.

:func:`job_fields` reads them all (GPUs, the command, the environment, the directory, the
time limit) and returns ``SimpleClient.submit_job``'s keywords; each flag's own rule is one
function below. A mistake raises :class:`~mgpu.core.errors.UsageError` naming the flag.
Only ``os`` is imported (start-up time, see :mod:`mgpu.cli`): not ``shlex``, not the models.
"""

from __future__ import annotations

import os

from mgpu.core.errors import UsageError
from mgpu.core.shellwords import shell_quote
from mgpu.utils.secretenv import is_secret, without_secrets

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs start-up time
if TYPE_CHECKING:
    import argparse
    from typing import Any


def job_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """``submit_job``'s keywords from the job flags on ``ns``: ``gpus``, ``cmd``, ``argv``,
    ``name``, ``cwd`` (absolute; default here), ``env``, ``time_limit`` and the GPU
    constraints given (``gpu_type``, ``gpu_mem_mib``)."""
    gpus = gpu_count(ns)
    cmd, argv = command(ns.command)
    env = job_env(ns.export or [], ns.env or [])
    cwd = os.path.abspath(ns.chdir) if ns.chdir else os.getcwd()
    fields = {"gpus": gpus, "cmd": cmd, "argv": argv, "name": ns.job_name, "cwd": cwd,
              "env": env, "time_limit": time_limit(ns.time)}
    # Scheduling (issue 11): --priority (admins) and --nice, checked by the master.
    fields.update(priority=ns.priority, nice=ns.nice or 0)
    fields.update(gpu_constraints(ns))  # GPU constraints (README "GPUs as they are")
    fields.update(gang_fields(ns, gpus))  # multi-node jobs (README "Multi-node jobs")
    fields.update(partition_fields(ns))  # partitions (README "Mixed mode")
    return fields


def gang_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-N", "--nodes", metavar="N",
                   help="run it on N nodes at once, -G split evenly over them (default 1)")
    p.add_argument("--gpus-per-node", metavar="N", help="GPUs on each node (instead of -G)")
    p.add_argument("--ntasks-per-node", metavar="K", help="tasks on each node (default 1)")
    p.add_argument("--slurm-env", action="store_true",
                   help="give each task SLURM's variables too (SLURM_PROCID, SLURM_NTASKS, ...)")


def gang_fields(ns: argparse.Namespace, gpus: int) -> dict[str, Any]:
    """``-N/--nodes``, ``--gpus-per-node``, ``--ntasks-per-node``, ``--slurm-env`` as
    ``submit_job`` keywords; ``gpus`` (in all) made from ``--gpus-per-node`` when given."""
    if ns.nodes is None and ns.gpus_per_node is None and ns.ntasks_per_node is None and not (
            ns.slurm_env):
        return {}
    nodes = 1 if ns.nodes is None else _count(ns.nodes, "-N/--nodes", "nodes")
    out: dict[str, Any] = {"nodes": nodes, "slurm_env": bool(ns.slurm_env)}
    if ns.ntasks_per_node is not None:
        out["ntasks_per_node"] = _count(ns.ntasks_per_node, "--ntasks-per-node", "tasks")
    if ns.gpus_per_node is not None:
        each = _count(ns.gpus_per_node, "--gpus-per-node")
        if (ns.gpus is not None or ns.gres is not None) and gpus != each * nodes:
            raise UsageError(f"-G {gpus} and --gpus-per-node {each} on {nodes} nodes disagree: "
                             "give one of them")
        out["gpus"] = each * nodes
    elif ns.gpus is None and ns.gres is None:
        out["gpus"] = nodes  # (one GPU a node, as one GPU a job without -N)
    elif gpus % nodes:
        raise UsageError(f"{gpus} GPUs do not split evenly over {nodes} nodes: ask for a "
                         f"multiple of {nodes} (-G), or give --gpus-per-node")
    return out


def _count(text: str, what: str, of: str = "GPUs") -> int:
    if text.isascii() and text.strip().isdigit() and int(text) > 0:
        return int(text)
    raise UsageError(f"{what} must be a positive whole number of {of}, got {text!r}")


def gpu_count(ns: argparse.Namespace) -> int:
    """The GPU count from ``-G/--gpus N`` and SLURM's ``--gres=gpu:N`` or
    ``--gres=gpu:TYPE:N`` (default 1; the type is :func:`gpu_constraints`'s)."""
    count = None if ns.gpus is None else _count(ns.gpus, "-G/--gpus")
    if ns.gres is not None:
        parts = ns.gres.split(":")
        kind, num = parts[0], parts[-1] if len(parts) > 1 else ""
        if kind != "gpu" or len(parts) > 3 or (len(parts) == 3 and not parts[1].strip()):
            raise UsageError(f"--gres takes gpu:N or gpu:TYPE:N, got {ns.gres!r}")
        from_gres = _count(num or "1", "--gres=gpu:N")
        if count is not None and count != from_gres:
            raise UsageError(f"-G/--gpus {count} and --gres={ns.gres} disagree; give one")
        count = from_gres
    return 1 if count is None else count


def job_env(exports: list[str], envs: list[str]) -> dict[str, str]:
    """The job's environment: the submitter's whole environment (SLURM's ``ALL``) but for
    mgpu's own secrets (``MGPU_TOKEN``, ``MGPU_JOIN_TOKEN``: :mod:`mgpu.utils.secretenv`)
    or, with ``--export=NONE``, nothing; then each ``KEY=VAL`` given, and each bare ``KEY``
    copied from here. Naming a secret is a :class:`UsageError`: the master would drop it
    anyway (it never stores or passes one on), and silence would hide that. ``--export``
    takes a comma list like SLURM; ``--env`` one variable."""
    exported = [i for e in exports for i in e.split(",") if i]
    words = {i.upper() for i in exported} & {"ALL", "NONE"}
    if len(words) == 2:
        raise UsageError("--export: ALL and NONE cannot both be given")
    env = {} if "NONE" in words else without_secrets(os.environ)
    for item in [i for i in exported if i.upper() not in words] + envs:
        key, sep, value = item.partition("=")
        if not key:
            raise UsageError(f"--export/--env takes KEY=VALUE, got {item!r}")
        if is_secret(key):
            raise UsageError(f"--export/--env {key}: mgpu never gives its own secrets to a "
                             "job; a job that runs mgpu can read a token from a file: "
                             "`mgpu --token-file PATH ...` (make one with `mgpu token create`)")
        if not sep:
            if key not in os.environ:
                raise UsageError(f"--export/--env {key}: {key} is not set here; use {key}=VALUE")
            value = os.environ[key]
        env[key] = value
    return env


def command(words: list[str]) -> tuple[str, list[str] | None]:
    """The job's command: one word is a shell command line (``'python t.py'``), run by
    ``/bin/sh -c``; several words are run as they are, without a shell, as srun does (and
    shown joined as ``shlex.join`` does: ``python t.py --name 'a b'``)."""
    if words and words[0] == "--":
        words = words[1:]
    if not words:
        raise UsageError("a job needs a command: mgpu submit [options] 'COMMAND ...'")
    if len(words) == 1:
        return words[0], None
    return " ".join(map(shell_quote, words)), list(words)


def time_limit(text: str | None) -> int | None:
    """``-t``: seconds in one of SLURM's formats; None when not given (the master's default)."""
    if text is None:
        return None
    from mgpu.core.timefmt import parse_duration

    limit = parse_duration(text, "-t/--time")
    return 0 if limit is None else limit  # 0: UNLIMITED, asked for explicitly


# ---------------------------------------------------------------------- job controls
# README "Job controls": the flags, and what a job is queued with from them.


def control_args(p: argparse.ArgumentParser) -> None:
    """The job-control flags of ``mgpu submit``."""
    p.add_argument("-d", "--dependency", metavar="DEP",
                   help="start after other jobs: afterok|afterany|afternotok|after:ID[:ID...], "
                   "',' = all of them, '?' = any (e.g. afterok:12:13)")
    p.add_argument("--kill-on-invalid-dep", choices=("yes", "no"), metavar="yes|no",
                   help="cancel the job when its dependency can never be met (default yes)")
    p.add_argument("-a", "--array", metavar="SPEC",
                   help="one job per task: 0-99, 1,3,5-7 or 0-15:4; %%N runs at most N at once "
                   "(each task gets MGPU_ARRAY_JOB_ID and MGPU_ARRAY_TASK_ID)")
    p.add_argument("-H", "--hold", action="store_true",
                   help="queue it held: it starts only after `mgpu release ID`")
    p.add_argument("-b", "--begin", metavar="TIME",
                   help="not before TIME: now+1h (s, m, h, d, w) or 2026-12-24T18:00")
    p.add_argument("--retries", metavar="N",
                   help="after a non-zero exit, run it again up to N times, waiting longer "
                   "each time (the master's retry_backoff, doubled each retry)")


def control_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """``submit_job``'s job-control keywords from the flags on ``ns`` (only those given)."""
    out: dict[str, Any] = {}
    if ns.dependency is not None:
        from mgpu.core.controls import parse_dependency

        parse_dependency(ns.dependency)  # (a mistake is named here, before any request)
        out["dependency"] = ns.dependency.strip()
    if ns.kill_on_invalid_dep == "no":
        out["kill_on_invalid_dep"] = False
    if ns.array is not None:
        from mgpu.core.controls import parse_array

        parse_array(ns.array)
        out["array"] = ns.array.strip()
    if ns.hold:
        out["hold"] = True
    if ns.begin is not None:
        import time

        from mgpu.core.controls import parse_begin

        out["begin"] = parse_begin(ns.begin, time.time(), time.localtime().tm_gmtoff)
    if ns.retries is not None:
        from mgpu.core.controls import MAX_RETRIES

        if not (ns.retries.isascii() and ns.retries.isdigit()
                and int(ns.retries) <= MAX_RETRIES):
            raise UsageError(f"--retries must be from 0 to {MAX_RETRIES}, got {ns.retries!r}")
        out["retries"] = int(ns.retries)
    return out
# ---------------------------------------------------------------- GPU constraints


def gpu_constraints(ns: argparse.Namespace) -> dict[str, Any]:
    """``--gpu-mem SIZE`` → ``gpu_mem_mib``; ``--gpu-type TYPE``, ``--gres=gpu:TYPE:N``
    or ``--constraint gpu=TYPE`` → ``gpu_type`` (those given must agree). Only the ones
    given."""
    typed = {"--gpu-type": ns.gpu_type, "--gres": _gres_type(ns) or None,
             "--constraint": ns.constraint}
    if ns.gpu_mem is None and not any(typed.values()):
        return {}
    from mgpu.core.gputypes import gpu_type, parse_constraint, parse_mib

    out: dict[str, Any] = {}
    if ns.gpu_mem is not None:
        out["gpu_mem_mib"] = parse_mib(ns.gpu_mem, "--gpu-mem")
    if typed["--constraint"] is not None:
        typed["--constraint"] = parse_constraint(typed["--constraint"])
    kind: str | None = None
    for flag, asked in typed.items():
        if asked is None:
            continue
        if not gpu_type(asked):
            raise UsageError(f"{flag} {asked!r} names no GPU type: write e.g. a100 or h200")
        if kind is not None and gpu_type(kind) != gpu_type(asked):
            raise UsageError(f"--gpu-type, --gres and --constraint name different GPU types "
                             f"({kind}, {asked}): give one")
        kind = kind or asked
    if kind is not None:
        out["gpu_type"] = kind
    return out


def _gres_type(ns: argparse.Namespace) -> str:
    """The TYPE of ``--gres=gpu:TYPE:N`` ("" without one)."""
    gres = getattr(ns, "gres", None) or ""
    parts = gres.split(":")
    return parts[1].strip() if len(parts) == 3 and parts[0] == "gpu" else ""


# ---------------------------------------------------------------- notifications (issue 13)


def notify_args(p: argparse.ArgumentParser) -> None:
    """``mgpu submit``'s notification flags (README "Notifications")."""
    p.add_argument("--mail-type", metavar="TYPES",
                   help="mail on BEGIN, END, FAIL (ended but not completed) or ALL, a comma "
                   "list (default with --mail-user: END)")
    p.add_argument("--mail-user", metavar="ADDRESS", help="where the mail goes")
    p.add_argument("--notify", metavar="URL",
                   help="POST the job as JSON to this http(s) URL when it begins and ends")


def notify_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """``submit_job``'s ``notify`` keyword from the flags: the JobSpec fields
    ``mail_type``, ``mail_user`` and ``notify_url`` that were given (checked here too, so
    a mistake is reported before anything is sent)."""
    if ns.mail_type is None and ns.mail_user is None and ns.notify is None:
        return {}
    from mgpu.core.notify import check_address, check_url, parse_mail_types

    fields: dict[str, Any] = {}
    if ns.mail_type is not None or ns.mail_user is not None:
        if ns.mail_user is None:
            raise UsageError("--mail-type needs --mail-user ADDRESS (where the mail goes)")
        check_address(ns.mail_user)
        fields["mail_user"] = ns.mail_user
        fields["mail_type"] = parse_mail_types(ns.mail_type or "END")
    if ns.notify is not None:
        check_url(ns.notify)
        fields["notify_url"] = ns.notify
    return fields


# ---------------------------------------------------------------- partitions (issue 14)


def partition_args(p: argparse.ArgumentParser) -> None:
    """The partition flag of ``mgpu submit`` and ``mgpu srun`` (README "Mixed mode")."""
    p.add_argument("-p", "--partition", metavar="NAME",
                   help="run only on the nodes of this partition (e.g. slurm; default: the "
                   "default partition, or a spill partition when the master allows)")


def partition_fields(ns: argparse.Namespace) -> dict[str, Any]:
    """``{"partition": NAME}`` when ``-p`` was given (the master checks the name)."""
    name = getattr(ns, "partition", None)
    if name is None:
        return {}
    if not name.strip():
        raise UsageError("-p/--partition needs a partition name (`mgpu nodes` lists them); "
                         "leave it out for the default partition")
    return {"partition": name.strip()}
