"""The store's schema: a version 1 database (before tokens and audit) is brought up to date
when opened, keeping its jobs (tier 2: real SQLite in a temp dir)."""

from __future__ import annotations

import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from conftest import wait_until
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


def test_the_audit_log_is_pruned_by_age(tmp_path: Path) -> None:
    store = Store(tmp_path / "mgpu.db")
    try:
        day = 86400.0
        store.write(Batch(audit=[AuditRow(t * day, "alice", "submit", f"job {t}")
                                 for t in (1, 2, 3, 10, 11)]))
        assert store.prune_audit(5 * day) == 3
        assert [e.detail for e in store.events(10)] == ["job 10", "job 11"]
        assert store.prune_audit(5 * day) == 0  # nothing older left
        assert store.prune_audit(100 * day) == 2  # all of it
        assert store.events(10) == []
    finally:
        store.close()


def test_a_master_keeps_audit_days_of_events(make_cluster: Any) -> None:
    """At start (then hourly) the master drops the events older than ``audit_days``."""
    cluster = make_cluster(nodes=0, env={"MGPU_AUDIT_DAYS": "30"})
    cluster.mgpu("token", "create", "alice")
    cluster.kill_master(signal.SIGTERM)
    con = sqlite3.connect(cluster.master_dir / "mgpu.db")
    con.execute("INSERT INTO audit(ts, user, action, detail) VALUES (?, 'old', 'submit', "
                "'from long ago')", (time.time() - 31 * 86400,))
    con.commit()
    con.close()
    master = cluster.start_master()
    wait_until(lambda: "dropped 1 events older than 30 days" in master.log_path.read_text(), 10)
    shown = cluster.mgpu("events", "--json").stdout
    assert "from long ago" not in shown and "alice" in shown
