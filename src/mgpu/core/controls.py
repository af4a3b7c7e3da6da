"""Job controls as pure rules: dependencies, array specs, job references, begin times and
retry back-off (README "Job controls").

Nothing here reads the clock or does I/O (``now`` is passed in), and only the standard
library is imported: the ``mgpu`` command uses the parsers too, and its start-up counts.

* A dependency is ``TYPE:ID[:ID...]`` terms joined by ``,`` (all must hold) or ``?`` (any
  may), as SLURM writes them: ``afterok:12:13,afterany:14`` or ``afterok:12?afternotok:13``.
* An array spec is ``0-99``, ``1,3,5-7``, ``0-15:4`` (a step), each with an optional
  ``%N``: at most N tasks of the array run at once.
* A job reference is ``12`` (a job, or every task of array 12), ``12_4`` (task 4 of array
  12) or ``12_[3-5,7]`` (those tasks).
* A begin time is ``now+1h`` (``s``, ``m``, ``h``, ``d``, ``w``; seconds without a unit)
  or an ISO 8601 date and time (local time unless it says its zone).
"""

from __future__ import annotations

from mgpu.core.errors import UsageError

# Reason codes of a job the controls keep out of the queue (shown in queue, show, --json).
HELD = "Held"
BEGIN_TIME = "BeginTime"
DEPENDENCY = "Dependency"
DEPENDENCY_NEVER = "DependencyNeverSatisfied"
ARRAY_LIMIT = "JobArrayTaskLimit"
QOS_MAX_GPUS = "QOSMaxGPUs"

DEP_TYPES = ("after", "afterany", "afterok", "afternotok")
MAX_DEP_IDS = 1000
MAX_TASK_ID = 4_000_000
MAX_ARRAY_TASKS = 100_000  # what a spec may name; the master's max_batch_jobs caps it lower
MAX_RETRIES = 100
MAX_SPEC = 10_000  # characters of a dependency or an array spec
LATEST = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the latest begin time

# The ended states each dependency type is satisfied by ("after": the job started, or
# ended without starting).
_OK = frozenset({"completed"})
_NOT_OK = frozenset({"failed", "cancelled", "timeout", "node_fail"})


def parse_dependency(text: str) -> tuple[bool, list[tuple[str, int]]]:
    """``(any, [(type, job id), ...])`` from ``text``; ``any``: ``?``-joined (one term
    suffices), else ``,``-joined (all must hold). A :class:`UsageError` names the form."""
    form = ("use TYPE:ID[:ID...] with TYPE one of after, afterany, afterok, afternotok, "
            "joined by ',' (all) or '?' (any); e.g. afterok:12:13")
    raw = text.strip()
    if len(raw) > MAX_SPEC:
        raise UsageError(f"--dependency is longer than {MAX_SPEC} characters")
    if "," in raw and "?" in raw:
        raise UsageError(f"--dependency {text!r}: mix of ',' and '?'; {form}")
    anyof = "?" in raw
    terms: list[tuple[str, int]] = []
    for term in raw.split("?" if anyof else ","):
        kind, _, ids = term.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in DEP_TYPES or not ids:
            raise UsageError(f"--dependency {text!r}: {term.strip()!r} is not a term; {form}")
        for word in ids.split(":"):
            word = word.strip()
            if not (word.isascii() and word.isdigit() and int(word) > 0):
                raise UsageError(f"--dependency {text!r}: {word!r} is not a job id; {form}")
            terms.append((kind, int(word)))
    if not terms or len(terms) > MAX_DEP_IDS:
        raise UsageError(f"--dependency {text!r}: name 1 to {MAX_DEP_IDS} jobs; {form}")
    return anyof, terms


def term_status(kind: str, state: str | None, started: bool) -> bool | None:
    """Whether one term holds (True), can never hold (False) or may still (None), for a
    job in ``state`` (None: a job no longer known, which ended long ago and was pruned)."""
    if state is None:
        return kind in ("after", "afterany")
    if kind == "after":
        return True if started or state not in ("pending",) else None
    if state in ("pending", "running"):
        return None
    if kind == "afterany":
        return True
    if kind == "afterok":
        return state in _OK
    return state in _NOT_OK


def combine(anyof: bool, statuses: list[bool | None]) -> bool | None:
    """The dependency's status from its terms': met (True), never (False), waiting (None)."""
    if anyof:
        if any(s is True for s in statuses):
            return True
        return False if all(s is False for s in statuses) else None
    if any(s is False for s in statuses):
        return False
    return True if all(s is True for s in statuses) else None


