-- 0002: integer run keys. Every row under a run is keyed by the run's integer `rid` instead of its
-- 32-character id, and the task tables are clustered on their keys (WITHOUT ROWID): one compact
-- b-tree per table, so recording a task costs a few small inserts rather than several wide ones.
-- The user-facing `run_id` stays on `runs` (unique); existing rows are carried over.

CREATE TABLE runs_v2 (
    rid           INTEGER PRIMARY KEY,
    run_id        TEXT NOT NULL UNIQUE,
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
INSERT INTO runs_v2 (run_id, graph, state, trigger, scheduled_us, created_us, started_us,
                     ended_us, config_json, meta_json)
    SELECT run_id, graph, state, trigger, scheduled_us, created_us, started_us, ended_us,
           config_json, meta_json
    FROM runs ORDER BY created_us, run_id;

CREATE TABLE task_facts_v2 (
    rid            INTEGER NOT NULL REFERENCES runs_v2 (rid) ON DELETE CASCADE,
    node           INTEGER NOT NULL,
    name           TEXT NOT NULL,
    task_key       TEXT,
    inputs_digest  TEXT,
    seed           INTEGER,
    code_version   TEXT,
    PRIMARY KEY (rid, node)
) WITHOUT ROWID;
INSERT INTO task_facts_v2
    SELECT r.rid, f.node, f.name, f.task_key, f.inputs_digest, f.seed, f.code_version
    FROM task_facts f JOIN runs_v2 r ON r.run_id = f.run_id;

CREATE TABLE task_state_v2 (
    rid            INTEGER NOT NULL,
    node           INTEGER NOT NULL,
    status         TEXT NOT NULL,
    attempt        INTEGER NOT NULL DEFAULT 0,
    started_us     INTEGER,
    ended_us       INTEGER,
    error_type     TEXT,
    error_message  TEXT,
    traceback      TEXT,
    PRIMARY KEY (rid, node),
    FOREIGN KEY (rid, node) REFERENCES task_facts_v2 (rid, node) ON DELETE CASCADE
) WITHOUT ROWID;
INSERT INTO task_state_v2
    SELECT r.rid, s.node, s.status, s.attempt, s.started_us, s.ended_us, s.error_type,
           s.error_message, s.traceback
    FROM task_state s JOIN runs_v2 r ON r.run_id = s.run_id;

CREATE TABLE attempts_v2 (
    rid            INTEGER NOT NULL,
    node           INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    started_us     INTEGER,
    ended_us       INTEGER,
    status         TEXT NOT NULL,
    error_type     TEXT,
    error_message  TEXT,
    traceback      TEXT,
    retry_at_us    INTEGER,
    PRIMARY KEY (rid, node, attempt),
    FOREIGN KEY (rid, node) REFERENCES task_facts_v2 (rid, node) ON DELETE CASCADE
) WITHOUT ROWID;
INSERT INTO attempts_v2
    SELECT r.rid, a.node, a.attempt, a.started_us, a.ended_us, a.status, a.error_type,
           a.error_message, a.traceback, a.retry_at_us
    FROM attempts a JOIN runs_v2 r ON r.run_id = a.run_id;

CREATE TABLE task_results_v2 (
    rid     INTEGER NOT NULL,
    node    INTEGER NOT NULL,
    format  TEXT NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (rid, node),
    FOREIGN KEY (rid, node) REFERENCES task_facts_v2 (rid, node) ON DELETE CASCADE
);
INSERT INTO task_results_v2
    SELECT r.rid, t.node, t.format, t.data
    FROM task_results t JOIN runs_v2 r ON r.run_id = t.run_id;

-- node is NULL for a run-level line.
CREATE TABLE task_logs_v2 (
    rid      INTEGER NOT NULL REFERENCES runs_v2 (rid) ON DELETE CASCADE,
    node     INTEGER,
    at_us    INTEGER NOT NULL,
    level    TEXT NOT NULL,
    message  TEXT NOT NULL
);
INSERT INTO task_logs_v2
    SELECT r.rid, l.node, l.at_us, l.level, l.message
    FROM task_logs l JOIN runs_v2 r ON r.run_id = l.run_id ORDER BY l.rowid;

-- Children first, so no drop cascades into a table still to be copied.
DROP TABLE task_logs;
DROP TABLE task_results;
DROP TABLE attempts;
DROP TABLE task_state;
DROP TABLE task_facts;
DROP TABLE runs;

ALTER TABLE runs_v2 RENAME TO runs;
ALTER TABLE task_facts_v2 RENAME TO task_facts;
ALTER TABLE task_state_v2 RENAME TO task_state;
ALTER TABLE attempts_v2 RENAME TO attempts;
ALTER TABLE task_results_v2 RENAME TO task_results;
ALTER TABLE task_logs_v2 RENAME TO task_logs;

CREATE INDEX runs_graph_created ON runs (graph, created_us);
CREATE INDEX runs_created ON runs (created_us);
CREATE INDEX runs_state ON runs (state);
CREATE INDEX task_logs_run ON task_logs (rid, node, at_us);
