//! The agent queue in an SQLite database (WAL), for many processes and millions of tasks.
//!
//! Layout: one row per task in `tm_queue_tasks` (`seq`, the rowid, is creation order), the workflow
//! metadata in `tm_queue_meta`. Partial indexes hold only the rows a hot path looks at, so they stay
//! small however many finished tasks the table keeps:
//! - `tm_queue_ready_by_type (type, priority DESC, seq) WHERE status = 'pending' AND blocked = 0` and
//!   `tm_queue_ready (priority DESC, seq)` with the same condition: a claim is one index probe;
//! - `tm_queue_leases (lease_us) WHERE status = 'in_progress'`: finding expired leases is a probe;
//! - `tm_queue_children (parent_id) WHERE parent_id IS NOT NULL`.
//!
//! A pending task's row reserves `room` for what its claim and completion add, so that neither
//! moves it out of its page (see `room_of_new_row!`).
//!
//! A claim reads the row `SELECT ... WHERE seq = (SELECT seq ... LIMIT 1)` picks and updates it by
//! `seq`, in one `BEGIN IMMEDIATE` transaction: the write lock is taken before the read, so two
//! processes can never pick the same row. (Not one `UPDATE ... RETURNING`: SQLite collects
//! returned rows in a temporary table it creates and drops in every call.) A task that
//! waits for its parent is `blocked` until the parent completes; the parent's `waiters` flag says
//! whether a completion must look for such children, so the common completion is one UPDATE.
//!
//! Waiting for the write lock uses a busy handler that sleeps (1 ms, then 2 ms) until
//! `lock_timeout`, then reports [`QueueError::LockTimeout`].
//!
//! The log is checkpointed on a thread of the process (see [`crate::checkpoint`]), not by the
//! agent whose commit filled it: the checkpoint's `fsync`s no longer stall a claim. A process
//! asks its thread once the log passes [`CHECKPOINT_PAGES`], then again only every
//! [`ASK_AGAIN_PAGES`] more.
//!
//! Why each choice, and what it measured: `docs/design/sqlite-queue.md`.

use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::hooks::Wal;
use rusqlite::{params, CachedStatement, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};

use crate::checkpoint::{Checkpointer, Mode};
use crate::fork_gate::ForkLocal;

use super::jsontext;
use super::{
    check_final, check_new, metadata_members, new_id, with_result, Backend, Completion, Ctx,
    Holder, ListFilter, NewTask, Options, QueueError, Result, Snapshot, Status, Summary, Task,
};

/// Version of the tables below; a database with a higher one was written by a newer tm.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tm_queue_tasks (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    parent_id TEXT,
    locked_by TEXT,
    locked_at TEXT,
    lease_us INTEGER,
    created_at TEXT,
    completed_at TEXT,
    data TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER,
    wait_for_parent INTEGER NOT NULL DEFAULT 0,
    blocked INTEGER NOT NULL DEFAULT 0,
    waiters INTEGER NOT NULL DEFAULT 0,
    updated_us INTEGER NOT NULL,
    extra TEXT,
    room BLOB
);
CREATE INDEX IF NOT EXISTS tm_queue_ready_by_type ON tm_queue_tasks (type, priority DESC, seq)
    WHERE status = 'pending' AND blocked = 0;
CREATE INDEX IF NOT EXISTS tm_queue_ready ON tm_queue_tasks (priority DESC, seq)
    WHERE status = 'pending' AND blocked = 0;
CREATE INDEX IF NOT EXISTS tm_queue_leases ON tm_queue_tasks (lease_us)
    WHERE status = 'in_progress';
CREATE INDEX IF NOT EXISTS tm_queue_children ON tm_queue_tasks (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS tm_queue_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

/// Per-connection settings. `synchronous = NORMAL` in WAL mode survives any process crash or kill
/// (a commit is in the OS's hands before it returns); only a power loss can drop the last commits.
const PRAGMAS: &str = "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; \
                       PRAGMA cache_size = -16000;";

/// Log size (pages, 2 MB) at which a commit asks the process's checkpointer thread for a
/// checkpoint, so that its `fsync`s do not stall the agent (design note: checkpoints).
const CHECKPOINT_PAGES: i32 = 4000;

/// After an ask, the log must grow this many more pages (or start over) before the next: with
/// many agents most asks would wake a thread to find another process's checkpoint under way.
const ASK_AGAIN_PAGES: i32 = 500;

/// Page size of a database this module creates: the WAL is written a page per change, so
/// SQLite's smallest pages write the fewest bytes per claim (design note: page size).
const PAGE_SIZE: &str = "PRAGMA page_size = 512;";

/// The columns a [`Task`] is read from, in [`row_task`]'s order.
const COLS: &str = "id, type, status, parent_id, locked_by, locked_at, created_at, completed_at, \
                    data, priority, attempt, max_attempts, wait_for_parent, extra";

/// The busy handler's first sleep, doubled at each retry up to [`BUSY_MAX_PAUSE`]: waiters sleep
/// rather than spin, leaving the CPU to the lock's holder (design note: waiting for the lock).
const BUSY_FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The longest sleep: it bounds how late a waiter finds a drained queue empty.
const BUSY_MAX_PAUSE: Duration = Duration::from_millis(2);

/// Claims with more types than this scan the any-type index instead of one probe per type.
const MAX_UNION_TYPES: usize = 16;

fn row_task(r: &Row<'_>) -> rusqlite::Result<Task> {
    let extra: Option<String> = r.get(13)?;
    Ok(Task {
        id: r.get(0)?,
        task_type: r.get(1)?,
        status: r.get(2)?,
        parent_id: r.get(3)?,
        locked_by: r.get(4)?,
        locked_at: r.get(5)?,
        created_at: r.get(6)?,
        completed_at: r.get(7)?,
        data: r.get::<_, String>(8)?.into_bytes(),
        priority: r.get(9)?,
        attempt: r.get(10)?,
        max_attempts: r.get(11)?,
        wait_for_parent: r.get(12)?,
        extra: extra
            .and_then(|e| jsontext::object_members(e.as_bytes()).ok())
            .unwrap_or_default(),
    })
}

/// The claim's read for `n` types (0: any type, else `?1..?n`): the oldest claimable row's
/// [`COLS`], then its `seq`. Runs inside the claim's write transaction, before [`CLAIM_ROW`].
fn claim_sql(n: usize) -> String {
    let pick = if n == 0 {
        "SELECT seq FROM tm_queue_tasks WHERE status = 'pending' AND blocked = 0 \
         ORDER BY priority DESC, seq LIMIT 1"
            .to_owned()
    } else if n == 1 {
        "SELECT seq FROM tm_queue_tasks WHERE status = 'pending' AND blocked = 0 AND type = ?1 \
         ORDER BY priority DESC, seq LIMIT 1"
            .to_owned()
    } else if n <= MAX_UNION_TYPES {
        let arms: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "SELECT * FROM (SELECT seq, priority FROM tm_queue_tasks \
                     WHERE status = 'pending' AND blocked = 0 AND type = ?{} \
                     ORDER BY priority DESC, seq LIMIT 1)",
                    i + 1
                )
            })
            .collect();
        format!(
            "SELECT seq FROM ({}) ORDER BY priority DESC, seq LIMIT 1",
            arms.join(" UNION ALL ")
        )
    } else {
        let marks: Vec<String> = (0..n).map(|i| format!("?{}", i + 1)).collect();
        format!(
            "SELECT seq FROM tm_queue_tasks INDEXED BY tm_queue_ready \
             WHERE status = 'pending' AND blocked = 0 AND type IN ({}) \
             ORDER BY priority DESC, seq LIMIT 1",
            marks.join(", ")
        )
    };
    format!("SELECT {COLS}, seq FROM tm_queue_tasks WHERE seq = ({pick})")
}

