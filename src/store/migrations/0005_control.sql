-- 0005: the control plane. A row in `pauses` pauses a graph's schedule for every scheduler
-- sharing the database (`tm pause`); deleting it unpauses. Kept apart from `graphs` so a graph
-- can be paused before any scheduler has recorded it. A row in `triggers` asks the schedulers to
-- run a graph now (`tm trigger`): the first scheduler serving the graph claims it (sets
-- `claimed_us`) and runs it, exactly once.

CREATE TABLE pauses (
    graph      TEXT PRIMARY KEY NOT NULL,
    paused_us  INTEGER NOT NULL,
    owner      TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE triggers (
    id            INTEGER PRIMARY KEY,
    graph         TEXT NOT NULL,
    params_json   TEXT NOT NULL,
    requested_us  INTEGER NOT NULL,
    requested_by  TEXT NOT NULL,
    claimed_us    INTEGER,
    claimed_by    TEXT
);

CREATE INDEX triggers_unclaimed ON triggers (graph, id) WHERE claimed_us IS NULL;

-- Idempotency keys: a run submitted with a key is recorded only if no run of the same graph has
-- that key yet (`Executor.submit(graph, key=...)`), atomically among processes.
ALTER TABLE runs ADD COLUMN idem_key TEXT;
CREATE UNIQUE INDEX runs_by_key ON runs (graph, idem_key) WHERE idem_key IS NOT NULL;
