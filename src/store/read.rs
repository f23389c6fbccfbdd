//! Read queries, on connections of their own (a small pool) so that they never wait for the writer:
//! in WAL mode a reader sees the last committed batch while the next one is being written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row};

use super::backend::SqlitePlace;
use super::error::{open_error, StoreError};
use super::migrations::LATEST;
use super::model::{
    AttemptRow, ErrorInfo, EventRow, GraphRecord, LogRow, RunDetail, RunFilter, RunSummary,
    TaskFact, TaskRef, TaskRow, UNFINISHED_RUN_STATES,
};
use super::writer::BUSY_TIMEOUT;
use crate::fork_gate::{ForkLocal, Pass};

/// Idle connections kept for reuse; more may exist while many threads read at once.
const POOL_SIZE: usize = 4;

/// The read side of one SQLite store.
pub(crate) struct Readers {
    place: Arc<SqlitePlace>,
    /// Idle connections of this process (a forked child opens its own).
    pool: Mutex<ForkLocal<Vec<Connection>>>,
    closed: AtomicBool,
}

const RUN_COLS: &str =
    "run_id, graph, state, trigger, scheduled_us, created_us, started_us, ended_us";

fn run_summary(r: &Row<'_>) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        run_id: r.get(0)?,
        graph: r.get(1)?,
        state: r.get(2)?,
        trigger: r.get(3)?,
        scheduled_us: r.get(4)?,
        created_us: r.get(5)?,
        started_us: r.get(6)?,
        ended_us: r.get(7)?,
    })
}

