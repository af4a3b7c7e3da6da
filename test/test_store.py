"""The store's schema: a version 1 database (before tokens and audit) is brought up to date
when opened, keeping its jobs (tier 2: real SQLite in a temp dir)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import pytest

from mgpu.core.errors import StoreError
from mgpu.core.models import JobState, SimpleJob
from mgpu.server.store import SCHEMA_VERSION, AuditRow, Batch, Store, TokenRow

V1 = """
CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL, user TEXT NOT NULL,
                   data BLOB NOT NULL, env BLOB NOT NULL);
CREATE INDEX jobs_state ON jobs(state);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version=1;
"""


def test_a_version_1_database_is_migrated_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "mgpu.db"
    job = SimpleJob(id=7, name="t", user="alice", state=JobState.PENDING, gpus=1,
                    command="true", cwd="/")
    con = sqlite3.connect(path)
    con.executescript(V1)
    con.execute("INSERT INTO jobs VALUES (7, 'pending', 'alice', ?, ?)",
                (msgspec.json.encode(job), b'{"A":"1"}'))
    con.execute("INSERT INTO meta VALUES ('last_id', '9')")
    con.commit()
    con.close()
    store = Store(path)
    try:
        [loaded] = store.load()
        assert loaded.job == job and loaded.env == {"A": "1"}
        assert store.last_id() == 9
        assert store.load_tokens() == [] and store.events(10) == []
        store.write(Batch(tokens=[TokenRow(1, "alice", True, "d" * 64, 1.0)],
                          audit=[AuditRow(2.0, "alice", "submit", "job 8")]))
        assert store.load_tokens() == [TokenRow(1, "alice", True, "d" * 64, 1.0)]
        [event] = store.events(10)
        assert (event.user, event.action, event.detail) == ("alice", "submit", "job 8")
        store.write(Batch(revokes={1: 3.0}))
        assert store.load_tokens() == []
    finally:
        store.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        con.close()


def test_a_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mgpu.db"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="written by a newer mgpu"):
        Store(path)
