"""Persistence of the master's queue: the only module that imports ``sqlite3``.

One SQLite database in WAL mode with ``synchronous=FULL``: a change is on disk when
:meth:`Store.write` returns, so the master acknowledges only what survives a crash or a
power cut. Callers batch many changes into one :meth:`Store.write` (group commit).

Schema version lives in ``PRAGMA user_version``; an older database is brought up to date
step by step (``server/schema.py``) when it is opened. A job row keeps the job as msgspec JSON in
``data`` (the JSON contract, so rows are readable with the sqlite3 shell) beside the columns
that queries need; the submitter's environment sits in its own column, written once.

Version 2 added ``tokens`` (client tokens, kept only as SHA-256 digests of the token) and
``audit`` (one row per state-changing request: who did what, when). Both are written in the
same transactions as the job changes they go with. Version 4 added ``node_credentials``
(each node id's credential, as a digest: ``server/nodeauth.py``); version 5 ``runs``, the
accounting of every run of every job, saved with the run's end and kept when the job is
pruned after ``job_retention_days`` (the SQL of each version is ``server/schema.py``).

``max_pages`` caps the database's size (``PRAGMA max_page_count``): past it SQLite answers
"database or disk is full", exactly as on a full disk, which is how the tests fill a disk
without root. :class:`StoreError` says ``full`` when the disk (or that cap) is full.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mgpu.core.errors import StoreError
from mgpu.core.models import SimpleJob
from mgpu.server.schema import MIGRATIONS, SCHEMA, SCHEMA_VERSION

_job_encoder = msgspec.json.Encoder()
_job_decoder = msgspec.json.Decoder(SimpleJob)
_env_decoder = msgspec.json.Decoder(dict[str, str])


@dataclass
class TokenRow:
    """A client token as saved: never the token itself, only its SHA-256 digest (hex)."""

    id: int
    user: str
    admin: bool
    digest: str
    created: float
    revoked: float | None = None


@dataclass
class AuditRow:
    """One state-changing request: when, by whom, what (``action``) and on what (``detail``)."""

    ts: float
    user: str
    action: str
    detail: str
    id: int | None = None  # given by the database


@dataclass
class NodeCredentialRow:
    """A node's credential as saved: never the credential, only its SHA-256 digest (hex)."""

    node_id: str
    digest: str
    created: float


@dataclass
class RunRow:
    """One run of a job, as accounting keeps it (table ``runs``, ``server/schema.py``): saved
    with the run's end, kept when the job is pruned. A job that ended without running
    (cancelled while pending) has one, with ``started`` None."""

    job_id: int
    run: int
    user: str
    name: str | None
    gpus: int
    gpu_ids: str  # comma list
    node: str | None
    queued: float | None  # the submit; for a requeued run, the previous run's end wins
    started: float | None
    ended: float
    state: str
    exit_code: int | None
    end_cause: str | None
    gpu_seconds: float
    peak_mem_mib: int | None = None


_RUN_COLUMNS = ("job_id, run, user, name, gpus, gpu_ids, node, queued, started, ended, state, "
                "exit_code, end_cause, gpu_seconds, peak_mem_mib")


@dataclass
class Batch:
    """Changes to save in one transaction. Later entries for the same job win."""

    inserts: list[tuple[SimpleJob, dict[str, str]]] = field(default_factory=list)
    updates: dict[int, SimpleJob] = field(default_factory=dict)
    tokens: list[TokenRow] = field(default_factory=list)
    revokes: dict[int, float] = field(default_factory=dict)  # token id -> when
    audit: list[AuditRow] = field(default_factory=list)
    credentials: list[NodeCredentialRow] = field(default_factory=list)  # made or replaced
    credential_resets: list[str] = field(default_factory=list)  # node ids
    envs: dict[int, dict[str, str]] = field(default_factory=dict)  # job id -> new env
    pruned: list[int] = field(default_factory=list)  # ids of jobs to drop (their runs stay)
    runs: list[RunRow] = field(default_factory=list)  # runs that ended

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.tokens or self.revokes or self.audit
                    or self.credentials or self.credential_resets or self.envs or self.pruned
                    or self.runs)

    def merge(self, other: Batch) -> None:
        self.inserts.extend(other.inserts)
        self.updates.update(other.updates)
        self.tokens.extend(other.tokens)
        self.revokes.update(other.revokes)
        self.audit.extend(other.audit)
        self.credentials.extend(other.credentials)
        self.credential_resets.extend(other.credential_resets)
        self.envs.update(other.envs)
        self.pruned.extend(other.pruned)
        self.runs.extend(other.runs)


