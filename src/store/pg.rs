//! The PostgreSQL backend: the same store on a server that many processes and hosts share.
//!
//! Writes go through the shared writer (queue, group commit, fold: see [`super::writer`]) on a
//! connection of their own; the statements are the SQLite ones with `$N` placeholders. Reads take
//! a connection from a small pool. Migrations are a parallel list of PostgreSQL files with the
//! same version numbers, applied under an advisory lock so that processes starting together
//! migrate once.
//!
//! The driver is the synchronous `postgres` crate (the blocking face of `tokio-postgres`, which
//! runs its own current-thread runtime per connection): the store's threads block by design, and
//! no async runtime leaks into the rest of the core. Connections are plain TCP or a unix socket
//! (no TLS).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel, Row, Statement, Transaction};

use super::pgconn::PgConfig;

use super::cache_index::CacheBackend;
use super::cache_index::{
    CacheEntry, CacheFilter, CallFacts, CallState, Claim, ClaimRequest, FireClaim, KeyClaim, Owner,
    Pause, StoredResult, CLAIM_FIRE, CLAIM_TRIGGERS, FIRE_RUN, KEYED_RUN, KEY_RUN, PAUSE, PAUSES,
    REQUEST_TRIGGER, TRIGGERED_GRAPHS, UNPAUSE,
};
use super::error::{pg_error, StoreError};
use super::fold::{FoldedAttempt, FoldedState};
use super::model::{
    AttemptRow, ErrorInfo, EventRow, GraphRecord, LogRow, RunDetail, RunFilter, RunSummary,
    TaskFact, TaskRef, TaskRow, Write, UNFINISHED_RUN_STATES,
};
use super::read::{like_prefix, RUN_IDS_WITH_PREFIX};
use super::url::pg_config;
use super::writer::{
    apply, apply_batch, Committer, Fail, Param, ProcessWriter, Report, Rows, RunKeys, Writer,
    WriterRef,
};
use crate::fork_gate::{ForkLocal, Pass};

/// One PostgreSQL migration; the versions match the SQLite list in [`super::migrations`].
struct Migration {
    version: i64,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/pg/0001_init.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/pg/0002_run_keys.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("migrations/pg/0003_cache.sql"),
    },
    Migration {
        version: 4,
        sql: include_str!("migrations/pg/0004_fleet.sql"),
    },
    Migration {
        version: 5,
        sql: include_str!("migrations/pg/0005_control.sql"),
    },
];

/// Taken (for the migrating transaction only) by every tm process migrating a database.
const MIGRATION_LOCK: i64 = 0x746d_5f6d_6967; // "tm_mig"

/// Idle read connections kept for reuse.
const POOL_SIZE: usize = 4;

/// Pauses between tries of a batch that failed for an environmental reason (the server restarting,
/// the network): about 20 s in all before the batch is reported lost.
const BACKOFF_MS: [u64; 8] = [10, 50, 200, 500, 1000, 2000, 5000, 10000];

/// Rewrites `?N` placeholders (SQLite's) as `$N` (PostgreSQL's). The shared statements have no
/// `?` anywhere else.
fn dollar(sql: &str) -> String {
    sql.replace('?', "$")
}

/// Connects and sets the session up.
fn connect(config: &PgConfig, place: &str) -> Result<Client, StoreError> {
    config
        .connect()
        .map_err(|e| pg_error(place, "cannot connect", e))
}

/// Brings the database to the newest schema, in one transaction under an advisory lock.
pub(crate) fn migrate(client: &mut Client, place: &str) -> Result<(), StoreError> {
    let latest = MIGRATIONS[MIGRATIONS.len() - 1].version;
    let failed = |e| pg_error(place, "cannot migrate the schema", e);
    let mut tx = client.transaction().map_err(failed)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(failed)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS tm_schema (version BIGINT NOT NULL)")
        .map_err(failed)?;
    let found: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM tm_schema", &[])
        .and_then(|r| r.try_get(0))
        .map_err(failed)?;
    if found > latest {
        return Err(StoreError::SchemaTooNew {
            path: place.to_string(),
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: u32::try_from(latest).unwrap_or(u32::MAX),
        });
    }
    if found == 0 {
        // Refuse a database whose `runs` table some other program made.
        let foreign: Option<String> = tx
            .query_opt(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name IN ('runs', 'graphs') \
                 LIMIT 1",
                &[],
            )
            .map_err(failed)?
            .map(|r| r.get(0));
        if let Some(table) = foreign {
            return Err(StoreError::Open {
                path: place.to_string(),
                detail: format!(
                    "it has a table {table:?} that tm did not create; use another database"
                ),
                source: None,
            });
        }
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql)
            .map_err(|e| pg_error(place, &format!("migration {} failed", m.version), e))?;
        tx.execute("INSERT INTO tm_schema (version) VALUES ($1)", &[&m.version])
            .map_err(failed)?;
    }
    tx.commit().map_err(failed)
}

/// The PostgreSQL store backend.
pub(crate) struct Postgres {
    place: String,
    config: PgConfig,
    writer: ProcessWriter,
    pool: Pool,
    cache: PgCache,
}

impl Postgres {
    /// Connects, migrates and starts the writer; errors here leave nothing running.
    pub(crate) fn open(url: &str) -> Result<Postgres, StoreError> {
        let (config, place) = pg_config(url)?;
        let mut client = connect(&config, &place)?;
        migrate(&mut client, &place)?;
        let writer = Self::spawn_writer(&config, &place, Some(client))?;
        Ok(Postgres {
            pool: Pool {
                config: config.clone(),
                place: place.clone(),
                idle: Mutex::new(ForkLocal::new(Vec::new())),
                closed: AtomicBool::new(false),
            },
            cache: PgCache {
                config: config.clone(),
                place: place.clone(),
                conn: Mutex::new(ForkLocal::new(None)),
                listener: Mutex::new(ForkLocal::new(None)),
                closed: AtomicBool::new(false),
            },
            config,
            place,
            writer: ProcessWriter::new(Some(writer)),
        })
    }

