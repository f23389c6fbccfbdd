//! Numbered schema migrations, applied in order and recorded in `PRAGMA user_version`.
//!
//! Each migration runs in its own `BEGIN IMMEDIATE` transaction together with the version bump,
//! and re-reads the version inside it, so two processes opening one new file at once apply each
//! migration exactly once. A migration that fails leaves the database at the previous version.

use rusqlite::{Connection, TransactionBehavior};

use super::error::{open_error, StoreError};
use std::sync::Arc;

/// One schema step.
pub(crate) struct Migration {
    /// The `user_version` the database has after this step.
    pub(crate) version: u32,
    /// The SQL, as a batch.
    pub(crate) sql: &'static str,
}

/// Every migration, in order. Append only: a released migration is never edited.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/0002_run_keys.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("migrations/0003_cache.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("migrations/0004_fleet.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("migrations/0005_control.sql"),
    },
];

/// The schema version this build writes.
pub(crate) const LATEST: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

fn user_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.pragma_query_value(None, "user_version", |r| r.get::<_, u32>(0))
}

/// Brings the database at `conn` (named `path` in errors) to [`LATEST`] and returns the version it
/// had before. Refuses a newer schema, and a non-empty database that tm did not create, rather
/// than write into it.
pub(crate) fn migrate(conn: &mut Connection, path: &str) -> Result<u32, StoreError> {
    let before = user_version(conn).map_err(|e| open_error(path, e))?;
    if before > LATEST {
        return Err(StoreError::SchemaTooNew {
            path: path.to_string(),
            found: before,
            supported: LATEST,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > before) {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| open_error(path, e))?;
        // Another process may have migrated while this one waited for the lock.
        let now = user_version(&tx).map_err(|e| open_error(path, e))?;
        if now >= m.version {
            continue;
        }
        if now == 0 {
            refuse_foreign(&tx, path)?;
        }
        let failed = |source| StoreError::Migration {
            path: path.to_string(),
            version: m.version,
            source: Arc::new(source),
        };
        tx.execute_batch(m.sql).map_err(failed)?;
        tx.pragma_update(None, "user_version", m.version)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(before)
}

/// A database at version 0 must be empty: tables there belong to some other program.
fn refuse_foreign(conn: &Connection, path: &str) -> Result<(), StoreError> {
    let names = (|| {
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' \
             ESCAPE '\\' ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
    })()
    .map_err(|e| open_error(path, e))?;
    if names.is_empty() {
        return Ok(());
    }
    Err(StoreError::Open {
        path: path.to_string(),
        detail: format!(
            "it is a SQLite database that tm did not create (it has tables {}); \
             point tm at another file",
            names.join(", ")
        ),
        source: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(conn: &Connection) -> Vec<(String, String)> {
        let mut stmt = conn
            .prepare("SELECT name, COALESCE(sql, '') FROM sqlite_schema ORDER BY name")
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query");
        rows.collect::<rusqlite::Result<Vec<_>>>().expect("rows")
    }

    #[test]
    fn numbers_are_increasing_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(!m.sql.trim().is_empty());
        }
        assert_eq!(LATEST as usize, MIGRATIONS.len());
    }

    #[test]
    fn fresh_database_gets_every_table_and_reapplying_is_a_no_op() {
        let mut conn = Connection::open_in_memory().expect("open");
        assert_eq!(migrate(&mut conn, ":memory:").ok(), Some(0));
        assert_eq!(user_version(&conn).ok(), Some(LATEST));
        let first = schema(&conn);
        for table in [
            "graphs",
            "runs",
            "task_facts",
            "task_state",
            "attempts",
            "task_results",
            "task_logs",
            "events",
            "cache_entries",
            "cache_state",
        ] {
            assert!(first.iter().any(|(n, _)| n == table), "missing {table}");
        }
        assert_eq!(migrate(&mut conn, ":memory:").ok(), Some(LATEST));
        assert_eq!(user_version(&conn).ok(), Some(LATEST));
        assert_eq!(schema(&conn), first);
    }

    #[test]
    fn deleting_a_run_cascades() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "foreign_keys", true).expect("fk");
        migrate(&mut conn, ":memory:").expect("migrate");
        conn.execute_batch(
            "INSERT INTO runs (rid, run_id, graph, state, trigger, created_us) VALUES (7, 'r', 'g', 'completed', 'manual', 1);
             INSERT INTO task_facts (rid, node, name) VALUES (7, 0, 'a');
             INSERT INTO task_state (rid, node, status) VALUES (7, 0, 'completed');
             INSERT INTO attempts (rid, node, attempt, status) VALUES (7, 0, 1, 'completed');
             INSERT INTO task_results (rid, node, format, data) VALUES (7, 0, 'json', x'31');
             INSERT INTO task_logs (rid, node, at_us, level, message) VALUES (7, 0, 1, 'INFO', 'hi');
             DELETE FROM runs WHERE run_id = 'r';",
        )
        .expect("cascade");
        for table in [
            "task_facts",
            "task_state",
            "attempts",
            "task_results",
            "task_logs",
        ] {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .expect("count");
            assert_eq!(n, 0, "{table} kept rows");
        }
    }

    #[test]
    fn run_keys_migration_carries_every_row_over() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "foreign_keys", true).expect("fk");
        conn.execute_batch(MIGRATIONS[0].sql).expect("v1");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO runs (run_id, graph, state, trigger, created_us) VALUES ('old', 'g', 'completed', 'manual', 1);
             INSERT INTO runs (run_id, graph, state, trigger, created_us) VALUES ('new', 'g', 'running', 'resume', 2);
             INSERT INTO task_facts (run_id, node, name, seed) VALUES ('old', 0, 'a', 42);
             INSERT INTO task_facts (run_id, node, name) VALUES ('new', 0, 'a');
             INSERT INTO task_facts (run_id, node, name) VALUES ('new', 1, 'b');
             INSERT INTO task_state (run_id, node, status, attempt) VALUES ('old', 0, 'completed', 1);
             INSERT INTO task_state (run_id, node, status, attempt, error_type) VALUES ('new', 1, 'failed', 2, 'KeyError');
             INSERT INTO attempts (run_id, node, attempt, status) VALUES ('new', 1, 1, 'failed');
             INSERT INTO attempts (run_id, node, attempt, status) VALUES ('new', 1, 2, 'failed');
             INSERT INTO task_results (run_id, node, format, data) VALUES ('old', 0, 'pickle', x'80');
             INSERT INTO task_logs (run_id, node, at_us, level, message) VALUES ('new', 1, 5, 'ERROR', 'boom');",
        )
        .expect("v1 rows");
        assert_eq!(migrate(&mut conn, ":memory:").ok(), Some(1));
        let one = |sql: &str| -> String {
            conn.query_row(sql, [], |r| r.get::<_, String>(0))
                .expect(sql)
        };
        assert_eq!(
            one("SELECT group_concat(run_id || ':' || rid, ',') FROM (SELECT * FROM runs ORDER BY rid)"),
            "old:1,new:2"
        );
        assert_eq!(
            one("SELECT group_concat(r.run_id || '/' || f.name || '/' || COALESCE(f.seed, '-'), ',') \
                 FROM task_facts f JOIN runs r USING (rid) ORDER BY r.rid, f.node"),
            "old/a/42,new/a/-,new/b/-"
        );
        assert_eq!(
            one("SELECT group_concat(r.run_id || '/' || s.node || '/' || s.status || '/' || s.attempt || '/' || COALESCE(s.error_type, '-'), ',') \
                 FROM task_state s JOIN runs r USING (rid)"),
            "old/0/completed/1/-,new/1/failed/2/KeyError"
        );
        assert_eq!(
            one("SELECT group_concat(attempt, ',') FROM attempts WHERE rid = 2 AND node = 1"),
            "1,2"
        );
        assert_eq!(
            one("SELECT hex(data) FROM task_results WHERE rid = 1"),
            "80"
        );
        assert_eq!(one("SELECT message FROM task_logs WHERE rid = 2"), "boom");
        // The carried rows still cascade.
        conn.execute("DELETE FROM runs WHERE run_id = 'new'", [])
            .expect("delete");
        assert_eq!(one("SELECT CAST(count(*) AS TEXT) FROM attempts"), "0");
        assert_eq!(one("SELECT CAST(count(*) AS TEXT) FROM task_facts"), "1");
    }

    #[test]
    fn newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", LATEST + 1)
            .expect("set version");
        match migrate(&mut conn, "x.db") {
            Err(StoreError::SchemaTooNew { found, .. }) => assert_eq!(found, LATEST + 1),
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    #[test]
    fn foreign_database_is_left_alone() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch("CREATE TABLE customers (id INTEGER)")
            .expect("create");
        let err = migrate(&mut conn, "app.db").expect_err("must refuse");
        assert!(err.to_string().contains("customers"), "{err}");
        assert_eq!(user_version(&conn).ok(), Some(0));
        assert_eq!(schema(&conn).len(), 1);
    }
}