/// Every row of a pending task carries `room`: zero bytes that a claim shrinks and a completion
/// drops, so that the row never grows out of its page (design note: room in a pending row).
///
/// This is `room` of a new row whose status is parameter 3.
macro_rules! room_of_new_row {
    () => {
        "CASE WHEN ?3 = 'pending' THEN zeroblob(112) END"
    };
}

/// The common completion (no result, no waiting children) of a task found by id, or by its row
/// (`?7`, from [`SqliteBackend::claimed`]; the id is checked all the same).
const COMPLETE_ID: &str = "UPDATE tm_queue_tasks SET status = ?4, completed_at = ?5, \
                           lease_us = NULL, updated_us = ?6, room = NULL \
                           WHERE id = ?1 AND status = 'in_progress' AND locked_by = ?2 \
                           AND (?3 IS NULL OR attempt = ?3) AND waiters = 0";
const COMPLETE_ROW: &str = "UPDATE tm_queue_tasks SET status = ?4, completed_at = ?5, \
                            lease_us = NULL, updated_us = ?6, room = NULL \
                            WHERE seq = ?7 AND id = ?1 AND status = 'in_progress' \
                            AND locked_by = ?2 AND (?3 IS NULL OR attempt = ?3) AND waiters = 0";

/// Takes the row [`claim_sql`] picked (inside the same transaction).
const CLAIM_ROW: &str = "UPDATE tm_queue_tasks SET status = 'in_progress', locked_by = ?1, \
                         locked_at = ?2, lease_us = ?3, updated_us = ?3, attempt = attempt + 1, \
                         room = CASE WHEN room IS NULL THEN NULL ELSE zeroblob(24) END \
                         WHERE seq = ?4"; // leaves the completion its room

/// The connection in `slot` (a [`SqliteBackend`]'s), opened first in a forked child.
fn own_conn<'a>(
    slot: &'a mut ForkLocal<Option<Connection>>,
    path: &Path,
    ctx: &Ctx,
    no_wait: &Arc<AtomicBool>,
) -> Result<&'a Connection> {
    match slot.get() {
        Some(conn) => Ok(conn),
        empty => Ok(empty.insert(SqliteBackend::connect(path, ctx, no_wait)?)),
    }
}

static CLAIM_ANY: OnceLock<String> = OnceLock::new();
static CLAIM_ONE: OnceLock<String> = OnceLock::new();

#[cfg(test)]
impl SqliteBackend {
    /// This process's connection, to look at its statements.
    pub(crate) fn conn_for_test(&mut self) -> &Connection {
        own_conn(&mut self.conn, &self.path, &self.ctx, &self.no_wait).unwrap()
    }
}

#[cfg(test)]
pub(crate) fn claim_sql_for_test(n: usize) -> String {
    claim_sql(n)
}

/// The common completion by task id and by the row a claim noted.
#[cfg(test)]
pub(crate) const COMPLETE_SQL_FOR_TEST: [&str; 2] = [COMPLETE_ID, COMPLETE_ROW];

/// The queue in an SQLite database.
pub struct SqliteBackend {
    path: PathBuf,
    ctx: Ctx,
    /// This process's connection. A forked child must not use its parent's, nor close it (that
    /// could touch the parent's locks, and its log hook owns the parent's checkpointer, whose
    /// thread the child does not have): the child forgets it and opens its own at its first
    /// call. Told by the fork generation (an atomic load, where a `getpid` system call at every
    /// call had cost 1.5% of a claim-and-complete loop).
    conn: ForkLocal<Option<Connection>>,
    /// No lease can expire before this time (µs), so claims until then skip looking for one.
    next_sweep_at: i64,
    /// Rows of tasks this process claimed, by task id: a completion finds its row by `seq`
    /// instead of through the id index (three fewer pages to read after another process's
    /// commit emptied the page cache). A hint only: the completion still checks the id.
    claimed: HashMap<String, i64>,
    /// Set, the connection's busy handler gives up at once (see [`SqliteBackend::claim_tx`]).
    no_wait: Arc<AtomicBool>,
}

