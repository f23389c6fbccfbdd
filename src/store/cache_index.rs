//! The index of cached function calls (seed 000): which results exist for a call key, and who is
//! computing a key right now.
//!
//! Unlike run history, these verbs are synchronous and read their own writes: a caller must know
//! at once whether it owns a key. They run on one dedicated connection per store; `claim` decides
//! inside a `BEGIN IMMEDIATE` transaction, so among processes sharing the database exactly one
//! becomes the owner of a key. The owner keeps a lease alive with `heartbeat`; a `RUNNING` row
//! whose lease has run out (or whose owner the caller proved dead, see [`ClaimRequest::takeover`])
//! is taken over rather than waited on forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::backend::SqlitePlace;
use super::error::{open_error, StoreError};
use super::writer::BUSY_TIMEOUT;
use crate::fork_gate::{ForkLocal, Pass};

/// The immutable facts of one call: what the key was computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFacts {
    /// The call key (a digest of everything below plus the canonical arguments).
    pub key: String,
    /// The function's module.
    pub module: String,
    /// The function's qualified name.
    pub func: String,
    /// The random seed, as text, if the call had one.
    pub seed: Option<String>,
    /// The canonical arguments, as JSON.
    pub inputs_json: String,
    /// The function's version (by default a digest of its source).
    pub version: String,
}

/// Where and how a result was stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredResult {
    /// The result file.
    pub result_path: String,
    /// How to read it back (`json`, `npy`, `parquet`, `bytes`, `pickle`).
    pub format: String,
    /// The digest of the file's bytes; a file that no longer matches is refused.
    pub content_hash: String,
    /// The file's size in bytes.
    pub size: i64,
    /// When the entry stops counting as a hit, if it has a time to live.
    pub expires_us: Option<i64>,
    /// How long the call took.
    pub duration_us: Option<i64>,
}

/// One stored result with the facts of its call. Never updated once written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheEntry {
    /// Row id, increasing while the newest rows stay; the state's `entry_id` says which is newest.
    pub id: i64,
    /// The call.
    pub facts: CallFacts,
    /// The stored result.
    pub result: StoredResult,
    /// When the result was stored.
    pub created_us: i64,
}

/// A process that runs calls: the owner of a `RUNNING` key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    /// Process id.
    pub pid: i64,
    /// Host name.
    pub host: String,
}

/// The mutable state of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallState {
    /// The call key.
    pub key: String,
    /// The function's module.
    pub module: String,
    /// The function's qualified name.
    pub func: String,
    /// `PENDING`, `RUNNING`, `COMPLETED`, `FAILED` or `SKIPPED`.
    pub status: String,
    /// The newest entry stored for the key, if any.
    pub entry_id: Option<i64>,
    /// When the latest run started.
    pub started_us: Option<i64>,
    /// When it ended.
    pub ended_us: Option<i64>,
    /// How long it took.
    pub duration_us: Option<i64>,
    /// The exception type of a failed or skipped run.
    pub error_type: Option<String>,
    /// Its message.
    pub error_message: Option<String>,
    /// Who runs (or last ran) the key.
    pub owner: Option<Owner>,
    /// Until when the owner's lease holds.
    pub lease_until_us: Option<i64>,
}

/// What [`claim`](CacheBackend::claim) is asked.
#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    /// The call.
    pub facts: CallFacts,
    /// Whether a stored result counts (false forces a run whose result supersedes it).
    pub use_cache: bool,
    /// The process asking.
    pub owner: Owner,
    /// The current time.
    pub now_us: i64,
    /// How long the lease lasts without a heartbeat.
    pub lease_us: i64,
    /// An owner the caller found dead (same host, no such process): its `RUNNING` row is taken
    /// over even though its lease has not run out yet.
    pub takeover: Option<Owner>,
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A stored result: load it instead of running.
    Hit(CacheEntry),
    /// The caller owns the key and must run the call, then `complete` or `release` with `token`.
    Run {
        /// Proves ownership to `heartbeat`, `complete` and `release`.
        token: i64,
    },
    /// Another live owner is running the call.
    Busy(CallState),
}

/// Which entries a listing or a clear applies to.
#[derive(Debug, Clone, Default)]
pub struct CacheFilter {
    /// Only this function (qualified name, `module.qualname`, or the qualified name's end).
    pub func: Option<String>,
    /// Only entries stored before this time.
    pub created_before_us: Option<i64>,
    /// At most this many entries, newest first.
    pub limit: Option<usize>,
}

