-- 0001: the initial schema. Times are INTEGER microseconds since the Unix epoch.
-- Immutable facts (runs' identity, task_facts) are kept apart from mutable state (task_state,
-- attempts), as seed 000 asks. Everything under a run goes with it: deleting a run row cascades.

CREATE TABLE graphs (
    name          TEXT PRIMARY KEY NOT NULL,
    schedule      TEXT,
    tz            TEXT,
    created_us    INTEGER NOT NULL,
    updated_us    INTEGER NOT NULL,
    last_fire_us  INTEGER,
    meta_json     TEXT
);

CREATE TABLE runs (
    run_id        TEXT PRIMARY KEY NOT NULL,
    graph         TEXT NOT NULL,
    state         TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    scheduled_us  INTEGER,
    created_us    INTEGER NOT NULL,
    started_us    INTEGER,
    ended_us      INTEGER,
    config_json   TEXT,
    meta_json     TEXT
);
CREATE INDEX runs_graph_created ON runs (graph, created_us);
CREATE INDEX runs_created ON runs (created_us);
CREATE INDEX runs_state ON runs (state);

CREATE TABLE task_facts (
    run_id         TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    node           INTEGER NOT NULL,
    name           TEXT NOT NULL,
    task_key       TEXT,
    inputs_digest  TEXT,
    seed           INTEGER,
    code_version   TEXT,
    PRIMARY KEY (run_id, node)
);
CREATE INDEX task_facts_name ON task_facts (run_id, name);

CREATE TABLE task_state (
    run_id         TEXT NOT NULL,
    node           INTEGER NOT NULL,
    status         TEXT NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    started_us     INTEGER,
    ended_us       INTEGER,
    error_type     TEXT,
    error_message  TEXT,
    traceback      TEXT,
    PRIMARY KEY (run_id, node),
    FOREIGN KEY (run_id, node) REFERENCES task_facts (run_id, node) ON DELETE CASCADE
);

CREATE TABLE attempts (
    run_id         TEXT NOT NULL,
    node           INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    started_us     INTEGER,
    ended_us       INTEGER,
    status         TEXT NOT NULL,
    error_type     TEXT,
    error_message  TEXT,
    traceback      TEXT,
    retry_at_us    INTEGER,
    PRIMARY KEY (run_id, node, attempt),
    FOREIGN KEY (run_id, node) REFERENCES task_facts (run_id, node) ON DELETE CASCADE
);

CREATE TABLE task_results (
    run_id  TEXT NOT NULL,
    node    INTEGER NOT NULL,
    format  TEXT NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (run_id, node),
    FOREIGN KEY (run_id, node) REFERENCES task_facts (run_id, node) ON DELETE CASCADE
);

-- node is NULL for a run-level line.
CREATE TABLE task_logs (
    run_id   TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    node     INTEGER,
    at_us    INTEGER NOT NULL,
    level    TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX task_logs_run ON task_logs (run_id, node, at_us);

-- Scheduler events (missed and skipped fires, ...). run_id is not a foreign key: an event may be
-- recorded about a run that was never created; prune deletes the events of the runs it deletes.
CREATE TABLE events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id       TEXT,
    at_us        INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    detail_json  TEXT
);
CREATE INDEX events_run ON events (run_id);
CREATE INDEX events_at ON events (at_us);
