//! The writer thread: the one owner of the write connection.
//!
//! Callers enqueue [`Write`]s without blocking. The thread blocks for the first one, drains what
//! else is queued (up to [`MAX_BATCH`]), applies the lot in ONE `BEGIN IMMEDIATE` transaction,
//! commits, and only then acknowledges the flushes that were queued among them (group commit): one
//! disk sync is shared by every write of the batch.
//!
//! Failure handling, so that nothing is lost silently and nothing panics:
//! - an environmental error (busy or locked beyond `busy_timeout`, disk full, I/O) retries the whole
//!   batch with backoff, then drops it and reports [`StoreError::WriteFailed`] with the count;
//! - any other error (an unknown run, a duplicate id) replays the batch with one savepoint per
//!   write, so only the offending writes are skipped, each reported as [`StoreError::Rejected`].
//!
//! The first error since the last flush is returned by the next flush (or close); the latest one
//! stays readable through [`Writer::last_error`].

use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, LazyLock, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{ffi, params, Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::backend::SqlitePlace;
use super::error::{open_error, StoreError};
use super::migrations::migrate;
use super::model::{TaskFact, Write, TERMINAL_TASK_STATUSES, UNFINISHED_RUN_STATES};

/// Most writes applied in one transaction; more wait for the next batch.
pub(crate) const MAX_BATCH: usize = 10_000;

/// How long SQLite itself waits for another connection's lock before reporting busy.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pauses between tries of a batch that failed for an environmental reason.
const BACKOFF_MS: [u64; 6] = [1, 4, 16, 64, 256, 1000];

enum Msg {
    Write(Write),
    Flush(SyncSender<Result<(), StoreError>>),
}

/// Handle to the writer thread: enqueue, flush, close.
pub(crate) struct Writer {
    name: String,
    // Close takes the sender; dropping it is what tells the thread to finish.
    tx: RwLock<Option<Sender<Msg>>>,
    // Held while joining, so a second close waits for the first to finish.
    thread: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    last_error: Arc<Mutex<Option<StoreError>>>,
}

impl Writer {
    /// Opens the write connection (creating and migrating the database) and starts the thread.
    /// Open errors are returned here, before any thread exists.
    pub(crate) fn start(place: &SqlitePlace) -> Result<Writer, StoreError> {
        let conn = open_with_retry(place)?;
        let (tx, rx) = mpsc::channel();
        let last_error = Arc::new(Mutex::new(None));
        let mut worker = Worker {
            conn,
            name: place.name.clone(),
            pending: None,
            last_error: last_error.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tm-store-writer".into())
            .spawn(move || worker.run(rx))
            .map_err(|e| {
                StoreError::WriterStopped(format!("cannot start the writer thread: {e}"))
            })?;
        Ok(Writer {
            name: place.name.clone(),
            tx: RwLock::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            last_error,
        })
    }

    /// Queues `w`; never blocks.
    pub(crate) fn submit(&self, w: Write) -> Result<(), StoreError> {
        let guard = self.tx.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(tx) => tx.send(Msg::Write(w)).map_err(|_| self.stopped()),
            None => Err(StoreError::Closed),
        }
    }

    /// Waits until every write queued before this call is committed (or reported), and returns
    /// the first error since the previous flush.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let (ack, done) = mpsc::sync_channel(1);
        {
            let guard = self.tx.read().unwrap_or_else(PoisonError::into_inner);
            match guard.as_ref() {
                Some(tx) => tx.send(Msg::Flush(ack)).map_err(|_| self.stopped())?,
                None => return Err(StoreError::Closed),
            }
        }
        done.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Commits everything queued, stops the thread and closes the connection. Returns the first
    /// error since the last flush. Idempotent: later calls return `Ok(())`.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        drop(
            self.tx
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        match thread.take() {
            None => Ok(()),
            Some(handle) => match handle.join() {
                Ok(result) => result,
                Err(_) => Err(StoreError::WriterStopped(format!(
                    "the writer for {} panicked",
                    self.name
                ))),
            },
        }
    }

    /// The most recent write error since the store was opened (flushes do not clear it).
    pub(crate) fn last_error(&self) -> Option<StoreError> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn stopped(&self) -> StoreError {
        StoreError::WriterStopped(match self.last_error() {
            Some(e) => format!("the writer for {} is gone; last error: {e}", self.name),
            None => format!("the writer for {} is gone", self.name),
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Errors were available through flush/close/last_error; a destructor cannot report them.
        let _ = self.close();
    }
}

/// Opens the connection, sets the pragmas and migrates; retries while another process holds a
/// lock (switching to WAL or migrating needs one).
fn open_with_retry(place: &SqlitePlace) -> Result<Connection, StoreError> {
    let mut tries = BACKOFF_MS.iter();
    loop {
        match open(place) {
            Err(e) if is_busy_open(&e) => match tries.next() {
                Some(ms) => std::thread::sleep(Duration::from_millis(*ms)),
                None => return Err(e),
            },
            other => return other,
        }
    }
}

fn is_busy_open(e: &StoreError) -> bool {
    let source = match e {
        StoreError::Open {
            source: Some(s), ..
        } => s,
        StoreError::Migration { source, .. } => source,
        _ => return false,
    };
    matches!(
        source.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn open(place: &SqlitePlace) -> Result<Connection, StoreError> {
    let name = place.name.as_str();
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if place.memory {
        flags |= OpenFlags::SQLITE_OPEN_URI;
    }
    let mut conn =
        Connection::open_with_flags(&place.path, flags).map_err(|e| open_error(name, e))?;
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first statement reads the header: a non-database fails here, before any write.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        Ok(())
    };
    setup(&conn).map_err(|e| open_error(name, e))?;
    conn.set_prepared_statement_cache_capacity(32);
    migrate(&mut conn, name)?;
    // Touch every table's root page: a truncated or damaged file fails now, not mid-run.
    let probe = |conn: &Connection| -> rusqlite::Result<()> {
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
            conn.query_row(
                &format!("SELECT count(*) FROM (SELECT 1 FROM {table} LIMIT 1)"),
                [],
                |_| Ok(()),
            )?;
        }
        Ok(())
    };
    probe(&conn).map_err(|e| open_error(name, e))?;
    Ok(conn)
}

/// Why one write failed.
enum Fail {
    Db(rusqlite::Error),
    Refused(String),
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Fail::Db(e)
    }
}

/// Errors about the database or its environment rather than about one write: retry the batch.
fn is_environmental(e: &rusqlite::Error) -> bool {
    use ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::DiskFull
                | C::SystemIoFailure
                | C::ReadOnly
                | C::PermissionDenied
                | C::CannotOpen
                | C::OutOfMemory
                | C::DatabaseCorrupt
                | C::NotADatabase
                | C::FileLockingProtocolFailed
        )
    )
}

