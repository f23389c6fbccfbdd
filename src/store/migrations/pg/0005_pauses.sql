-- 0005: paused schedules (see the SQLite migration of the same number).

CREATE TABLE pauses (
    graph      TEXT PRIMARY KEY NOT NULL,
    paused_us  BIGINT NOT NULL,
    owner      TEXT NOT NULL
);
