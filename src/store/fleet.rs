//! Distributed runs on PostgreSQL: a run's tasks are rows that any executor process serving the
//! graph may claim, on any host.
//!
//! A task row is `waiting` until its parents are done (`waiting` counts them), then `ready`. An
//! executor claims ready rows with `FOR UPDATE SKIP LOCKED` (so claimers never wait on each other
//! and never take the same row), which makes the row `claimed` by it until `lease_until_us` and
//! bumps its `attempt`. The attempt is the fencing token: an executor may end only the attempt it
//! claimed, so a completion that arrives after its lease ran out and the task was handed to
//! another executor is refused. Completing a task stores its result, counts the task off its
//! children's `waiting` (those reaching zero become ready) and off the run's `remaining`; the
//! executor that ends the last task ends the run. Every executor's watcher thread renews its own
//! leases, returns the expired leases of executors that died to `ready`, and listens for
//! `NOTIFY tm_work` (sent when tasks become ready or a run ends), waking the waiting executor
//! without polling; a short poll remains the fallback (for retry delays, and a lost connection).
//!
//! Times in leases come from the database server's clock, so hosts with skewed clocks agree.
//! The run and its tasks are also recorded in the ordinary tables (`runs`, `task_facts`,
//! `task_state`, `attempts`, `task_results`), so `tm runs`, `tm show` and `Store.result` see a
//! distributed run like any other.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement, Transaction};

use super::pgconn::PgConfig;

use super::error::{pg_error, StoreError};
use super::pg::migrate;
use super::url::pg_config;

/// The database server's clock in microseconds since the Unix epoch.
const NOW_US: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";

/// The channel executors listen on.
const CHANNEL: &str = "tm_work";

/// One task of a new distributed run.
#[derive(Debug, Clone, Default)]
pub struct FleetTask {
    /// The task's name.
    pub name: String,
    /// Its tag: executors may serve only some tags.
    pub tag: String,
    /// Higher first among ready tasks.
    pub priority: i64,
    /// How many failed attempts are retried.
    pub retries: u32,
}

/// A new distributed run.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub run_id: String,
    /// The graph's name.
    pub graph: String,
    /// The graph's name and shape digest; only executors registered with it take its tasks.
    pub graph_key: String,
    pub trigger: String,
    pub scheduled_us: Option<i64>,
    /// Opaque to the core: the root arguments and config, for every executor.
    pub params: Vec<u8>,
    /// Free-form JSON metadata of the run.
    pub meta_json: Option<String>,
    /// The config the run uses, as JSON (for readers such as `tm show`).
    pub config_json: Option<String>,
    /// The tasks, by node index.
    pub tasks: Vec<FleetTask>,
    /// Each node's parents.
    pub parents: Vec<Vec<u32>>,
}

/// One task of a distributed run: (node, state, attempt, owner).
pub type TaskProgress = (u32, String, u32, Option<String>);

/// A claimed task: run it, then [`Fleet::end`] it with the same `attempt`.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub run_id: String,
    pub rid: i64,
    pub graph_key: String,
    pub node: u32,
    /// 1 for the first claim; the fencing token.
    pub attempt: u32,
    /// When this attempt started (server clock).
    pub started_us: i64,
    /// The stored results of its parents: (node, format, bytes).
    pub inputs: Vec<(u32, String, Vec<u8>)>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The task's result, stored for its children and readers.
    Completed { format: String, data: Vec<u8> },
    /// The task raised; it is retried (after `retry_at_us`) while its retries last and the
    /// error is `retryable`.
    Failed {
        error_type: String,
        message: String,
        traceback: Option<String>,
        retryable: bool,
        retry_at_us: i64,
    },
}

/// What [`Fleet::end`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The attempt was no longer this executor's (its lease ran out): nothing was recorded.
    Refused,
    /// Recorded; the task's state (`completed`, `retrying`, `failed`), and the run's final state
    /// if this ended the run.
    Recorded {
        state: String,
        run_ended: Option<String>,
    },
}

/// A graph's shape, registered by executors that serve it.
struct Shape {
    parents: Vec<Vec<u32>>,
    children: Vec<Vec<u32>>,
}

impl Shape {
    fn new(parents: Vec<Vec<u32>>) -> Shape {
        let mut children = vec![Vec::new(); parents.len()];
        for (child, ps) in parents.iter().enumerate() {
            for &p in ps {
                if let Some(c) = children.get_mut(p as usize) {
                    c.push(child as u32);
                }
            }
        }
        Shape { parents, children }
    }

    /// The parents of `node` (none for a node the shape does not have).
    fn parents_of(&self, node: u32) -> &[u32] {
        self.parents.get(node as usize).map_or(&[], Vec::as_slice)
    }

