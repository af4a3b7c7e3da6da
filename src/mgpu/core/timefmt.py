"""Durations in SLURM's formats: time limits read and shown, elapsed times shown.

Accepted: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS`` (so ``90`` is
ninety minutes, ``1:30`` is ninety seconds and ``2-12`` is two and a half days), and
``UNLIMITED`` / ``INFINITE`` for no limit. Pure functions; the client imports this module,
so it stays light.
"""

from __future__ import annotations

from mgpu.core.errors import UsageError

UNLIMITED = ("unlimited", "infinite", "none")

_FORMATS = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"


def parse_duration(text: str, what: str = "time limit") -> int | None:
    """Seconds in ``text`` (None for unlimited), or a :class:`UsageError` naming the formats."""
    raw = text.strip()
    if raw.lower() in UNLIMITED:
        return None
    bad = UsageError(f"{what} {text!r} is not a duration: use {_FORMATS} (e.g. 2:00:00)")
    days = 0
    rest = raw
    if "-" in raw:
        d, _, rest = raw.partition("-")
        if not d.isdigit():
            raise bad
        days = int(d)
    parts = rest.split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise bad
    nums = [int(p) for p in parts]
    if "-" in raw:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, s = [*nums, 0, 0][:3]
    elif len(nums) == 1:  # MM
        h, m, s = 0, nums[0], 0
    elif len(nums) == 2:  # MM:SS
        h, m, s = 0, nums[0], nums[1]
    else:  # HH:MM:SS
        h, m, s = nums
    total = ((days * 24 + h) * 60 + m) * 60 + s
    if total <= 0:
        raise UsageError(f"{what} must be longer than zero, got {text!r}")
    return total


def format_duration(seconds: float | None) -> str:
    """``[D-]H:MM:SS``, SLURM's way of showing a duration; UNLIMITED for None."""
    if seconds is None:
        return "UNLIMITED"
    s = int(seconds)
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{days}-{text}" if days else text


def format_elapsed(seconds: float | None) -> str:
    """SLURM's elapsed-time form (squeue's TIME column): ``M:SS``, ``H:MM:SS`` or
    ``D-HH:MM:SS``, a negative time as zero; UNLIMITED for None (no time limit)."""
    if seconds is None:
        return "UNLIMITED"
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}-{hours:02d}:{minutes:02d}:{s:02d}"
    if hours:
        return f"{hours}:{minutes:02d}:{s:02d}"
    return f"{minutes}:{s:02d}"
