-- 0004 (PostgreSQL): exactly-once schedule fires (as in the SQLite 0004) and distributed runs.

CREATE TABLE fires (
    graph         TEXT NOT NULL,
    scheduled_us  BIGINT NOT NULL,
    run_id        TEXT NOT NULL,
    owner         TEXT NOT NULL,
    fired_us      BIGINT NOT NULL,
    PRIMARY KEY (graph, scheduled_us)
);

-- A distributed run: its graph (name plus a digest of its shape, so that only executors with the
-- same graph take its tasks), the pickled root arguments and config, and how many tasks have not
-- ended yet (the executor that ends the last one ends the run: failed if any task failed,
-- cancelled if the run was cancelled, completed otherwise).
CREATE TABLE fleet_runs (
    rid        BIGINT PRIMARY KEY REFERENCES runs (rid) ON DELETE CASCADE,
    graph_key  TEXT NOT NULL,
    params     BYTEA NOT NULL,
    remaining  BIGINT NOT NULL,
    failed     BIGINT NOT NULL DEFAULT 0,
    cancelled  BOOLEAN NOT NULL DEFAULT false
);

-- One row per task of a distributed run. `state`: waiting (parents not done: `waiting` counts
-- them), ready, claimed (by `owner` until `lease_until_us`), done, failed, skipped, cancelled.
-- `attempt` grows with every claim and fences completions: only the current claim may end it.
CREATE TABLE work (
    rid             BIGINT NOT NULL REFERENCES fleet_runs (rid) ON DELETE CASCADE,
    node            BIGINT NOT NULL,
    graph_key       TEXT NOT NULL,
    tag             TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    state           TEXT NOT NULL,
    waiting         BIGINT NOT NULL,
    attempt         BIGINT NOT NULL DEFAULT 0,
    failures        BIGINT NOT NULL DEFAULT 0,
    retries         BIGINT NOT NULL,
    not_before_us   BIGINT NOT NULL DEFAULT 0,
    owner           TEXT,
    started_us      BIGINT,
    lease_until_us  BIGINT,
    PRIMARY KEY (rid, node)
);
-- Claims take the oldest run's ready tasks first, higher priority first within a run.
CREATE INDEX work_ready ON work (graph_key, rid, priority DESC, node) WHERE state = 'ready';
CREATE INDEX work_leases ON work (lease_until_us) WHERE state = 'claimed';