    /// Every node below `node`.
    fn descendants(&self, node: u32) -> Vec<i64> {
        let mut seen = vec![false; self.children.len()];
        let mut stack = vec![node];
        let mut out = Vec::new();
        while let Some(n) = stack.pop() {
            for &c in self
                .children
                .get(n as usize)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                if !std::mem::replace(&mut seen[c as usize], true) {
                    out.push(i64::from(c));
                    stack.push(c);
                }
            }
        }
        out
    }
}

/// Counts wake-ups (notifications, local pokes) so a waiter can sleep until the next one.
#[derive(Default)]
struct Signal {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    fn bump(&self) {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.cv.notify_all();
    }
}

/// Statements on one connection, in a transaction or each on its own (a single statement is
/// atomic by itself, and costs no BEGIN and COMMIT round trips). Statements are prepared once
/// per connection: each is one round trip rather than two (prepare, then execute).
struct Tx<'a, 'c> {
    inner: Inner<'c>,
    stmts: &'a mut HashMap<String, Statement>,
}

enum Inner<'c> {
    Tx(Transaction<'c>),
    Auto(&'c mut Client),
}

/// Calls `$method` on whichever client `$tx` holds, with a prepared statement for `$sql`.
macro_rules! run_on {
    ($tx:ident, $method:ident, $sql:expr, $params:expr) => {{
        let s = $tx.stmt($sql)?;
        match &mut $tx.inner {
            Inner::Tx(t) => t.$method(&s, $params),
            Inner::Auto(c) => c.$method(&s, $params),
        }
    }};
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Tx<'_, '_> {
    fn stmt(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = match &mut self.inner {
            Inner::Tx(t) => t.prepare(sql)?,
            Inner::Auto(c) => c.prepare(sql)?,
        };
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        run_on!(self, query, sql, params)
    }

    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, postgres::Error> {
        run_on!(self, query_one, sql, params)
    }

    fn query_opt(&mut self, sql: &str, params: Params<'_>) -> Result<Option<Row>, postgres::Error> {
        run_on!(self, query_opt, sql, params)
    }

    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, postgres::Error> {
        run_on!(self, execute, sql, params)
    }
}

/// The executor's connection and its prepared statements.
struct Conn {
    client: Client,
    stmts: HashMap<String, Statement>,
}

/// One executor process's handle on the distributed runs of a PostgreSQL database.
pub struct Fleet {
    place: String,
    config: PgConfig,
    owner: String,
    lease_us: i64,
    /// Connections for claims and completions, so that an executor's task threads end their
    /// tasks side by side rather than one at a time; opened on first use.
    conns: Vec<Mutex<Option<Conn>>>,
    shapes: Mutex<HashMap<String, Arc<Shape>>>,
    signal: Arc<Signal>,
    stop: Arc<AtomicBool>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// The attempts this executor is running, the only leases its watcher renews: a claim that
    /// committed but whose reply was lost (a dropped connection) is not among them, so its lease
    /// lapses and another executor takes the task.
    held: Held,
}

/// Attempts by (run key, node).
type Held = Arc<Mutex<HashMap<(i64, u32), u32>>>;

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("place", &self.place)
            .field("owner", &self.owner)
            .finish()
    }
}

/// Ends a completed attempt in one statement (so one round trip, atomic without a transaction):
/// the fence (only the current claim's owner), the result, the task's recorded state (and an
/// attempts row for a later attempt), the children's parent counts (those reaching zero become
/// ready), the run's count of tasks left, and the run's end when none is. Notifies the listening
/// executors when a task became ready or the run ended. Returns (1 if recorded else 0, the run's
/// final state if it ended).
static COMPLETE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH fenced AS ( \
           UPDATE work SET state = 'done', owner = NULL, lease_until_us = NULL \
           WHERE rid = $1 AND node = $2 AND attempt = $3 AND owner = $4 AND state = 'claimed' \
           RETURNING rid, node), \
         result AS ( \
           INSERT INTO task_results (rid, node, format, data) \
           SELECT rid, node, $5, $6 FROM fenced \
           ON CONFLICT (rid, node) DO UPDATE SET format = EXCLUDED.format, data = EXCLUDED.data), \
         recorded AS ( \
           UPDATE task_state s SET status = 'completed', ended_us = {NOW_US} \
           FROM fenced f WHERE s.rid = f.rid AND s.node = f.node), \
         later AS ( \
           INSERT INTO attempts (rid, node, attempt, started_us, ended_us, status) \
           SELECT rid, node, $3, $7, {NOW_US}, 'completed' FROM fenced WHERE $3 > 1 \
           ON CONFLICT (rid, node, attempt) DO NOTHING), \
         kids AS ( \
           UPDATE work k SET waiting = k.waiting - 1, \
             state = CASE WHEN k.waiting = 1 AND k.state = 'waiting' THEN 'ready' \
                          ELSE k.state END \
           FROM UNNEST($8::bigint[]) AS c (node) \
           WHERE k.rid = $1 AND k.node = c.node AND EXISTS (SELECT 1 FROM fenced) \
           RETURNING k.state), \
         left_ AS ( \
           UPDATE fleet_runs r SET remaining = r.remaining - 1 \
           FROM fenced WHERE r.rid = fenced.rid \
           RETURNING r.rid, r.remaining, r.failed, r.cancelled), \
         ended AS ( \
           UPDATE runs u SET ended_us = {NOW_US}, state = CASE WHEN l.failed > 0 THEN 'failed' \
             WHEN l.cancelled THEN 'cancelled' ELSE 'completed' END \
           FROM left_ l WHERE u.rid = l.rid AND l.remaining = 0 RETURNING u.state) \
         SELECT (SELECT count(*) FROM fenced), (SELECT state FROM ended), \
           CASE WHEN EXISTS (SELECT 1 FROM kids WHERE state = 'ready') \
                  OR EXISTS (SELECT 1 FROM ended) \
                THEN pg_notify('{CHANNEL}', '')::text END"
    )
});

