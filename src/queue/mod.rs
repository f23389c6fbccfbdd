//! The agent queue of seed 001: typed tasks that many processes claim, complete and release under
//! leases, with parent/child links and automatic recovery of abandoned tasks.
//!
//! Two backends behind one trait, [`Backend`]:
//! - [`json::JsonBackend`] keeps the seed's state file (a path ending in `.json`), byte-compatible with
//!   what the seed writes, under an exclusive lock on `<state>.lock`, rewritten atomically (temporary
//!   file, fsync, rename). A parsed copy is cached and reused while the file is unchanged.
//! - [`sqlite::SqliteBackend`] keeps the same tasks in an SQLite database (WAL): one statement per
//!   claim, no whole-file rewrite, indexes that keep a claim O(log n) at millions of tasks.
//!
//! Semantics shared by both (the Python layer documents them for users):
//! - A claim takes the pending task with the highest priority, oldest first among equals, among the
//!   requested types; a task created with `wait_for_parent` is not claimable until its parent is
//!   completed, and is cancelled when its parent ends failed or cancelled.
//! - Each claim increments the task's `attempt`, the fencing token of that lease: completing,
//!   releasing or extending with a stale attempt is refused.
//! - A lease older than the timeout is recovered on the next claim: the task returns to pending, or
//!   becomes failed when it has used `max_attempts` claims (explicit releases count as well).
//! - `result_data` of a completion is stored as `data["result"]`.
//! - A completed/failed/cancelled task keeps `locked_by`/`locked_at` of its last lease.

pub mod json;
mod jsontext;
mod pg;
pub mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::clock::Clock;

pub use json::JsonBackend;
pub use pg::PgBackend;
pub use sqlite::SqliteBackend;

/// Errors of the agent queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The exclusive lock (the `.lock` file of a JSON state file, or SQLite's write lock) was not
    /// obtained within `lock_timeout`.
    #[error(
        "could not lock {path} within {timeout:?}: another process holds it (raise lock_timeout, or \
         look for a stuck process)"
    )]
    LockTimeout {
        /// The lock file or database.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// The state file is not valid JSON or not in the seed's structure. It was not modified.
    #[error("corrupt state file {path}: {message}; the file was left untouched")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong and where (line and column for syntax errors).
        message: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What we were doing ("read", "write", "rename to", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite database failed (not a database, disk full, schema from a newer tm, ...).
    #[error("queue database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A caller's argument is invalid (data that is not JSON, an unknown parent to wait for, ...).
    /// A PostgreSQL server could not be reached or failed an operation.
    #[error("queue database {place}: {detail}")]
    Postgres {
        /// The URL without its password.
        place: String,
        /// The server's or the driver's message.
        detail: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Result alias of this module.
pub type Result<T, E = QueueError> = std::result::Result<T, E>;

/// A task's status. Files may hold other strings (kept, never claimed); these are the seed's five.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting to be claimed.
    Pending,
    /// Claimed by an agent under a lease.
    InProgress,
    /// Done.
    Completed,
    /// Given up: by the agent, or after `max_attempts` claims.
    Failed,
    /// Withdrawn before it ran.
    Cancelled,
}

impl Status {
    /// All statuses, in the order summaries list them.
    pub const ALL: [Status; 5] = [
        Status::Pending,
        Status::InProgress,
        Status::Completed,
        Status::Failed,
        Status::Cancelled,
    ];

    /// The seed's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::InProgress => "in_progress",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses the seed's spelling.
    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether a task in this status is finished for good.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

/// A task as users see it. JSON values are carried as text (`data` minified).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// `<type>_<8 hex>`.
    pub id: String,
    /// The task type.
    pub task_type: String,
    /// Status (one of [`Status`]'s spellings, or whatever a hand-edited file holds).
    pub status: String,
    /// The parent task's id.
    pub parent_id: Option<String>,
    /// The agent holding (or that last held) the task.
    pub locked_by: Option<String>,
    /// When the current (or last) lease started or was last extended, ISO 8601, local time.
    pub locked_at: Option<String>,
    /// When the task was created, ISO 8601, local time.
    pub created_at: Option<String>,
    /// When the task reached a final status, ISO 8601, local time.
    pub completed_at: Option<String>,
    /// The user's data, as minified JSON text.
    pub data: Vec<u8>,
    /// Higher runs first.
    pub priority: i64,
    /// Number of claims so far; the current lease's fencing token.
    pub attempt: u32,
    /// Claims allowed before an abandoned task becomes failed (None: unlimited).
    pub max_attempts: Option<u32>,
    /// Not claimable before the parent is completed.
    pub wait_for_parent: bool,
    /// Keys of the task entry that tm does not know, with minified JSON values (kept as found).
    pub extra: Vec<(String, Vec<u8>)>,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// The task type (non-empty).
    pub task_type: String,
    /// The user's data as JSON text (an object).
    pub data: Vec<u8>,
    /// Parent task id.
    pub parent_id: Option<String>,
    /// Higher runs first (default 0).
    pub priority: i64,
    /// Claims allowed before the task fails (None: unlimited).
    pub max_attempts: Option<u32>,
    /// Not claimable before the parent completes.
    pub wait_for_parent: bool,
}

impl NewTask {
    /// A seed-style task: type and data only.
    pub fn new(task_type: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        NewTask {
            task_type: task_type.into(),
            data: data.into(),
            parent_id: None,
            priority: 0,
            max_attempts: None,
            wait_for_parent: false,
        }
    }
}

/// One item of [`Backend::complete_many`].
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The task.
    pub id: &'a str,
    /// The fencing token of the agent's claim (None: any attempt the agent holds).
    pub attempt: Option<u32>,
    /// Completed, failed or cancelled.
    pub status: Status,
    /// JSON text stored as `data["result"]`.
    pub result: Option<&'a [u8]>,
}

/// Who may release a task.
#[derive(Debug, Clone, Copy)]
pub enum Holder<'a> {
    /// Only this agent, and (if given) only for this attempt.
    Agent {
        /// The agent's id.
        agent: &'a str,
        /// The fencing token the agent got with its claim.
        attempt: Option<u32>,
    },
    /// Whoever holds it (administrative release).
    Anyone,
}

