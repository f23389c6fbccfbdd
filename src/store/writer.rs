//! The writer thread: the one owner of the write connection.
//!
//! Callers enqueue [`Write`]s without blocking. The thread waits for the first one, takes
//! everything queued, applies it in `BEGIN IMMEDIATE` transactions of up to [`MAX_BATCH`] writes
//! (task transitions folded, see [`super::fold`]), commits, and only then acknowledges the flushes
//! that were queued among them (group commit): one commit is shared by every write of the batch.
//!
//! Failure handling, so that nothing is lost silently and nothing panics:
//! - an environmental error (busy or locked beyond `busy_timeout`, disk full, I/O) retries the whole
//!   batch with backoff, then drops it and reports [`StoreError::WriteFailed`] with the count;
//! - any other error (an unknown run, a duplicate id) replays the batch with one savepoint per
//!   write, so only the offending writes are skipped, each reported as [`StoreError::Rejected`].
//!
//! The first error since the last flush is returned by the next flush (or close); the latest one
//! stays readable through [`Writer::last_error`].

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, LazyLock, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{ffi, Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};

use super::backend::SqlitePlace;
use super::error::{open_error, StoreError};
use super::fold::{
    upsert_attempts_each, upsert_states_each, Fold, FoldedAttempt, FoldedState,
    MATERIALIZE_FIRST_ATTEMPT,
};
use super::migrations::migrate;
use super::model::{
    ErrorInfo, RunRecord, TaskFact, Transition, Write, TERMINAL_TASK_STATUSES,
    UNFINISHED_RUN_STATES,
};
use crate::checkpoint::{checkpoint, Checkpointer, Mode};
use crate::fork_gate::{self, ForkLocal, Pass};

/// Most writes applied in one transaction; more wait for the next batch.
pub(crate) const MAX_BATCH: usize = 10_000;

/// A batch smaller than this waits [`LINGER`] for more before it is committed.
const LINGER_BELOW: usize = 64;
/// How long a small batch waits for company: a bound on the commit delay it adds.
const LINGER: Duration = Duration::from_millis(1);

/// How long the queue must stay empty before the writer checkpoints the log.
const QUIET_BEFORE_CHECKPOINT: Duration = Duration::from_millis(100);
/// Writes after which the writer checkpoints even without a quiet moment.
const CHECKPOINT_AFTER_WRITES: usize = 100_000;

/// How long SQLite itself waits for another connection's lock before reporting busy.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Pauses between tries of a batch that failed for an environmental reason.
const BACKOFF_MS: [u64; 6] = [1, 4, 16, 64, 256, 1000];

enum Msg {
    Write(Write),
    Flush(SyncSender<Result<(), StoreError>>),
}

/// The queue between callers and the writer thread.
///
/// A plain mutex-guarded vector rather than a channel: a caller appends under the lock and wakes
/// the thread only when it sleeps, and the thread takes everything queued in one swap. While the
/// thread commits, thousands of writes queue at the cost of a push each, with no system call.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

#[derive(Default)]
struct QueueState {
    msgs: Vec<Msg>,
    /// A flush is among `msgs`: whoever waits for it must not be kept lingering.
    flush_queued: bool,
    /// The writer is waiting for work (a caller must notify).
    idle: bool,
    /// The writer is letting a small batch gather more; only a flush or a full batch wakes it.
    lingering: bool,
    /// No more messages are taken: closed by the owner, or the thread is gone.
    closed: bool,
}

/// What [`Queue::take`] found.
#[derive(Debug, PartialEq, Eq)]
enum Take {
    Got,
    /// Nothing arrived within the timeout.
    Quiet,
    /// Closed and drained.
    Closed,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `msg`; false once the queue is closed.
    fn push(&self, msg: Msg) -> bool {
        let mut q = self.lock();
        if q.closed {
            return false;
        }
        let flush = matches!(msg, Msg::Flush(_));
        q.msgs.push(msg);
        q.flush_queued |= flush;
        let wake = q.idle || (q.lingering && (flush || q.msgs.len() >= LINGER_BELOW));
        if wake {
            q.idle = false;
            q.lingering = false;
            drop(q);
            self.wake.notify_one();
        }
        true
    }