/// Connects a claim-and-complete connection. Its statements are prepared once and run
/// thousands of times with the same shape of arguments: a generic plan spares the planning that
/// PostgreSQL would otherwise redo on every execution of the multi-statement completion.
fn connect(config: &PgConfig, place: &str) -> Result<Client, StoreError> {
    let mut client = config
        .connect()
        .map_err(|e| pg_error(place, "cannot connect", e))?;
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .map_err(|e| pg_error(place, "cannot set the session up", e))?;
    Ok(client)
}

/// Whether the server ended the session (shutdown, restart, terminated backend): class 57P.
fn ended(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| c.code().starts_with("57P"))
}

/// A small number per thread, to spread threads over connections when all are busy.
fn thread_slot() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    SLOT.with(|s| *s)
}

/// Ends a run whose last task just ended; returns its final state.
fn end_run_if_done(
    tx: &mut Tx<'_, '_>,
    rid: i64,
    ended: i64,
    failed: i64,
) -> Result<Option<String>, postgres::Error> {
    let row = tx.query_one(
        "UPDATE fleet_runs SET remaining = remaining - $2, failed = failed + $3 WHERE rid = $1 \
         RETURNING remaining, failed, cancelled",
        &[&rid, &ended, &failed],
    )?;
    let remaining: i64 = row.get(0);
    if remaining > 0 {
        return Ok(None);
    }
    let state = if row.get::<_, i64>(1) > 0 {
        "failed"
    } else if row.get::<_, bool>(2) {
        "cancelled"
    } else {
        "completed"
    };
    tx.execute(
        &format!("UPDATE runs SET state = $2, ended_us = {NOW_US} WHERE rid = $1"),
        &[&rid, &state],
    )?;
    Ok(Some(state.to_string()))
}

/// Sets the recorded state of tasks (the ordinary `task_state` table readers use).
fn set_states(
    tx: &mut Tx<'_, '_>,
    rid: i64,
    nodes: &[i64],
    status: &str,
) -> Result<(), postgres::Error> {
    if nodes.is_empty() {
        return Ok(());
    }
    tx.execute(
        &format!(
            "INSERT INTO task_state (rid, node, status, attempt, ended_us) \
             SELECT $1, n, $3, 0, {NOW_US} FROM UNNEST($2::bigint[]) AS n \
             ON CONFLICT (rid, node) DO UPDATE SET status = EXCLUDED.status, \
             ended_us = EXCLUDED.ended_us"
        ),
        &[&rid, &nodes, &status],
    )?;
    Ok(())
}

fn notify(tx: &mut Tx<'_, '_>) -> Result<(), postgres::Error> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])?;
    Ok(())
}

