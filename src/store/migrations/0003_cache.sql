-- 0003: cached function calls (seed 000). Times are INTEGER microseconds since the Unix epoch.
-- cache_entries holds immutable facts: one row per stored result, never updated (a forced re-run
-- adds a newer row that supersedes the older one). cache_state holds the mutable state of one key:
-- who runs it now (pid, host, lease), how the last run ended, and which entry is the newest
-- (entry_id: a hit is two primary-key lookups). Few indexes: each one is another page written by
-- every miss.

CREATE TABLE cache_entries (
    id            INTEGER PRIMARY KEY,
    key           TEXT NOT NULL,
    module        TEXT NOT NULL,
    func          TEXT NOT NULL,
    seed          TEXT,
    inputs_json   TEXT NOT NULL,
    version       TEXT NOT NULL,
    result_path   TEXT NOT NULL,
    format        TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    size          INTEGER NOT NULL,
    created_us    INTEGER NOT NULL,
    expires_us    INTEGER,
    duration_us   INTEGER
);
CREATE INDEX cache_entries_key ON cache_entries (key, id);
CREATE INDEX cache_entries_func ON cache_entries (func, created_us);

CREATE TABLE cache_state (
    key            TEXT PRIMARY KEY NOT NULL,
    module         TEXT NOT NULL,
    func           TEXT NOT NULL,
    status         TEXT NOT NULL
                   CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'SKIPPED')),
    token          INTEGER NOT NULL DEFAULT 0,
    entry_id       INTEGER REFERENCES cache_entries (id) ON DELETE SET NULL,
    started_us     INTEGER,
    ended_us       INTEGER,
    duration_us    INTEGER,
    error_type     TEXT,
    error_message  TEXT,
    owner_pid      INTEGER,
    owner_host     TEXT,
    lease_until_us INTEGER,
    updated_us     INTEGER NOT NULL
);