/// `get_status_summary()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Number of tasks.
    pub total: u64,
    /// Tasks per status, in [`Status::ALL`] order (then unknown statuses), present ones only.
    pub status_counts: Vec<(String, u64)>,
    /// Tasks per type, in order of first appearance.
    pub type_counts: Vec<(String, u64)>,
    /// The workflow metadata, as a minified JSON object.
    pub metadata: Vec<u8>,
}

/// Filter for [`Backend::list`].
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<String>,
    /// Only this type.
    pub task_type: Option<String>,
    /// At most this many (oldest first).
    pub limit: Option<usize>,
}

/// A whole queue: what migration and export move between backends.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Top-level members of the state file other than `metadata` and `tasks`
    /// (`workflow_type` first), minified values.
    pub top: Vec<(String, Vec<u8>)>,
    /// Metadata members, minified values.
    pub metadata: Vec<(String, Vec<u8>)>,
    /// Every task, oldest first.
    pub tasks: Vec<Task>,
}

/// Settings shared by the backends.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest wait for the exclusive lock.
    pub lock_timeout: Duration,
    /// Lease length (`task_timeout_hours`).
    pub lease: Duration,
    /// Source of "now".
    pub clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lock_timeout: Duration::from_secs(5),
            lease: Duration::from_secs(24 * 3600),
            clock: Clock::System,
        }
    }
}

/// Sleeps until a store signals a change (PostgreSQL: `LISTEN`), or a timeout. A signal may be
/// spurious; callers compare [`Backend::version`] before and after.
pub trait Waiter: Send {
    fn wait(&mut self, timeout: Duration) -> Result<()>;
}