/// A refused write's reason in a user's words.
fn reason(e: &rusqlite::Error) -> String {
    match e.sqlite_extended_error_code() {
        Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => "no such run or task".to_string(),
        Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY | ffi::SQLITE_CONSTRAINT_UNIQUE) => {
            format!("it is already recorded ({e})")
        }
        _ => e.to_string(),
    }
}

/// The thread's state.
struct Worker {
    conn: Connection,
    name: String,
    /// The first error since the last flush.
    pending: Option<StoreError>,
    last_error: Arc<Mutex<Option<StoreError>>>,
}

impl Worker {
    fn run(&mut self, rx: Receiver<Msg>) -> Result<(), StoreError> {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        // recv fails only once every sender is gone and the queue is empty: that is close.
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Write(w) => batch.push(w),
                    Msg::Flush(ack) => waiters.push(ack),
                }
                next = if batch.len() < MAX_BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.commit(&batch);
                batch.clear();
            }
            if !waiters.is_empty() {
                let result = self.pending.take().map_or(Ok(()), Err);
                for ack in waiters.drain(..) {
                    // A flusher that gave up waiting has dropped its receiver: nothing to do.
                    let _ = ack.send(result.clone());
                }
            }
        }
        self.pending.take().map_or(Ok(()), Err)
    }

    fn report(&mut self, e: StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
        if self.pending.is_none() {
            self.pending = Some(e);
        }
    }

    fn lost(&mut self, lost: usize, e: rusqlite::Error) {
        let name = self.name.clone();
        self.report(StoreError::WriteFailed {
            path: name,
            lost,
            source: Arc::new(e),
        });
    }

    fn commit(&mut self, batch: &[Write]) {
        let mut backoff = BACKOFF_MS.iter();
        loop {
            match apply_batch(&mut self.conn, batch) {
                Ok(()) => return,
                Err(Fail::Db(e)) if is_environmental(&e) => match backoff.next() {
                    Some(ms) => std::thread::sleep(Duration::from_millis(*ms)),
                    None => return self.lost(batch.len(), e),
                },
                // One write is at fault: replay them one by one to find it.
                Err(_) => return self.commit_each(batch),
            }
        }
    }

    /// Applies `batch` with a savepoint around each write, skipping and reporting the ones that
    /// fail; an environmental failure drops the whole batch.
    fn commit_each(&mut self, batch: &[Write]) {
        let mut refused = Vec::new();
        let outcome = (|| -> rusqlite::Result<()> {
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for w in batch {
                let sp = tx.savepoint()?;
                match apply(&sp, w) {
                    Ok(()) => sp.commit()?,
                    Err(Fail::Db(e)) if is_environmental(&e) => return Err(e),
                    Err(Fail::Db(e)) => refused.push((w, reason(&e))),
                    Err(Fail::Refused(why)) => refused.push((w, why)),
                }
            }
            tx.commit()
        })();
        for (w, reason) in refused {
            self.report(StoreError::Rejected {
                op: w.op(),
                run_id: w.run_id().map(str::to_string),
                reason,
            });
        }
        if let Err(e) = outcome {
            self.lost(batch.len(), e);
        }
    }
}

