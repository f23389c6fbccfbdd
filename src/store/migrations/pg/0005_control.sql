-- 0005: the control plane: paused schedules and manual triggers (see the SQLite migration of the
-- same number).

CREATE TABLE pauses (
    graph      TEXT PRIMARY KEY NOT NULL,
    paused_us  BIGINT NOT NULL,
    owner      TEXT NOT NULL
);

CREATE TABLE triggers (
    id            BIGSERIAL PRIMARY KEY,
    graph         TEXT NOT NULL,
    params_json   TEXT NOT NULL,
    requested_us  BIGINT NOT NULL,
    requested_by  TEXT NOT NULL,
    claimed_us    BIGINT,
    claimed_by    TEXT
);

CREATE INDEX triggers_unclaimed ON triggers (graph, id) WHERE claimed_us IS NULL;

ALTER TABLE runs ADD COLUMN idem_key TEXT;
CREATE UNIQUE INDEX runs_by_key ON runs (graph, idem_key) WHERE idem_key IS NOT NULL;
