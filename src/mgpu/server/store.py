"""Persistence of the master's queue: the only module that imports ``sqlite3``.

One SQLite database in WAL mode with ``synchronous=FULL``: a change is on disk when
:meth:`Store.write` returns, so the master acknowledges only what survives a crash or a
power cut. Callers batch many changes into one :meth:`Store.write` (group commit).

Schema version lives in ``PRAGMA user_version``; an older database is brought up to date
step by step (``_MIGRATIONS``) when it is opened. A job row keeps the job as msgspec JSON in
``data`` (the JSON contract, so rows are readable with the sqlite3 shell) beside the columns
that queries need; the submitter's environment sits in its own column, written once.

Version 2 added ``tokens`` (client tokens, kept only as SHA-256 digests of the token) and
``audit`` (one row per state-changing request: who did what, when). Both are written in the
same transactions as the job changes they go with.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from mgpu.core.errors import StoreError
from mgpu.core.models import SimpleJob

SCHEMA_VERSION = 3

# Version 1, what a new database starts from; _MIGRATIONS then brings it to SCHEMA_VERSION.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id        INTEGER PRIMARY KEY,
    state     TEXT NOT NULL,
    user      TEXT NOT NULL,
    data      BLOB NOT NULL,
    env       BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Step N brings a database from version N-1 to N (each runs in one transaction).
_MIGRATIONS: dict[int, str] = {
    2: """
CREATE TABLE IF NOT EXISTS tokens (
    id       INTEGER PRIMARY KEY,
    user     TEXT NOT NULL,
    admin    INTEGER NOT NULL,
    digest   TEXT NOT NULL UNIQUE,
    created  REAL NOT NULL,
    revoked  REAL
);
CREATE TABLE IF NOT EXISTS audit (
    id       INTEGER PRIMARY KEY,
    ts       REAL NOT NULL,
    user     TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL
);
""",
    3: "CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);",  # pruning by age (audit_days)
}

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
class Batch:
    """Changes to save in one transaction. Later entries for the same job win."""

    inserts: list[tuple[SimpleJob, dict[str, str]]] = field(default_factory=list)
    updates: dict[int, SimpleJob] = field(default_factory=dict)
    tokens: list[TokenRow] = field(default_factory=list)
    revokes: dict[int, float] = field(default_factory=dict)  # token id -> when
    audit: list[AuditRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.tokens or self.revokes or self.audit)

    def merge(self, other: Batch) -> None:
        self.inserts.extend(other.inserts)
        self.updates.update(other.updates)
        self.tokens.extend(other.tokens)
        self.revokes.update(other.revokes)
        self.audit.extend(other.audit)


@dataclass
class LoadedJob:
    job: SimpleJob
    env: dict[str, str]


class Store:
    """The master's SQLite database. Not thread-safe: use it from one thread at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
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
            self._db.executescript(_SCHEMA)
            version = 1
        for step in range(version + 1, SCHEMA_VERSION + 1):
            # executescript commits first; BEGIN makes the step and its version one change.
            self._db.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[step]}; PRAGMA user_version={step}; COMMIT;"
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

    def events(self, limit: int) -> list[AuditRow]:
        """The last ``limit`` audit rows, oldest first."""
        rows = self._db.execute(
            "SELECT id, ts, user, action, detail FROM audit ORDER BY id DESC LIMIT ?",
            (limit,),
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
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            hint = (
                "the disk holding it is full: free space"
                if "full" in str(e).lower()
                else "check the data dir"
            )
            raise StoreError(f"cannot save to {self.path}: {e} ({hint})") from e
