-- 0005: paused schedules. A row pauses a graph's schedule for every scheduler sharing the
-- database (`tm pause`); deleting it unpauses. Kept apart from `graphs` so a graph can be paused
-- before any scheduler has recorded it.

CREATE TABLE pauses (
    graph      TEXT PRIMARY KEY NOT NULL,
    paused_us  INTEGER NOT NULL,
    owner      TEXT NOT NULL
) WITHOUT ROWID;