    /// Starts a writer thread committing through `client` (None: it connects at its first
    /// commit).
    fn spawn_writer(
        config: &PgConfig,
        place: &str,
        client: Option<Client>,
    ) -> Result<Writer, StoreError> {
        let committer = PgCommitter {
            config: config.clone(),
            place: place.to_owned(),
            client,
            stmts: HashMap::new(),
            keys: RunKeys::default(),
        };
        Writer::spawn(place.to_owned(), Box::new(committer))
    }

    /// The writer of the process at hand (a forked child's first write starts its own, which
    /// connects at its first commit).
    fn writer(&self, start: bool) -> Result<Option<WriterRef<'_>>, StoreError> {
        let spawn = || Self::spawn_writer(&self.config, &self.place, None);
        self.writer
            .get(start.then_some(&spawn as &dyn Fn() -> Result<Writer, StoreError>))
    }
}

/// The write side's statements on one transaction, prepared once per connection.
struct PgRows<'t, 'c> {
    tx: &'t mut Transaction<'c>,
    stmts: &'t mut HashMap<&'static str, Statement>,
}

impl PgRows<'_, '_> {
    fn statement(&mut self, sql: &'static str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(&dollar(sql))?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }
}

fn pg_params<'a>(params: &'a [Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| -> &(dyn ToSql + Sync) {
            match p {
                Param::Int(v) => v,
                Param::Text(v) => v,
                Param::OptText(v) => v,
                Param::Bytes(v) => v,
                Param::Bool(v) => v,
            }
        })
        .collect()
}

impl Rows for PgRows<'_, '_> {
    type Error = postgres::Error;
    fn exec(&mut self, sql: &'static str, params: &[Param<'_>]) -> Result<u64, postgres::Error> {
        let st = self.statement(sql)?;
        self.tx.execute(&st, &pg_params(params))
    }
    fn query_i64(
        &mut self,
        sql: &'static str,
        params: &[Param<'_>],
    ) -> Result<Option<i64>, postgres::Error> {
        let st = self.statement(sql)?;
        match self.tx.query_opt(&st, &pg_params(params))? {
            Some(row) => row.try_get(0).map(Some),
            None => Ok(None),
        }
    }
    #[cfg(test)]
    fn batch(&mut self, sql: &str) -> Result<(), postgres::Error> {
        self.tx.batch_execute(sql)
    }

    // The bulk writes take whole columns as arrays (UNNEST): one round trip for a batch's rows
    // instead of one per row, which is what a server across a network makes expensive.

    fn insert_facts(&mut self, rid: i64, tasks: &[TaskFact]) -> Result<(), postgres::Error> {
        if tasks.is_empty() {
            return Ok(());
        }
        let nodes: Vec<i64> = tasks.iter().map(|t| i64::from(t.node)).collect();
        let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
        let keys: Vec<Option<&str>> = tasks.iter().map(|t| t.task_key.as_deref()).collect();
        let digests: Vec<Option<&str>> = tasks.iter().map(|t| t.inputs_digest.as_deref()).collect();
        let seeds: Vec<Option<i64>> = tasks.iter().map(|t| t.seed).collect();
        let versions: Vec<Option<&str>> = tasks.iter().map(|t| t.code_version.as_deref()).collect();
        let st = self.statement(BULK_FACTS)?;
        self.tx.execute(
            &st,
            &[&rid, &nodes, &names, &keys, &digests, &seeds, &versions],
        )?;
        Ok(())
    }

    fn upsert_states(&mut self, rows: &[FoldedState<'_>]) -> Result<(), postgres::Error> {
        let rid: Vec<i64> = rows.iter().map(|r| r.rid).collect();
        let node: Vec<i64> = rows.iter().map(|r| r.node).collect();
        let status: Vec<&str> = rows.iter().map(|r| r.status).collect();
        let attempt: Vec<i64> = rows.iter().map(|r| r.attempt).collect();
        let started: Vec<Option<i64>> = rows.iter().map(|r| r.started_us).collect();
        let ended: Vec<Option<i64>> = rows.iter().map(|r| r.ended_us).collect();
        let etype: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.error.map(|e| e.type_name.as_str()))
            .collect();
        let emsg: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.error.map(|e| e.message.as_str()))
            .collect();
        let tb: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.error.and_then(|e| e.traceback.as_deref()))
            .collect();
        let set_attempt: Vec<bool> = rows.iter().map(|r| r.set_attempt).collect();
        let set_ended: Vec<bool> = rows.iter().map(|r| r.set_ended).collect();
        let set_error: Vec<bool> = rows.iter().map(|r| r.set_error).collect();
        // Existing rows first (keeping what the batch did not set), then the new ones.
        let update = self.statement(BULK_STATE_UPDATE)?;
        self.tx.execute(
            &update,
            &[
                &rid,
                &node,
                &status,
                &attempt,
                &started,
                &ended,
                &etype,
                &emsg,
                &tb,
                &set_attempt,
                &set_ended,
                &set_error,
            ],
        )?;
        let insert = self.statement(BULK_STATE_INSERT)?;
        self.tx.execute(
            &insert,
            &[
                &rid, &node, &status, &attempt, &started, &ended, &etype, &emsg, &tb,
            ],
        )?;
        Ok(())
    }

    fn upsert_attempts(&mut self, rows: &[FoldedAttempt<'_>]) -> Result<(), postgres::Error> {
        let rid: Vec<i64> = rows.iter().map(|r| r.rid).collect();
        let node: Vec<i64> = rows.iter().map(|r| r.node).collect();
        let attempt: Vec<i64> = rows.iter().map(|r| r.attempt).collect();
        let started: Vec<Option<i64>> = rows.iter().map(|r| r.started_us).collect();
        let ended: Vec<Option<i64>> = rows.iter().map(|r| r.ended_us).collect();
        let status: Vec<&str> = rows.iter().map(|r| r.status).collect();
        let etype: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.error.map(|e| e.type_name.as_str()))
            .collect();
        let emsg: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.error.map(|e| e.message.as_str()))
            .collect();
        let tb: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.error.and_then(|e| e.traceback.as_deref()))
            .collect();
        let retry: Vec<Option<i64>> = rows.iter().map(|r| r.retry_at_us).collect();
        let set_started: Vec<bool> = rows.iter().map(|r| r.set_started).collect();
        let update = self.statement(BULK_ATTEMPT_UPDATE)?;
        self.tx.execute(
            &update,
            &[
                &rid,
                &node,
                &attempt,
                &started,
                &ended,
                &status,
                &etype,
                &emsg,
                &tb,
                &retry,
                &set_started,
            ],
        )?;
        let insert = self.statement(BULK_ATTEMPT_INSERT)?;
        self.tx.execute(
            &insert,
            &[
                &rid, &node, &attempt, &started, &ended, &status, &etype, &emsg, &tb, &retry,
            ],
        )?;
        Ok(())
    }
}