@dataclass
class LoadedJob:
    """A job as the master's store loads it at start-up: the job, and the environment saved
    with it (kept in memory, not in :class:`SimpleJob`, so a requeue can start it again)."""

    job: SimpleJob
    env: dict[str, str]


class Store:
    """The master's SQLite database. Not thread-safe: use it from one thread at a time."""

    def __init__(self, path: Path, max_pages: int = 0) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
            if max_pages > 0:  # (after the migrations, which must not fail for want of room)
                self._db.execute(f"PRAGMA max_page_count={int(max_pages)}")
        except sqlite3.Error as e:
            raise StoreError(
                f"cannot open the database {path}: {e}; check that the data dir is "
                "writable and not on a full disk, or pass --data-dir"
            ) from e

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer mgpu (schema {version}); upgrade mgpu"
            )
        if version == 0:
            self._db.executescript(SCHEMA)
            version = 1
        for step in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits first; BEGIN makes the step and its version one change.
            self._db.executescript(
                f"BEGIN IMMEDIATE; {MIGRATIONS[step]}; PRAGMA user_version={step}; COMMIT;"
            )

    def close(self) -> None:
        self._db.close()

    def load(self) -> list[LoadedJob]:
        """Every job, in id order."""
        rows = self._db.execute("SELECT data, env FROM jobs ORDER BY id").fetchall()
        return [LoadedJob(_job_decoder.decode(d), _env_decoder.decode(e)) for d, e in rows]

    def load_env(self, job_id: int) -> dict[str, str]:
        row = self._db.execute("SELECT env FROM jobs WHERE id=?", (job_id,)).fetchone()
        return {} if row is None else _env_decoder.decode(row[0])

    def last_id(self) -> int:
        """The highest id ever handed out (ids are never reused)."""
        row = self._db.execute("SELECT value FROM meta WHERE key='last_id'").fetchone()
        (max_row,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()
        return max(int(row[0]) if row else 0, int(max_row))

    def load_tokens(self) -> list[TokenRow]:
        """Every token not revoked, in id order."""
        rows = self._db.execute(
            "SELECT id, user, admin, digest, created FROM tokens WHERE revoked IS NULL "
            "ORDER BY id"
        ).fetchall()
        return [TokenRow(i, u, bool(a), d, c) for i, u, a, d, c in rows]

    def last_token_id(self) -> int:
        (top,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM tokens").fetchone()
        return int(top)

    def load_node_credentials(self) -> list[NodeCredentialRow]:
        rows = self._db.execute("SELECT node_id, digest, created FROM node_credentials")
        return [NodeCredentialRow(n, d, c) for n, d, c in rows.fetchall()]

    def last_run(self, job_id: int) -> RunRow | None:
        """The accounting row of a job's last run (or of its end, if it never ran), or None."""
        row = self._db.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE job_id=? "
                               "ORDER BY run DESC LIMIT 1", (job_id,)).fetchone()
        return None if row is None else RunRow(*row)

    def query(self, sql: str, args: dict[str, object]) -> list[tuple[Any, ...]]:
        """Rows of a read-only ``sql`` with named ``args`` (``server/accounting.py``'s
        aggregates), or :class:`StoreError`."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise StoreError(f"cannot read {self.path}: {e}") from e

    def events(self, limit: int, user: str | None = None) -> list[AuditRow]:
        """The last ``limit`` audit rows (of ``user`` only, when given), oldest first."""
        where, args = ("WHERE user=? ", (user,)) if user is not None else ("", ())
        rows = self._db.execute(
            f"SELECT id, ts, user, action, detail FROM audit {where}ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [AuditRow(ts, u, a, d, i) for i, ts, u, a, d in reversed(rows)]

    def prune_audit(self, before: float) -> int:
        """Drop the audit events older than ``before`` (a POSIX time); how many went."""
        try:
            cur = self._db.execute("DELETE FROM audit WHERE ts < ?", (before,))  # (indexed)
        except sqlite3.Error as e:
            raise StoreError(f"cannot prune the audit log in {self.path}: {e}") from e
        return cur.rowcount

    def write(self, batch: Batch) -> None:
        """Save ``batch`` in one durable transaction, or raise :class:`StoreError`."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if batch.inserts:
                    self._db.executemany(
                        "INSERT INTO jobs(id, state, user, data, env) VALUES (?,?,?,?,?)",
                        [
                            (j.id, j.state.value, j.user, _job_encoder.encode(j),
                             _job_encoder.encode(env))
                            for j, env in batch.inserts
                        ],
                    )
                    top = max(j.id for j, _ in batch.inserts)
                    self._db.execute(
                        "INSERT INTO meta(key, value) VALUES ('last_id', ?) ON CONFLICT(key) "
                        "DO UPDATE SET value=MAX(CAST(value AS INTEGER), excluded.value)",
                        (top,),
                    )
                if batch.updates:
                    self._db.executemany(
                        "UPDATE jobs SET state=?, data=? WHERE id=?",
                        [
                            (j.state.value, _job_encoder.encode(j), j.id)
                            for j in batch.updates.values()
                        ],
                    )
                if batch.tokens:
                    self._db.executemany(
                        "INSERT INTO tokens(id, user, admin, digest, created) VALUES (?,?,?,?,?)",
                        [(t.id, t.user, int(t.admin), t.digest, t.created)
                         for t in batch.tokens],
                    )
                if batch.revokes:
                    self._db.executemany(
                        "UPDATE tokens SET revoked=? WHERE id=? AND revoked IS NULL",
                        [(ts, i) for i, ts in batch.revokes.items()],
                    )
                if batch.audit:
                    self._db.executemany(
                        "INSERT INTO audit(ts, user, action, detail) VALUES (?,?,?,?)",
                        [(a.ts, a.user, a.action, a.detail) for a in batch.audit],
                    )
                self._write_more(batch)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # (SQLite rolls back by itself on a full disk)
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            if is_full(e):
                raise StoreError(
                    f"the master's disk is full: cannot save to {self.path} ({e}); free "
                    f"space on the disk holding {self.path.parent} (new jobs are refused "
                    "until then; running jobs' ends are still recorded)", full=True) from e
            raise StoreError(f"cannot save to {self.path}: {e} (check the data dir)") from e

    def _write_more(self, batch: Batch) -> None:
        """The parts of ``batch`` added in schema versions 4 and 5 (inside its transaction)."""
        if batch.envs:
            self._db.executemany("UPDATE jobs SET env=? WHERE id=?",
                                 [(_job_encoder.encode(env), i) for i, env in batch.envs.items()])
        if batch.credential_resets:
            self._db.executemany("DELETE FROM node_credentials WHERE node_id=?",
                                 [(n,) for n in batch.credential_resets])
        if batch.credentials:
            self._db.executemany(
                "INSERT OR REPLACE INTO node_credentials(node_id, digest, created) "
                "VALUES (?,?,?)", [(c.node_id, c.digest, c.created) for c in batch.credentials])
        if batch.runs:
            # A requeued run waited from the previous run's end (saved before it), not from
            # the submit.
            self._db.executemany(
                f"INSERT OR REPLACE INTO runs({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,"
                "COALESCE((SELECT ended FROM runs WHERE job_id=? AND run=?), ?),"
                "?,?,?,?,?,?,?)",
                [(r.job_id, r.run, r.user, r.name, r.gpus, r.gpu_ids, r.node,
                  r.job_id, r.run - 1, r.queued, r.started, r.ended, r.state, r.exit_code,
                  r.end_cause, r.gpu_seconds, r.peak_mem_mib) for r in batch.runs])
            longest = max(r.ended - (r.ended if r.started is None else r.started)
                          for r in batch.runs)
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES ('longest_run', ?) ON CONFLICT(key) "
                "DO UPDATE SET value=MAX(CAST(value AS REAL), CAST(excluded.value AS REAL))",
                (longest,))
        if batch.pruned:
            self._db.executemany("DELETE FROM jobs WHERE id=?", [(i,) for i in batch.pruned])


def is_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or the database's size cap) is full."""
    import errno

    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(e)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