/// Most entries [`SqliteBackend::claimed`] keeps (it starts over when full).
const CLAIMED_MAX: usize = 4096;

/// Longest time (µs) a claim trusts [`SqliteBackend::next_sweep_at`] without looking again.
const SWEEP_RECHECK_US: i64 = 1_000_000;

fn sqlite_err(path: &Path, timeout: Duration, e: rusqlite::Error) -> QueueError {
    if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) {
        QueueError::LockTimeout {
            path: path.to_owned(),
            timeout,
        }
    } else {
        QueueError::Sqlite {
            path: path.to_owned(),
            source: e,
        }
    }
}

/// Runs a cached statement that returns no rows.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction: committed if `f` succeeds, rolled back otherwise.
fn in_tx<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> std::result::Result<R, TxError>,
) -> std::result::Result<R, TxError> {
    exec(conn, "BEGIN IMMEDIATE")?;
    end_tx(conn, f)
}

/// Runs `f` in the transaction begun on `conn`: committed if `f` succeeds, rolled back otherwise.
fn end_tx<R>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> std::result::Result<R, TxError>,
) -> std::result::Result<R, TxError> {
    match f(conn) {
        Ok(r) => match exec(conn, "COMMIT") {
            Ok(()) => Ok(r),
            Err(e) => {
                let _ = exec(conn, "ROLLBACK");
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = exec(conn, "ROLLBACK");
            Err(e)
        }
    }
}

/// An error inside a transaction: SQLite's, or the queue's own.
enum TxError {
    Db(rusqlite::Error),
    Queue(QueueError),
}

impl From<rusqlite::Error> for TxError {
    fn from(e: rusqlite::Error) -> Self {
        TxError::Db(e)
    }
}

impl From<QueueError> for TxError {
    fn from(e: QueueError) -> Self {
        TxError::Queue(e)
    }
}

type TxResult<T> = std::result::Result<T, TxError>;

/// The requested types without repeats (empty: any type).
fn distinct(types: Option<&[String]>) -> Vec<&str> {
    let types = types.unwrap_or_default();
    let mut seen = HashSet::new();
    types
        .iter()
        .map(String::as_str)
        // One type (the common filter) needs no set.
        .filter(|t| types.len() < 2 || seen.insert(*t))
        .collect()
}

/// Cancels the pending tasks that wait (transitively) for `id`.
fn cancel_waiters(c: &Connection, id: &str, now_iso: &str, now: i64) -> rusqlite::Result<()> {
    let mut stack = vec![id.to_owned()];
    let mut stmt = c.prepare_cached(
        "UPDATE tm_queue_tasks SET status = 'cancelled', blocked = 0, completed_at = ?2, \
         updated_us = ?3 WHERE parent_id = ?1 AND status = 'pending' AND blocked = 1 \
         RETURNING id, waiters",
    )?;
    while let Some(parent) = stack.pop() {
        let rows = stmt.query_map(params![parent, now_iso, now], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, bool>(1)?))
        })?;
        for row in rows {
            let (child, waiters) = row?;
            if waiters {
                stack.push(child);
            }
        }
    }
    Ok(())
}

/// Whether the database has every table and index [`SCHEMA`] makes, the `room` column, and a
/// schema version this code reads: then opening it changes nothing.
fn schema_is_current(c: &Connection) -> rusqlite::Result<bool> {
    let have: HashSet<String> = c
        .prepare("SELECT name FROM sqlite_master")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let all_made = SCHEMA
        .split("IF NOT EXISTS ")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next())
        .all(|name| have.contains(name));
    if !all_made {
        return Ok(false);
    }
    let readable = matches!(
        schema_version(c)?.map(|v| v.parse::<i64>()),
        Some(Ok(v)) if v <= SCHEMA_VERSION
    );
    Ok(readable && has_room(c)?)
}

/// The schema version the queue's tables were written with (None: not recorded yet).
fn schema_version(c: &Connection) -> rusqlite::Result<Option<String>> {
    c.query_row(
        "SELECT value FROM tm_queue_meta WHERE key = 'schema'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Whether the task table has the `room` column (tables made before it was added do not).
fn has_room(c: &Connection) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT count(*) FROM pragma_table_info('tm_queue_tasks') WHERE name = 'room'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )
}