/// A run's task facts, one array per column.
const BULK_FACTS: &str = "INSERT INTO task_facts (rid, node, name, task_key, inputs_digest, seed, \
    code_version) SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], \
    $6::bigint[], $7::text[])";

/// Folded states of rows that exist: the fold's rule (see `FOLD_STATE`), column-wise.
const BULK_STATE_UPDATE: &str = "UPDATE task_state AS s SET status = v.status, \
    attempt = CASE WHEN v.set_attempt THEN v.attempt ELSE s.attempt END, \
    started_us = COALESCE(s.started_us, v.started_us), \
    ended_us = CASE WHEN v.set_ended THEN v.ended_us ELSE s.ended_us END, \
    error_type = CASE WHEN v.set_error THEN v.error_type ELSE s.error_type END, \
    error_message = CASE WHEN v.set_error THEN v.error_message ELSE s.error_message END, \
    traceback = CASE WHEN v.set_error THEN v.traceback ELSE s.traceback END \
    FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], \
    $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::bool[], $12::bool[]) \
    AS v(rid, node, status, attempt, started_us, ended_us, error_type, error_message, \
    traceback, set_attempt, set_ended, set_error) WHERE s.rid = v.rid AND s.node = v.node";

/// Folded states of rows that do not exist yet, inserted as given.
const BULK_STATE_INSERT: &str = "INSERT INTO task_state (rid, node, status, attempt, started_us, \
    ended_us, error_type, error_message, traceback) SELECT * FROM UNNEST($1::bigint[], \
    $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], \
    $9::text[]) ON CONFLICT (rid, node) DO NOTHING";

/// Folded attempts that exist: the fold's rule (see `FOLD_ATTEMPT`), column-wise.
const BULK_ATTEMPT_UPDATE: &str = "UPDATE attempts AS a SET \
    started_us = CASE WHEN v.set_started THEN v.started_us ELSE a.started_us END, \
    ended_us = v.ended_us, status = v.status, error_type = v.error_type, \
    error_message = v.error_message, traceback = v.traceback, retry_at_us = v.retry_at_us \
    FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], \
    $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bool[]) \
    AS v(rid, node, attempt, started_us, ended_us, status, error_type, error_message, \
    traceback, retry_at_us, set_started) \
    WHERE a.rid = v.rid AND a.node = v.node AND a.attempt = v.attempt";

/// Folded attempts that do not exist yet, inserted as given.
const BULK_ATTEMPT_INSERT: &str = "INSERT INTO attempts (rid, node, attempt, started_us, \
    ended_us, status, error_type, error_message, traceback, retry_at_us) SELECT * FROM \
    UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::bigint[]) \
    ON CONFLICT (rid, node, attempt) DO NOTHING";

/// Errors of the connection or the server's state rather than of one write: retry the batch.
fn is_environmental(e: &postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // No SQLSTATE: an I/O or connection error.
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            matches!(class, "08" | "53" | "57" | "58")
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::LOCK_NOT_AVAILABLE
                || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        }
    }
}

/// A refused write's reason in a user's words.
fn reason(e: &postgres::Error) -> String {
    match e.code() {
        Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => "no such run or task".to_string(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => match e.as_db_error() {
            Some(db) => format!("it is already recorded ({})", db.message()),
            None => "it is already recorded".to_string(),
        },
        _ => match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        },
    }
}

/// The writer thread's connection; reconnects after the server or the network drops it.
struct PgCommitter {
    config: PgConfig,
    place: String,
    client: Option<Client>,
    stmts: HashMap<&'static str, Statement>,
    keys: RunKeys,
}