/// An error from columns `i, i+1, i+2` (type, message, traceback); `None` when the type is NULL.
fn error_at(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<ErrorInfo>> {
    let type_name: Option<String> = r.get(i)?;
    Ok(match type_name {
        None => None,
        Some(type_name) => Some(ErrorInfo {
            type_name,
            message: r.get::<_, Option<String>>(i + 1)?.unwrap_or_default(),
            traceback: r.get(i + 2)?,
        }),
    })
}

fn graph_record(r: &Row<'_>) -> rusqlite::Result<GraphRecord> {
    Ok(GraphRecord {
        name: r.get(0)?,
        schedule: r.get(1)?,
        tz: r.get(2)?,
        created_us: r.get(3)?,
        updated_us: r.get(4)?,
        last_fire_us: r.get(5)?,
        meta_json: r.get(6)?,
    })
}

const GRAPH_COLS: &str = "name, schedule, tz, created_us, updated_us, last_fire_us, meta_json";

/// The SQL condition selecting one task of run `?1` by `?2`, on a table aliased `f` (task_facts).
fn task_cond(task: TaskRef<'_>) -> &'static str {
    match task {
        TaskRef::Node(_) => "f.node = ?2",
        TaskRef::Name(_) => "f.name = ?2",
    }
}

fn task_param(task: TaskRef<'_>) -> rusqlite::types::Value {
    match task {
        TaskRef::Node(n) => rusqlite::types::Value::Integer(i64::from(n)),
        TaskRef::Name(s) => rusqlite::types::Value::Text(s.to_string()),
    }
}

/// The integer key of run `?1`.
const RID: &str = "(SELECT rid FROM runs WHERE run_id = ?1)";

fn unfinished_list() -> String {
    UNFINISHED_RUN_STATES.map(|s| format!("'{s}'")).join(", ")
}

impl Readers {
    /// A pool for `place`; connections open on first use.
    pub(crate) fn new(place: Arc<SqlitePlace>) -> Readers {
        Readers {
            place,
            pool: Mutex::new(ForkLocal::new(Vec::new())),
            closed: AtomicBool::new(false),
        }
    }

    /// Refuses a database whose schema is not this build's (a read-only store cannot migrate).
    pub(crate) fn check_schema(&self) -> Result<(), StoreError> {
        let found: u32 = self.with(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))?;
        let path = self.place.name.clone();
        match found.cmp(&LATEST) {
            std::cmp::Ordering::Equal => Ok(()),
            std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew {
                path,
                found,
                supported: LATEST,
            }),
            std::cmp::Ordering::Less => Err(StoreError::Open {
                path,
                detail: format!(
                    "it has schema version {found} and this tm needs {LATEST}; open it once \
                     read-write to upgrade it (a read-only store cannot)"
                ),
                source: None,
            }),
        }
    }

    /// Closes the idle connections; later reads fail with [`StoreError::Closed`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _gate = Pass::enter();
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get()
            .clear();
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let name = self.place.name.as_str();
        self.place.before_open();
        let conn = Connection::open_with_flags(&self.place.path, self.place.reader_flags())
            .map_err(|e| open_error(name, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|_| conn.pragma_update(None, "query_only", true))
            .map_err(|e| open_error(name, e))?;
        Ok(conn)
    }

    /// Runs `f` on a pooled connection. Retries while the database is busy or locked: WAL readers
    /// rarely are, but an in-memory database has no WAL, so a commit briefly excludes readers.
    ///
    /// The pool and each try hold a fork pass (see [`crate::fork_gate`]): a child forked while
    /// another thread reads would otherwise inherit the pool's mutex, or SQLite's for the file,
    /// locked, and wait forever at its first read. The pauses between tries hold none, so a fork
    /// never waits for another process's lock.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let pooled = {
            let _gate = Pass::enter();
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            pool.get().pop()
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let _gate = Pass::enter();
                self.connect()?
            }
        };
        let deadline = Instant::now() + BUSY_TIMEOUT;
        let mut pause = Duration::from_micros(200);
        let result = loop {
            let tried = {
                let _gate = Pass::enter();
                f(&mut conn)
            };
            match tried {
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
                    ) && Instant::now() < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => break other,
            }
        };
        let _gate = Pass::enter();
        if !self.closed.load(Ordering::SeqCst) {
            let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
            let pool = pool.get();
            if pool.len() < POOL_SIZE {
                pool.push(conn);
            }
        }
        result.map_err(|e| StoreError::Query {
            path: self.place.name.clone(),
            source: Arc::new(e),
        })
    }

    /// Runs newest first, filtered; a page after `filter.before` is one index range scan.
    pub(crate) fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let mut sql = format!("SELECT {RUN_COLS} FROM runs WHERE 1");
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
        if let Some(graph) = &filter.graph {
            args.push(graph);
            sql.push_str(&format!(" AND graph = ?{}", args.len()));
        }
        if let Some(state) = &filter.state {
            args.push(state);
            sql.push_str(&format!(" AND state = ?{}", args.len()));
        }
        if let Some(trigger) = &filter.trigger {
            args.push(trigger);
            sql.push_str(&format!(" AND trigger = ?{}", args.len()));
        }
        if let Some((us, id)) = &filter.before {
            args.push(us);
            let n = args.len();
            args.push(id);
            // The range on created_us lets the planner seek in its index.
            sql.push_str(&format!(
                " AND created_us <= ?{n} AND (created_us < ?{n} OR run_id < ?{})",
                n + 1
            ));
        }
        let limit = filter
            .limit
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        args.push(&limit);
        sql.push_str(&format!(
            " ORDER BY created_us DESC, run_id DESC LIMIT ?{}",
            args.len()
        ));
        self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), run_summary)?;
            rows.collect()
        })
    }

    /// One run with its tasks, read from one snapshot.
    pub(crate) fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let head = tx
                .prepare_cached(&format!(
                    "SELECT {RUN_COLS}, config_json, meta_json, rid FROM runs WHERE run_id = ?1"
                ))?
                .query_row([run_id], |r| {
                    Ok((run_summary(r)?, r.get(8)?, r.get(9)?, r.get::<_, i64>(10)?))
                })
                .optional()?;
            let Some((run, config_json, meta_json, rid)) = head else {
                return Ok(None);
            };
            let mut stmt = tx.prepare_cached(
                "SELECT f.node, f.name, f.task_key, f.inputs_digest, f.seed, f.code_version, \
                 s.status, s.attempt, s.started_us, s.ended_us, s.error_type, s.error_message, \
                 s.traceback FROM task_facts f LEFT JOIN task_state s \
                 ON s.rid = f.rid AND s.node = f.node WHERE f.rid = ?1 ORDER BY f.node",
            )?;
            let tasks = stmt
                .query_map([rid], |r| {
                    Ok(TaskRow {
                        fact: TaskFact {
                            node: r.get(0)?,
                            name: r.get(1)?,
                            task_key: r.get(2)?,
                            inputs_digest: r.get(3)?,
                            seed: r.get(4)?,
                            code_version: r.get(5)?,
                        },
                        // No state row yet: the task has not started.
                        status: r
                            .get::<_, Option<String>>(6)?
                            .unwrap_or_else(|| "pending".to_string()),
                        attempt: r.get::<_, Option<u32>>(7)?.unwrap_or(0),
                        started_us: r.get(8)?,
                        ended_us: r.get(9)?,
                        error: error_at(r, 10)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(Some(RunDetail {
                run,
                config_json,
                meta_json,
                tasks,
            }))
        })
    }

    /// A task's attempts, oldest first.
    pub(crate) fn attempts(
        &self,
        run_id: &str,
        task: TaskRef<'_>,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        // A clean first attempt that started and ended within one commit has no row of its
        // own: the task's state is that attempt (see fold.rs).
        let cond = task_cond(task);
        let sql = format!(
            "SELECT a.node, a.attempt, a.started_us, a.ended_us, a.status, a.error_type, \
             a.error_message, a.traceback, a.retry_at_us FROM attempts a JOIN task_facts f \
             ON f.rid = a.rid AND f.node = a.node WHERE a.rid = {RID} AND {cond} \
             UNION ALL \
             SELECT s.node, 1, s.started_us, s.ended_us, s.status, NULL, NULL, NULL, NULL \
             FROM task_state s JOIN task_facts f ON f.rid = s.rid AND f.node = s.node \
             WHERE s.rid = {RID} AND {cond} AND s.attempt = 1 AND s.status = 'completed' \
             AND NOT EXISTS (SELECT 1 FROM attempts x WHERE x.rid = s.rid AND x.node = s.node \
             AND x.attempt = 1) \
             ORDER BY 1, 2"
        );
        self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![run_id, task_param(task)], |r| {
                Ok(AttemptRow {
                    node: r.get(0)?,
                    attempt: r.get(1)?,
                    started_us: r.get(2)?,
                    ended_us: r.get(3)?,
                    status: r.get(4)?,
                    error: error_at(r, 5)?,
                    retry_at_us: r.get(8)?,
                })
            })?;
            rows.collect()
        })
    }

    /// A run's log lines (of one task, or all), in order.
    pub(crate) fn logs(
        &self,
        run_id: &str,
        task: Option<TaskRef<'_>>,
    ) -> Result<Vec<LogRow>, StoreError> {
        let cond = task.map_or("1", task_cond);
        let sql = format!(
            "SELECT l.node, f.name, l.at_us, l.level, l.message FROM task_logs l \
             LEFT JOIN task_facts f ON f.rid = l.rid AND f.node = l.node \
             WHERE l.rid = (SELECT rid FROM runs WHERE run_id = ?1) AND {cond} ORDER BY l.at_us, l.rowid"
        );
        let param = task.map(task_param);
        self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let map = |r: &Row<'_>| {
                Ok(LogRow {
                    node: r.get(0)?,
                    task: r.get(1)?,
                    at_us: r.get(2)?,
                    level: r.get(3)?,
                    message: r.get(4)?,
                })
            };
            let rows = match &param {
                Some(p) => stmt.query_map(params![run_id, p], map)?,
                None => stmt.query_map(params![run_id], map)?,
            };
            rows.collect()
        })
    }

    /// Every stored result of a run: (node, format, bytes), by node.
    pub(crate) fn results(&self, run_id: &str) -> Result<Vec<(u32, String, Vec<u8>)>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT node, format, data FROM task_results WHERE rid = \
                 (SELECT rid FROM runs WHERE run_id = ?1) ORDER BY node",
            )?;
            let rows = stmt.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })
    }

    /// One task's stored result: (format, bytes).
    pub(crate) fn result(
        &self,
        run_id: &str,
        node: u32,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.with(|c| {
            c.prepare_cached(
                "SELECT format, data FROM task_results WHERE rid = \
                 (SELECT rid FROM runs WHERE run_id = ?1) AND node = ?2",
            )?
            .query_row(params![run_id, node], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
        })
    }

    /// Runs that have not finished, oldest first.
    pub(crate) fn unfinished_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE state IN ({}) ORDER BY created_us, run_id",
            unfinished_list()
        );
        self.with(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map([], run_summary)?;
            rows.collect()
        })
    }

    /// Run ids starting with `prefix`, in order, at most `limit`.
    pub(crate) fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            let mut stmt = c.prepare_cached(RUN_IDS_WITH_PREFIX)?;
            let rows = stmt.query_map(params![like_prefix(prefix), limit], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// One graph by name.
    pub(crate) fn graph(&self, name: &str) -> Result<Option<GraphRecord>, StoreError> {
        self.with(|c| {
            c.prepare_cached(&format!("SELECT {GRAPH_COLS} FROM graphs WHERE name = ?1"))?
                .query_row([name], graph_record)
                .optional()
        })
    }

    /// Every graph, by name.
    pub(crate) fn graphs(&self) -> Result<Vec<GraphRecord>, StoreError> {
        self.with(|c| {
            let mut stmt =
                c.prepare_cached(&format!("SELECT {GRAPH_COLS} FROM graphs ORDER BY name"))?;
            let rows = stmt.query_map([], graph_record)?;
            rows.collect()
        })
    }

    /// The newest `limit` events, newest first.
    pub(crate) fn events(&self, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, run_id, at_us, kind, detail_json FROM events ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    run_id: r.get(1)?,
                    at_us: r.get(2)?,
                    kind: r.get(3)?,
                    detail_json: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }
}

/// Run ids by prefix; the same text serves SQLite (`?N`) and PostgreSQL (`$N`).
pub(crate) const RUN_IDS_WITH_PREFIX: &str =
    "SELECT run_id FROM runs WHERE run_id LIKE ?1 ESCAPE '\\' ORDER BY run_id LIMIT ?2";

/// `prefix` as a LIKE pattern matching the texts that start with it.
pub(crate) fn like_prefix(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for ch in prefix.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(ch);
    }
    pattern.push('%');
    pattern
}