impl Fleet {
    /// Connects to the database at `url` (migrating it if needed) as executor `owner`, whose
    /// claims last `lease` unless renewed, with up to `connections` connections for claims and
    /// completions; starts the watcher thread.
    pub fn open(
        url: &str,
        owner: &str,
        lease: Duration,
        connections: usize,
    ) -> Result<Fleet, StoreError> {
        let (config, place) = pg_config(url)?;
        let mut client = connect(&config, &place)?;
        migrate(&mut client, &place)?;
        let lease_us = i64::try_from(lease.as_micros())
            .unwrap_or(i64::MAX)
            .max(1000);
        let fleet = Fleet {
            place,
            config,
            owner: owner.to_string(),
            lease_us,
            conns: std::iter::once(Mutex::new(Some(Conn {
                client,
                stmts: HashMap::new(),
            })))
            .chain((1..connections.max(1)).map(|_| Mutex::new(None)))
            .collect(),
            shapes: Mutex::new(HashMap::new()),
            signal: Arc::new(Signal::default()),
            stop: Arc::new(AtomicBool::new(false)),
            watcher: Mutex::new(None),
            held: Held::default(),
        };
        let watcher = Watcher {
            config: fleet.config.clone(),
            owner: fleet.owner.clone(),
            lease_us,
            signal: fleet.signal.clone(),
            stop: fleet.stop.clone(),
            held: fleet.held.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("tm-fleet-watch".into())
            .spawn(move || watcher.run())
            .map_err(|e| {
                StoreError::WriterStopped(format!("cannot start the fleet watcher: {e}"))
            })?;
        *fleet.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(fleet)
    }

    /// This executor's name in `owner` columns.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Runs `f` in a transaction on a connection (reconnecting if the server dropped it).
    fn with_tx<T>(
        &self,
        what: &str,
        f: impl FnMut(&mut Tx<'_, '_>) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        self.with_conn(what, true, f)
    }

    /// Runs `f` on a connection, in a transaction if `atomic` (else each statement commits
    /// by itself: for verbs that are one statement).
    fn with_conn<T>(
        &self,
        what: &str,
        atomic: bool,
        mut f: impl FnMut(&mut Tx<'_, '_>) -> Result<T, postgres::Error>,
    ) -> Result<T, StoreError> {
        // The first idle connection, else wait for this thread's share.
        let mut guard = match self.conns.iter().find_map(|c| c.try_lock().ok()) {
            Some(g) => g,
            None => {
                let i = thread_slot() % self.conns.len();
                self.conns[i].lock().unwrap_or_else(PoisonError::into_inner)
            }
        };
        if self.stop.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        let mut fresh = false;
        loop {
            if !fresh && guard.as_ref().is_none_or(|c| c.client.is_closed()) {
                let client = connect(&self.config, &self.place)?;
                *guard = Some(Conn {
                    client,
                    stmts: HashMap::new(),
                });
                fresh = true;
            }
            let conn = guard.as_mut().ok_or(StoreError::Closed)?;
            match Self::run_on(conn, atomic, &mut f) {
                // A kept connection that the server ended meanwhile (a restart, an idle
                // timeout): the statement never ran; once more on a new connection.
                Err(e) if !fresh && (e.is_closed() || conn.client.is_closed() || ended(&e)) => {
                    *guard = None;
                }
                result => return result.map_err(|e| pg_error(&self.place, what, e)),
            }
        }
    }

    fn run_on<T>(
        conn: &mut Conn,
        atomic: bool,
        f: &mut impl FnMut(&mut Tx<'_, '_>) -> Result<T, postgres::Error>,
    ) -> Result<T, postgres::Error> {
        if atomic {
            conn.client.transaction().and_then(|tx| {
                let mut tx = Tx {
                    inner: Inner::Tx(tx),
                    stmts: &mut conn.stmts,
                };
                let out = f(&mut tx)?;
                match tx.inner {
                    Inner::Tx(t) => t.commit()?,
                    Inner::Auto(_) => {}
                }
                Ok(out)
            })
        } else {
            f(&mut Tx {
                inner: Inner::Auto(&mut conn.client),
                stmts: &mut conn.stmts,
            })
        }
    }

    /// Declares that this executor serves graph `graph_key`, whose nodes have these parents.
    pub fn register(&self, graph_key: &str, parents: Vec<Vec<u32>>) {
        self.shapes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(graph_key.to_string(), Arc::new(Shape::new(parents)));
    }

    fn shape(&self, graph_key: &str) -> Option<Arc<Shape>> {
        self.shapes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(graph_key)
            .cloned()
    }

    /// Records a new distributed run with every task; its root tasks are ready at once.
    pub fn submit(&self, run: &NewRun) -> Result<(), StoreError> {
        let n = run.tasks.len();
        let nodes: Vec<i64> = (0..n as i64).collect();
        let names: Vec<&str> = run.tasks.iter().map(|t| t.name.as_str()).collect();
        let tags: Vec<&str> = run.tasks.iter().map(|t| t.tag.as_str()).collect();
        let priorities: Vec<i64> = run.tasks.iter().map(|t| t.priority).collect();
        let retries: Vec<i64> = run.tasks.iter().map(|t| i64::from(t.retries)).collect();
        let waiting: Vec<i64> = (0..n)
            .map(|i| run.parents.get(i).map_or(0, |p| p.len() as i64))
            .collect();
        self.with_tx("cannot submit the run", |tx| {
            let rid: i64 = tx
                .query_one(
                    &format!(
                        "INSERT INTO runs (run_id, graph, state, trigger, scheduled_us, \
                         created_us, started_us, meta_json, config_json) \
                         VALUES ($1, $2, 'running', $3, $4, {NOW_US}, {NOW_US}, $5, $6) \
                         RETURNING rid"
                    ),
                    &[
                        &run.run_id,
                        &run.graph,
                        &run.trigger,
                        &run.scheduled_us,
                        &run.meta_json,
                        &run.config_json,
                    ],
                )?
                .get(0);
            tx.execute(
                "INSERT INTO task_facts (rid, node, name) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[])",
                &[&rid, &nodes, &names],
            )?;
            tx.execute(
                "INSERT INTO fleet_runs (rid, graph_key, params, remaining) VALUES ($1, $2, $3, $4)",
                &[&rid, &run.graph_key, &run.params, &(n as i64)],
            )?;
            tx.execute(
                "INSERT INTO work (rid, node, graph_key, tag, priority, state, waiting, retries) \
                 SELECT $1, t.node, $2, t.tag, t.priority, \
                        CASE WHEN t.waiting = 0 THEN 'ready' ELSE 'waiting' END, t.waiting, \
                        t.retries \
                 FROM UNNEST($3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[]) \
                      AS t (node, tag, priority, waiting, retries)",
                &[
                    &rid,
                    &run.graph_key,
                    &nodes,
                    &tags,
                    &priorities,
                    &waiting,
                    &retries,
                ],
            )?;
            if n == 0 {
                tx.execute(
                    &format!(
                        "UPDATE runs SET state = 'completed', ended_us = {NOW_US} WHERE rid = $1"
                    ),
                    &[&rid],
                )?;
            }
            notify(tx)
        })?;
        Ok(())
    }

    /// Claims up to `n` ready tasks of the registered graphs (only tasks tagged one of `tags`,
    /// when given), oldest run first and higher priority first within a run.
    pub fn claim(&self, n: usize, tags: Option<&[String]>) -> Result<Vec<Claimed>, StoreError> {
        let keys: Vec<String> = self
            .shapes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        if n == 0 || keys.is_empty() {
            return Ok(Vec::new());
        }
        let tags: Option<Vec<String>> = tags.map(<[String]>::to_vec);
        let limit = n as i64;
        // One statement claims and records the attempts (atomic without a transaction); a second
        // reads the inputs, which are immutable once written.
        let claimed = self.with_conn("cannot claim tasks", false, |tx| {
            let rows = tx.query(
                &format!(
                    "WITH picked AS ( \
                       SELECT rid, node FROM work \
                       WHERE state = 'ready' AND graph_key = ANY($1) \
                         AND ($2::text[] IS NULL OR tag = ANY($2)) \
                         AND not_before_us <= (SELECT {NOW_US}) \
                       ORDER BY rid, priority DESC, node LIMIT $3 \
                       FOR UPDATE SKIP LOCKED), \
                     claimed AS ( \
                       UPDATE work w SET state = 'claimed', attempt = w.attempt + 1, owner = $4, \
                         started_us = {NOW_US}, lease_until_us = {NOW_US} + $5 \
                       FROM picked WHERE w.rid = picked.rid AND w.node = picked.node \
                       RETURNING w.rid, w.node, w.attempt, w.graph_key, w.started_us), \
                     recorded AS ( \
                       INSERT INTO task_state (rid, node, status, attempt, started_us) \
                       SELECT rid, node, 'running', attempt, started_us FROM claimed \
                       ON CONFLICT (rid, node) DO UPDATE SET status = 'running', \
                         attempt = EXCLUDED.attempt, started_us = EXCLUDED.started_us, \
                         ended_us = NULL, error_type = NULL, error_message = NULL, \
                         traceback = NULL) \
                     SELECT c.rid, c.node, c.attempt, c.graph_key, c.started_us, r.run_id \
                     FROM claimed c JOIN runs r ON r.rid = c.rid"
                ),
                &[&keys, &tags, &limit, &self.owner, &self.lease_us],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let node: i64 = r.get(1);
                let attempt: i64 = r.get(2);
                out.push(Claimed {
                    rid: r.get(0),
                    node: u32::try_from(node).unwrap_or(u32::MAX),
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    graph_key: r.get(3),
                    started_us: r.get(4),
                    run_id: r.get(5),
                    inputs: Vec::new(),
                });
            }
            if !out.is_empty() {
                self.load_inputs(tx, &mut out)?;
            }
            Ok(out)
        })?;
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        for c in &claimed {
            held.insert((c.rid, c.node), c.attempt);
        }
        Ok(claimed)
    }

    /// Reads the stored results of the claimed tasks' parents.
    fn load_inputs(
        &self,
        tx: &mut Tx<'_, '_>,
        claimed: &mut [Claimed],
    ) -> Result<(), postgres::Error> {
        let mut rids = Vec::new();
        let mut nodes = Vec::new();
        for c in claimed.iter() {
            if let Some(shape) = self.shape(&c.graph_key) {
                for &p in shape.parents_of(c.node) {
                    rids.push(c.rid);
                    nodes.push(i64::from(p));
                }
            }
        }
        if rids.is_empty() {
            return Ok(());
        }
        let rows = tx.query(
            "SELECT r.rid, r.node, r.format, r.data FROM task_results r \
             JOIN (SELECT DISTINCT * FROM UNNEST($1::bigint[], $2::bigint[])) AS k (rid, node) \
             ON r.rid = k.rid AND r.node = k.node",
            &[&rids, &nodes],
        )?;
        let mut by_key: HashMap<(i64, u32), (String, Vec<u8>)> = HashMap::new();
        for r in rows {
            let node: i64 = r.get(1);
            by_key.insert(
                (r.get(0), u32::try_from(node).unwrap_or(u32::MAX)),
                (r.get(2), r.get(3)),
            );
        }
        for c in claimed.iter_mut() {
            if let Some(shape) = self.shape(&c.graph_key) {
                for &p in shape.parents_of(c.node) {
                    if let Some((format, data)) = by_key.get(&(c.rid, p)) {
                        c.inputs.push((p, format.clone(), data.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends a claimed attempt, if it is still this executor's.
    pub fn end(&self, c: &Claimed, outcome: &Outcome) -> Result<Ended, StoreError> {
        let ended = self.record_end(c, outcome)?;
        // Recorded or refused, the attempt is over here (an error keeps it held: the caller
        // retries once the database is back).
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(&(c.rid, c.node)) == Some(&c.attempt) {
            held.remove(&(c.rid, c.node));
        }
        Ok(ended)
    }

    fn record_end(&self, c: &Claimed, outcome: &Outcome) -> Result<Ended, StoreError> {
        match outcome {
            Outcome::Completed { format, data } => self.complete(c, format, data),
            Outcome::Failed {
                error_type,
                message,
                traceback,
                retryable,
                retry_at_us,
            } => self.fail(
                c,
                (error_type, message, traceback.as_deref()),
                *retryable,
                *retry_at_us,
            ),
        }
    }

    fn complete(&self, c: &Claimed, format: &str, data: &[u8]) -> Result<Ended, StoreError> {
        let children: Vec<i64> = self
            .shape(&c.graph_key)
            .as_ref()
            .and_then(|s| s.children.get(c.node as usize))
            .map(|v| v.iter().map(|&x| i64::from(x)).collect())
            .unwrap_or_default();
        self.with_conn("cannot record the task's end", false, |tx| {
            let row = tx.query_one(
                &COMPLETE,
                &[
                    &c.rid,
                    &i64::from(c.node),
                    &i64::from(c.attempt),
                    &self.owner,
                    &format,
                    &data,
                    &c.started_us,
                    &children,
                ],
            )?;
            if row.get::<_, i64>(0) == 0 {
                return Ok(Ended::Refused);
            }
            Ok(Ended::Recorded {
                state: "completed".into(),
                run_ended: row.get(1),
            })
        })
    }

    /// Records a failed attempt: retried later while its retries last (and the error is
    /// `retryable`), else the task fails and every task below it is skipped.
    fn fail(
        &self,
        c: &Claimed,
        (error_type, message, traceback): (&str, &str, Option<&str>),
        retryable: bool,
        retry_at_us: i64,
    ) -> Result<Ended, StoreError> {
        let shape = self.shape(&c.graph_key);
        let (rid, node, attempt) = (c.rid, i64::from(c.node), i64::from(c.attempt));
        self.with_tx("cannot record the task's end", |tx| {
            // The fence: only the current claim of this executor may end the task.
            let Some(row) = tx.query_opt(
                "SELECT failures < retries FROM work \
                 WHERE rid = $1 AND node = $2 AND attempt = $3 AND owner = $4 \
                   AND state = 'claimed' FOR UPDATE",
                &[&rid, &node, &attempt, &self.owner],
            )?
            else {
                return Ok(Ended::Refused);
            };
            let retrying = retryable && row.get::<_, bool>(0);
            let retry_at = retrying.then_some(retry_at_us);
            tx.execute(
                "UPDATE work SET state = $3, owner = NULL, lease_until_us = NULL, \
                   failures = failures + 1, not_before_us = COALESCE($4, not_before_us) \
                 WHERE rid = $1 AND node = $2",
                &[
                    &rid,
                    &node,
                    &if retrying { "ready" } else { "failed" },
                    &retry_at,
                ],
            )?;
            let status = if retrying { "retrying" } else { "failed" };
            tx.execute(
                &format!(
                    "INSERT INTO attempts (rid, node, attempt, started_us, ended_us, \
                     status, error_type, error_message, traceback, retry_at_us) \
                     VALUES ($1, $2, $3, $4, {NOW_US}, 'failed', $5, $6, $7, $8) \
                     ON CONFLICT (rid, node, attempt) DO NOTHING"
                ),
                &[
                    &rid,
                    &node,
                    &attempt,
                    &c.started_us,
                    &error_type,
                    &message,
                    &traceback,
                    &retry_at,
                ],
            )?;
            tx.execute(
                &format!(
                    "UPDATE task_state SET status = $3, ended_us = {NOW_US}, \
                     error_type = $4, error_message = $5, traceback = $6 \
                     WHERE rid = $1 AND node = $2"
                ),
                &[&rid, &node, &status, &error_type, &message, &traceback],
            )?;
            let mut run_ended = None;
            if !retrying {
                let below = shape
                    .as_ref()
                    .map(|s| s.descendants(c.node))
                    .unwrap_or_default();
                let skipped: Vec<i64> = if below.is_empty() {
                    Vec::new()
                } else {
                    tx.query(
                        "UPDATE work SET state = 'skipped' WHERE rid = $1 \
                         AND node = ANY($2) AND state IN ('waiting', 'ready') RETURNING node",
                        &[&rid, &below],
                    )?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
                };
                set_states(tx, rid, &skipped, "skipped")?;
                run_ended = end_run_if_done(tx, rid, 1 + skipped.len() as i64, 1)?;
                if run_ended.is_some() {
                    notify(tx)?;
                }
            }
            Ok(Ended::Recorded {
                state: status.to_string(),
                run_ended,
            })
        })
    }

    /// Cancels a distributed run: its tasks that have not started never will; running ones
    /// finish. The run ends `cancelled` when the last running task ends (at once if none is).
    pub fn cancel(&self, run_id: &str) -> Result<bool, StoreError> {
        self.with_tx("cannot cancel the run", |tx| {
            let Some(row) = tx.query_opt(
                "UPDATE fleet_runs f SET cancelled = true FROM runs r \
                 WHERE r.rid = f.rid AND r.run_id = $1 AND f.remaining > 0 RETURNING f.rid",
                &[&run_id],
            )?
            else {
                return Ok(false);
            };
            let rid: i64 = row.get(0);
            let nodes: Vec<i64> = tx
                .query(
                    "UPDATE work SET state = 'cancelled' WHERE rid = $1 \
                     AND state IN ('waiting', 'ready') RETURNING node",
                    &[&rid],
                )?
                .iter()
                .map(|r| r.get(0))
                .collect();
            set_states(tx, rid, &nodes, "cancelled")?;
            if end_run_if_done(tx, rid, nodes.len() as i64, 0)?.is_some() {
                notify(tx)?;
            }
            Ok(true)
        })
    }

    /// The params blob a run was submitted with, and its graph key.
    pub fn run_params(&self, rid: i64) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.with_tx("cannot read the run", |tx| {
            Ok(tx
                .query_opt(
                    "SELECT graph_key, params FROM fleet_runs WHERE rid = $1",
                    &[&rid],
                )?
                .map(|r| (r.get(0), r.get(1))))
        })
    }

    /// Each task of a distributed run: (node, state, attempt, owner).
    pub fn progress(&self, run_id: &str) -> Result<Vec<TaskProgress>, StoreError> {
        self.with_tx("cannot read the run", |tx| {
            let rows = tx.query(
                "SELECT w.node, w.state, w.attempt, w.owner FROM work w JOIN runs r \
                 ON r.rid = w.rid WHERE r.run_id = $1 ORDER BY w.node",
                &[&run_id],
            )?;
            Ok(rows
                .iter()
                .map(|r| {
                    let node: i64 = r.get(0);
                    let attempt: i64 = r.get(2);
                    (
                        u32::try_from(node).unwrap_or(u32::MAX),
                        r.get(1),
                        u32::try_from(attempt).unwrap_or(u32::MAX),
                        r.get(3),
                    )
                })
                .collect())
        })
    }

    /// A run's state (`running`, `completed`, `failed`, `cancelled`), or None if unknown.
    pub fn run_state(&self, run_id: &str) -> Result<Option<String>, StoreError> {
        self.with_tx("cannot read the run", |tx| {
            Ok(tx
                .query_opt("SELECT state FROM runs WHERE run_id = $1", &[&run_id])?
                .map(|r| r.get(0)))
        })
    }

    /// The wake-up counter: pass it to [`wait`](Fleet::wait).
    pub fn wakes(&self) -> u64 {
        *self
            .signal
            .count
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sleeps until a wake-up after `seen` (a notification, a returned lease, a [`poke`]) or
    /// `timeout`; returns the counter.
    ///
    /// [`poke`]: Fleet::poke
    pub fn wait(&self, seen: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut count = self
            .signal
            .count
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *count == seen && !self.stop.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            count = self
                .signal
                .cv
                .wait_timeout(count, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *count
    }

    /// Wakes [`wait`](Fleet::wait) (a local task ended, a stop was asked).
    pub fn poke(&self) {
        self.signal.bump();
    }

    /// Stops the watcher (this executor's leases are no longer renewed) and disconnects.
    /// Idempotent.
    pub fn close(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.signal.bump();
        let handle = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
        for c in &self.conns {
            *c.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.close();
    }
}

/// The watcher thread: renews this executor's leases, returns expired ones, and turns
/// notifications into wake-ups.
struct Watcher {
    config: PgConfig,
    owner: String,
    lease_us: i64,
    signal: Arc<Signal>,
    stop: Arc<AtomicBool>,
    held: Held,
}

impl Watcher {
    /// How often leases are renewed and expired ones looked for: a third of the lease (so two
    /// renewals can fail before a live executor loses a task), at most a second.
    fn period(&self) -> Duration {
        Duration::from_micros(
            u64::try_from(self.lease_us / 3)
                .unwrap_or(1)
                .clamp(10_000, 1_000_000),
        )
    }

    fn run(self) {
        let mut failures = 0u32;
        while !self.stop.load(Ordering::SeqCst) {
            match self.session() {
                Ok(()) => return,
                Err(_) => {
                    // The server went away: wake the executor (it polls meanwhile) and retry.
                    self.signal.bump();
                    failures = (failures + 1).min(6);
                    let pause = Duration::from_millis(50 << failures);
                    let until = Instant::now() + pause;
                    while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        }
    }

    /// One connection's life; returns Ok when asked to stop.
    fn session(&self) -> Result<(), postgres::Error> {
        let mut client = self.config.connect()?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        let period = self.period();
        let mut next = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            if Instant::now() >= next {
                self.tick(&mut client)?;
                next = Instant::now() + period;
            }
            let left = next.saturating_duration_since(Instant::now());
            let mut notes = client.notifications();
            let mut it = notes.timeout_iter(left.min(Duration::from_millis(200)));
            let mut woke = false;
            while it.next()?.is_some() {
                woke = true;
            }
            if woke {
                self.signal.bump();
            }
        }
        Ok(())
    }

    /// Renews the leases of the attempts this executor runs; hands expired leases (of executors that stopped renewing
    /// them) back to `ready`, recording the lost attempts.
    fn tick(&self, client: &mut Client) -> Result<(), postgres::Error> {
        let (mut rids, mut nodes, mut attempts) = (Vec::new(), Vec::new(), Vec::new());
        for (&(rid, node), &attempt) in self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            rids.push(rid);
            nodes.push(i64::from(node));
            attempts.push(i64::from(attempt));
        }
        if !rids.is_empty() {
            client.execute(
                &format!(
                    "UPDATE work w SET lease_until_us = {NOW_US} + $2 \
                     FROM UNNEST($3::bigint[], $4::bigint[], $5::bigint[]) AS h (rid, node, attempt) \
                     WHERE w.rid = h.rid AND w.node = h.node AND w.attempt = h.attempt \
                       AND w.owner = $1 AND w.state = 'claimed'"
                ),
                &[&self.owner, &self.lease_us, &rids, &nodes, &attempts],
            )?;
        }
        let mut tx = client.transaction()?;
        let lost = tx.query(
            &format!(
                "UPDATE work SET state = 'ready', owner = NULL, lease_until_us = NULL \
                 WHERE state = 'claimed' AND lease_until_us < {NOW_US} \
                 RETURNING rid, node, attempt, started_us"
            ),
            &[],
        )?;
        if !lost.is_empty() {
            let rids: Vec<i64> = lost.iter().map(|r| r.get(0)).collect();
            let nodes: Vec<i64> = lost.iter().map(|r| r.get(1)).collect();
            let attempts: Vec<i64> = lost.iter().map(|r| r.get(2)).collect();
            let started: Vec<Option<i64>> = lost.iter().map(|r| r.get(3)).collect();
            tx.execute(
                &format!(
                    "INSERT INTO attempts (rid, node, attempt, started_us, ended_us, status, \
                     error_type, error_message) \
                     SELECT t.rid, t.node, t.attempt, t.started, {NOW_US}, 'failed', \
                       'LeaseExpired', 'the executor running it stopped renewing its lease' \
                     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) \
                          AS t (rid, node, attempt, started) \
                     ON CONFLICT (rid, node, attempt) DO NOTHING"
                ),
                &[&rids, &nodes, &attempts, &started],
            )?;
            tx.execute(
                "UPDATE task_state s SET status = 'pending' \
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS t (rid, node) \
                 WHERE s.rid = t.rid AND s.node = t.node",
                &[&rids, &nodes],
            )?;
            tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL])?;
        }
        tx.commit()?;
        if !lost.is_empty() {
            self.signal.bump();
        }
        Ok(())
    }
}