impl PgCommitter {
    /// Connects (again) unless the connection is open.
    fn connected(&mut self) -> Result<(), postgres::Error> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.stmts.clear();
            self.client = None;
            self.client = Some(self.config.connect()?);
        }
        Ok(())
    }

    fn try_batch(&mut self, batch: &[Write]) -> Result<(), Fail<postgres::Error>> {
        self.connected()?;
        let Self {
            client,
            stmts,
            keys,
            ..
        } = self;
        let Some(client) = client.as_mut() else {
            return Err(Fail::Refused("no connection".into()));
        };
        let mut tx = client.transaction()?;
        apply_batch(&mut PgRows { tx: &mut tx, stmts }, keys, batch)?;
        tx.commit()?;
        Ok(())
    }

    fn lost(&self, report: &mut Report, lost: usize, e: postgres::Error) {
        report.error(pg_error(
            &self.place,
            &format!("{lost} write(s) were not stored"),
            e,
        ));
    }

    /// Applies `batch` with a savepoint around each write, skipping and reporting the ones that
    /// fail; an environmental failure drops the whole batch.
    fn commit_each(&mut self, batch: &[Write], report: &mut Report) {
        let mut refused = Vec::new();
        let outcome = (|| -> Result<(), postgres::Error> {
            self.connected()?;
            let Self {
                client,
                stmts,
                keys,
                ..
            } = self;
            let Some(client) = client.as_mut() else {
                return Ok(());
            };
            let mut tx = client.transaction()?;
            for w in batch {
                let mut sp = tx.transaction()?;
                let applied = apply(&mut PgRows { tx: &mut sp, stmts }, keys, w);
                match applied {
                    Ok(()) => sp.commit()?,
                    Err(Fail::Db(e)) if is_environmental(&e) => return Err(e),
                    Err(Fail::Db(e)) => {
                        sp.rollback()?;
                        refused.push((w, reason(&e)));
                    }
                    Err(Fail::Refused(why)) => {
                        sp.rollback()?;
                        refused.push((w, why));
                    }
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

impl Committer for PgCommitter {
    fn commit(&mut self, batch: &[Write], report: &mut Report) {
        let mut backoff = BACKOFF_MS.iter();
        loop {
            let applied = self.try_batch(batch);
            if applied.is_err() {
                // Rolled back: keys remembered for runs it inserted are void.
                self.keys.forget_all();
            }
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
}

/// Read connections, kept for reuse; a broken one is dropped and replaced.
///
/// Connections belong to the process that opened them: a forked child opens its own (one socket
/// used by two processes interleaves their messages, and a child dropping its parent's client
/// would end the parent's session). The pool's mutex is taken holding a fork pass (see
/// [`crate::fork_gate`]), so a child never inherits it locked; queries run without one.
struct Pool {
    config: PgConfig,
    place: String,
    idle: Mutex<ForkLocal<Vec<Client>>>,
    closed: AtomicBool,
}

impl Pool {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _gate = Pass::enter();
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get()
            .clear();
    }

    /// Runs `f` on a pooled connection; a pooled connection that the server closed meanwhile is
    /// replaced once.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let pooled = {
            let _gate = Pass::enter();
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            idle.get().pop()
        };
        let fresh = pooled.is_none();
        let mut client = match pooled {
            Some(c) => c,
            None => connect(&self.config, &self.place)?,
        };
        let mut result = f(&mut client);
        if !fresh && client.is_closed() {
            client = connect(&self.config, &self.place)?;
            result = f(&mut client);
        }
        if !client.is_closed() && !self.closed.load(Ordering::SeqCst) {
            let _gate = Pass::enter();
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let idle = idle.get();
            if idle.len() < POOL_SIZE {
                idle.push(client);
            }
        }
        result.map_err(|e| pg_error(&self.place, "query failed", e))
    }
}

const RUN_COLS: &str =
    "run_id, graph, state, trigger, scheduled_us, created_us, started_us, ended_us";
const GRAPH_COLS: &str = "name, schedule, tz, created_us, updated_us, last_fire_us, meta_json";

/// A BIGINT column that holds a `u32` (a node or an attempt number).
fn small(r: &Row, i: usize) -> Result<u32, postgres::Error> {
    let v: i64 = r.try_get(i)?;
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

fn small_opt(r: &Row, i: usize) -> Result<Option<u32>, postgres::Error> {
    let v: Option<i64> = r.try_get(i)?;
    Ok(v.map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
}

fn run_summary(r: &Row) -> Result<RunSummary, postgres::Error> {
    Ok(RunSummary {
        run_id: r.try_get(0)?,
        graph: r.try_get(1)?,
        state: r.try_get(2)?,
        trigger: r.try_get(3)?,
        scheduled_us: r.try_get(4)?,
        created_us: r.try_get(5)?,
        started_us: r.try_get(6)?,
        ended_us: r.try_get(7)?,
    })
}

/// An error from columns `i, i+1, i+2` (type, message, traceback); `None` when the type is NULL.
fn error_at(r: &Row, i: usize) -> Result<Option<ErrorInfo>, postgres::Error> {
    let type_name: Option<String> = r.try_get(i)?;
    Ok(match type_name {
        None => None,
        Some(type_name) => Some(ErrorInfo {
            type_name,
            message: r.try_get::<_, Option<String>>(i + 1)?.unwrap_or_default(),
            traceback: r.try_get(i + 2)?,
        }),
    })
}

fn graph_record(r: &Row) -> Result<GraphRecord, postgres::Error> {
    Ok(GraphRecord {
        name: r.try_get(0)?,
        schedule: r.try_get(1)?,
        tz: r.try_get(2)?,
        created_us: r.try_get(3)?,
        updated_us: r.try_get(4)?,
        last_fire_us: r.try_get(5)?,
        meta_json: r.try_get(6)?,
    })
}

fn collect<T>(
    rows: Vec<Row>,
    f: impl Fn(&Row) -> Result<T, postgres::Error>,
) -> Result<Vec<T>, postgres::Error> {
    rows.iter().map(f).collect()
}

/// The SQL condition selecting one task by `$2`, on a table aliased `f` (task_facts).
fn task_cond(task: TaskRef<'_>) -> &'static str {
    match task {
        TaskRef::Node(_) => "f.node = $2",
        TaskRef::Name(_) => "f.name = $2",
    }
}

/// `task` as the `$2` parameter of [`task_cond`].
enum TaskParam {
    Node(i64),
    Name(String),
}

impl TaskParam {
    fn new(task: TaskRef<'_>) -> TaskParam {
        match task {
            TaskRef::Node(n) => TaskParam::Node(i64::from(n)),
            TaskRef::Name(s) => TaskParam::Name(s.to_string()),
        }
    }
    fn sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            TaskParam::Node(n) => n,
            TaskParam::Name(s) => s,
        }
    }
}

fn unfinished_list() -> String {
    UNFINISHED_RUN_STATES.map(|s| format!("'{s}'")).join(", ")
}

impl super::backend::Backend for Postgres {
    fn location(&self) -> &str {
        &self.place
    }
    fn submit(&self, w: Write) -> Result<(), StoreError> {
        match self.writer(true)? {
            Some(writer) => writer.submit(w),
            None => Err(StoreError::Closed),
        }
    }
    fn flush(&self) -> Result<(), StoreError> {
        // Nothing is queued by a child that never wrote.
        self.writer(false)?.map_or(Ok(()), |w| w.flush())
    }
    fn close(&self) -> Result<(), StoreError> {
        self.pool.close();
        self.cache.close();
        self.writer(false)?.map_or(Ok(()), |w| w.close())
    }
    fn last_error(&self) -> Option<StoreError> {
        self.writer(false)
            .ok()
            .flatten()
            .and_then(|w| w.last_error())
    }

    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE ($1::text IS NULL OR graph = $1) \
             AND ($2::text IS NULL OR state = $2) AND ($4::text IS NULL OR trigger = $4) \
             AND ($5::bigint IS NULL OR created_us < $5 OR (created_us = $5 AND run_id < $6)) \
             ORDER BY created_us DESC, run_id DESC LIMIT $3"
        );
        let limit = filter.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        let before_us = filter.before.as_ref().map(|b| b.0);
        let before_id = filter.before.as_ref().map(|b| b.1.clone());
        self.pool.with(|c| {
            let rows = c.query(
                &sql,
                &[
                    &filter.graph,
                    &filter.state,
                    &limit,
                    &filter.trigger,
                    &before_us,
                    &before_id,
                ],
            )?;
            collect(rows, run_summary)
        })
    }

    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.pool.with(|c| {
            let rows = c.query(
                &dollar(RUN_IDS_WITH_PREFIX),
                &[&like_prefix(prefix), &limit],
            )?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn get_run(&self, run_id: &str) -> Result<Option<RunDetail>, StoreError> {
        self.pool.with(|c| {
            // One snapshot for the run and its tasks.
            let mut tx = c
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()?;
            let head = tx.query_opt(
                &format!(
                    "SELECT {RUN_COLS}, config_json, meta_json, rid FROM runs WHERE run_id = $1"
                ),
                &[&run_id],
            )?;
            let Some(head) = head else {
                return Ok(None);
            };
            let run = run_summary(&head)?;
            let rid: i64 = head.try_get(10)?;
            let rows = tx.query(
                "SELECT f.node, f.name, f.task_key, f.inputs_digest, f.seed, f.code_version, \
                 s.status, s.attempt, s.started_us, s.ended_us, s.error_type, s.error_message, \
                 s.traceback FROM task_facts f LEFT JOIN task_state s \
                 ON s.rid = f.rid AND s.node = f.node WHERE f.rid = $1 ORDER BY f.node",
                &[&rid],
            )?;
            let tasks = collect(rows, |r| {
                Ok(TaskRow {
                    fact: TaskFact {
                        node: small(r, 0)?,
                        name: r.try_get(1)?,
                        task_key: r.try_get(2)?,
                        inputs_digest: r.try_get(3)?,
                        seed: r.try_get(4)?,
                        code_version: r.try_get(5)?,
                    },
                    // No state row yet: the task has not started.
                    status: r
                        .try_get::<_, Option<String>>(6)?
                        .unwrap_or_else(|| "pending".to_string()),
                    attempt: small_opt(r, 7)?.unwrap_or(0),
                    started_us: r.try_get(8)?,
                    ended_us: r.try_get(9)?,
                    error: error_at(r, 10)?,
                })
            })?;
            tx.commit()?;
            Ok(Some(RunDetail {
                run,
                config_json: head.try_get(8)?,
                meta_json: head.try_get(9)?,
                tasks,
            }))
        })
    }

    fn attempts(&self, run_id: &str, task: TaskRef<'_>) -> Result<Vec<AttemptRow>, StoreError> {
        // A clean first attempt that started and ended within one commit has no row of its
        // own: the task's state is that attempt (see fold.rs).
        let cond = task_cond(task);
        let sql = format!(
            "SELECT a.node, a.attempt, a.started_us, a.ended_us, a.status, a.error_type, \
             a.error_message, a.traceback, a.retry_at_us FROM attempts a JOIN task_facts f \
             ON f.rid = a.rid AND f.node = a.node \
             WHERE a.rid = (SELECT rid FROM runs WHERE run_id = $1) AND {cond} \
             UNION ALL \
             SELECT s.node, 1, s.started_us, s.ended_us, s.status, NULL, NULL, NULL, NULL \
             FROM task_state s JOIN task_facts f ON f.rid = s.rid AND f.node = s.node \
             WHERE s.rid = (SELECT rid FROM runs WHERE run_id = $1) AND {cond} \
             AND s.attempt = 1 AND s.status = 'completed' AND NOT EXISTS (SELECT 1 FROM attempts x \
             WHERE x.rid = s.rid AND x.node = s.node AND x.attempt = 1) \
             ORDER BY 1, 2"
        );
        let param = TaskParam::new(task);
        self.pool.with(|c| {
            let rows = c.query(&sql, &[&run_id, param.sql()])?;
            collect(rows, |r| {
                Ok(AttemptRow {
                    node: small(r, 0)?,
                    attempt: small(r, 1)?,
                    started_us: r.try_get(2)?,
                    ended_us: r.try_get(3)?,
                    status: r.try_get(4)?,
                    error: error_at(r, 5)?,
                    retry_at_us: r.try_get(8)?,
                })
            })
        })
    }

    fn logs(&self, run_id: &str, task: Option<TaskRef<'_>>) -> Result<Vec<LogRow>, StoreError> {
        let cond = task.map_or("TRUE", task_cond);
        let sql = format!(
            "SELECT l.node, f.name, l.at_us, l.level, l.message FROM task_logs l \
             LEFT JOIN task_facts f ON f.rid = l.rid AND f.node = l.node \
             WHERE l.rid = (SELECT rid FROM runs WHERE run_id = $1) AND {cond} \
             ORDER BY l.at_us, l.seq"
        );
        let param = task.map(TaskParam::new);
        self.pool.with(|c| {
            let rows = match &param {
                Some(p) => c.query(&sql, &[&run_id, p.sql()])?,
                None => c.query(&sql, &[&run_id])?,
            };
            collect(rows, |r| {
                Ok(LogRow {
                    node: small_opt(r, 0)?,
                    task: r.try_get(1)?,
                    at_us: r.try_get(2)?,
                    level: r.try_get(3)?,
                    message: r.try_get(4)?,
                })
            })
        })
    }

    fn results(&self, run_id: &str) -> Result<Vec<(u32, String, Vec<u8>)>, StoreError> {
        self.pool.with(|c| {
            let rows = c.query(
                "SELECT node, format, data FROM task_results WHERE rid = \
                 (SELECT rid FROM runs WHERE run_id = $1) ORDER BY node",
                &[&run_id],
            )?;
            collect(rows, |r| Ok((small(r, 0)?, r.try_get(1)?, r.try_get(2)?)))
        })
    }

    fn result(&self, run_id: &str, node: u32) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.pool.with(|c| {
            let row = c.query_opt(
                "SELECT format, data FROM task_results WHERE rid = \
                 (SELECT rid FROM runs WHERE run_id = $1) AND node = $2",
                &[&run_id, &i64::from(node)],
            )?;
            match row {
                Some(r) => Ok(Some((r.try_get(0)?, r.try_get(1)?))),
                None => Ok(None),
            }
        })
    }

    fn unfinished_runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE state IN ({}) ORDER BY created_us, run_id",
            unfinished_list()
        );
        self.pool
            .with(|c| collect(c.query(&sql, &[])?, run_summary))
    }

    fn graph(&self, name: &str) -> Result<Option<GraphRecord>, StoreError> {
        self.pool.with(|c| {
            match c.query_opt(
                &format!("SELECT {GRAPH_COLS} FROM graphs WHERE name = $1"),
                &[&name],
            )? {
                Some(r) => graph_record(&r).map(Some),
                None => Ok(None),
            }
        })
    }

    fn graphs(&self) -> Result<Vec<GraphRecord>, StoreError> {
        self.pool.with(|c| {
            let rows = c.query(
                &format!("SELECT {GRAPH_COLS} FROM graphs ORDER BY name"),
                &[],
            )?;
            collect(rows, graph_record)
        })
    }

    fn events(&self, limit: usize) -> Result<Vec<EventRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.pool.with(|c| {
            let rows = c.query(
                "SELECT id, run_id, at_us, kind, detail_json FROM events ORDER BY id DESC LIMIT $1",
                &[&limit],
            )?;
            collect(rows, |r| {
                Ok(EventRow {
                    id: r.try_get(0)?,
                    run_id: r.try_get(1)?,
                    at_us: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    detail_json: r.try_get(4)?,
                })
            })
        })
    }

    fn cache(&self) -> &dyn CacheBackend {
        &self.cache
    }
    fn max_value_bytes(&self) -> usize {
        // A bytea value is at most 1 GB; the protocol's message around it needs a little room.
        (1 << 30) - 4096
    }
}

/// The cached-call index on PostgreSQL: one connection, opened on first use. `claim` decides
/// under a per-key advisory lock held to the end of its transaction, so among processes (and
/// hosts) exactly one becomes the owner of a key, as `BEGIN IMMEDIATE` does on SQLite.
/// Connections are the opening process's, as the read [`Pool`]'s are.
struct PgCache {
    config: PgConfig,
    place: String,
    conn: Mutex<ForkLocal<Option<Client>>>,
    /// A connection listening on `tm_cache` for waiters (opened on first wait).
    listener: Mutex<ForkLocal<Option<Client>>>,
    closed: AtomicBool,
}

/// Sent (with the key) when a call's key stops running: waiters ask again at once.
const CACHE_CHANNEL: &str = "tm_cache";

const ENTRY_COLS: &str = "id, key, module, func, seed, inputs_json, version, result_path, format, \
                          content_hash, size, created_us, expires_us, duration_us";
const STATE_COLS: &str = "key, module, func, status, entry_id, started_us, ended_us, duration_us, \
                          error_type, error_message, owner_pid, owner_host, lease_until_us";

/// See the SQLite index's `FUNC_COND`: a qualified name, `module.qualname`, or its dotted end.
const FUNC_COND: &str = "($1::text IS NULL OR func = $1 OR module || '.' || func = $1 \
                         OR right(func, length($1) + 1) = '.' || $1)";

fn entry_row(r: &Row) -> Result<CacheEntry, postgres::Error> {
    Ok(CacheEntry {
        id: r.try_get(0)?,
        facts: CallFacts {
            key: r.try_get(1)?,
            module: r.try_get(2)?,
            func: r.try_get(3)?,
            seed: r.try_get(4)?,
            inputs_json: r.try_get(5)?,
            version: r.try_get(6)?,
        },
        result: StoredResult {
            result_path: r.try_get(7)?,
            format: r.try_get(8)?,
            content_hash: r.try_get(9)?,
            size: r.try_get(10)?,
            expires_us: r.try_get(12)?,
            duration_us: r.try_get(13)?,
        },
        created_us: r.try_get(11)?,
    })
}

fn state_row(r: &Row) -> Result<CallState, postgres::Error> {
    let pid: Option<i64> = r.try_get(10)?;
    let host: Option<String> = r.try_get(11)?;
    Ok(CallState {
        key: r.try_get(0)?,
        module: r.try_get(1)?,
        func: r.try_get(2)?,
        status: r.try_get(3)?,
        entry_id: r.try_get(4)?,
        started_us: r.try_get(5)?,
        ended_us: r.try_get(6)?,
        duration_us: r.try_get(7)?,
        error_type: r.try_get(8)?,
        error_message: r.try_get(9)?,
        owner: pid.map(|pid| Owner {
            pid,
            host: host.unwrap_or_default(),
        }),
        lease_until_us: r.try_get(12)?,
    })
}

fn latest_entry(
    c: &mut impl GenericClient,
    key: &str,
    now_us: i64,
) -> Result<Option<CacheEntry>, postgres::Error> {
    c.query_opt(
        &format!(
            "SELECT {ENTRY_COLS} FROM cache_entries WHERE id = \
             (SELECT entry_id FROM cache_state WHERE key = $1) \
             AND (expires_us IS NULL OR expires_us > $2)"
        ),
        &[&key, &now_us],
    )?
    .as_ref()
    .map(entry_row)
    .transpose()
}

impl PgCache {
    /// Runs `f` on the connection (connecting first if needed, or again after the server closed
    /// it); errors name the database. Holds a fork pass, so a child never inherits the mutex
    /// locked (a fork may wait for a query in flight).
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        let _gate = Pass::enter();
        let mut guard = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let slot = guard.get();
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = Some(connect(&self.config, &self.place)?);
        }
        let client = slot.as_mut().ok_or(StoreError::Closed)?;
        f(client).map_err(|e| pg_error(&self.place, "cache index query failed", e))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _gate = Pass::enter();
        *self
            .conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get() = None;
        *self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get() = None;
    }
}