    /// Waits (at most `timeout`, if given) for messages and swaps them into `into` (which must
    /// be empty).
    fn take(&self, into: &mut Vec<Msg>, timeout: Option<Duration>) -> Take {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.lock();
        loop {
            if !q.msgs.is_empty() {
                std::mem::swap(&mut q.msgs, into);
                q.flush_queued = false;
                return Take::Got;
            }
            if q.closed {
                return Take::Closed;
            }
            q.idle = true;
            q = match deadline {
                None => self.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        q.idle = false;
                        return Take::Quiet;
                    }
                    self.wake
                        .wait_timeout(q, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// Lets a small batch in `into` gather company for at most `LINGER`: returns early when the
    /// batch reaches `LINGER_BELOW` writes, when a flush is queued (or already taken), or on close.
    fn linger(&self, into: &mut Vec<Msg>) {
        if into.len() >= LINGER_BELOW || into.iter().any(|m| matches!(m, Msg::Flush(_))) {
            return;
        }
        let deadline = Instant::now() + LINGER;
        let mut q = self.lock();
        loop {
            let enough = q.flush_queued || q.closed || into.len() + q.msgs.len() >= LINGER_BELOW;
            let left = deadline.saturating_duration_since(Instant::now());
            if enough || left.is_zero() {
                break;
            }
            q.lingering = true;
            q = self
                .wake
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        q.lingering = false;
        q.flush_queued = false;
        into.append(&mut q.msgs);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// Closes the queue when the writer thread ends, however it ends, and drops what is left so any
/// flush still waiting is told at once.
struct CloseOnExit(Arc<Queue>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        let left = {
            let mut q = self.0.lock();
            q.closed = true;
            std::mem::take(&mut q.msgs)
        };
        drop(left);
    }
}

/// Handle to the writer thread: enqueue, flush, close.
pub(crate) struct Writer {
    name: String,
    queue: Arc<Queue>,
    // Held while joining, so a second close waits for the first to finish.
    thread: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
    last_error: Arc<Mutex<Option<StoreError>>>,
}

impl Writer {
    /// Opens the write connection (creating and migrating the database) and starts the thread.
    /// Open errors are returned here, before any thread exists.
    pub(crate) fn start(place: &SqlitePlace) -> Result<Writer, StoreError> {
        let conn = open_with_retry(place)?;
        Writer::spawn(
            place.name.clone(),
            Box::new(SqliteCommitter {
                checkpointer: Checkpointer::new(
                    (!place.memory).then(|| place.path.clone()),
                    None,
                    Mode::Quiet,
                ),
                log: LogWatch::new(place),
                conn,
                name: place.name.clone(),
                keys: RunKeys::default(),
            }),
        )
    }

    /// Starts the thread that hands batches to `committer`; `name` is the database for messages.
    pub(crate) fn spawn(name: String, committer: Box<dyn Committer>) -> Result<Writer, StoreError> {
        let queue = Arc::new(Queue::default());
        let rx = queue.clone();
        let last_error = Arc::new(Mutex::new(None));
        let mut worker = Worker {
            committer,
            unchecked: 0,
            report: Report {
                pending: None,
                last_error: last_error.clone(),
            },
        };
        let thread = std::thread::Builder::new()
            .name("tm-store-writer".into())
            .spawn(move || {
                let _close = CloseOnExit(rx.clone());
                worker.run(&rx)
            })
            .map_err(|e| {
                StoreError::WriterStopped(format!("cannot start the writer thread: {e}"))
            })?;
        Ok(Writer {
            name,
            queue,
            thread: Mutex::new(Some(thread)),
            last_error,
        })
    }

    /// Queues `w`; never blocks.
    pub(crate) fn submit(&self, w: Write) -> Result<(), StoreError> {
        if self.queue.push(Msg::Write(w)) {
            Ok(())
        } else {
            Err(self.closed_error())
        }
    }

    /// Why the queue no longer takes messages: closed by the owner, or the thread is gone.
    fn closed_error(&self) -> StoreError {
        let joined = self.thread.try_lock().map(|t| t.is_none()).unwrap_or(true);
        if joined {
            StoreError::Closed
        } else {
            self.stopped()
        }
    }

    /// Waits until every write queued before this call is committed (or reported), and returns
    /// the first error since the previous flush.
    pub(crate) fn flush(&self) -> Result<(), StoreError> {
        let (ack, done) = mpsc::sync_channel(1);
        if !self.queue.push(Msg::Flush(ack)) {
            return Err(self.closed_error());
        }
        done.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Commits everything queued, stops the thread and closes the connection. Returns the first
    /// error since the last flush. Idempotent: later calls return `Ok(())`.
    pub(crate) fn close(&self) -> Result<(), StoreError> {
        let mut thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner);
        self.queue.close();
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

/// A store's writer, per process. A process forked from the one that opened the store
/// (`multiprocessing`'s default on Linux) inherits the opener's writer queue but not its thread,
/// and the opener's connection: such a child starts a writer of its own at its first write and
/// never flushes, closes, joins or drops the opener's.
pub(crate) struct ProcessWriter {
    /// The opener's writer; None when the store was opened read-only. Dropped only by the opener.
    own: Option<ManuallyDrop<Writer>>,
    /// [`fork_gate::generation`] of the opening process.
    born: u64,
    /// A forked child's own writer, started at its first write.
    child: Mutex<ForkLocal<Option<Arc<Writer>>>>,
}

/// The writer of the process at hand (see [`ProcessWriter`]).
pub(crate) enum WriterRef<'a> {
    Own(&'a Writer),
    Child(Arc<Writer>),
}

impl Deref for WriterRef<'_> {
    type Target = Writer;
    fn deref(&self) -> &Writer {
        match self {
            WriterRef::Own(w) => w,
            WriterRef::Child(w) => w,
        }
    }
}

impl ProcessWriter {
    /// The opener's `own` writer (None: read-only).
    pub(crate) fn new(own: Option<Writer>) -> ProcessWriter {
        fork_gate::install();
        ProcessWriter {
            own: own.map(ManuallyDrop::new),
            born: fork_gate::generation(),
            child: Mutex::new(ForkLocal::new(None)),
        }
    }

    /// This process's writer (None when read-only, or in a forked child that has not written
    /// yet and passes no `start`; with one, a child's first call starts its writer). The opener
    /// takes no lock; a child takes its slot's mutex holding a fork pass, never while using the
    /// writer (flushing or closing waits for its thread).
    pub(crate) fn get(
        &self,
        start: Option<&dyn Fn() -> Result<Writer, StoreError>>,
    ) -> Result<Option<WriterRef<'_>>, StoreError> {
        let Some(own) = self.own.as_deref() else {
            return Ok(None);
        };
        if fork_gate::generation() == self.born {
            return Ok(Some(WriterRef::Own(own)));
        }
        let _gate = Pass::enter();
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = guard.get();
        if let (None, Some(start)) = (&slot, start) {
            *slot = Some(Arc::new(start()?));
        }
        Ok(slot.clone().map(WriterRef::Child))
    }
}

impl Drop for ProcessWriter {
    fn drop(&mut self) {
        if let Some(w) = self.own.as_mut() {
            if fork_gate::generation() == self.born {
                // SAFETY: dropped once, here, and never used again.
                unsafe { ManuallyDrop::drop(w) };
            }
        }
    }
}

/// Opens the connection, sets the pragmas and migrates; retries while another process holds a
/// lock (switching to WAL or migrating needs one).
fn open_with_retry(place: &SqlitePlace) -> Result<Connection, StoreError> {
    let mut tries = BACKOFF_MS.iter();
    loop {
        // A fork pass for SQLite's work on the file (see `SqliteCommitter::commit`); none while
        // pausing.
        let opened = {
            let _gate = Pass::enter();
            open(place)
        };
        match opened {
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
    place.before_open();
    if !place.memory {
        // Before the write connection exists: a damaged file is refused untouched.
        super::health::check(&place.path, name)?;
        // Created here with the store's mode, SQLite's -wal and -shm take the same. Where this
        // fails, SQLite's own open fails too and says why.
        let _ = super::files::create_file(&place.path, place.file_mode);
    }
    let mut conn =
        Connection::open_with_flags(&place.path, flags).map_err(|e| open_error(name, e))?;
    if let Some(n) = super::backend::max_length(name)? {
        conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_LENGTH, n)
            .map_err(|e| open_error(name, e))?;
    }
    let setup = |conn: &Connection| -> rusqlite::Result<()> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first statement reads the header: a non-database fails here, before any write.
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // The writer checkpoints when the queue goes quiet (see Committer::quiet), so no
        // commit that a caller waits for pays for copying the log into the database.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
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

/// Why one write failed; `E` is the database's error type.
pub(crate) enum Fail<E> {
    Db(E),
    Refused(String),
}

impl<E> From<E> for Fail<E> {
    fn from(e: E) -> Self {
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

/// Run ids to their integer keys (`runs.rid`), remembered by the writer so a transition costs no
/// lookup. Forgotten wholesale after a rollback or a prune, when a remembered key may be stale.
#[derive(Default)]
pub(crate) struct RunKeys {
    map: HashMap<String, i64>,
}

/// Keys remembered at most; past it the map starts again (runs recorded now are the recent ones).
const MAX_KEYS: usize = 4096;

impl RunKeys {
    fn remember(&mut self, run_id: &str, rid: i64) {
        if self.map.len() >= MAX_KEYS {
            self.map.clear();
        }
        self.map.insert(run_id.to_string(), rid);
    }

    /// The key of `run_id`, refusing a run that is not recorded.
    fn rid<R: Rows>(&mut self, c: &mut R, run_id: &str) -> Result<i64, Fail<R::Error>> {
        if let Some(rid) = self.map.get(run_id) {
            return Ok(*rid);
        }
        match c.query_i64(RUN_KEY, &[Param::Text(run_id)])? {
            Some(rid) => {
                self.remember(run_id, rid);
                Ok(rid)
            }
            None => Err(Fail::Refused("no such run".into())),
        }
    }

    pub(crate) fn forget_all(&mut self) {
        self.map.clear();
    }
}

/// A statement parameter: the few types the writer binds, so that one list of statements (written
/// with `?N` placeholders) serves every database.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Param<'a> {
    Int(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
    Bool(bool),
}

impl Param<'_> {
    pub(crate) fn int(v: impl Into<i64>) -> Self {
        Param::Int(Some(v.into()))
    }
}

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            Param::Int(v) => v.to_sql(),
            Param::Text(v) => v.to_sql(),
            Param::OptText(v) => v.to_sql(),
            Param::Bytes(v) => v.to_sql(),
            Param::Bool(v) => v.to_sql(),
        }
    }
}

/// The statements a database runs for the shared write logic, inside the batch's transaction.
/// SQL is given with `?N` placeholders; a backend rewrites them to its own dialect if it must.
pub(crate) trait Rows {
    type Error;
    /// Executes one statement; the number of rows it changed.
    fn exec(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, Self::Error>;
    /// Runs a query returning at most one integer.
    fn query_i64(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Option<i64>, Self::Error>;
    /// Runs raw SQL (tests only).
    #[cfg(test)]
    fn batch(&mut self, sql: &str) -> Result<(), Self::Error>;

    /// Inserts tasks' immutable facts: one statement each, unless a backend does better.
    fn insert_facts(&mut self, rid: i64, tasks: &[TaskFact]) -> Result<(), Self::Error>
    where
        Self: Sized,
    {
        for t in tasks {
            self.exec(
                INSERT_FACT,
                &[
                    Param::int(rid),
                    Param::int(t.node),
                    Param::Text(&t.name),
                    Param::OptText(t.task_key.as_deref()),
                    Param::OptText(t.inputs_digest.as_deref()),
                    Param::Int(t.seed),
                    Param::OptText(t.code_version.as_deref()),
                ],
            )?;
        }
        Ok(())
    }

    /// Writes a batch's folded task states (see [`Fold`]).
    fn upsert_states(&mut self, rows: &[FoldedState<'_>]) -> Result<(), Self::Error>
    where
        Self: Sized,
    {
        upsert_states_each(self, rows)
    }

    /// Writes a batch's folded attempts (see [`Fold`]).
    fn upsert_attempts(&mut self, rows: &[FoldedAttempt<'_>]) -> Result<(), Self::Error>
    where
        Self: Sized,
    {
        upsert_attempts_each(self, rows)
    }
}

/// SQLite's statements, prepared once per connection.
pub(crate) struct Lite<'c>(pub(crate) &'c Connection);

impl Rows for Lite<'_> {
    type Error = rusqlite::Error;
    fn exec(&mut self, sql: &'static str, params: &[Param<'_>]) -> rusqlite::Result<u64> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(n as u64)
    }
    fn query_i64(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> rusqlite::Result<Option<i64>> {
        self.0
            .prepare_cached(sql)?
            .query_row(rusqlite::params_from_iter(params), |r| r.get(0))
            .optional()
    }
    #[cfg(test)]
    fn batch(&mut self, sql: &str) -> rusqlite::Result<()> {
        self.0.execute_batch(sql)
    }
}

/// The writer thread's backend half: commits one batch, reporting what it could not store.
pub(crate) trait Committer: Send + 'static {
    fn commit(&mut self, batch: &[Write], report: &mut Report);

    /// Housekeeping that must not delay a commit someone waits for (SQLite: checkpointing the
    /// write-ahead log); called when the queue has been quiet for a moment after writes, or after
    /// many writes without one.
    fn quiet(&mut self) {}
}

/// Where a committer reports failures: kept for the next flush, and as the latest error.
pub(crate) struct Report {
    /// The first error since the last flush.
    pending: Option<StoreError>,
    last_error: Arc<Mutex<Option<StoreError>>>,
}

impl Report {
    pub(crate) fn error(&mut self, e: StoreError) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
        if self.pending.is_none() {
            self.pending = Some(e);
        }
    }

    /// Reports the writes of `refused` that were skipped, each with its reason.
    pub(crate) fn refused(&mut self, refused: Vec<(&Write, String)>) {
        for (w, reason) in refused {
            self.error(StoreError::Rejected {
                op: w.op(),
                run_id: w.run_id().map(str::to_string),
                reason,
            });
        }
    }
}

/// The thread's state.
struct Worker {
    committer: Box<dyn Committer>,
    /// Writes committed since the committer last had a quiet moment.
    unchecked: usize,
    report: Report,
}

impl Worker {
    fn run(&mut self, queue: &Queue) -> Result<(), StoreError> {
        let mut taken = Vec::new();
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        loop {
            // Checkpoints run here, after a quiet moment, rather than inside a commit that a
            // caller may be waiting for (automatic checkpoints are off on this connection).
            let quiet = (self.unchecked > 0).then_some(QUIET_BEFORE_CHECKPOINT);
            match queue.take(&mut taken, quiet) {
                Take::Closed => break,
                Take::Quiet => {
                    self.quiet();
                    continue;
                }
                Take::Got => {}
            }
            // A trickle (a few transitions from each finishing task) would otherwise cost a commit
            // per write: let a small batch gather more for a moment, unless someone is flushing.
            queue.linger(&mut taken);
            for msg in taken.drain(..) {
                match msg {
                    Msg::Write(w) => {
                        batch.push(w);
                        if batch.len() >= MAX_BATCH {
                            self.commit(&batch);
                            batch.clear();
                        }
                    }
                    // Acknowledged below, once everything taken with it is committed.
                    Msg::Flush(ack) => waiters.push(ack),
                }
            }
            if !batch.is_empty() {
                self.commit(&batch);
                batch.clear();
            }
            if !waiters.is_empty() {
                let result = self.report.pending.take().map_or(Ok(()), Err);
                for ack in waiters.drain(..) {
                    // A flusher that gave up waiting has dropped its receiver: nothing to do.
                    let _ = ack.send(result.clone());
                }
            }
            // Under sustained load there is no quiet moment: keep the log bounded anyway.
            if self.unchecked >= CHECKPOINT_AFTER_WRITES {
                self.quiet();
            }
        }
        self.report.pending.take().map_or(Ok(()), Err)
    }

    fn commit(&mut self, batch: &[Write]) {
        self.unchecked += batch.len();
        self.committer.commit(batch, &mut self.report);
    }

    fn quiet(&mut self) {
        self.unchecked = 0;
        self.committer.quiet();
    }
}

/// The SQLite writer: the one write connection.
struct SqliteCommitter {
    // Before `conn`: dropped (its thread joined) first.
    checkpointer: Checkpointer,
    conn: Connection,
    keys: RunKeys,
    name: String,
    log: LogWatch,
}

/// The write-ahead log the write connection has open, watched so that its deletion is noticed.
///
/// The log stays in place for as long as any connection has the database open (SQLite deletes it
/// when the last one closes), so while the writer lives the file at `<db>-wal` is the one it
/// writes. A program that deletes it anyway (a cleanup of "temporary" files, a user) leaves the
/// writer committing into a file no other connection sees: readers and other processes open a new
/// empty log, and commits that the writer acknowledged exist only in the deleted file. After each
/// commit the writer compares the file at the path with the one it had at open (one `stat`).
struct LogWatch {
    /// The log's path and (device, inode) at open; None in memory or where it cannot be told.
    watched: Option<(std::path::PathBuf, (u64, u64))>,
    /// Set once the log was found gone: every later batch is refused with this message.
    lost: Option<String>,
}

impl LogWatch {
    fn new(place: &SqlitePlace) -> LogWatch {
        let watched = if place.memory {
            None
        } else {
            let path = super::health::sibling(&place.path, "-wal");
            file_id(&path).map(|id| (path, id))
        };
        LogWatch {
            watched,
            lost: None,
        }
    }

    /// Whether the log at the path is no longer the one the writer opened.
    fn replaced(&self) -> Option<&std::path::Path> {
        let (path, id) = self.watched.as_ref()?;
        (file_id(path) != Some(*id)).then_some(path.as_path())
    }
}

/// A file's (device, inode): its identity while it exists.
fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl Committer for SqliteCommitter {
    /// Copies the write-ahead log into the database file (without waiting for readers), on the
    /// checkpointer's thread when there is one. Best effort: a busy checkpoint leaves the log for
    /// the next one, nothing is lost.
    fn quiet(&mut self) {
        if !self.checkpointer.request() {
            let _gate = Pass::enter();
            checkpoint(&self.conn);
        }
    }

    /// Each try holds a fork pass (see [`crate::fork_gate`]): a child forked while this thread
    /// is inside SQLite would otherwise inherit SQLite's mutexes for the file locked, and hang at
    /// its first use of the database. Nothing here waits for another thread of the process.
    fn commit(&mut self, batch: &[Write], report: &mut Report) {
        if let Some(why) = &self.log.lost {
            return report.error(StoreError::LogLost {
                path: self.name.clone(),
                detail: format!("{} write(s) were not stored: {why}", batch.len()),
            });
        }
        self.commit_batch(batch, report);
        self.watch_log(batch.len(), report);
    }
}

impl SqliteCommitter {
    fn commit_batch(&mut self, batch: &[Write], report: &mut Report) {
        let mut backoff = BACKOFF_MS.iter();
        loop {
            let gate = Pass::enter();
            let applied = (|| {
                let tx = self
                    .conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)?;
                apply_batch(&mut Lite(&tx), &mut self.keys, batch)?;
                tx.commit()?;
                Ok(())
            })();
            if applied.is_err() {
                // Rolled back: keys remembered for runs it inserted are void.
                self.keys.forget_all();
            }
            drop(gate);
            match applied {
                Ok(()) => return,
                Err(Fail::Db(e)) if is_environmental(&e) => match backoff.next() {
                    Some(ms) => std::thread::sleep(Duration::from_millis(*ms)),
                    None => return self.lost(report, batch.len(), e),
                },
                // One write is at fault: replay them one by one to find it.
                Err(_) => return self.commit_each(batch, report),
            }
        }
    }

    /// After a commit: if the log was deleted or replaced, copies what the writer's connection
    /// still holds in it into the database file (a checkpoint through the deleted file, which
    /// this connection keeps open), reports it, and stops writing.
    fn watch_log(&mut self, batch: usize, report: &mut Report) {
        let Some(path) = self.log.replaced() else {
            return;
        };
        let path = path.display().to_string();
        let copied = {
            let _gate = Pass::enter(); // see `commit`
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .is_ok_and(|(busy, log, done)| busy == 0 && log == done)
        };
        let why = format!(
            "its write-ahead log {path} was deleted or replaced while the store was open (by \
             another program?); the store writes nothing more: close it, and find out what deletes \
             files beside the database"
        );
        let now = if copied {
            format!(
                "the last {batch} write(s) and everything before them were copied into the \
                 database file from the deleted log, which the writer still had open, but {why}"
            )
        } else {
            format!(
                "the last {batch} write(s), and others since the last checkpoint, could not be \
                 copied into the database file and are lost: {why}"
            )
        };
        report.error(StoreError::LogLost {
            path: self.name.clone(),
            detail: now,
        });
        self.log.lost = Some(why);
    }

    fn lost(&self, report: &mut Report, lost: usize, e: rusqlite::Error) {
        report.error(StoreError::WriteFailed {
            path: self.name.clone(),
            lost,
            source: Arc::new(e),
        });
    }

    /// Applies `batch` with a savepoint around each write, skipping and reporting the ones that
    /// fail; an environmental failure drops the whole batch.
    fn commit_each(&mut self, batch: &[Write], report: &mut Report) {
        let _gate = Pass::enter(); // see `commit`
        let mut refused = Vec::new();
        let keys = &mut self.keys;
        let outcome = (|| -> rusqlite::Result<()> {
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for w in batch {
                let sp = tx.savepoint()?;
                match apply(&mut Lite(&sp), keys, w) {
                    Ok(()) => sp.commit()?,
                    Err(Fail::Db(e)) if is_environmental(&e) => return Err(e),
                    Err(Fail::Db(e)) => refused.push((w, reason(&e))),
                    Err(Fail::Refused(why)) => refused.push((w, why)),
                }
                if !refused.is_empty() {
                    // A rolled-back savepoint may have held a run this batch inserted.
                    keys.forget_all();
                }
            }
            tx.commit()
        })();
        if outcome.is_err() {
            self.keys.forget_all();
        }
        report.refused(refused);
        if let Err(e) = outcome {
            self.lost(report, batch.len(), e);
        }
    }
}

/// Applies `batch` inside the caller's transaction, folding task transitions into one row write
/// per task and attempt (see [`Fold`]).
pub(crate) fn apply_batch<R: Rows>(
    c: &mut R,
    keys: &mut RunKeys,
    batch: &[Write],
) -> Result<(), Fail<R::Error>> {
    let mut fold = Fold::default();
    for w in batch {
        match w {
            Write::BeginRun(r) => {
                let rid = insert_run(c, r)?;
                keys.remember(&r.run_id, rid);
                insert_facts(c, rid, &r.tasks)?;
            }
            Write::AddTasks { run_id, tasks } => {
                let rid = keys.rid(c, run_id)?;
                insert_facts(c, rid, tasks)?;
            }
            Write::Transitions { run_id, items } => {
                let rid = keys.rid(c, run_id)?;
                for t in items {
                    match t {
                        Transition::Started {
                            node,
                            attempt,
                            at_us,
                        } => fold.started(rid, *node, *attempt, *at_us),
                        Transition::Ended {
                            node,
                            attempt,
                            at_us,
                            status,
                            error,
                            retry_at_us,
                        } => fold.ended(
                            rid,
                            *node,
                            *attempt,
                            *at_us,
                            status,
                            error.as_deref(),
                            *retry_at_us,
                        ),
                        Transition::Status {
                            node,
                            status,
                            at_us,
                        } => fold.status(rid, *node, status, *at_us),
                    }
                }
            }
            // Deleting runs must see every row the batch wrote before it.
            Write::Prune { .. } => {
                fold.flush(c).map_err(Fail::Db)?;
                apply(c, keys, w)?;
            }
            #[cfg(test)]
            Write::Raw(_) => {
                fold.flush(c).map_err(Fail::Db)?;
                apply(c, keys, w)?;
            }
            _ => apply(c, keys, w)?,
        }
    }
    if !fold.is_empty() {
        fold.flush(c).map_err(Fail::Db)?;
    }
    Ok(())
}

const RUN_KEY: &str = "SELECT rid FROM runs WHERE run_id = ?1";
const INSERT_RUN: &str = "INSERT INTO runs (run_id, graph, state, trigger, scheduled_us, \
    created_us, started_us, config_json, meta_json) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
    RETURNING rid";
const INSERT_FACT: &str = "INSERT INTO task_facts (rid, node, name, task_key, inputs_digest, \
    seed, code_version) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
const STATE_STARTED: &str = "INSERT INTO task_state (rid, node, status, attempt, started_us) \
    VALUES (?1, ?2, 'running', ?3, ?4) ON CONFLICT (rid, node) DO UPDATE SET \
    status = 'running', attempt = excluded.attempt, \
    started_us = COALESCE(task_state.started_us, excluded.started_us), ended_us = NULL, \
    error_type = NULL, error_message = NULL, traceback = NULL";
const ATTEMPT_STARTED: &str = "INSERT INTO attempts (rid, node, attempt, started_us, status) \
    VALUES (?1, ?2, ?3, ?4, 'running') ON CONFLICT (rid, node, attempt) DO UPDATE SET \
    started_us = excluded.started_us, status = 'running', ended_us = NULL, error_type = NULL, \
    error_message = NULL, traceback = NULL, retry_at_us = NULL";
const STATE_ENDED: &str = "INSERT INTO task_state (rid, node, status, attempt, ended_us, \
    error_type, error_message, traceback) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
    ON CONFLICT (rid, node) DO UPDATE SET status = excluded.status, \
    attempt = excluded.attempt, ended_us = excluded.ended_us, error_type = excluded.error_type, \
    error_message = excluded.error_message, traceback = excluded.traceback";
const ATTEMPT_ENDED: &str = "INSERT INTO attempts (rid, node, attempt, ended_us, status, \
    error_type, error_message, traceback, retry_at_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
    ON CONFLICT (rid, node, attempt) DO UPDATE SET ended_us = excluded.ended_us, \
    status = excluded.status, error_type = excluded.error_type, \
    error_message = excluded.error_message, traceback = excluded.traceback, \
    retry_at_us = excluded.retry_at_us";
const STATE_STATUS: &str = "INSERT INTO task_state (rid, node, status, attempt, ended_us) \
    VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (rid, node) DO UPDATE SET \
    status = excluded.status, ended_us = excluded.ended_us";
const SAVE_RESULT: &str = "INSERT INTO task_results (rid, node, format, data) \
    VALUES (?1, ?2, ?3, ?4) ON CONFLICT (rid, node) DO UPDATE SET \
    format = excluded.format, data = excluded.data";
const APPEND_LOG: &str =
    "INSERT INTO task_logs (rid, node, at_us, level, message) VALUES (?1, ?2, ?3, ?4, ?5)";
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
         FROM runs WHERE state NOT IN ({unfinished})) AS ranked \
         WHERE (CAST(?1 AS BIGINT) IS NOT NULL AND rn > ?1) \
         OR (CAST(?2 AS BIGINT) IS NOT NULL AND t < ?2)"
    )
});
static PRUNE_EVENTS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DELETE FROM events WHERE run_id IN ({}) \
         OR (CAST(?2 AS BIGINT) IS NOT NULL AND run_id IS NULL AND at_us < ?2)",
        *DOOMED_RUNS
    )
});
// One statement: deleting the runs cascades to their tasks, attempts, results and logs.
static PRUNE_RUNS: LazyLock<String> =
    LazyLock::new(|| format!("DELETE FROM runs WHERE run_id IN ({})", *DOOMED_RUNS));