/// One queue store. Every method is one atomic step against the shared store.
pub trait Backend: Send {
    /// Creates tasks (all or none) and returns their ids.
    fn create(&mut self, tasks: &[NewTask]) -> Result<Vec<String>>;
    /// Recovers expired leases, then claims the best pending task of `types` (None: any type).
    fn claim(&mut self, agent: &str, types: Option<&[String]>) -> Result<Option<Task>>;
    /// Claims up to `limit` tasks in one step, in the order [`Backend::claim`] would take them
    /// one at a time; each gets its own lease and attempt.
    fn claim_many(
        &mut self,
        agent: &str,
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<Task>>;
    /// Ends a task the agent holds with `status` (completed, failed or cancelled); stores
    /// `result` (JSON text) as `data["result"]`. False if the agent does not hold it.
    fn complete(
        &mut self,
        id: &str,
        agent: &str,
        attempt: Option<u32>,
        status: Status,
        result: Option<&[u8]>,
    ) -> Result<bool>;
    /// [`Backend::complete`] for several tasks of one agent in one step (all or none on an
    /// error); one flag per item, in order.
    fn complete_many(&mut self, agent: &str, items: &[Completion<'_>]) -> Result<Vec<bool>>;
    /// Returns an in-progress task to pending (or failed when its attempts are used up).
    fn release(&mut self, id: &str, holder: Holder<'_>) -> Result<bool>;
    /// Restarts the lease of a task the agent holds.
    fn extend_lease(&mut self, id: &str, agent: &str, attempt: Option<u32>) -> Result<bool>;
    /// Cancels a pending task (and the waiting tasks below it).
    fn cancel(&mut self, id: &str) -> Result<bool>;
    /// One task.
    fn get(&mut self, id: &str) -> Result<Option<Task>>;
    /// The tasks whose parent is `id`, oldest first.
    fn children(&mut self, id: &str) -> Result<Vec<Task>>;
    /// Tasks, oldest first.
    fn list(&mut self, filter: &ListFilter) -> Result<Vec<Task>>;
    /// Counts and metadata.
    fn summary(&mut self) -> Result<Summary>;
    /// Merges a JSON object (text) into the workflow metadata.
    fn update_metadata(&mut self, members: &[u8]) -> Result<()>;
    /// A number that changes when another process changes the store (cheap; for blocking waits).
    fn version(&mut self) -> Result<u64>;
    /// Something that sleeps until the store may have changed, on a connection of its own (so
    /// a waiting thread does not hold the backend); None where there is no such signal and
    /// waiters poll [`version`](Backend::version).
    fn waiter(&mut self) -> Result<Option<Box<dyn Waiter>>> {
        Ok(None)
    }
    /// When (µs since the epoch) the earliest current lease expires.
    fn next_expiry(&mut self) -> Result<Option<i64>>;
    /// The whole queue.
    fn snapshot(&mut self) -> Result<Snapshot>;
    /// Loads a snapshot into this store, which must hold no tasks.
    fn restore(&mut self, snapshot: &Snapshot) -> Result<()>;
}

/// Which backend a target names: `sqlite:///path` or a path; `.json` paths are JSON state files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A seed JSON state file.
    Json(PathBuf),
    /// An SQLite database.
    Sqlite(PathBuf),
    /// A PostgreSQL database: the URL as given.
    Postgres(String),
}

impl Target {
    /// Parses `sqlite:///relative.db`, `sqlite:////absolute.db` (SQLAlchemy's spelling) or a path.
    pub fn parse(target: &str) -> Result<Target> {
        if target.to_ascii_lowercase().starts_with("postgres") && target.contains("://") {
            crate::store::pg_config(target).map_err(|e| QueueError::Invalid(e.to_string()))?;
            return Ok(Target::Postgres(target.to_string()));
        }
        if let Some(rest) = target.strip_prefix("sqlite://") {
            let path = rest.strip_prefix('/').unwrap_or(rest);
            if path.is_empty() || path == ":memory:" {
                return Err(QueueError::Invalid(format!(
                    "{target:?}: the queue needs a database file that several processes can open"
                )));
            }
            return Ok(Target::Sqlite(PathBuf::from(path)));
        }
        if target.is_empty() {
            return Err(QueueError::Invalid("empty state file path".into()));
        }
        let path = PathBuf::from(target);
        let is_json = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Ok(if is_json {
            Target::Json(path)
        } else {
            Target::Sqlite(path)
        })
    }

    /// The file this target lives in.
    pub fn path(&self) -> &Path {
        match self {
            Target::Json(p) | Target::Sqlite(p) => p,
            Target::Postgres(url) => Path::new(url),
        }
    }

    /// Opens (creating if needed) the store.
    pub fn open(&self, opts: Options) -> Result<Box<dyn Backend>> {
        Ok(match self {
            Target::Json(p) => Box::new(JsonBackend::open(p, opts)?),
            Target::Sqlite(p) => Box::new(SqliteBackend::open(p, opts)?),
            Target::Postgres(url) => Box::new(PgBackend::open(url, opts)?),
        })
    }
}

/// Opens the store a target string names.
pub fn open(target: &str, opts: Options) -> Result<Box<dyn Backend>> {
    Target::parse(target)?.open(opts)
}

/// Copies every task and the metadata from `src` into `dst` (which must hold no tasks). Returns the
/// number of tasks copied.
pub fn migrate(src: &str, dst: &str, opts: Options) -> Result<usize> {
    let s = Target::parse(src)?;
    let d = Target::parse(dst)?;
    if s.path() == d.path() {
        return Err(QueueError::Invalid(format!(
            "source and destination are the same file: {}",
            s.path().display()
        )));
    }
    if !matches!(s, Target::Postgres(_)) && !s.path().exists() {
        return Err(QueueError::Invalid(format!(
            "source {} does not exist",
            s.path().display()
        )));
    }
    let snap = s.open(opts.clone())?.snapshot()?;
    d.open(opts)?.restore(&snap)?;
    Ok(snap.tasks.len())
}

/// Renders a snapshot in the seed's state-file format (what `tm queue PATH export` prints).
pub fn export_json(snapshot: &Snapshot) -> Vec<u8> {
    json::render_snapshot(snapshot)
}

/// Time and settings as the backends use them.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub clock: Clock,
    pub tz: TimeZone,
    pub lease_us: i64,
    pub lock_timeout: Duration,
}

impl Ctx {
    pub fn new(opts: &Options) -> Ctx {
        Ctx {
            clock: opts.clock.clone(),
            tz: TimeZone::system(),
            lease_us: i64::try_from(opts.lease.as_micros()).unwrap_or(i64::MAX),
            lock_timeout: opts.lock_timeout,
        }
    }

    /// Now, µs since the epoch.
    pub fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// Whether a lease taken at `locked_us` has expired at `now`.
    pub fn expired(&self, locked_us: Option<i64>, now: i64) -> bool {
        match locked_us {
            Some(t) => now.saturating_sub(t) >= self.lease_us,
            // A lease whose start cannot be read cannot be shown to be alive.
            None => true,
        }
    }

    /// `datetime.now().isoformat()` at `us`: local wall time, microseconds only when non-zero.
    /// Written digit by digit: it runs in every claim and completion, where `format!` cost 2% of
    /// a claim-and-complete loop.
    pub fn iso(&self, us: i64) -> String {
        let ts = Timestamp::from_microsecond(us).unwrap_or(Timestamp::UNIX_EPOCH);
        let dt = self.tz.to_datetime(ts);
        let micro = (dt.subsec_nanosecond() / 1000) as u32;
        let Ok(year @ 0..=9999) = u32::try_from(dt.year()) else {
            // Outside what four digits hold (Python's datetime cannot hold it either).
            return format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                dt.year(),
                dt.month(),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second()
            );
        };
        let mut b = *b"0000-00-00T00:00:00.000000";
        let mut put = |at: usize, width: usize, mut v: u32| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, dt.month() as u32);
        put(8, 2, dt.day() as u32);
        put(11, 2, dt.hour() as u32);
        put(14, 2, dt.minute() as u32);
        put(17, 2, dt.second() as u32);
        put(20, 6, micro);
        let len = if micro == 0 { 19 } else { 26 };
        String::from_utf8_lossy(&b[..len]).into_owned()
    }