impl CacheBackend for PgCache {
    /// Waits on the listening connection taken out of its slot, holding neither the mutex nor a
    /// fork pass (a fork does not wait for it, and a child never inherits the mutex locked); it
    /// goes back unless another waiter's did meanwhile.
    fn wait_for_end(&self, timeout: Duration) -> Result<Option<bool>, StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let failed = |e| pg_error(&self.place, "cannot wait for cached calls", e);
        let taken = {
            let _gate = Pass::enter();
            let mut guard = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
            guard.get().take().filter(|c| !c.is_closed())
        };
        let mut client = match taken {
            Some(c) => c,
            None => {
                let mut c = connect(&self.config, &self.place)?;
                c.batch_execute(&format!("LISTEN {CACHE_CHANNEL}"))
                    .map_err(failed)?;
                c
            }
        };
        let woke = {
            let mut notes = client.notifications();
            let woke = notes
                .timeout_iter(timeout)
                .next()
                .map_err(failed)?
                .is_some();
            if woke {
                while notes.iter().next().map_err(failed)?.is_some() {}
            }
            woke
        };
        if !self.closed.load(Ordering::SeqCst) {
            let _gate = Pass::enter();
            let mut guard = self.listener.lock().unwrap_or_else(PoisonError::into_inner);
            guard.get().get_or_insert(client);
        }
        Ok(Some(woke))
    }

    fn claim_fire(&self, fire: &FireClaim) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let won = tx.execute(
                &dollar(CLAIM_FIRE),
                &[
                    &fire.graph,
                    &fire.scheduled_us,
                    &fire.run_id,
                    &fire.owner,
                    &fire.now_us,
                ],
            )? == 1;
            if won {
                tx.execute(
                    &dollar(FIRE_RUN),
                    &[
                        &fire.run_id,
                        &fire.graph,
                        &fire.trigger,
                        &fire.scheduled_us,
                        &fire.now_us,
                        &fire.meta_json(),
                        &fire.config_json,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(won)
        })
    }

    fn claim_key(&self, k: &KeyClaim) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            let won = c.execute(
                &dollar(KEY_RUN),
                &[
                    &k.run_id,
                    &k.graph,
                    &k.trigger,
                    &k.now_us,
                    &k.meta_json,
                    &k.key,
                ],
            )? == 1;
            if won {
                return Ok(None);
            }
            // The winner committed before this insert returned (it waited on the key's index).
            let row = c.query_opt(&dollar(KEYED_RUN), &[&k.graph, &k.key])?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn pause(&self, graph: &str, now_us: i64, owner: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute(&dollar(PAUSE), &[&graph, &now_us, &owner])? == 1))
    }

    fn unpause(&self, graph: &str) -> Result<Option<i64>, StoreError> {
        self.with(|c| {
            let row = c.query_opt(&dollar(UNPAUSE), &[&graph])?;
            Ok(row.map(|r| r.get::<_, i64>(0)))
        })
    }

    fn pauses(&self) -> Result<Vec<Pause>, StoreError> {
        self.with(|c| {
            let rows = c.query(PAUSES, &[])?;
            Ok(rows
                .iter()
                .map(|r| Pause {
                    graph: r.get(0),
                    paused_us: r.get(1),
                    owner: r.get(2),
                })
                .collect())
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
            let row = c.query_one(
                &dollar(REQUEST_TRIGGER),
                &[&graph, &params_json, &now_us, &owner],
            )?;
            Ok(row.get(0))
        })
    }

    fn triggered_graphs(&self) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let rows = c.query(TRIGGERED_GRAPHS, &[])?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn claim_triggers(
        &self,
        graph: &str,
        now_us: i64,
        owner: &str,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        self.with(|c| {
            let rows = c.query(&dollar(CLAIM_TRIGGERS), &[&now_us, &owner, &graph])?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn lookup(&self, key: &str, now_us: i64) -> Result<Option<CacheEntry>, StoreError> {
        self.with(|c| latest_entry(c, key, now_us))
    }

    fn claim(&self, req: &ClaimRequest) -> Result<Claim, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&req.facts.key],
            )?;
            if req.use_cache {
                if let Some(entry) = latest_entry(&mut tx, &req.facts.key, req.now_us)? {
                    return Ok(Claim::Hit(entry));
                }
            }
            let state = tx
                .query_opt(
                    &format!("SELECT {STATE_COLS} FROM cache_state WHERE key = $1"),
                    &[&req.facts.key],
                )?
                .as_ref()
                .map(state_row)
                .transpose()?;
            if let Some(state) = state.filter(|s| super::cache_index::is_live(s, req)) {
                return Ok(Claim::Busy(state));
            }
            let f = &req.facts;
            let token: i64 = tx
                .query_one(
                    "INSERT INTO cache_state (key, module, func, status, token, started_us, \
                     owner_pid, owner_host, lease_until_us, updated_us) \
                     VALUES ($1, $2, $3, 'RUNNING', 1, $4, $5, $6, $7, $4) \
                     ON CONFLICT (key) DO UPDATE SET status = 'RUNNING', \
                     token = cache_state.token + 1, module = $2, func = $3, started_us = $4, \
                     ended_us = NULL, duration_us = NULL, error_type = NULL, \
                     error_message = NULL, owner_pid = $5, owner_host = $6, \
                     lease_until_us = $7, updated_us = $4 RETURNING token",
                    &[
                        &f.key,
                        &f.module,
                        &f.func,
                        &req.now_us,
                        &req.owner.pid,
                        &req.owner.host,
                        &req.now_us.saturating_add(req.lease_us),
                    ],
                )?
                .try_get(0)?;
            tx.commit()?;
            Ok(Claim::Run { token })
        })
    }

    fn heartbeat(&self, key: &str, token: i64, lease_until_us: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE cache_state SET lease_until_us = $3 \
                 WHERE key = $1 AND token = $2 AND status = 'RUNNING'",
                &[&key, &token, &lease_until_us],
            )?;
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
            let mut tx = c.transaction()?;
            // Under the key's lock, as a claim is: a claim reads the newest entry and then the
            // state in two statements, each with its own snapshot under READ COMMITTED, so a
            // completion committed between them would show no entry but a COMPLETED state, and
            // the claimer would run the call again (seen as two runs among four processes).
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&facts.key],
            )?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO cache_entries (key, module, func, seed, inputs_json, version, \
                     result_path, format, content_hash, size, created_us, expires_us, \
                     duration_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     RETURNING id",
                    &[
                        &facts.key,
                        &facts.module,
                        &facts.func,
                        &facts.seed,
                        &facts.inputs_json,
                        &facts.version,
                        &result.result_path,
                        &result.format,
                        &result.content_hash,
                        &result.size,
                        &now_us,
                        &result.expires_us,
                        &result.duration_us,
                    ],
                )?
                .try_get(0)?;
            // As on SQLite: the state follows the newest entry; the owner's fields change only
            // while the caller still owns the key.
            tx.execute(
                "UPDATE cache_state SET entry_id = $2, \
                 status = CASE WHEN token = $3 THEN 'COMPLETED' ELSE status END, \
                 ended_us = CASE WHEN token = $3 THEN $4 ELSE ended_us END, \
                 duration_us = CASE WHEN token = $3 THEN $5 ELSE duration_us END, \
                 lease_until_us = CASE WHEN token = $3 THEN NULL ELSE lease_until_us END, \
                 updated_us = $4 WHERE key = $1",
                &[&facts.key, &id, &token, &now_us, &result.duration_us],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CACHE_CHANNEL, &facts.key])?;
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
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE cache_state SET status = $3, error_type = $4, error_message = $5, \
                 ended_us = $6, duration_us = $6 - started_us, lease_until_us = NULL, \
                 updated_us = $6 WHERE key = $1 AND token = $2 AND status = 'RUNNING'",
                &[&key, &token, &status, &etype, &emsg, &now_us],
            )?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CACHE_CHANNEL, &key])?;
            tx.commit()?;
            Ok(n == 1)
        })
    }

    fn entries(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError> {
        let limit = filter.limit.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {ENTRY_COLS} FROM cache_entries WHERE {FUNC_COND} \
                     AND ($2::bigint IS NULL OR created_us < $2) ORDER BY id DESC LIMIT $3"
                ),
                &[&filter.func, &filter.created_before_us, &limit],
            )?;
            collect(rows, entry_row)
        })
    }

    fn states(&self, filter: &CacheFilter) -> Result<Vec<CallState>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {STATE_COLS} FROM cache_state WHERE {FUNC_COND} ORDER BY func, key"
                ),
                &[&filter.func],
            )?;
            collect(rows, state_row)
        })
    }

    fn find(&self, key: &str) -> Result<Vec<(CallState, Option<CacheEntry>)>, StoreError> {
        let pattern = format!("{}%", key.replace(['%', '_', '\\'], ""));
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {STATE_COLS} FROM cache_state WHERE key LIKE $1 ORDER BY key LIMIT 10"
                ),
                &[&pattern],
            )?;
            let states = collect(rows, state_row)?;
            let mut out = Vec::with_capacity(states.len());
            for s in states {
                let entry = c
                    .query_opt(
                        &format!(
                            "SELECT {ENTRY_COLS} FROM cache_entries WHERE key = $1 \
                             ORDER BY id DESC LIMIT 1"
                        ),
                        &[&s.key],
                    )?
                    .as_ref()
                    .map(entry_row)
                    .transpose()?;
                out.push((s, entry));
            }
            Ok(out)
        })
    }

    fn supersede(&self, key: &str, newest_id: i64) -> Result<Vec<CacheEntry>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "DELETE FROM cache_entries WHERE key = $1 AND id < $2 RETURNING {ENTRY_COLS}"
                ),
                &[&key, &newest_id],
            )?;
            collect(rows, entry_row)
        })
    }

    fn clear(&self, filter: &CacheFilter) -> Result<Vec<CacheEntry>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let rows = tx.query(
                &format!(
                    "DELETE FROM cache_entries WHERE {FUNC_COND} \
                     AND ($2::bigint IS NULL OR created_us < $2) RETURNING {ENTRY_COLS}"
                ),
                &[&filter.func, &filter.created_before_us],
            )?;
            let gone = collect(rows, entry_row)?;
            // Deleting an entry set its state's entry_id to NULL (ON DELETE SET NULL).
            tx.execute(
                &format!(
                    "DELETE FROM cache_state WHERE {FUNC_COND} AND status != 'RUNNING' \
                     AND entry_id IS NULL"
                ),
                &[&filter.func],
            )?;
            tx.commit()?;
            Ok(gone)
        })
    }
}
