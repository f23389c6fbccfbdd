//! Embedded state: every run, task transition, attempt, result and log line, in one database.
//!
//! [`Store`] exposes verbs, not SQL. Writes are queued without blocking and committed by one
//! writer thread in batches (group commit), so recording a transition costs microseconds; reads
//! run on their own connections and never wait for the writer. The database is SQLite (WAL, a busy
//! timeout, numbered migrations) or, by URL, a PostgreSQL server; both sit behind one trait.
//!
//! ```no_run
//! use tm::store::{RunRecord, Store, TaskFact};
//! # fn main() -> Result<(), tm::store::StoreError> {
//! let store = Store::open("sqlite:///.tm/tm.db")?;
//! store.begin_run(RunRecord {
//!     run_id: "r1".into(),
//!     graph: "etl".into(),
//!     state: "running".into(),
//!     trigger: "manual".into(),
//!     created_us: 1,
//!     tasks: vec![TaskFact { node: 0, name: "extract".into(), ..Default::default() }],
//!     ..Default::default()
//! })?;
//! store.task_started("r1", 0, 1, 2)?;
//! store.task_ended("r1", 0, 1, 3, "completed", None, None)?;
//! store.finish_run("r1", "completed", 4)?;
//! store.flush()?;
//! assert_eq!(store.get_run("r1")?.map(|r| r.tasks.len()), Some(1));
//! # Ok(()) }
//! ```

mod backend;
mod cache_index;
mod error;
pub(crate) mod files;
mod fleet;
mod fold;
mod health;
mod migrations;
mod model;
mod pg;
mod pgconn;
mod read;
mod url;
mod writer;

#[cfg(test)]
mod tests;

pub use cache_index::{
    CacheEntry, CacheFilter, CallFacts, CallState, Claim, ClaimRequest, FireClaim, KeyClaim, Owner,
    Pause, StoredResult,
};
pub use error::StoreError;
pub use fleet::{Claimed, Ended, Fleet, FleetTask, NewRun, Outcome, TaskProgress};
pub use model::{
    AttemptRow, ErrorInfo, EventRow, GraphRecord, LogRow, RunDetail, RunFilter, RunRecord,
    RunSummary, TaskFact, TaskRef, TaskRow, Transition, TERMINAL_TASK_STATUSES,
    UNFINISHED_RUN_STATES,
};
pub(crate) use pgconn::PgConfig;
pub(crate) use url::pg_config;
pub use url::{DbUrl, SqliteTarget};

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::cache::ByteLru;
use crate::fork_gate::Pass;
use backend::Backend;
use model::Write;

/// A handle to the state database. `Send + Sync`: share it with `Arc`.
///
/// Write verbs queue their write and return at once; they fail only when the store is closed.
/// Failures while committing are reported by the next [`flush`](Store::flush) or
/// [`close`](Store::close) and by [`last_error`](Store::last_error). Read verbs block.
pub struct Store {
    backend: Box<dyn Backend>,
    /// Recently saved or read results, so a re-read costs no database access (see
    /// [`Store::result`]).
    results: Mutex<ResultCache>,
}

/// A stored result: its format and bytes, shared without copying.
pub type ResultBytes = (String, Arc<[u8]>);

/// Results by (run id, node).
struct ResultCache {
    lru: ByteLru<(String, u32), ResultBytes>,
    hits: u64,
    misses: u64,
}

/// The result cache, locked, with a fork pass (see [`crate::fork_gate`]) held until the lock is
/// released: a child forked meanwhile would otherwise inherit it locked.
struct LockedResults<'a> {
    // Dropped first: the lock is released before the pass.
    guard: MutexGuard<'a, ResultCache>,
    _gate: Pass,
}

impl std::ops::Deref for LockedResults<'_> {
    type Target = ResultCache;
    fn deref(&self) -> &ResultCache {
        &self.guard
    }
}

impl std::ops::DerefMut for LockedResults<'_> {
    fn deref_mut(&mut self) -> &mut ResultCache {
        &mut self.guard
    }
}

/// How many bytes of results a store keeps in memory unless told otherwise.
pub const DEFAULT_RESULT_CACHE_BYTES: usize = 64 << 20;

/// The result cache's counters, for [`Store::cache_info`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheInfo {
    pub entries: usize,
    pub bytes: usize,
    pub capacity: usize,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.backend.location())
            .finish()
    }
}