/// After task `id` reached final `status`: its waiting children become claimable (completed) or
/// are cancelled (failed, cancelled).
fn settle_waiters(
    c: &Connection,
    id: &str,
    status: &str,
    now_iso: &str,
    now: i64,
) -> rusqlite::Result<()> {
    if status == Status::Completed.as_str() {
        c.prepare_cached(
            "UPDATE tm_queue_tasks SET blocked = 0, updated_us = ?2 \
             WHERE parent_id = ?1 AND status = 'pending' AND blocked = 1",
        )?
        .execute(params![id, now])?;
        Ok(())
    } else {
        cancel_waiters(c, id, now_iso, now)
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) the database and its tables.
    pub fn open(path: &Path, opts: Options) -> Result<SqliteBackend> {
        let ctx = Ctx::new(&opts);
        // Owner-only unless configured (see crate::store::files).
        let mode = crate::store::files::file_mode(None).map_err(QueueError::Invalid)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::store::files::create_dir_all(dir, mode).map_err(|e| QueueError::Io {
                op: "create directory",
                path: dir.to_owned(),
                source: e,
            })?;
        }
        // SQLite gives its -wal and -shm the database's mode. A failure shows in the open below.
        let _ = crate::store::files::create_file(path, mode);
        let no_wait = Arc::new(AtomicBool::new(false));
        let conn = Self::connect(path, &ctx, &no_wait)?;
        Ok(SqliteBackend {
            path: path.to_owned(),
            ctx,
            // `connect` installed the fork handlers that count generations.
            conn: ForkLocal::new(Some(conn)),
            next_sweep_at: i64::MIN,
            claimed: HashMap::new(),
            no_wait,
        })
    }

    fn connect(path: &Path, ctx: &Ctx, no_wait: &Arc<AtomicBool>) -> Result<Connection> {
        let err = |e| sqlite_err(path, ctx.lock_timeout, e);
        crate::sqlite_fork::before_open(path);
        let mut conn = match crate::walvfs::name() {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs),
            None => Connection::open(path),
        }
        .map_err(err)?;
        let timeout = ctx.lock_timeout;
        let mut started = Instant::now();
        let no_wait = Arc::clone(no_wait);
        conn.busy_handler(Some(move |count: i32| {
            if no_wait.load(Ordering::Relaxed) {
                return false;
            }
            if count == 0 {
                started = Instant::now();
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return false;
            }
            let pause = BUSY_FIRST_PAUSE
                .saturating_mul(1 << count.clamp(0, 10) as u32)
                .min(BUSY_MAX_PAUSE);
            std::thread::sleep(pause.min(timeout - waited));
            true
        }))
        .map_err(err)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Plans must not depend on bound values. Otherwise SQLite (built with STAT4) marks a
        // statement such as the typed claim (`type = ?4` next to partial indexes) to be compiled
        // again whenever a value is bound, which is at every call: a claim of one type cost
        // 130 µs per task instead of 60. Every statement here names its statuses as literals,
        // so the partial indexes are chosen without looking at values.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(err)?;
        // Only takes effect in a new, empty database (before the WAL switch below).
        conn.execute_batch(PAGE_SIZE).map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(QueueError::Invalid(format!(
                "{}: cannot switch the database to WAL mode (got {mode:?})",
                path.display()
            )));
        }
        conn.execute_batch(PRAGMAS).map_err(err)?;
        // Replaces SQLite's automatic checkpoint (itself a log hook).
        let mut checkpointer =
            Checkpointer::new(Some(path.to_owned()), crate::walvfs::name(), Mode::Busy);
        let mut asked_at: c_int = 0;
        conn.wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
            if pages < asked_at {
                asked_at = 0; // the log started over
            }
            if pages < CHECKPOINT_PAGES || (asked_at > 0 && pages < asked_at + ASK_AGAIN_PAGES) {
                return Ok(());
            }
            asked_at = pages;
            if !checkpointer.request() {
                // No thread (it could not start): checkpoint here, as SQLite would have.
                let _ = wal.checkpoint();
            }
            Ok(())
        }))
        .map_err(err)?;
        let now = ctx.now();
        let init = || -> TxResult<()> {
            in_tx(&conn, |c| {
                c.execute_batch(SCHEMA)?;
                if !has_room(c)? {
                    c.execute_batch("ALTER TABLE tm_queue_tasks ADD COLUMN room BLOB")?;
                }
                let version = schema_version(c)?;
                match version.as_deref().map(str::parse::<i64>) {
                    None => {
                        let ts = String::from_utf8(jsontext::str_text(&ctx.iso(now)))
                            .unwrap_or_default();
                        c.execute(
                            "INSERT INTO tm_queue_meta (key, value) VALUES \
                             ('schema', ?1), ('top', '{\"workflow_type\":\"generic\"}'), \
                             ('metadata', ?2), ('updated_us', ?3)",
                            params![
                                SCHEMA_VERSION.to_string(),
                                format!("{{\"initialized_at\":{ts},\"last_updated\":{ts}}}"),
                                now.to_string()
                            ],
                        )?;
                    }
                    Some(Ok(v)) if v <= SCHEMA_VERSION => {}
                    Some(_) => {
                        return Err(QueueError::Invalid(format!(
                            "{}: the queue tables were written by a newer tm (schema {})",
                            path.display(),
                            version.unwrap_or_default()
                        ))
                        .into())
                    }
                }
                Ok(())
            })
        };
        // A database made already is only read: no write lock to wait for (another process
        // may hold it as long as it likes; readers open and read meanwhile).
        if schema_is_current(&conn).map_err(err)? {
            return Ok(conn);
        }
        match init() {
            Ok(()) => Ok(conn),
            Err(TxError::Db(e)) => Err(err(e)),
            Err(TxError::Queue(e)) => Err(e),
        }
    }

    fn err(&self, e: rusqlite::Error) -> QueueError {
        sqlite_err(&self.path, self.ctx.lock_timeout, e)
    }

    fn tx_err(&self, e: TxError) -> QueueError {
        match e {
            TxError::Db(e) => self.err(e),
            TxError::Queue(e) => e,
        }
    }

    /// Runs `f` in an immediate transaction on this process's connection.
    fn tx<R>(&mut self, f: impl FnOnce(&Connection, &Ctx) -> TxResult<R>) -> Result<R> {
        let conn = own_conn(&mut self.conn, &self.path, &self.ctx, &self.no_wait)?;
        let r = in_tx(conn, |c| f(c, &self.ctx));
        r.map_err(|e| self.tx_err(e))
    }

    /// Runs a claim's transaction `f`, except when another connection holds the write lock and
    /// a read finds nothing `types` could claim (no lease expired either): then the claim is
    /// empty at once, instead of after waiting for the lock. An agent polling a drained queue
    /// does not queue up behind the agents still writing to it.
    fn claim_tx<R: Default>(
        &mut self,
        types: &[&str],
        expired: bool,
        f: impl FnOnce(&Connection, &Ctx) -> TxResult<R>,
    ) -> Result<R> {
        let conn = own_conn(&mut self.conn, &self.path, &self.ctx, &self.no_wait)?;
        self.no_wait.store(true, Ordering::Relaxed);
        let begun = exec(conn, "BEGIN IMMEDIATE");
        self.no_wait.store(false, Ordering::Relaxed);
        let r = match begun {
            Ok(()) => end_tx(conn, |c| f(c, &self.ctx)),
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::DatabaseBusy) => {
                let claimable = expired
                    || Self::claim_stmt(conn, types.len())
                        .and_then(|mut q| q.exists(rusqlite::params_from_iter(types)))
                        .map_err(|e| sqlite_err(&self.path, self.ctx.lock_timeout, e))?;
                if claimable {
                    in_tx(conn, |c| f(c, &self.ctx))
                } else {
                    Ok(R::default())
                }
            }
            Err(e) => Err(e.into()),
        };
        r.map_err(|e| self.tx_err(e))
    }

    /// Runs a read or single-statement `f` on this process's connection.
    fn run<R>(&mut self, f: impl FnOnce(&Connection, &Ctx) -> rusqlite::Result<R>) -> Result<R> {
        let conn = own_conn(&mut self.conn, &self.path, &self.ctx, &self.no_wait)?;
        let r = f(conn, &self.ctx);
        r.map_err(|e| self.err(e))
    }

    /// Recovers expired leases (inside a transaction).
    fn sweep(c: &Connection, ctx: &Ctx, now: i64) -> rusqlite::Result<()> {
        let now_iso = ctx.iso(now);
        let failed: Vec<String> = c
            .prepare_cached(
                "UPDATE tm_queue_tasks SET \
                 status = CASE WHEN max_attempts IS NOT NULL AND attempt >= max_attempts \
                          THEN 'failed' ELSE 'pending' END, \
                 completed_at = CASE WHEN max_attempts IS NOT NULL AND attempt >= max_attempts \
                          THEN ?2 ELSE completed_at END, \
                 locked_by = NULL, locked_at = NULL, lease_us = NULL, updated_us = ?3 \
                 WHERE status = 'in_progress' AND lease_us <= ?1 \
                 RETURNING id, status, waiters",
            )?
            .query_map(
                params![now.saturating_sub(ctx.lease_us), now_iso, now],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                },
            )?
            .filter_map(|row| match row {
                Ok((id, status, true)) if status == "failed" => Some(Ok(id)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<rusqlite::Result<_>>()?;
        for id in failed {
            cancel_waiters(c, &id, &now_iso, now)?;
        }
        Ok(())
    }

    /// The claim's read for `n` types (see [`claim_sql`]).
    fn claim_stmt(c: &Connection, n: usize) -> rusqlite::Result<CachedStatement<'_>> {
        match n {
            // The two common shapes skip building the statement's text again.
            0 => c.prepare_cached(CLAIM_ANY.get_or_init(|| claim_sql(0))),
            1 => c.prepare_cached(CLAIM_ONE.get_or_init(|| claim_sql(1))),
            n => c.prepare_cached(&claim_sql(n)),
        }
    }

    fn claim_in(
        c: &Connection,
        ctx: &Ctx,
        now: i64,
        agent: &str,
        types: &[&str],
    ) -> rusqlite::Result<Option<(Task, i64)>> {
        let picked = Self::claim_stmt(c, types.len())?
            .query_row(rusqlite::params_from_iter(types), |r| {
                Ok((row_task(r)?, r.get::<_, i64>(14)?))
            })
            .optional()?;
        let Some((mut task, seq)) = picked else {
            return Ok(None);
        };
        let now_iso = ctx.iso(now);
        c.prepare_cached(CLAIM_ROW)?
            .execute(params![agent, now_iso, now, seq])?;
        task.status = Status::InProgress.as_str().to_owned();
        task.locked_by = Some(agent.to_owned());
        task.locked_at = Some(now_iso);
        task.attempt = task.attempt.saturating_add(1);
        Ok(Some((task, seq)))
    }

    /// Remembers the row of a task this process claimed (see [`SqliteBackend::claimed`]).
    fn note_claimed(&mut self, task: &Task, seq: i64) {
        if self.claimed.len() >= CLAIMED_MAX {
            self.claimed.clear();
        }
        self.claimed.insert(task.id.clone(), seq);
    }

    /// Whether a lease may have expired at `now` (then a claim sweeps first). The earliest lease
    /// start bounds every expiry, so until it expires claims skip even this query.
    fn lease_expired(&mut self, now: i64) -> Result<bool> {
        if now < self.next_sweep_at {
            return Ok(false);
        }
        let first: Option<i64> = self.run(|c, _| {
            c.prepare_cached(
                "SELECT min(lease_us) FROM tm_queue_tasks WHERE status = 'in_progress'",
            )?
            .query_row([], |r| r.get(0))
        })?;
        if first.is_some_and(|t| self.ctx.expired(Some(t), now)) {
            return Ok(true);
        }
        let next = first.unwrap_or(now).saturating_add(self.ctx.lease_us);
        self.next_sweep_at = next.min(now.saturating_add(SWEEP_RECHECK_US));
        Ok(false)
    }

    /// Ends the task `agent` holds (inside a transaction); false if it does not hold it.
    fn finish_in(
        c: &Connection,
        now: i64,
        now_iso: &str,
        agent: &str,
        item: &Completion<'_>,
    ) -> TxResult<bool> {
        let Completion {
            id,
            attempt,
            status,
            result,
        } = *item;
        let data = match result {
            None => None,
            Some(r) => {
                let old: Option<String> = c
                    .prepare_cached(
                        "SELECT data FROM tm_queue_tasks WHERE id = ?1 \
                         AND status = 'in_progress' AND locked_by = ?2 \
                         AND (?3 IS NULL OR attempt = ?3)",
                    )?
                    .query_row(params![id, agent, attempt], |r| r.get(0))
                    .optional()?;
                let Some(old) = old else {
                    return Ok(false);
                };
                Some(String::from_utf8(with_result(id, old.as_bytes(), r)?).unwrap_or_default())
            }
        };
        let waiters: Option<bool> = c
            .prepare_cached(
                "UPDATE tm_queue_tasks SET status = ?4, completed_at = ?5, lease_us = NULL, \
                 updated_us = ?6, data = coalesce(?7, data), room = NULL \
                 WHERE id = ?1 AND status = 'in_progress' AND locked_by = ?2 \
                 AND (?3 IS NULL OR attempt = ?3) RETURNING waiters",
            )?
            .query_row(
                params![id, agent, attempt, status.as_str(), now_iso, now, data],
                |r| r.get(0),
            )
            .optional()?;
        match waiters {
            None => Ok(false),
            Some(w) => {
                if w {
                    settle_waiters(c, id, status.as_str(), now_iso, now)?;
                }
                Ok(true)
            }
        }
    }

    fn insert(c: &Connection, ctx: &Ctx, now: i64, t: &NewTask) -> TxResult<String> {
        let data = check_new(t)?;
        let now_iso = ctx.iso(now);
        let mut status = Status::Pending;
        let mut blocked = false;
        let mut completed_at = None;
        if t.wait_for_parent {
            let parent = t.parent_id.as_deref().unwrap_or_default();
            let p: Option<String> = c
                .prepare_cached("SELECT status FROM tm_queue_tasks WHERE id = ?1")?
                .query_row([parent], |r| r.get(0))
                .optional()?;
            match p.as_deref() {
                None => {
                    return Err(QueueError::Invalid(format!(
                        "wait_for_parent: parent task {parent:?} does not exist"
                    ))
                    .into())
                }
                Some("completed") => {}
                Some("failed" | "cancelled") => {
                    status = Status::Cancelled;
                    completed_at = Some(now_iso.clone());
                }
                Some(_) => {
                    blocked = true;
                    c.prepare_cached(
                        "UPDATE tm_queue_tasks SET waiters = 1 WHERE id = ?1 AND waiters = 0",
                    )?
                    .execute([parent])?;
                }
            }
        }
        let data = String::from_utf8(data).unwrap_or_default();
        let mut stmt = c.prepare_cached(concat!(
            "INSERT INTO tm_queue_tasks (id, type, status, parent_id, created_at, completed_at, \
             data, priority, max_attempts, wait_for_parent, blocked, updated_us, room) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ",
            room_of_new_row!(),
            ") ON CONFLICT (id) DO NOTHING"
        ))?;
        loop {
            let id = new_id(&t.task_type);
            let n = stmt.execute(params![
                id,
                t.task_type,
                status.as_str(),
                t.parent_id,
                now_iso,
                completed_at,
                data,
                t.priority,
                t.max_attempts,
                t.wait_for_parent,
                blocked,
                now
            ])?;
            if n == 1 {
                return Ok(id);
            }
        }
    }

    fn select_tasks(
        c: &Connection,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
    ) -> rusqlite::Result<Vec<Task>> {
        c.prepare_cached(sql)?.query_map(args, row_task)?.collect()
    }

    /// The stored metadata with `last_updated` set to the latest change of anything.
    fn metadata(
        c: &Connection,
        ctx: &Ctx,
        tasks_updated: Option<i64>,
    ) -> rusqlite::Result<Vec<(String, Vec<u8>)>> {
        let meta: String = c
            .prepare_cached("SELECT value FROM tm_queue_meta WHERE key = 'metadata'")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or_else(|| "{}".into());
        let meta_us: i64 = c
            .prepare_cached("SELECT value FROM tm_queue_meta WHERE key = 'updated_us'")?
            .query_row([], |r| r.get::<_, String>(0))
            .optional()?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut members = jsontext::object_members(meta.as_bytes()).unwrap_or_default();
        let last = tasks_updated.unwrap_or(0).max(meta_us);
        if last > 0 {
            jsontext::set_member(
                &mut members,
                "last_updated",
                jsontext::str_text(&ctx.iso(last)),
            );
        }
        Ok(members)
    }
}