fn apply_batch(conn: &mut Connection, batch: &[Write]) -> Result<(), Fail> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for w in batch {
        apply(&tx, w)?;
    }
    tx.commit()?;
    Ok(())
}

const INSERT_RUN: &str = "INSERT INTO runs (run_id, graph, state, trigger, scheduled_us, \
    created_us, started_us, config_json, meta_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const INSERT_FACT: &str = "INSERT INTO task_facts (run_id, node, name, task_key, inputs_digest, \
    seed, code_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const INSERT_STATE: &str =
    "INSERT INTO task_state (run_id, node, status, attempt) VALUES (?1, ?2, 'pending', 0)";
const STATE_STARTED: &str = "INSERT INTO task_state (run_id, node, status, attempt, started_us) \
    VALUES (?1, ?2, 'running', ?3, ?4) ON CONFLICT (run_id, node) DO UPDATE SET \
    status = 'running', attempt = excluded.attempt, \
    started_us = COALESCE(task_state.started_us, excluded.started_us), ended_us = NULL, \
    error_type = NULL, error_message = NULL, traceback = NULL";
const ATTEMPT_STARTED: &str = "INSERT INTO attempts (run_id, node, attempt, started_us, status) \
    VALUES (?1, ?2, ?3, ?4, 'running') ON CONFLICT (run_id, node, attempt) DO UPDATE SET \
    started_us = excluded.started_us, status = 'running', ended_us = NULL, error_type = NULL, \
    error_message = NULL, traceback = NULL, retry_at_us = NULL";
const STATE_ENDED: &str = "INSERT INTO task_state (run_id, node, status, attempt, ended_us, \
    error_type, error_message, traceback) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
    ON CONFLICT (run_id, node) DO UPDATE SET status = excluded.status, \
    attempt = excluded.attempt, ended_us = excluded.ended_us, error_type = excluded.error_type, \
    error_message = excluded.error_message, traceback = excluded.traceback";
const ATTEMPT_ENDED: &str = "INSERT INTO attempts (run_id, node, attempt, ended_us, status, \
    error_type, error_message, traceback, retry_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
    ON CONFLICT (run_id, node, attempt) DO UPDATE SET ended_us = excluded.ended_us, \
    status = excluded.status, error_type = excluded.error_type, \
    error_message = excluded.error_message, traceback = excluded.traceback, \
    retry_at_us = excluded.retry_at_us";
const STATE_STATUS: &str = "INSERT INTO task_state (run_id, node, status, attempt, ended_us) \
    VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (run_id, node) DO UPDATE SET \
    status = excluded.status, ended_us = excluded.ended_us";
const SAVE_RESULT: &str = "INSERT INTO task_results (run_id, node, format, data) \
    VALUES (?1, ?2, ?3, ?4) ON CONFLICT (run_id, node) DO UPDATE SET \
    format = excluded.format, data = excluded.data";
const APPEND_LOG: &str =
    "INSERT INTO task_logs (run_id, node, at_us, level, message) VALUES (?1, ?2, ?3, ?4, ?5)";
const FINISH_RUN: &str = "UPDATE runs SET state = ?2, ended_us = ?3 WHERE run_id = ?1";
const SET_RUN_STATE: &str = "UPDATE runs SET state = ?2, \
    ended_us = CASE WHEN ?3 THEN NULL ELSE ended_us END WHERE run_id = ?1";
const UPSERT_GRAPH: &str = "INSERT INTO graphs (name, schedule, tz, created_us, updated_us, \
    last_fire_us, meta_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (name) DO UPDATE SET \
    schedule = excluded.schedule, tz = excluded.tz, updated_us = excluded.updated_us, \
    last_fire_us = COALESCE(excluded.last_fire_us, graphs.last_fire_us), \
    meta_json = excluded.meta_json";
const RECORD_EVENT: &str =
    "INSERT INTO events (run_id, at_us, kind, detail_json) VALUES (?1, ?2, ?3, ?4)";

/// The finished runs that a prune with `?1` = keep_runs (per graph) and `?2` = cutoff deletes.
static DOOMED_RUNS: LazyLock<String> = LazyLock::new(|| {
    let unfinished = UNFINISHED_RUN_STATES.map(|s| format!("'{s}'")).join(", ");
    format!(
        "SELECT run_id FROM (SELECT run_id, COALESCE(ended_us, created_us) AS t, \
         ROW_NUMBER() OVER (PARTITION BY graph ORDER BY created_us DESC, run_id DESC) AS rn \
         FROM runs WHERE state NOT IN ({unfinished})) \
         WHERE (?1 IS NOT NULL AND rn > ?1) OR (?2 IS NOT NULL AND t < ?2)"
    )
});
static PRUNE_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM events WHERE run_id IN ({}) \
         OR (?2 IS NOT NULL AND run_id IS NULL AND at_us < ?2)",
        *DOOMED_RUNS
    )
});
// One statement: deleting the runs cascades to their tasks, attempts, results and logs.
static PRUNE_RUNS: LazyLock<String> =
    LazyLock::new(|| format!("DELETE FROM runs WHERE run_id IN ({})", *DOOMED_RUNS));

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Inserts tasks' immutable facts and their initial (`pending`) state rows.
fn insert_tasks(c: &Connection, run_id: &str, tasks: &[TaskFact]) -> Result<(), Fail> {
    let mut fact = c.prepare_cached(INSERT_FACT)?;
    let mut state = c.prepare_cached(INSERT_STATE)?;
    for t in tasks {
        fact.execute(params![
            run_id,
            t.node,
            t.name,
            t.task_key,
            t.inputs_digest,
            t.seed,
            t.code_version
        ])?;
        state.execute(params![run_id, t.node])?;
    }
    Ok(())
}