impl Store {
    fn result_cache(&self) -> LockedResults<'_> {
        let gate = Pass::enter();
        LockedResults {
            guard: self.results.lock().unwrap_or_else(PoisonError::into_inner),
            _gate: gate,
        }
    }

    /// Opens (creating if needed, with its parent directory) and migrates the database at `url`:
    /// `sqlite:///relative.db`, `sqlite:////absolute.db`, a bare path, `:memory:` or
    /// `sqlite://:memory:`. A file that is not a tm database is refused and left untouched.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with_mode(url, None)
    }

    /// [`Store::open`], creating a new SQLite database file (and its log and directories) with
    /// `file_mode` instead of the default (`$TM_FILE_MODE`, else `0o600`; see [`files`]).
    pub fn open_with_mode(url: &str, file_mode: Option<u32>) -> Result<Store, StoreError> {
        Ok(Store::with_backend(backend::open(url, file_mode)?))
    }

    fn with_backend(backend: Box<dyn Backend>) -> Store {
        Store {
            backend,
            results: Mutex::new(ResultCache {
                lru: ByteLru::new(DEFAULT_RESULT_CACHE_BYTES),
                hits: 0,
                misses: 0,
            }),
        }
    }

    /// Opens an existing database for reading only: nothing is created, migrated or written, so
    /// history on a read-only file system or in a directory this process cannot write can be
    /// inspected. Every write fails with [`StoreError::ReadOnly`]. A database that needs a
    /// migration must be opened read-write once first. PostgreSQL databases open as usual.
    pub fn open_read_only(url: &str) -> Result<Store, StoreError> {
        Ok(Store::with_backend(backend::open_read_only(url)?))
    }

    /// Where the data lives: the database file's absolute path, or `:memory:`.
    pub fn location(&self) -> &str {
        self.backend.location()
    }

    /// Records a new run with its tasks' facts, every task `pending` at attempt 0.
    pub fn begin_run(&self, run: RunRecord) -> Result<(), StoreError> {
        self.backend.submit(Write::BeginRun(Box::new(run)))
    }

    /// Adds tasks to a run begun without them (facts plus a `pending` state row each), so a caller
    /// can make the run itself durable first and let the task rows follow in the queue.
    pub fn add_tasks(&self, run_id: &str, tasks: Vec<TaskFact>) -> Result<(), StoreError> {
        self.backend.submit(Write::AddTasks {
            run_id: run_id.to_string(),
            tasks,
        })
    }

    /// Records that attempt `attempt` (1-based) of task `node` started: the task is `running`.
    pub fn task_started(
        &self,
        run_id: &str,
        node: u32,
        attempt: u32,
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.transitions(
            run_id,
            vec![Transition::Started {
                node,
                attempt,
                at_us,
            }],
        )
    }

    /// Records the end of an attempt with its `status` (`completed`, `failed`, `cancelled`, ...)
    /// and error. With `retry_at_us`, another attempt follows: the attempt keeps `status` and the
    /// task becomes `retrying`; otherwise the task takes `status` and ends at `at_us`.
    #[allow(clippy::too_many_arguments)]
    pub fn task_ended(
        &self,
        run_id: &str,
        node: u32,
        attempt: u32,
        at_us: i64,
        status: &str,
        error: Option<ErrorInfo>,
        retry_at_us: Option<i64>,
    ) -> Result<(), StoreError> {
        self.transitions(
            run_id,
            vec![Transition::Ended {
                node,
                attempt,
                at_us,
                status: status.to_string().into(),
                error: error.map(Box::new),
                retry_at_us,
            }],
        )
    }

    /// Sets a task's status without an attempt (`skipped`, `cancelled`, or back to `pending` on
    /// resume). A terminal status (see [`TERMINAL_TASK_STATUSES`]) sets `ended_us`; another
    /// clears it.
    pub fn task_status(
        &self,
        run_id: &str,
        node: u32,
        status: &str,
        at_us: i64,
    ) -> Result<(), StoreError> {
        self.transitions(
            run_id,
            vec![Transition::Status {
                node,
                status: status.to_string().into(),
                at_us,
            }],
        )
    }

    /// Records several task transitions of one run as one queued write (what the engine's
    /// recorder sends for each delivery of a run's events).
    pub fn transitions(&self, run_id: &str, items: Vec<Transition>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        self.backend.submit(Write::Transitions {
            run_id: run_id.to_string(),
            items,
        })
    }

    /// Stores (or replaces) a task's serialized result; `format` says how to read `data` back.
    /// The result is also kept in the in-memory cache (when it fits), so reading it back in this
    /// process costs no database access.
    pub fn save_result(
        &self,
        run_id: &str,
        node: u32,
        format: &str,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        // Refused now, while the caller can still fail the task, rather than at the commit.
        let limit = self.backend.max_value_bytes();
        if data.len().saturating_add(format.len() + run_id.len() + 64) > limit {
            return Err(StoreError::TooBig {
                path: self.location().to_string(),
                what: format!("the result of node {node} of run {run_id}"),
                bytes: data.len(),
                limit,
            });
        }
        let shared: Arc<[u8]> = Arc::from(data.as_slice());
        self.backend.submit(Write::SaveResult {
            run_id: run_id.to_string(),
            node,
            format: format.to_string(),
            data,
        })?;
        self.remember_result(run_id, node, format.to_string(), shared);
        Ok(())
    }

    fn remember_result(&self, run_id: &str, node: u32, format: String, data: Arc<[u8]>) {
        let size = data.len() + format.len() + run_id.len();
        let mut cache = self.result_cache();
        cache
            .lru
            .insert((run_id.to_string(), node), (format, data), size);
    }

    /// Bounds the in-memory result cache to `bytes` (evicting the least recently used results
    /// beyond it; 0 disables it).
    pub fn set_cache_capacity(&self, bytes: usize) {
        let mut cache = self.result_cache();
        cache.lru.set_capacity(bytes);
    }

    /// The result cache's size and counters.
    pub fn cache_info(&self) -> CacheInfo {
        let cache = self.result_cache();
        CacheInfo {
            entries: cache.lru.len(),
            bytes: cache.lru.bytes(),
            capacity: cache.lru.capacity(),
            hits: cache.hits,
            misses: cache.misses,
            evictions: cache.lru.evictions(),
        }
    }

    /// Appends a log line of a task (or of the run itself, with `node` `None`).
    pub fn append_log(
        &self,
        run_id: &str,
        node: Option<u32>,
        at_us: i64,
        level: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        self.backend.submit(Write::AppendLog {
            run_id: run_id.to_string(),
            node,
            at_us,
            level: level.to_string(),
            message: message.to_string(),
        })
    }

    /// Records the end of a run in `state`.
    pub fn finish_run(&self, run_id: &str, state: &str, ended_us: i64) -> Result<(), StoreError> {
        self.backend.submit(Write::FinishRun {
            run_id: run_id.to_string(),
            state: state.to_string(),
            ended_us,
        })
    }

    /// Sets a run's state (e.g. back to `running` on resume). An unfinished state (see
    /// [`UNFINISHED_RUN_STATES`]) clears `ended_us`.
    pub fn set_run_state(&self, run_id: &str, state: &str) -> Result<(), StoreError> {
        self.backend.submit(Write::SetRunState {
            run_id: run_id.to_string(),
            state: state.to_string(),
        })
    }

    /// Inserts or updates a graph; an update keeps `created_us`, and keeps `last_fire_us` when
    /// the new record has none.
    pub fn upsert_graph(&self, graph: GraphRecord) -> Result<(), StoreError> {
        self.backend.submit(Write::UpsertGraph(graph))
    }

    /// Records a scheduler event, optionally about a run.
    pub fn record_event(
        &self,
        run_id: Option<&str>,
        at_us: i64,
        kind: &str,
        detail_json: Option<&str>,
    ) -> Result<(), StoreError> {
        self.backend.submit(Write::RecordEvent {
            run_id: run_id.map(str::to_string),
            at_us,
            kind: kind.to_string(),
            detail_json: detail_json.map(str::to_string),
        })
    }

    /// Deletes finished runs, with everything recorded under them, that are either beyond the
    /// newest `keep_runs` of their graph or ended more than `keep_days` before `now_us`; also
    /// run-less events older than `keep_days`. Unfinished runs are always kept.
    pub fn prune(
        &self,
        keep_runs: Option<usize>,
        keep_days: Option<u32>,
        now_us: i64,
    ) -> Result<(), StoreError> {
        self.backend.submit(Write::Prune {
            keep_runs,
            keep_days,
            now_us,
        })?;
        // Pruned runs' results must not outlive them here.
        let mut cache = self.result_cache();
        cache.lru.clear();
        Ok(())
    }

    /// Blocks until every write queued before it is committed; returns the first error reported
    /// since the previous flush.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.backend.flush()
    }

    /// Flushes, stops the writer thread and closes every connection. Idempotent (a second call
    /// returns `Ok`); dropping the store closes it too. Later verbs fail with
    /// [`StoreError::Closed`].
    pub fn close(&self) -> Result<(), StoreError> {
        self.backend.close()
    }

    /// The most recent write error since the store was opened, if any.
    pub fn last_error(&self) -> Option<StoreError> {
        self.backend.last_error()
    }

    /// Runs, newest first, filtered by graph and state.
    pub fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        self.backend.list_runs(filter)
    }

    /// The ids of the runs whose id starts with `prefix` (in order, at most `limit`), so a
    /// command can take a unique prefix of a run id.
    pub fn run_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.backend.run_ids_with_prefix(prefix, limit)
    }

    /// A run with its config and every task's facts and state, or `None` if unknown.
    pub fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        self.backend.get_run(run_id)
    }

    /// The attempts of one task (by node or name), oldest first.
    pub fn attempts<'a>(
        &self,
        run_id: &str,
        task: impl Into<TaskRef<'a>>,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        self.backend.attempts(run_id, task.into())
    }

    /// The log lines of a run, of one task if `task` is given, in order.
    pub fn logs(&self, run_id: &str, task: Option<TaskRef<'_>>) -> Result<Vec<LogRow>, StoreError> {
        self.backend.logs(run_id, task)
    }

    /// Every stored result of a run as `(node, format, bytes)`, by node.
    pub fn results(&self, run_id: &str) -> Result<Vec<(u32, String, Vec<u8>)>, StoreError> {
        self.backend.results(run_id)
    }

    /// One task's stored result as `(format, bytes)`: from the in-memory cache when this process
    /// saved or read it recently, else from the database (and then cached). Results are written
    /// once per task and attempt; a result replaced by ANOTHER process (a resume re-running the
    /// task there) is seen here once the cached copy is evicted.
    pub fn result(&self, run_id: &str, node: u32) -> Result<Option<ResultBytes>, StoreError> {
        {
            let mut cache = self.result_cache();
            let key = (run_id.to_string(), node);
            if let Some((format, data)) = cache.lru.get(&key).cloned() {
                cache.hits += 1;
                return Ok(Some((format, data)));
            }
            cache.misses += 1;
        }
        let Some((format, data)) = self.backend.result(run_id, node)? else {
            return Ok(None);
        };
        let data: Arc<[u8]> = Arc::from(data);
        self.remember_result(run_id, node, format.clone(), data.clone());
        Ok(Some((format, data)))
    }

    /// Runs in an unfinished state (see [`UNFINISHED_RUN_STATES`]), oldest first: the ones to
    /// resume after a crash.
    pub fn unfinished_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        self.backend.unfinished_runs()
    }

    /// One graph by name.
    pub fn graph(&self, name: &str) -> Result<Option<GraphRecord>, StoreError> {
        self.backend.graph(name)
    }

    /// Every graph, by name.
    pub fn graphs(&self) -> Result<Vec<GraphRecord>, StoreError> {
        self.backend.graphs()
    }

    /// The newest `limit` events, newest first.
    pub fn events(&self, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        self.backend.events(limit)
    }

    // Cached calls (seed 000). Synchronous, on a connection of their own: see `cache_index`.

    /// The newest stored result of call `key` that has not expired at `now_us`.
    pub fn cache_lookup(&self, key: &str, now_us: i64) -> Result<Option<CacheEntry>, StoreError> {
        self.backend.cache().lookup(key, now_us)
    }

    /// Decides, atomically among every process using this database, whether the caller loads a
    /// stored result, runs the call (and owns the key), or waits for a live owner.
    pub fn cache_claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.backend.cache().claim(req)
    }

    /// Extends an owned key's lease to `lease_until_us`; false when the key was taken over.
    pub fn cache_heartbeat(
        &self,
        key: &str,
        token: i64,
        lease_until_us: i64,
    ) -> Result<bool, StoreError> {
        self.backend.cache().heartbeat(key, token, lease_until_us)
    }

    /// Records a stored result; the key becomes `COMPLETED` if the caller still owns it.
    pub fn cache_complete(
        &self,
        facts: &CallFacts,
        token: i64,
        result: &StoredResult,
        now_us: i64,
    ) -> Result<CacheEntry, StoreError> {
        self.backend.cache().complete(facts, token, result, now_us)
    }

    /// Gives up an owned key without a result (`FAILED` or `SKIPPED`, with the error's type
    /// and message); false when the key was taken over.
    pub fn cache_release(
        &self,
        key: &str,
        token: i64,
        status: &str,
        error: Option<(&str, &str)>,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        self.backend
            .cache()
            .release(key, token, status, error, now_us)
    }

    /// Claims a schedule fire and records its run in one transaction; false (and nothing
    /// recorded) when a process sharing this database already fired `(graph, scheduled_us)`.
    pub fn claim_fire(&self, fire: &FireClaim) -> Result<bool, StoreError> {
        self.backend.cache().claim_fire(fire)
    }

    /// Records a run under an idempotency key, committed at once; returns the id of the run of
    /// the same graph that already has the key (nothing recorded), or None when this one was.
    pub fn claim_key(&self, claim: &KeyClaim) -> Result<Option<String>, StoreError> {
        self.backend.cache().claim_key(claim)
    }

    /// Pauses `graph`'s schedule for every scheduler sharing this database (committed at once);
    /// false when it was paused already.
    pub fn pause(&self, graph: &str, now_us: i64, owner: &str) -> Result<bool, StoreError> {
        self.backend.cache().pause(graph, now_us, owner)
    }

    /// Unpauses `graph`; returns when it had been paused, None when it was not.
    pub fn unpause(&self, graph: &str) -> Result<Option<i64>, StoreError> {
        self.backend.cache().unpause(graph)
    }

    /// The paused graphs, by name.
    pub fn pauses(&self) -> Result<Vec<Pause>, StoreError> {
        self.backend.cache().pauses()
    }

    /// Asks the schedulers sharing this database to run `graph` now (committed at once); returns
    /// the request's id.
    pub fn request_trigger(
        &self,
        graph: &str,
        params_json: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<i64, StoreError> {
        self.backend
            .cache()
            .request_trigger(graph, params_json, now_us, owner)
    }

    /// The graphs with trigger requests no scheduler has claimed yet.
    pub fn triggered_graphs(&self) -> Result<Vec<String>, StoreError> {
        self.backend.cache().triggered_graphs()
    }

    /// Claims `graph`'s unclaimed trigger requests as (id, params_json); each goes to exactly one
    /// caller among the processes sharing this database.
    pub fn claim_triggers(
        &self,
        graph: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.backend.cache().claim_triggers(graph, now_us, owner)
    }

    /// Sleeps until a cached call ends anywhere (PostgreSQL notifies), or `timeout`: Some(true)
    /// when woken, Some(false) on timeout, None where the database cannot signal (SQLite).
    pub fn cache_wait(&self, timeout: std::time::Duration) -> Result<Option<bool>, StoreError> {
        self.backend.cache().wait_for_end(timeout)
    }

    /// Stored results, newest first.
    pub fn cache_entries(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError> {
        self.backend.cache().entries(filter)
    }

    /// The state of every key (of one function, with `filter.func`).
    pub fn cache_states(&self, filter: &CacheFilter) -> Result<Vec<CallState>, StoreError> {
        self.backend.cache().states(filter)
    }

    /// The keys starting with `key` (at most 10), each with its newest entry.
    pub fn cache_find(
        &self,
        key: &str,
    ) -> Result<Vec<(CallState, Option<CacheEntry>)>, StoreError> {
        self.backend.cache().find(key)
    }

    /// Deletes the entries of `key` older than `newest_id` and returns them, so the caller can
    /// delete their files.
    pub fn cache_supersede(
        &self,
        key: &str,
        newest_id: i64,
    ) -> Result<Vec<CacheEntry>, StoreError> {
        self.backend.cache().supersede(key, newest_id)
    }

    /// Deletes matching entries and returns them, so the caller can delete their files.
    pub fn cache_clear(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError> {
        self.backend.cache().clear(filter)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // A destructor cannot report: callers who care call close() and look at its result.
        let _ = self.backend.close();
    }
}