impl Backend for SqliteBackend {
    fn create(&mut self, tasks: &[NewTask]) -> Result<Vec<String>> {
        self.tx(|c, ctx| {
            let now = ctx.now();
            tasks.iter().map(|t| Self::insert(c, ctx, now, t)).collect()
        })
    }

    fn claim(&mut self, agent: &str, types: Option<&[String]>) -> Result<Option<Task>> {
        let types = distinct(types);
        let now = self.ctx.now();
        let expired = self.lease_expired(now)?;
        let claimed = self.claim_tx(&types, expired, |c, ctx| {
            if expired {
                Self::sweep(c, ctx, now)?;
            }
            Ok(Self::claim_in(c, ctx, now, agent, &types)?)
        })?;
        Ok(claimed.map(|(task, seq)| {
            self.note_claimed(&task, seq);
            task
        }))
    }

    fn claim_many(
        &mut self,
        agent: &str,
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Task>> {
        let types = distinct(types);
        let now = self.ctx.now();
        let expired = self.lease_expired(now)?;
        let got = self.claim_tx(&types, expired, |c, ctx| {
            if expired {
                Self::sweep(c, ctx, now)?;
            }
            let mut got = Vec::new();
            while got.len() < limit {
                match Self::claim_in(c, ctx, now, agent, &types)? {
                    Some(t) => got.push(t),
                    None => break,
                }
            }
            Ok(got)
        })?;
        Ok(got
            .into_iter()
            .map(|(task, seq)| {
                self.note_claimed(&task, seq);
                task
            })
            .collect())
    }

    fn complete(
        &mut self,
        id: &str,
        agent: &str,
        attempt: Option<u32>,
        status: Status,
        result: Option<&[u8]>,
    ) -> Result<bool> {
        let item = Completion {
            id,
            attempt,
            status,
            result,
        };
        check_final(std::slice::from_ref(&item))?;
        let seq = self.claimed.remove(id);
        if result.is_none() {
            // The common completion is one statement in its own transaction: no result to merge
            // into the data, and no waiting children to settle (`waiters = 0`). Anything else,
            // including a task the agent does not hold, takes the transaction below.
            let done = self.run(|c, ctx| {
                let now = ctx.now();
                let args = params![id, agent, attempt, status.as_str(), ctx.iso(now), now, seq];
                let n = match seq {
                    Some(_) => c.prepare_cached(COMPLETE_ROW)?.execute(args)?,
                    None => c.prepare_cached(COMPLETE_ID)?.execute(&args[..6])?,
                };
                Ok(n == 1)
            })?;
            if done {
                return Ok(true);
            }
        }
        self.tx(|c, ctx| {
            let now = ctx.now();
            Self::finish_in(c, now, &ctx.iso(now), agent, &item)
        })
    }

    fn complete_many(&mut self, agent: &str, items: &[Completion<'_>]) -> Result<Vec<bool>> {
        check_final(items)?;
        self.tx(|c, ctx| {
            let now = ctx.now();
            let now_iso = ctx.iso(now);
            items
                .iter()
                .map(|item| Self::finish_in(c, now, &now_iso, agent, item))
                .collect()
        })
    }

    fn release(&mut self, id: &str, holder: Holder<'_>) -> Result<bool> {
        let (agent, attempt) = match holder {
            Holder::Agent { agent, attempt } => (Some(agent), attempt),
            Holder::Anyone => (None, None),
        };
        self.tx(|c, ctx| {
            let now = ctx.now();
            let now_iso = ctx.iso(now);
            let row: Option<(String, bool)> = c
                .prepare_cached(
                    "UPDATE tm_queue_tasks SET \
                     status = CASE WHEN max_attempts IS NOT NULL AND attempt >= max_attempts \
                              THEN 'failed' ELSE 'pending' END, \
                     completed_at = CASE WHEN max_attempts IS NOT NULL AND attempt >= max_attempts \
                              THEN ?4 ELSE completed_at END, \
                     locked_by = NULL, locked_at = NULL, lease_us = NULL, updated_us = ?5 \
                     WHERE id = ?1 AND status = 'in_progress' \
                     AND (?2 IS NULL OR locked_by = ?2) AND (?3 IS NULL OR attempt = ?3) \
                     RETURNING status, waiters",
                )?
                .query_row(params![id, agent, attempt, now_iso, now], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            match row {
                None => Ok(false),
                Some((status, waiters)) => {
                    if waiters && status == "failed" {
                        cancel_waiters(c, id, &now_iso, now)?;
                    }
                    Ok(true)
                }
            }
        })
    }

    fn extend_lease(&mut self, id: &str, agent: &str, attempt: Option<u32>) -> Result<bool> {
        self.run(|c, ctx| {
            let now = ctx.now();
            let n = c
                .prepare_cached(
                    "UPDATE tm_queue_tasks SET locked_at = ?4, lease_us = ?5, updated_us = ?5 \
                     WHERE id = ?1 AND status = 'in_progress' AND locked_by = ?2 \
                     AND (?3 IS NULL OR attempt = ?3)",
                )?
                .execute(params![id, agent, attempt, ctx.iso(now), now])?;
            Ok(n == 1)
        })
    }

    fn cancel(&mut self, id: &str) -> Result<bool> {
        self.tx(|c, ctx| {
            let now = ctx.now();
            let now_iso = ctx.iso(now);
            let waiters: Option<bool> = c
                .prepare_cached(
                    "UPDATE tm_queue_tasks SET status = 'cancelled', blocked = 0, \
                     completed_at = ?2, updated_us = ?3 \
                     WHERE id = ?1 AND status = 'pending' RETURNING waiters",
                )?
                .query_row(params![id, now_iso, now], |r| r.get(0))
                .optional()?;
            match waiters {
                None => Ok(false),
                Some(w) => {
                    if w {
                        cancel_waiters(c, id, &now_iso, now)?;
                    }
                    Ok(true)
                }
            }
        })
    }

    fn get(&mut self, id: &str) -> Result<Option<Task>> {
        self.run(|c, _| {
            c.prepare_cached(&format!("SELECT {COLS} FROM tm_queue_tasks WHERE id = ?1"))?
                .query_row([id], row_task)
                .optional()
        })
    }

    fn children(&mut self, id: &str) -> Result<Vec<Task>> {
        self.run(|c, _| {
            Self::select_tasks(
                c,
                &format!("SELECT {COLS} FROM tm_queue_tasks WHERE parent_id = ?1 ORDER BY seq"),
                &[&id],
            )
        })
    }

    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Task>> {
        let limit = filter
            .limit
            .map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
        self.run(|c, _| {
            Self::select_tasks(
                c,
                &format!(
                    "SELECT {COLS} FROM tm_queue_tasks \
                     WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR type = ?2) \
                     ORDER BY seq LIMIT ?3"
                ),
                &[&filter.status, &filter.task_type, &limit],
            )
        })
    }

    fn summary(&mut self) -> Result<Summary> {
        self.run(|c, ctx| {
            let mut stmt = c.prepare_cached(
                "SELECT type, status, count(*), min(seq), max(updated_us) FROM tm_queue_tasks \
                 GROUP BY type, status",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            let mut total = 0u64;
            let mut statuses: HashMap<String, (u64, i64)> = HashMap::new();
            let mut types: HashMap<String, (u64, i64)> = HashMap::new();
            let mut updated: Option<i64> = None;
            for row in rows {
                let (ty, status, n, first, up) = row?;
                let n = n as u64;
                total += n;
                let s = statuses.entry(status).or_insert((0, i64::MAX));
                s.0 += n;
                s.1 = s.1.min(first);
                let t = types.entry(ty).or_insert((0, i64::MAX));
                t.0 += n;
                t.1 = t.1.min(first);
                updated = Some(updated.map_or(up, |u| u.max(up)));
            }
            let rank = |s: &str| Status::parse(s).map_or(Status::ALL.len(), |k| k as usize);
            let mut status_counts: Vec<(String, (u64, i64))> = statuses.into_iter().collect();
            status_counts.sort_by_key(|(s, (_, first))| (rank(s), *first));
            let mut type_counts: Vec<(String, (u64, i64))> = types.into_iter().collect();
            type_counts.sort_by_key(|(_, (_, first))| *first);
            let metadata = Self::metadata(c, ctx, updated)?;
            Ok(Summary {
                total,
                status_counts: status_counts
                    .into_iter()
                    .map(|(s, (n, _))| (s, n))
                    .collect(),
                type_counts: type_counts.into_iter().map(|(t, (n, _))| (t, n)).collect(),
                metadata: jsontext::object_text(&metadata),
            })
        })
    }

    fn update_metadata(&mut self, members: &[u8]) -> Result<()> {
        let update = metadata_members(members)?;
        self.tx(|c, ctx| {
            let now = ctx.now();
            let mut meta = Self::metadata(c, ctx, None)?;
            for (k, v) in update {
                jsontext::set_member(&mut meta, &k, v);
            }
            jsontext::set_member(&mut meta, "last_updated", jsontext::str_text(&ctx.iso(now)));
            let text = String::from_utf8(jsontext::object_text(&meta)).unwrap_or_default();
            c.prepare_cached(
                "INSERT OR REPLACE INTO tm_queue_meta (key, value) VALUES ('metadata', ?1), \
                 ('updated_us', ?2)",
            )?
            .execute(params![text, now.to_string()])?;
            Ok(())
        })
    }

    fn version(&mut self) -> Result<u64> {
        self.run(|c, _| {
            // `data_version` counts commits by other connections; `total_changes` our own.
            let others = c
                .prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get::<_, i64>(0))?;
            Ok((others as u64).rotate_left(32) ^ c.total_changes())
        })
    }

    fn next_expiry(&mut self) -> Result<Option<i64>> {
        self.run(|c, ctx| {
            let min: Option<i64> = c
                .prepare_cached(
                    "SELECT min(lease_us) FROM tm_queue_tasks WHERE status = 'in_progress'",
                )?
                .query_row([], |r| r.get(0))?;
            Ok(min.map(|m| m.saturating_add(ctx.lease_us)))
        })
    }

    fn snapshot(&mut self) -> Result<Snapshot> {
        self.tx(|c, ctx| {
            let tasks = Self::select_tasks(
                c,
                &format!("SELECT {COLS} FROM tm_queue_tasks ORDER BY seq"),
                &[],
            )?;
            let top: String = c
                .query_row(
                    "SELECT value FROM tm_queue_meta WHERE key = 'top'",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or_else(|| "{}".into());
            let updated: Option<i64> =
                c.query_row("SELECT max(updated_us) FROM tm_queue_tasks", [], |r| {
                    r.get(0)
                })?;
            Ok(Snapshot {
                top: jsontext::object_members(top.as_bytes()).unwrap_or_default(),
                metadata: Self::metadata(c, ctx, updated)?,
                tasks,
            })
        })
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<()> {
        self.tx(|c, ctx| {
            let n: i64 = c.query_row("SELECT count(*) FROM tm_queue_tasks", [], |r| r.get(0))?;
            if n > 0 {
                return Err(QueueError::Invalid(format!(
                    "the destination already holds {n} tasks"
                ))
                .into());
            }
            let now = ctx.now();
            let status_of: HashMap<&str, &str> = snapshot
                .tasks
                .iter()
                .map(|t| (t.id.as_str(), t.status.as_str()))
                .collect();
            if status_of.len() != snapshot.tasks.len() {
                return Err(QueueError::Invalid("the source repeats a task id".into()).into());
            }
            let with_waiters: HashSet<&str> = snapshot
                .tasks
                .iter()
                .filter(|t| t.wait_for_parent && t.status == "pending")
                .filter_map(|t| t.parent_id.as_deref())
                .collect();
            let mut stmt = c.prepare(concat!(
                "INSERT INTO tm_queue_tasks (id, type, status, parent_id, locked_by, locked_at, \
                 lease_us, created_at, completed_at, data, priority, attempt, max_attempts, \
                 wait_for_parent, blocked, waiters, updated_us, extra, room) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, \
                 ?17, ?18, ",
                room_of_new_row!(),
                ")"
            ))?;
            for t in &snapshot.tasks {
                let lease = (t.status == "in_progress").then(|| {
                    t.locked_at
                        .as_deref()
                        .and_then(|s| ctx.parse_iso(s))
                        .unwrap_or(0)
                });
                let blocked = t.wait_for_parent
                    && t.status == "pending"
                    && t.parent_id
                        .as_deref()
                        .and_then(|p| status_of.get(p))
                        .is_some_and(|s| *s != "completed");
                let updated = [&t.completed_at, &t.locked_at, &t.created_at]
                    .into_iter()
                    .filter_map(|s| s.as_deref().and_then(|s| ctx.parse_iso(s)))
                    .max()
                    .unwrap_or(now);
                let extra = (!t.extra.is_empty()).then(|| {
                    String::from_utf8(jsontext::object_text(&t.extra)).unwrap_or_default()
                });
                let data = String::from_utf8_lossy(&t.data);
                stmt.execute(params![
                    t.id,
                    t.task_type,
                    t.status,
                    t.parent_id,
                    t.locked_by,
                    t.locked_at,
                    lease,
                    t.created_at,
                    t.completed_at,
                    data,
                    t.priority,
                    t.attempt,
                    t.max_attempts,
                    t.wait_for_parent,
                    blocked,
                    with_waiters.contains(t.id.as_str()),
                    updated,
                    extra
                ])?;
            }
            let top = String::from_utf8(jsontext::object_text(&snapshot.top)).unwrap_or_default();
            let mut metadata = snapshot.metadata.clone();
            let last = metadata
                .iter()
                .find(|(k, _)| k == "last_updated")
                .and_then(|(_, v)| jsontext::decode_string(v))
                .and_then(|s| ctx.parse_iso(&s))
                .unwrap_or(now);
            jsontext::set_member(
                &mut metadata,
                "last_updated",
                jsontext::str_text(&ctx.iso(last)),
            );
            let meta = String::from_utf8(jsontext::object_text(&metadata)).unwrap_or_default();
            c.execute(
                "INSERT OR REPLACE INTO tm_queue_meta (key, value) VALUES ('top', ?1), \
                 ('metadata', ?2), ('updated_us', ?3)",
                params![top, meta, last.to_string()],
            )?;
            Ok(())
        })
    }
}
