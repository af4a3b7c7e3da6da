"""The master database's schema, as SQL text: version 1, and each step up from it.

:class:`~mgpu.server.store.Store` runs them (it is the one module that imports ``sqlite3``);
they live here so that the store's code and the history of its tables stay apart.
``PRAGMA user_version`` holds the version; step N brings a database from N-1 to N, in one
transaction.

Version 5 replaced version 4's ``accounting`` (one row per *pruned* job) by ``runs``: one
row per run of every job (a requeued job has several), written in the transaction that
saves the run's end, and kept when the job is pruned. Its rows are what ``mgpu usage``
(``GET /api/v1/usage``) adds up; the step carries over the old accounting rows and the
ended jobs still in ``jobs``.
"""

from __future__ import annotations

SCHEMA_VERSION = 5


def _ts(key: str) -> str:
    """SQL for a job's RFC 3339 time ``key`` (in its JSON, ``j``) as a POSIX time."""
    return f"(julianday(json_extract(j, '$.{key}')) - 2440587.5) * 86400.0"

# Version 1, what a new database starts from; _MIGRATIONS then brings it to SCHEMA_VERSION.
SCHEMA = """
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
MIGRATIONS: dict[int, str] = {
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
    4: """
CREATE TABLE IF NOT EXISTS node_credentials (
    node_id  TEXT PRIMARY KEY,
    digest   TEXT NOT NULL,
    created  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS accounting (
    id         INTEGER PRIMARY KEY,
    user       TEXT NOT NULL,
    gpus       INTEGER NOT NULL,
    node       TEXT,
    started    REAL,
    ended      REAL,
    state      TEXT NOT NULL,
    exit_code  INTEGER
);
""",
    5: f"""
CREATE TABLE IF NOT EXISTS runs (
    job_id        INTEGER NOT NULL,
    run           INTEGER NOT NULL,  -- 0, then 1 after a requeue, ...
    user          TEXT NOT NULL,
    name          TEXT,
    gpus          INTEGER NOT NULL,
    gpu_ids       TEXT,              -- comma list of the node's GPU indices
    node          TEXT,
    queued        REAL,              -- its wait began: the submit, or the previous run's end
    started       REAL,              -- NULL: it never started (cancelled or failed pending)
    ended         REAL NOT NULL,
    state         TEXT NOT NULL,
    exit_code     INTEGER,
    end_cause     TEXT,
    gpu_seconds   REAL NOT NULL,     -- gpus x (ended - started)
    peak_mem_mib  INTEGER,           -- peak GPU memory, where the node measures it
    PRIMARY KEY (job_id, run)
);
-- Covering indices: usage's sums (server/accounting.py) read a range of one of them and
-- never the table (3-5x faster on 100,000 runs: bench/usage.py).
CREATE INDEX IF NOT EXISTS runs_ended
    ON runs(ended, started, gpus, queued, job_id, user, node);
CREATE INDEX IF NOT EXISTS runs_user_ended
    ON runs(user, ended, started, gpus, queued, job_id, node);
INSERT OR IGNORE INTO runs(job_id, run, user, gpus, node, started, ended, state, exit_code,
                           gpu_seconds)
    SELECT id, 0, user, gpus, node, started, COALESCE(ended, started, 0), state, exit_code,
           CASE WHEN started IS NULL OR ended IS NULL THEN 0
                ELSE gpus * MAX(0, ended - started) END
    FROM accounting;
DROP TABLE accounting;
INSERT OR IGNORE INTO runs(job_id, run, user, name, gpus, gpu_ids, node, queued, started,
                           ended, state, exit_code, end_cause, gpu_seconds)
    SELECT id, requeues, user, name, gpus, gpu_ids, node, queued, started,
           COALESCE(ended, started, queued, 0), state, exit_code, end_cause,
           CASE WHEN started IS NULL OR ended IS NULL THEN 0
                ELSE gpus * MAX(0, ended - started) END
    FROM (SELECT id, user, state,
                 COALESCE(json_extract(j, '$.requeues'), 0) AS requeues,
                 json_extract(j, '$.name') AS name, json_extract(j, '$.gpus') AS gpus,
                 (SELECT group_concat(value) FROM json_each(j, '$.gpu_ids')) AS gpu_ids,
                 json_extract(j, '$.node') AS node,
                 json_extract(j, '$.exit_code') AS exit_code,
                 json_extract(j, '$.end_cause') AS end_cause,
                 {_ts("submitted_at")} AS queued, {_ts("started_at")} AS started,
                 {_ts("ended_at")} AS ended
          FROM (SELECT id, user, state, CAST(data AS TEXT) AS j FROM jobs
                WHERE state NOT IN ('pending', 'running')));
-- The longest run (seconds): bounds the per-day join of `--by day` (kept by Store.write).
INSERT OR REPLACE INTO meta(key, value) VALUES ('longest_run',
    (SELECT COALESCE(MAX(ended - COALESCE(started, ended)), 0) FROM runs));
""",
}