    /// Reads a timestamp written by [`Ctx::iso`] (or any ISO 8601 date-time, with or without offset).
    pub fn parse_iso(&self, s: &str) -> Option<i64> {
        if let Ok(ts) = s.parse::<Timestamp>() {
            return Some(ts.as_microsecond());
        }
        let dt = s.parse::<jiff::civil::DateTime>().ok()?;
        let ts = self.tz.to_ambiguous_timestamp(dt).compatible().ok()?;
        Some(ts.as_microsecond())
    }
}

/// A new task id: `<type>_<8 hex digits>` (the seed's `uuid4().hex[:8]`).
pub(crate) fn new_id(task_type: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_i64(Clock::System.now_micros());
    format!("{task_type}_{:08x}", h.finish() as u32)
}

/// Checks a new task's fields; returns its data as minified JSON text.
pub(crate) fn check_new(t: &NewTask) -> Result<Vec<u8>> {
    if t.task_type.is_empty() {
        return Err(QueueError::Invalid("task_type must not be empty".into()));
    }
    let data = jsontext::minify(&t.data)
        .map_err(|e| QueueError::Invalid(format!("task data is not valid JSON: {e}")))?;
    if data.first() != Some(&b'{') {
        return Err(QueueError::Invalid(
            "task data must be a JSON object".into(),
        ));
    }
    if t.max_attempts == Some(0) {
        return Err(QueueError::Invalid(
            "max_attempts must be at least 1".into(),
        ));
    }
    if t.wait_for_parent && t.parent_id.is_none() {
        return Err(QueueError::Invalid(
            "wait_for_parent needs a parent_id".into(),
        ));
    }
    Ok(data)
}

/// Refuses completions whose status is not final.
pub(crate) fn check_final(items: &[Completion<'_>]) -> Result<()> {
    match items.iter().find(|c| !c.status.is_final()) {
        Some(c) => Err(QueueError::Invalid(format!(
            "a task cannot be completed with status {:?}",
            c.status.as_str()
        ))),
        None => Ok(()),
    }
}

/// `data` with `data["result"] = result` (both JSON text); data must be an object.
pub(crate) fn with_result(id: &str, data: &[u8], result: &[u8]) -> Result<Vec<u8>> {
    let result = jsontext::minify(result)
        .map_err(|e| QueueError::Invalid(format!("result_data is not valid JSON: {e}")))?;
    let mut members = jsontext::object_members(data).map_err(|_| {
        QueueError::Invalid(format!(
            "task {id}: data is not a JSON object, so result_data cannot be stored in it"
        ))
    })?;
    jsontext::set_member(&mut members, "result", result);
    Ok(jsontext::object_text(&members))
}

/// Parses a metadata update: a JSON object's members.
pub(crate) fn metadata_members(text: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    jsontext::object_members(text)
        .map_err(|e| QueueError::Invalid(format!("workflow metadata must be a JSON object: {e}")))
}