/// Claimed schedule fires older than the cutoff (`?2`): a scheduler never fires that far back
/// again (catch-up starts from the graph's last fire), so their rows no longer guard anything.
/// (Both parameters are named, as every prune statement takes the same two; no cutoff, no delete.)
const PRUNE_FIRES: &str = "WITH p AS (SELECT CAST(?1 AS BIGINT) AS keep, \
    CAST(?2 AS BIGINT) AS cutoff) DELETE FROM fires WHERE fired_us < (SELECT cutoff FROM p)";

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Inserts a run's row and returns its integer key.
fn insert_run<R: Rows>(c: &mut R, r: &RunRecord) -> Result<i64, Fail<R::Error>> {
    let rid = c.query_i64(
        INSERT_RUN,
        &[
            Param::Text(&r.run_id),
            Param::Text(&r.graph),
            Param::Text(&r.state),
            Param::Text(&r.trigger),
            Param::Int(r.scheduled_us),
            Param::int(r.created_us),
            Param::Int(r.started_us),
            Param::OptText(r.config_json.as_deref()),
            Param::OptText(r.meta_json.as_deref()),
        ],
    )?;
    rid.ok_or_else(|| Fail::Refused("the run's key was not returned".into()))
}

/// Inserts tasks' immutable facts. A task has no state row until its first transition: readers
/// see it `pending` at attempt 0 (one row write less per task).
fn insert_facts<R: Rows>(c: &mut R, rid: i64, tasks: &[TaskFact]) -> Result<(), Fail<R::Error>> {
    c.insert_facts(rid, tasks)?;
    Ok(())
}

