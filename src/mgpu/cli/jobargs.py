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
    ``name``, ``cwd`` (absolute; default here), ``env`` and ``time_limit``."""
    gpus = gpu_count(ns)
    cmd, argv = command(ns.command)
    env = job_env(ns.export or [], ns.env or [])
    cwd = os.path.abspath(ns.chdir) if ns.chdir else os.getcwd()
    return {"gpus": gpus, "cmd": cmd, "argv": argv, "name": ns.job_name, "cwd": cwd,
            "env": env, "time_limit": time_limit(ns.time)}


def _count(text: str, what: str) -> int:
    if text.isascii() and text.strip().isdigit() and int(text) > 0:
        return int(text)
    raise UsageError(f"{what} must be a positive whole number of GPUs, got {text!r}")


def gpu_count(ns: argparse.Namespace) -> int:
    """The GPU count from ``-G/--gpus N`` and SLURM's ``--gres=gpu:N`` (default 1)."""
    count = None if ns.gpus is None else _count(ns.gpus, "-G/--gpus")
    if ns.gres is not None:
        kind, _, num = ns.gres.partition(":")
        if kind != "gpu" or ":" in num:
            raise UsageError(f"--gres takes gpu:N (GPU types are not supported), got {ns.gres!r}")
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
