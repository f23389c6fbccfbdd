-- 0004: exactly-once schedule fires. A scheduler claims a (graph, scheduled time) by inserting
-- its row, in the same transaction as the run it starts; a second scheduler on the same database
-- finds the row and does not fire. Rows outlive pruned runs, so a fire is never repeated.

CREATE TABLE fires (
    graph         TEXT NOT NULL,
    scheduled_us  INTEGER NOT NULL,
    run_id        TEXT NOT NULL,
    owner         TEXT NOT NULL,
    fired_us      INTEGER NOT NULL,
    PRIMARY KEY (graph, scheduled_us)
) WITHOUT ROWID;