def parse_array(text: str, top: int = MAX_ARRAY_TASKS) -> tuple[list[int], int | None]:
    """``(task ids in order, throttle)`` from an array spec (see the module docstring)."""
    form = "use e.g. 0-99, 1,3,5-7 or 0-15:4, with %N to run at most N at once"
    raw = text.strip()
    if len(raw) > MAX_SPEC:
        raise UsageError(f"--array is longer than {MAX_SPEC} characters: use ranges (0-999)")
    body, pct, limit = raw.partition("%")
    throttle: int | None = None
    if pct:
        if not (limit.isascii() and limit.isdigit() and int(limit) > 0):
            raise UsageError(f"--array {text!r}: %N needs a positive N; {form}")
        throttle = int(limit)
    tasks: set[int] = set()
    for part in body.split(","):
        rng, colon, step_text = part.strip().partition(":")
        lo_text, dash, hi_text = rng.partition("-")
        words = [lo_text, hi_text] if dash else [lo_text]
        if colon:
            words.append(step_text)
        if not all(w.isascii() and w.isdigit() for w in words):
            raise UsageError(f"--array {text!r}: {part.strip()!r} is not a task range; {form}")
        lo = int(lo_text)
        hi = int(hi_text) if dash else lo
        step = int(step_text) if colon else 1
        if hi < lo or step < 1 or hi > MAX_TASK_ID:
            raise UsageError(f"--array {text!r}: {part.strip()!r} is not a task range (ids "
                             f"from 0 to {MAX_TASK_ID}, low to high); {form}")
        if (hi - lo) // step + 1 + len(tasks) > top:
            raise UsageError(f"--array {text!r}: over {top} tasks; split it into arrays")
        tasks.update(range(lo, hi + 1, step))
    return sorted(tasks), throttle


def parse_job_ref(text: str) -> tuple[int, list[int] | None]:
    """``(id, tasks)`` from a job reference: ``12`` gives ``(12, None)``; ``12_4`` gives
    ``(12, [4])``; ``12_[3-5,7]`` gives ``(12, [3, 4, 5, 7])``."""
    raw = text.strip()
    head, sep, tail = raw.partition("_")
    if not (head.isascii() and head.isdigit() and int(head) > 0):
        raise UsageError(f"not a job id: {text!r} (use 12, 12_4 or 12_[3-5])")
    if not sep:
        return int(head), None
    if tail.startswith("[") and tail.endswith("]"):
        tail = tail[1:-1]
    try:
        tasks, throttle = parse_array(tail)
    except UsageError:
        tasks, throttle = [], 1
    if throttle is not None or not tasks:
        raise UsageError(f"not a job id: {text!r} (use 12, 12_4 or 12_[3-5])")
    return int(head), tasks


def fold_tasks(tasks: list[int]) -> str:
    """``5-9,12`` from task ids in order (how a listing folds an array's tasks)."""
    out: list[str] = []
    start = prev = tasks[0]
    for t in [*tasks[1:], None]:
        if t is not None and t == prev + 1:
            prev = t
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if t is not None:
            start = prev = t
    return ",".join(out)


_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "hours": 3600,
          "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800,
          "weeks": 604800, "minutes": 60, "seconds": 1}


def parse_begin(text: str, now: float, local_offset: float = 0.0) -> float:
    """The POSIX time ``--begin`` names: ``now``, ``now+N[unit]`` or an ISO date and time
    (``local_offset``: seconds east of UTC, for a time without its zone)."""
    from datetime import datetime, timedelta, timezone

    form = "use now+1h (s, m, h, d, w) or a date and time like 2026-12-24T18:00"
    raw = text.strip().lower()
    if raw.startswith("now"):
        rest = raw[3:].strip()
        if not rest:
            return now
        if not rest.startswith("+"):
            raise UsageError(f"--begin {text!r}: {form}")
        rest = rest[1:].strip()
        digits = rest.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = rest[len(digits):] or "s"
        if not (digits.isascii() and digits.isdigit()) or unit not in _UNITS:
            raise UsageError(f"--begin {text!r}: {form}")
        return now + int(digits) * _UNITS[unit]
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--begin {text!r}: {form}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone(timedelta(seconds=local_offset)))
    return when.timestamp()


def backoff(base: float, retry: int, cap: float) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): base, 2 base, 4 base, ...
    never above ``cap``."""
    return float(min(cap, base * 2.0 ** min(retry - 1, 60)))