/// Applies one write inside the caller's transaction.
fn apply(c: &Connection, w: &Write) -> Result<(), Fail> {
    match w {
        Write::BeginRun(r) => {
            c.prepare_cached(INSERT_RUN)?.execute(params![
                r.run_id,
                r.graph,
                r.state,
                r.trigger,
                r.scheduled_us,
                r.created_us,
                r.started_us,
                r.config_json,
                r.meta_json
            ])?;
            insert_tasks(c, &r.run_id, &r.tasks)?;
        }
        Write::AddTasks { run_id, tasks } => insert_tasks(c, run_id, tasks)?,
        Write::TaskStarted {
            run_id,
            node,
            attempt,
            at_us,
        } => {
            c.prepare_cached(STATE_STARTED)?
                .execute(params![run_id, node, attempt, at_us])?;
            c.prepare_cached(ATTEMPT_STARTED)?
                .execute(params![run_id, node, attempt, at_us])?;
        }
        Write::TaskEnded {
            run_id,
            node,
            attempt,
            at_us,
            status,
            error,
            retry_at_us,
        } => {
            let (etype, emsg, tb) = match error {
                Some(e) => (Some(&e.type_name), Some(&e.message), e.traceback.as_ref()),
                None => (None, None, None),
            };
            // A failed attempt that will be retried leaves the task retrying, not ended.
            let (task_status, ended) = match retry_at_us {
                Some(_) => ("retrying", None),
                None => (status.as_str(), Some(*at_us)),
            };
            c.prepare_cached(STATE_ENDED)?.execute(params![
                run_id,
                node,
                task_status,
                attempt,
                ended,
                etype,
                emsg,
                tb
            ])?;
            c.prepare_cached(ATTEMPT_ENDED)?.execute(params![
                run_id,
                node,
                attempt,
                at_us,
                status,
                etype,
                emsg,
                tb,
                retry_at_us
            ])?;
        }
        Write::TaskStatus {
            run_id,
            node,
            status,
            at_us,
        } => {
            let ended = TERMINAL_TASK_STATUSES
                .contains(&status.as_str())
                .then_some(*at_us);
            c.prepare_cached(STATE_STATUS)?
                .execute(params![run_id, node, status, ended])?;
        }
        Write::SaveResult {
            run_id,
            node,
            format,
            data,
        } => {
            c.prepare_cached(SAVE_RESULT)?
                .execute(params![run_id, node, format, data])?;
        }
        Write::AppendLog {
            run_id,
            node,
            at_us,
            level,
            message,
        } => {
            c.prepare_cached(APPEND_LOG)?
                .execute(params![run_id, node, at_us, level, message])?;
        }
        Write::FinishRun {
            run_id,
            state,
            ended_us,
        } => {
            let n = c
                .prepare_cached(FINISH_RUN)?
                .execute(params![run_id, state, ended_us])?;
            if n == 0 {
                return Err(Fail::Refused("no such run".into()));
            }
        }
        Write::SetRunState { run_id, state } => {
            let reopen = UNFINISHED_RUN_STATES.contains(&state.as_str());
            let n = c
                .prepare_cached(SET_RUN_STATE)?
                .execute(params![run_id, state, reopen])?;
            if n == 0 {
                return Err(Fail::Refused("no such run".into()));
            }
        }
        Write::UpsertGraph(g) => {
            c.prepare_cached(UPSERT_GRAPH)?.execute(params![
                g.name,
                g.schedule,
                g.tz,
                g.created_us,
                g.updated_us,
                g.last_fire_us,
                g.meta_json
            ])?;
        }
        Write::RecordEvent {
            run_id,
            at_us,
            kind,
            detail_json,
        } => {
            c.prepare_cached(RECORD_EVENT)?
                .execute(params![run_id, at_us, kind, detail_json])?;
        }
        Write::Prune {
            keep_runs,
            keep_days,
            now_us,
        } => {
            if keep_runs.is_none() && keep_days.is_none() {
                return Ok(());
            }
            let keep = keep_runs.map(|k| i64::try_from(k).unwrap_or(i64::MAX));
            let cutoff = keep_days
                .map(|d| now_us.saturating_sub(i64::from(d).saturating_mul(MICROS_PER_DAY)));
            c.prepare_cached(&PRUNE_EVENTS)?
                .execute(params![keep, cutoff])?;
            c.prepare_cached(&PRUNE_RUNS)?
                .execute(params![keep, cutoff])?;
        }
        #[cfg(test)]
        Write::Raw(sql) => c.execute_batch(sql)?,
    }
    Ok(())
}