/// Attempt `attempt` of `node` started: the task is `running` (keeping its first start).
fn started<R: Rows>(
    c: &mut R,
    rid: i64,
    node: u32,
    attempt: u32,
    at_us: i64,
) -> Result<(), Fail<R::Error>> {
    if attempt > 1 {
        // A clean first attempt may have no row yet (see fold.rs): write it out first.
        c.exec(
            MATERIALIZE_FIRST_ATTEMPT,
            &[Param::int(rid), Param::int(node)],
        )?;
    }
    let p = [
        Param::int(rid),
        Param::int(node),
        Param::int(attempt),
        Param::int(at_us),
    ];
    c.exec(STATE_STARTED, &p)?;
    c.exec(ATTEMPT_STARTED, &p)?;
    Ok(())
}

/// An attempt ended; see [`Store::task_ended`](super::Store::task_ended).
#[allow(clippy::too_many_arguments)]
fn ended<R: Rows>(
    c: &mut R,
    rid: i64,
    node: u32,
    attempt: u32,
    at_us: i64,
    status: &str,
    error: Option<&ErrorInfo>,
    retry_at_us: Option<i64>,
) -> Result<(), Fail<R::Error>> {
    let etype = Param::OptText(error.map(|e| e.type_name.as_str()));
    let emsg = Param::OptText(error.map(|e| e.message.as_str()));
    let tb = Param::OptText(error.and_then(|e| e.traceback.as_deref()));
    // A failed attempt that will be retried leaves the task retrying, not ended.
    let (task_status, ended) = match retry_at_us {
        Some(_) => ("retrying", None),
        None => (status, Some(at_us)),
    };
    c.exec(
        STATE_ENDED,
        &[
            Param::int(rid),
            Param::int(node),
            Param::Text(task_status),
            Param::int(attempt),
            Param::Int(ended),
            etype,
            emsg,
            tb,
        ],
    )?;
    c.exec(
        ATTEMPT_ENDED,
        &[
            Param::int(rid),
            Param::int(node),
            Param::int(attempt),
            Param::int(at_us),
            Param::Text(status),
            etype,
            emsg,
            tb,
            Param::Int(retry_at_us),
        ],
    )?;
    Ok(())
}

