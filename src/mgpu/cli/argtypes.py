"""The types of ``mgpu``'s arguments: each turns a word into a value, or raises argparse's
error with what was expected (argparse words it as a usage error). Shared by the job
commands' grammar and the daemons' (:mod:`mgpu.cli.grammar`, :mod:`mgpu.cli.daemon_args`).
"""

from __future__ import annotations


def bad_value(message: str) -> Exception:
    """The error for an argument its ``type`` refuses (argparse words it as a usage error)."""
    import argparse

    return argparse.ArgumentTypeError(message)


def port_number(text: str) -> int:
    if text.isdigit() and int(text) < 65536:
        return int(text)
    raise bad_value(f"must be a port number (0-65535), got {text!r}")


def job_id(text: str) -> int:
    if text.isascii() and text.isdigit() and int(text) > 0:
        return int(text)
    raise bad_value(f"not a job id: {text!r}")


def job_ref(text: str) -> str:
    """A job id or an array's tasks (``12``, ``12_4``, ``12_[3-5]``), checked, as text."""
    from mgpu.core.controls import parse_job_ref
    from mgpu.core.errors import UsageError

    try:
        parse_job_ref(text)
    except UsageError as e:
        raise bad_value(str(e)) from None
    return text


def count(text: str) -> int:
    if text.isascii() and text.isdigit():
        return int(text)
    raise bad_value(f"must be a whole number, got {text!r}")


def fake_gpus(text: str) -> int | str:
    """``--fake-gpus``: a count, or ``N:TYPE[:MEM]`` groups (``mgpu.utils.gpu``)."""
    if text.isascii() and text.isdigit():
        return int(text)
    from mgpu.core.errors import UsageError
    from mgpu.utils.gpu import parse_fake_spec

    try:
        parse_fake_spec(text)
    except UsageError as e:
        raise bad_value(e.message) from None
    return text


def positive(text: str) -> int:
    if text.isascii() and text.isdigit() and 0 < int(text) <= 10_000:
        return int(text)
    raise bad_value(f"must be a whole number from 1 to 10000, got {text!r}")


def seconds(text: str, unit: str = "seconds") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value >= 0:
        return value
    raise bad_value(f"must be a number of {unit}, got {text!r}")


def days(text: str) -> float:
    return seconds(text, "days")

