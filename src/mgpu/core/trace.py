"""Job traces for the simulator: the CSV format, read into :class:`TraceJob` rows.

A trace is CSV text with a header row naming its columns, in any order:

==============  ========  ==============================================================
column          required  meaning
==============  ========  ==============================================================
``submit``      yes       when the job is submitted, in seconds from any origin
``user``        yes       who submits it
``gpus``        yes       GPUs it needs (on one node), a whole number >= 1
``duration``    yes       how long it runs if nothing stops it, in seconds (> 0)
``time_limit``  yes       its time limit in seconds; empty for none (it then runs its
                          whole duration). A job whose duration passes its limit is
                          stopped at the limit and ends ``timeout``
``id``          no        its id (a whole number >= 1, unique); default: its data row's
                          number (1 for the first row under the header)
``dependency``  no        SLURM's form: ``afterok:3:4``, ``afterany:3,afterok:5`` (all
                          of them) or ``afterok:3?afternotok:4`` (any of them); the types
                          are ``after`` (started), ``afterany`` (ended), ``afterok``
                          (ended within its limit), ``afternotok`` (stopped at its limit)
``array``       no        SLURM's form: ``0-99``, ``1,3,5-7``, ``0-99%8`` (at most 8
                          tasks at once); each task is a job of its own
==============  ========  ==============================================================

Times may have decimals. Rows are replayed in order of submit time, ties in the order of
the file (that order is the queue order). A dependency must name a job that comes earlier
in that order (so that it exists when the dependent job is submitted, as on a real
cluster). Every mistake is a :class:`~mgpu.core.errors.UsageError` naming the row and the
fix. Pure: the caller reads the file.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass

from mgpu.core.errors import UsageError

REQUIRED = ("submit", "user", "gpus", "duration", "time_limit")
OPTIONAL = ("id", "dependency", "array")
DEPENDENCY_TYPES = ("after", "afterany", "afterok", "afternotok")
MAX_ARRAY_TASKS = 100_000  # per row: a typo such as 0-99999999 should not eat the memory


@dataclass(frozen=True, slots=True)
class Dependency:
    """One condition: ``kind`` (one of :data:`DEPENDENCY_TYPES`) on every job of ``ids``."""

    kind: str
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TraceJob:
    """One row of a trace. ``depends`` is a list of alternatives (``?``-separated), each a
    tuple of conditions that must all hold; empty when the job depends on nothing."""

    id: int
    submit: float
    user: str
    gpus: int
    duration: float
    time_limit: float | None
    depends: tuple[tuple[Dependency, ...], ...] = ()
    array: tuple[int, ...] = ()  # task ids; empty: not an array
    array_limit: int | None = None  # at most this many tasks at once

    def depends_on(self) -> set[int]:
        return {i for alt in self.depends for d in alt for i in d.ids}


def parse_trace(text: str | Iterable[str]) -> list[TraceJob]:
    """The jobs of a CSV trace (see the module docstring), in queue order."""
    reader = csv.reader(text.splitlines() if isinstance(text, str) else text)
    header = next(reader, None)
    if header is None:
        raise UsageError("the trace is empty: it needs a header row, e.g. "
                         + ",".join(REQUIRED))
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    unknown = [c for c in names if c not in REQUIRED + OPTIONAL]
    if missing or unknown:
        raise UsageError(
            "the trace's header row must name the columns "
            + ",".join(REQUIRED) + f" (and may add {', '.join(OPTIONAL)}); "
            + (f"missing: {', '.join(missing)}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"unknown: {', '.join(unknown)}" if unknown else ""))
    col = {name: i for i, name in enumerate(names)}
    jobs: list[TraceJob] = []
    for line, row in enumerate(reader, start=2):
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(names):
            raise UsageError(f"trace line {line}: {len(row)} fields, the header has "
                             f"{len(names)}")
        jobs.append(_row(row, col, line, default_id=len(jobs) + 1))
    if not jobs:
        raise UsageError("the trace has no jobs: add rows under its header")
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].submit, i))
    ordered = [jobs[i] for i in order]
    _check_ids(ordered, [order[k] + 2 for k in range(len(order))])
    return ordered


def _row(row: list[str], col: dict[str, int], line: int, default_id: int) -> TraceJob:
    def cell(name: str) -> str:
        return row[col[name]].strip() if name in col else ""

    where = f"trace line {line}"
    user = cell("user")
    if not user:
        raise UsageError(f"{where}: the user is empty")
    limit_text = cell("time_limit")
    array, array_limit = parse_array(cell("array"), where)
    return TraceJob(
        id=_whole(cell("id"), where, "id") if cell("id") else default_id,
        submit=_seconds(cell("submit"), where, "submit", allow_zero=True),
        user=user,
        gpus=_whole(cell("gpus"), where, "gpus"),
        duration=_seconds(cell("duration"), where, "duration"),
        time_limit=_seconds(limit_text, where, "time_limit") if limit_text else None,
        depends=parse_dependency(cell("dependency"), where),
        array=array,
        array_limit=array_limit,
    )


def _seconds(text: str, where: str, what: str, allow_zero: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{where}: {what} {text!r} is not a number of seconds") from None
    if not value == value or value in (float("inf"), float("-inf")) or value < 0 or (
            value == 0 and not allow_zero):
        raise UsageError(f"{where}: {what} must be a number of seconds "
                         f"{'>= 0' if allow_zero else '> 0'}, got {text!r}")
    return value


def _whole(text: str, where: str, what: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{where}: {what} must be a whole number >= 1, got {text!r}")
    return int(text)


def parse_dependency(text: str, where: str = "dependency") -> tuple[tuple[Dependency, ...], ...]:
    """``afterok:3:4,afterany:5`` (all) or ``afterok:3?afterany:5`` (any), SLURM's forms;
    empty text: no dependency."""
    if not text:
        return ()
    if "," in text and "?" in text:
        raise UsageError(f"{where}: dependency {text!r} mixes ',' (all of) and '?' (any "
                         "of): use one of them")
    parts = text.split("?") if "?" in text else [text]
    alternatives: list[tuple[Dependency, ...]] = []
    for part in parts:
        conditions: list[Dependency] = []
        for clause in part.split(","):
            kind, _, ids = clause.strip().partition(":")
            if kind not in DEPENDENCY_TYPES or not ids:
                raise UsageError(
                    f"{where}: dependency {clause!r} is not TYPE:ID[:ID...] with TYPE one of "
                    f"{', '.join(DEPENDENCY_TYPES)} (e.g. afterok:3:4)")
            conditions.append(Dependency(kind, tuple(
                _whole(i, where, "a dependency's job id") for i in ids.split(":"))))
        alternatives.append(tuple(conditions))
    return tuple(alternatives)


def parse_array(text: str, where: str = "array") -> tuple[tuple[int, ...], int | None]:
    """``0-99%8`` → (task ids 0..99, 8); ``1,3,5-7`` → ((1, 3, 5, 6, 7), None)."""
    if not text:
        return (), None
    spec, _, cap = text.partition("%")
    bad = UsageError(f"{where}: array {text!r} is not SLURM's form, e.g. 0-99, 1,3,5-7 or "
                     "0-99%8 (at most 8 at once)")
    limit = None
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise bad
        limit = int(cap)
    tasks: set[int] = set()
    for piece in spec.split(","):
        lo, dash, hi = piece.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise bad
        first, last = int(lo), int(hi) if dash else int(lo)
        if last < first:
            raise bad
        if len(tasks) + last - first + 1 > MAX_ARRAY_TASKS:
            raise UsageError(f"{where}: array {text!r} has more than {MAX_ARRAY_TASKS:,} "
                             "tasks: split it over several rows")
        tasks.update(range(first, last + 1))
    return tuple(sorted(tasks)), limit


def _check_ids(jobs: list[TraceJob], lines: list[int]) -> None:
    """Ids are unique; dependencies name jobs earlier in queue order."""
    seen: dict[int, int] = {}
    for job, line in zip(jobs, lines, strict=True):
        if job.id in seen:
            raise UsageError(f"trace line {line}: id {job.id} is also the id on line "
                             f"{seen[job.id]}: ids must be unique")
        for dep in sorted(job.depends_on()):
            if dep not in seen:
                raise UsageError(
                    f"trace line {line}: job {job.id} depends on job {dep}, which is not "
                    "submitted before it: name a job of an earlier row (or submit time)")
        seen[job.id] = line