/// A status without an attempt; a terminal one sets the end time, another clears it.
fn task_status<R: Rows>(
    c: &mut R,
    rid: i64,
    node: u32,
    status: &str,
    at_us: i64,
) -> Result<(), Fail<R::Error>> {
    let ended = TERMINAL_TASK_STATUSES.contains(&status).then_some(at_us);
    c.exec(
        STATE_STATUS,
        &[
            Param::int(rid),
            Param::int(node),
            Param::Text(status),
            Param::Int(ended),
        ],
    )?;
    Ok(())
}

/// Applies one write inside the caller's transaction.
pub(crate) fn apply<R: Rows>(
    c: &mut R,
    keys: &mut RunKeys,
    w: &Write,
) -> Result<(), Fail<R::Error>> {
    match w {
        Write::BeginRun(r) => {
            let rid = insert_run(c, r)?;
            keys.remember(&r.run_id, rid);
            insert_facts(c, rid, &r.tasks)?;
        }
        Write::AddTasks { run_id, tasks } => {
            let rid = keys.rid(c, run_id)?;
            insert_facts(c, rid, tasks)?;
        }
        Write::Transitions { run_id, items } => {
            let rid = keys.rid(c, run_id)?;
            for t in items {
                match t {
                    Transition::Started {
                        node,
                        attempt,
                        at_us,
                    } => started(c, rid, *node, *attempt, *at_us)?,
                    Transition::Ended {
                        node,
                        attempt,
                        at_us,
                        status,
                        error,
                        retry_at_us,
                    } => ended(
                        c,
                        rid,
                        *node,
                        *attempt,
                        *at_us,
                        status,
                        error.as_deref(),
                        *retry_at_us,
                    )?,
                    Transition::Status {
                        node,
                        status,
                        at_us,
                    } => task_status(c, rid, *node, status, *at_us)?,
                }
            }
        }
        Write::SaveResult {
            run_id,
            node,
            format,
            data,
        } => {
            let rid = keys.rid(c, run_id)?;
            c.exec(
                SAVE_RESULT,
                &[
                    Param::int(rid),
                    Param::int(*node),
                    Param::Text(format),
                    Param::Bytes(data),
                ],
            )?;
        }
        Write::AppendLog {
            run_id,
            node,
            at_us,
            level,
            message,
        } => {
            let rid = keys.rid(c, run_id)?;
            c.exec(
                APPEND_LOG,
                &[
                    Param::int(rid),
                    Param::Int(node.map(i64::from)),
                    Param::int(*at_us),
                    Param::Text(level),
                    Param::Text(message),
                ],
            )?;
        }
        Write::FinishRun {
            run_id,
            state,
            ended_us,
        } => {
            let n = c.exec(
                FINISH_RUN,
                &[
                    Param::Text(run_id),
                    Param::Text(state),
                    Param::int(*ended_us),
                ],
            )?;
            if n == 0 {
                return Err(Fail::Refused("no such run".into()));
            }
        }
        Write::SetRunState { run_id, state } => {
            let reopen = UNFINISHED_RUN_STATES.contains(&state.as_str());
            let n = c.exec(
                SET_RUN_STATE,
                &[Param::Text(run_id), Param::Text(state), Param::Bool(reopen)],
            )?;
            if n == 0 {
                return Err(Fail::Refused("no such run".into()));
            }
        }
        Write::UpsertGraph(g) => {
            c.exec(
                UPSERT_GRAPH,
                &[
                    Param::Text(&g.name),
                    Param::OptText(g.schedule.as_deref()),
                    Param::OptText(g.tz.as_deref()),
                    Param::int(g.created_us),
                    Param::int(g.updated_us),
                    Param::Int(g.last_fire_us),
                    Param::OptText(g.meta_json.as_deref()),
                ],
            )?;
        }
        Write::RecordEvent {
            run_id,
            at_us,
            kind,
            detail_json,
        } => {
            c.exec(
                RECORD_EVENT,
                &[
                    Param::OptText(run_id.as_deref()),
                    Param::int(*at_us),
                    Param::Text(kind),
                    Param::OptText(detail_json.as_deref()),
                ],
            )?;
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
            let p = [Param::Int(keep), Param::Int(cutoff)];
            c.exec(PRUNE_EVENTS.as_str(), &p)?;
            c.exec(PRUNE_RUNS.as_str(), &p)?;
            c.exec(PRUNE_FIRES, &p)?;
            keys.forget_all();
        }
        #[cfg(test)]
        Write::Raw(sql) => c.batch(sql)?,
    }
    Ok(())
}