/// The cache verbs a database backend provides.
pub(crate) trait CacheBackend: Send + Sync {
    /// The newest entry of `key` that has not expired at `now_us`.
    fn lookup(&self, key: &str, now_us: i64) -> Result<Option<CacheEntry>, StoreError>;
    /// Decides, atomically among processes, whether the caller loads, runs or waits.
    fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError>;
    /// Extends the lease of a key the caller owns; false when it is no longer the owner.
    fn heartbeat(&self, key: &str, token: i64, lease_until_us: i64) -> Result<bool, StoreError>;
    /// Stores a result's entry (always: the result is valid even if the lease was lost) and,
    /// when the caller still owns the key, marks it `COMPLETED`.
    fn complete(
        &self,
        facts: &CallFacts,
        token: i64,
        result: &StoredResult,
        now_us: i64,
    ) -> Result<CacheEntry, StoreError>;
    /// Gives a key up after a run that stored nothing: `status` is `FAILED` or `SKIPPED`.
    fn release(
        &self,
        key: &str,
        token: i64,
        status: &str,
        error: Option<(&str, &str)>,
        now_us: i64,
    ) -> Result<bool, StoreError>;
    /// Entries, newest first.
    fn entries(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError>;
    /// The state of each key matching `filter.func`.
    fn states(&self, filter: &CacheFilter) -> Result<Vec<CallState>, StoreError>;
    /// A key's state and its newest entry; `key` may be a unique prefix.
    fn find(&self, key: &str) -> Result<Vec<(CallState, Option<CacheEntry>)>, StoreError>;
    /// Deletes the entries of `key` older than its entry `newest_id` (a forced re-run supersedes
    /// them); returns them, so the caller can delete their files.
    fn supersede(&self, key: &str, newest_id: i64) -> Result<Vec<CacheEntry>, StoreError>;
    /// Deletes the matching entries (and the states left without an entry, unless running);
    /// returns what was deleted, so the caller can delete the files.
    fn clear(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError>;
    /// Claims a schedule fire (see [`FireClaim`]); false when another scheduler fired it.
    fn claim_fire(&self, fire: &FireClaim) -> Result<bool, StoreError>;
    /// Records a run under an idempotency key (see [`KeyClaim`]); returns the id of the run
    /// that already has the key, or None when this one was recorded.
    fn claim_key(&self, claim: &KeyClaim) -> Result<Option<String>, StoreError>;
    /// Pauses `graph`'s schedule for every scheduler; false when it was paused already.
    fn pause(&self, graph: &str, now_us: i64, owner: &str) -> Result<bool, StoreError>;
    /// Unpauses `graph`; returns when it had been paused (None: it was not).
    fn unpause(&self, graph: &str) -> Result<Option<i64>, StoreError>;
    /// The paused graphs, by name.
    fn pauses(&self) -> Result<Vec<Pause>, StoreError>;
    /// Asks the schedulers to run `graph` now with `params_json`; returns the request's id.
    fn request_trigger(
        &self,
        graph: &str,
        params_json: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<i64, StoreError>;
    /// The graphs with unclaimed trigger requests (a read: no write lock).
    fn triggered_graphs(&self) -> Result<Vec<String>, StoreError>;
    /// Claims every unclaimed request of `graph`, atomically among processes: each request is
    /// returned, as (id, params_json), to exactly one caller.
    fn claim_triggers(
        &self,
        graph: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<Vec<(i64, String)>, StoreError>;
    /// Sleeps until some key's call ends (completed or released) anywhere, or `timeout`:
    /// Some(true) when woken, Some(false) on timeout, None where the database has no such
    /// signal (SQLite: the caller sleeps and asks again).
    fn wait_for_end(&self, timeout: std::time::Duration) -> Result<Option<bool>, StoreError> {
        let _ = timeout;
        Ok(None)
    }
}

/// A scheduler's claim of one fire: the run it starts if no process has fired `(graph,
/// scheduled_us)` yet. The claim and the run row commit together, so a fire is never run twice
/// (two schedulers on one database) and never claimed without its run (a crash in between).
#[derive(Debug, Clone, Default)]
pub struct FireClaim {
    pub run_id: String,
    pub graph: String,
    pub trigger: String,
    pub scheduled_us: i64,
    pub now_us: i64,
    /// Who fires it (`host:pid`), also kept in the run's `meta_json` as `{"owner": ...}`.
    pub owner: String,
    /// The run's `meta_json` when it says more than its owner (it must name the same owner).
    pub meta_json: Option<String>,
    /// The config the run uses, as JSON (for readers such as `tm show`).
    pub config_json: Option<String>,
}

/// The statements of a fire claim; the same text serves SQLite (`?N`) and PostgreSQL (`$N`).
pub(crate) const CLAIM_FIRE: &str = "INSERT INTO fires (graph, scheduled_us, run_id, owner, \
    fired_us) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (graph, scheduled_us) DO NOTHING";
pub(crate) const FIRE_RUN: &str = "INSERT INTO runs (run_id, graph, state, trigger, \
    scheduled_us, created_us, started_us, meta_json, config_json) \
    VALUES (?1, ?2, 'running', ?3, ?4, ?5, ?5, ?6, ?7)";

/// A run submitted with an idempotency key: recorded (state `running`) only if no run of the
/// same graph has the key, in one statement, so racing processes start one run between them.
#[derive(Debug, Clone, Default)]
pub struct KeyClaim {
    pub run_id: String,
    pub graph: String,
    pub trigger: String,
    pub key: String,
    pub now_us: i64,
    pub meta_json: String,
}

/// The statements of a key claim, for both dialects.
pub(crate) const KEY_RUN: &str = "INSERT INTO runs (run_id, graph, state, trigger, created_us, \
    started_us, meta_json, idem_key) VALUES (?1, ?2, 'running', ?3, ?4, ?4, ?5, ?6) \
    ON CONFLICT DO NOTHING";
pub(crate) const KEYED_RUN: &str = "SELECT run_id FROM runs WHERE graph = ?1 AND idem_key = ?2";

/// A paused schedule: no scheduler sharing the database fires `graph` while the row exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub graph: String,
    /// When it was paused (microseconds since the epoch).
    pub paused_us: i64,
    /// Who paused it (`host:pid`).
    pub owner: String,
}

/// The statements of pauses; the same text serves SQLite (`?N`) and PostgreSQL (`$N`).
pub(crate) const PAUSE: &str = "INSERT INTO pauses (graph, paused_us, owner) VALUES (?1, ?2, ?3) \
    ON CONFLICT (graph) DO NOTHING";
pub(crate) const UNPAUSE: &str = "DELETE FROM pauses WHERE graph = ?1 RETURNING paused_us";
pub(crate) const PAUSES: &str = "SELECT graph, paused_us, owner FROM pauses ORDER BY graph";
/// The statements of manual triggers, for both dialects like the ones above.
pub(crate) const REQUEST_TRIGGER: &str = "INSERT INTO triggers (graph, params_json, requested_us, \
    requested_by) VALUES (?1, ?2, ?3, ?4) RETURNING id";
pub(crate) const TRIGGERED_GRAPHS: &str =
    "SELECT DISTINCT graph FROM triggers WHERE claimed_us IS NULL";
pub(crate) const CLAIM_TRIGGERS: &str = "UPDATE triggers SET claimed_us = ?1, claimed_by = ?2 \
    WHERE graph = ?3 AND claimed_us IS NULL RETURNING id, params_json";

impl FireClaim {
    pub(crate) fn meta_json(&self) -> String {
        match &self.meta_json {
            Some(meta) => meta.clone(),
            None => serde_json::json!({ "owner": self.owner }).to_string(),
        }
    }
}

/// The SQLite cache index: one connection, opened on first use.
pub(crate) struct SqliteCache {
    place: Arc<SqlitePlace>,
    /// This process's connection (a forked child opens its own).
    conn: Mutex<ForkLocal<Option<Connection>>>,
    closed: AtomicBool,
}

const ENTRY_COLS: &str = "id, key, module, func, seed, inputs_json, version, result_path, format, \
                          content_hash, size, created_us, expires_us, duration_us";
const STATE_COLS: &str = "key, module, func, status, entry_id, started_us, ended_us, duration_us, \
                          error_type, error_message, owner_pid, owner_host, lease_until_us";

fn entry_row(r: &Row<'_>) -> rusqlite::Result<CacheEntry> {
    Ok(CacheEntry {
        id: r.get(0)?,
        facts: CallFacts {
            key: r.get(1)?,
            module: r.get(2)?,
            func: r.get(3)?,
            seed: r.get(4)?,
            inputs_json: r.get(5)?,
            version: r.get(6)?,
        },
        result: StoredResult {
            result_path: r.get(7)?,
            format: r.get(8)?,
            content_hash: r.get(9)?,
            size: r.get(10)?,
            expires_us: r.get(12)?,
            duration_us: r.get(13)?,
        },
        created_us: r.get(11)?,
    })
}

fn state_row(r: &Row<'_>) -> rusqlite::Result<CallState> {
    let pid: Option<i64> = r.get(10)?;
    let host: Option<String> = r.get(11)?;
    Ok(CallState {
        key: r.get(0)?,
        module: r.get(1)?,
        func: r.get(2)?,
        status: r.get(3)?,
        entry_id: r.get(4)?,
        started_us: r.get(5)?,
        ended_us: r.get(6)?,
        duration_us: r.get(7)?,
        error_type: r.get(8)?,
        error_message: r.get(9)?,
        owner: pid.map(|pid| Owner {
            pid,
            host: host.unwrap_or_default(),
        }),
        lease_until_us: r.get(12)?,
    })
}

/// `func = ?` matches a qualified name, `module.qualname`, or the qualified name's last dotted
/// parts (`area` matches `outer.<locals>.area`).
const FUNC_COND: &str = "(?1 IS NULL OR func = ?1 OR module || '.' || func = ?1 \
                         OR substr(func, -length(?1) - 1) = '.' || ?1)";

/// The key's newest entry, through the state row that points at it: two primary-key lookups,
/// several times cheaper here than `ORDER BY id DESC LIMIT 1` on the `(key, id)` index.
fn latest_entry(c: &Connection, key: &str, now_us: i64) -> rusqlite::Result<Option<CacheEntry>> {
    c.prepare_cached(&format!(
        "SELECT {ENTRY_COLS} FROM cache_entries WHERE id = \
         (SELECT entry_id FROM cache_state WHERE key = ?1) \
         AND (expires_us IS NULL OR expires_us > ?2)"
    ))?
    .query_row(params![key, now_us], entry_row)
    .optional()
}

fn state_of(c: &Connection, key: &str) -> rusqlite::Result<Option<CallState>> {
    c.prepare_cached(&format!(
        "SELECT {STATE_COLS} FROM cache_state WHERE key = ?1"
    ))?
    .query_row(params![key], state_row)
    .optional()
}

/// Whether a `RUNNING` state still has a live owner, as far as the database can tell.
pub(crate) fn is_live(state: &CallState, req: &ClaimRequest) -> bool {
    if state.status != "RUNNING" {
        return false;
    }
    if state.lease_until_us.is_some_and(|t| t <= req.now_us) {
        return false;
    }
    match (&state.owner, &req.takeover) {
        (Some(owner), Some(dead)) => owner != dead,
        _ => true,
    }
}

impl SqliteCache {
    pub(crate) fn new(place: Arc<SqlitePlace>) -> SqliteCache {
        SqliteCache {
            place,
            conn: Mutex::new(ForkLocal::new(None)),
            closed: AtomicBool::new(false),
        }
    }

    /// Drops the connection; later verbs fail with [`StoreError::Closed`].
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _gate = Pass::enter();
        *self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get() = None;
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let name = self.place.name.as_str();
        self.place.before_open();
        let conn = Connection::open_with_flags(&self.place.path, self.place.reader_flags())
            .map_err(|e| open_error(name, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.pragma_update(None, "foreign_keys", true))
            .map_err(|e| open_error(name, e))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }

    /// Runs `f` on the connection (opening it first if needed); SQLite errors name the database.
    /// Holds a fork pass (see [`crate::fork_gate`]): a child forked while another thread is in
    /// here would otherwise inherit the connection's mutex, or SQLite's for the file, locked. A
    /// fork may so wait for a call waiting for the database's lock (`BUSY_TIMEOUT` at most).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let _gate = Pass::enter();
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let slot = guard.get();
        if slot.is_none() {
            *slot = Some(self.connect()?);
        }
        let conn = slot.as_mut().ok_or(StoreError::Closed)?;
        f(conn).map_err(|e| StoreError::Query {
            path: self.place.name.clone(),
            source: Arc::new(e),
        })
    }
}

impl CacheBackend for SqliteCache {
    fn claim_fire(&self, fire: &FireClaim) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let won = tx.execute(
                CLAIM_FIRE,
                params![
                    fire.graph,
                    fire.scheduled_us,
                    fire.run_id,
                    fire.owner,
                    fire.now_us
                ],
            )? == 1;
            if won {
                tx.execute(
                    FIRE_RUN,
                    params![
                        fire.run_id,
                        fire.graph,
                        fire.trigger,
                        fire.scheduled_us,
                        fire.now_us,
                        fire.meta_json(),
                        fire.config_json
                    ],
                )?;
            }
            tx.commit()?;
            Ok(won)
        })
    }

    fn claim_key(&self, k: &KeyClaim) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let won = tx.execute(
                KEY_RUN,
                params![k.run_id, k.graph, k.trigger, k.now_us, k.meta_json, k.key],
            )? == 1;
            let existing = if won {
                None
            } else {
                tx.query_row(KEYED_RUN, params![k.graph, k.key], |r| r.get(0))
                    .optional()?
            };
            tx.commit()?;
            Ok(existing)
        })
    }

    fn pause(&self, graph: &str, now_us: i64, owner: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute(PAUSE, params![graph, now_us, owner])? == 1))
    }

    fn unpause(&self, graph: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            c.prepare_cached(UNPAUSE)?
                .query_row([graph], |r| r.get::<_, i64>(0))
                .optional()
        })
    }

    fn pauses(&self) -> Result<Vec<Pause>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(PAUSES)?;
            let rows = stmt.query_map([], |r| {
                Ok(Pause {
                    graph: r.get(0)?,
                    paused_us: r.get(1)?,
                    owner: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    fn request_trigger(
        &self,
        graph: &str,
        params_json: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<i64, StoreError> {
        self.with(|c| {
            c.prepare_cached(REQUEST_TRIGGER)?
                .query_row(params![graph, params_json, now_us, owner], |r| r.get(0))
        })
    }

    fn triggered_graphs(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(TRIGGERED_GRAPHS)?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn claim_triggers(
        &self,
        graph: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let claimed = {
                let mut stmt = tx.prepare_cached(CLAIM_TRIGGERS)?;
                let rows = stmt.query_map(params![now_us, owner, graph], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                rows.collect::<Result<Vec<(i64, String)>, _>>()?
            };
            tx.commit()?;
            Ok(claimed)
        })
    }

    fn lookup(&self, key: &str, now_us: i64) -> Result<Option<CacheEntry>, StoreError> {
        self.with(|c| latest_entry(c, key, now_us))
    }

    fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if req.use_cache {
                if let Some(entry) = latest_entry(&tx, &req.facts.key, req.now_us)? {
                    return Ok(Claim::Hit(entry));
                }
            }
            let state = state_of(&tx, &req.facts.key)?;
            if let Some(state) = state.filter(|s| is_live(s, req)) {
                return Ok(Claim::Busy(state));
            }
            let f = &req.facts;
            let token: i64 = tx
                .prepare_cached(
                    "INSERT INTO cache_state (key, module, func, status, token, started_us, \
                     owner_pid, owner_host, lease_until_us, updated_us) \
                     VALUES (?1, ?2, ?3, 'RUNNING', 1, ?4, ?5, ?6, ?7, ?4) \
                     ON CONFLICT (key) DO UPDATE SET status = 'RUNNING', token = token + 1, \
                     module = ?2, func = ?3, started_us = ?4, ended_us = NULL, \
                     duration_us = NULL, error_type = NULL, error_message = NULL, \
                     owner_pid = ?5, owner_host = ?6, lease_until_us = ?7, updated_us = ?4 \
                     RETURNING token",
                )?
                .query_row(
                    params![
                        f.key,
                        f.module,
                        f.func,
                        req.now_us,
                        req.owner.pid,
                        req.owner.host,
                        req.now_us.saturating_add(req.lease_us)
                    ],
                    |r| r.get(0),
                )?;
            tx.commit()?;
            Ok(Claim::Run { token })
        })
    }

    fn heartbeat(&self, key: &str, token: i64, lease_until_us: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c
                .prepare_cached(
                    "UPDATE cache_state SET lease_until_us = ?3 \
                     WHERE key = ?1 AND token = ?2 AND status = 'RUNNING'",
                )?
                .execute(params![key, token, lease_until_us])?;
            Ok(n == 1)
        })
    }

    fn complete(
        &self,
        facts: &CallFacts,
        token: i64,
        result: &StoredResult,
        now_us: i64,
    ) -> Result<CacheEntry, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO cache_entries (key, module, func, seed, inputs_json, version, \
                     result_path, format, content_hash, size, created_us, expires_us, \
                     duration_us) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
                     RETURNING id",
                )?
                .query_row(
                    params![
                        facts.key,
                        facts.module,
                        facts.func,
                        facts.seed,
                        facts.inputs_json,
                        facts.version,
                        result.result_path,
                        result.format,
                        result.content_hash,
                        result.size,
                        now_us,
                        result.expires_us,
                        result.duration_us
                    ],
                    |r| r.get(0),
                )?;
            // The state follows the newest entry whether or not the lease was kept; only the
            // owner's fields are left alone when someone else has taken the key over since.
            tx.prepare_cached(
                "UPDATE cache_state SET entry_id = ?2, \
                 status = CASE WHEN token = ?3 THEN 'COMPLETED' ELSE status END, \
                 ended_us = CASE WHEN token = ?3 THEN ?4 ELSE ended_us END, \
                 duration_us = CASE WHEN token = ?3 THEN ?5 ELSE duration_us END, \
                 lease_until_us = CASE WHEN token = ?3 THEN NULL ELSE lease_until_us END, \
                 updated_us = ?4 WHERE key = ?1",
            )?
            .execute(params![facts.key, id, token, now_us, result.duration_us])?;
            tx.commit()?;
            Ok(CacheEntry {
                id,
                facts: facts.clone(),
                result: result.clone(),
                created_us: now_us,
            })
        })
    }

    fn release(
        &self,
        key: &str,
        token: i64,
        status: &str,
        error: Option<(&str, &str)>,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let (etype, emsg) = error.unzip();
        self.with(|c| {
            let n = c
                .prepare_cached(
                    "UPDATE cache_state SET status = ?3, error_type = ?4, error_message = ?5, \
                     ended_us = ?6, duration_us = ?6 - started_us, lease_until_us = NULL, \
                     updated_us = ?6 WHERE key = ?1 AND token = ?2 AND status = 'RUNNING'",
                )?
                .execute(params![key, token, status, etype, emsg, now_us])?;
            Ok(n == 1)
        })
    }

    fn entries(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError> {
        let limit = filter.limit.map_or(-1, |n| n as i64);
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {ENTRY_COLS} FROM cache_entries WHERE {FUNC_COND} \
                 AND (?2 IS NULL OR created_us < ?2) ORDER BY id DESC LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![filter.func, filter.created_before_us, limit],
                entry_row,
            )?;
            rows.collect()
        })
    }

    fn states(&self, filter: &CacheFilter) -> Result<Vec<CallState>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {STATE_COLS} FROM cache_state WHERE {FUNC_COND} ORDER BY func, key"
            ))?;
            let rows = stmt.query_map(params![filter.func], state_row)?;
            rows.collect()
        })
    }

    fn find(&self, key: &str) -> Result<Vec<(CallState, Option<CacheEntry>)>, StoreError> {
        let pattern = format!("{}%", key.replace(['%', '_', '\\'], ""));
        self.with(|c| {
            let states: Vec<CallState> = {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {STATE_COLS} FROM cache_state WHERE key LIKE ?1 ORDER BY key LIMIT 10"
                ))?;
                let rows = stmt.query_map(params![pattern], state_row)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut out = Vec::with_capacity(states.len());
            for s in states {
                let entry = c
                    .prepare_cached(&format!(
                        "SELECT {ENTRY_COLS} FROM cache_entries WHERE key = ?1 \
                         ORDER BY id DESC LIMIT 1"
                    ))?
                    .query_row(params![s.key], entry_row)
                    .optional()?;
                out.push((s, entry));
            }
            Ok(out)
        })
    }

    fn supersede(&self, key: &str, newest_id: i64) -> Result<Vec<CacheEntry>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "DELETE FROM cache_entries WHERE key = ?1 AND id < ?2 RETURNING {ENTRY_COLS}"
            ))?;
            let rows = stmt.query_map(params![key, newest_id], entry_row)?;
            rows.collect()
        })
    }

    fn clear(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let gone: Vec<CacheEntry> = {
                let mut stmt = tx.prepare_cached(&format!(
                    "DELETE FROM cache_entries WHERE {FUNC_COND} \
                     AND (?2 IS NULL OR created_us < ?2) RETURNING {ENTRY_COLS}"
                ))?;
                let rows =
                    stmt.query_map(params![filter.func, filter.created_before_us], entry_row)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            // Deleting an entry set its state's entry_id to NULL (ON DELETE SET NULL).
            tx.prepare_cached(&format!(
                "DELETE FROM cache_state WHERE {FUNC_COND} AND status != 'RUNNING' \
                 AND entry_id IS NULL"
            ))?
            .execute(params![filter.func])?;
            tx.commit()?;
            Ok(gone)
        })
    }
}

#[cfg(test)]
mod tests;