#[cfg(test)]
mod checkpoint_tests {
    use super::*;
    use crate::store::tests::TempDb;

    fn db_size(place: &SqlitePlace) -> u64 {
        std::fs::metadata(&place.path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn quiet_checkpoints_on_a_connection_of_its_own() {
        let tmp = TempDb::new("checkpointer");
        std::fs::create_dir_all(tmp.path().parent().unwrap()).unwrap();
        let place = SqlitePlace {
            name: tmp.path().display().to_string(),
            path: tmp.path(),
            memory: false,
            read_only: false,
            file_mode: 0o600,
        };
        let mut c = SqliteCommitter {
            checkpointer: Checkpointer::new(
                (!place.memory).then(|| place.path.clone()),
                None,
                Mode::Quiet,
            ),
            conn: open_with_retry(&place).unwrap(),
            log: LogWatch::new(&place),
            keys: RunKeys::default(),
            name: place.name.clone(),
        };
        c.conn
            .execute_batch(
                "CREATE TABLE filler (x BLOB); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
                 INSERT INTO filler SELECT randomblob(1000) FROM n;",
            )
            .unwrap();
        // The writer never checkpoints by itself: the rows are in the log only.
        let before = db_size(&place);
        c.quiet();
        assert!(c.checkpointer.is_running(), "no checkpointer thread");
        // Dropping the checkpointer joins its thread once it has served the request.
        c.checkpointer = Checkpointer::new(None, None, Mode::Quiet);
        assert!(
            db_size(&place) >= before + 500 * 1000,
            "the log was not copied into the database: {} -> {} bytes",
            before,
            db_size(&place)
        );
    }

    #[test]
    fn an_in_memory_database_checkpoints_inline() {
        let place = SqlitePlace {
            name: ":memory:".into(),
            path: "file:tm-checkpoint-test?mode=memory&cache=shared".into(),
            memory: true,
            read_only: false,
            file_mode: 0o600,
        };
        let mut cp = Checkpointer::new(
            (!place.memory).then(|| place.path.clone()),
            None,
            Mode::Quiet,
        );
        assert!(!cp.request());
        assert!(!cp.is_running());
    }
}
