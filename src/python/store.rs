//! `tm._tm.StoreCore`: the state database seen from Python.
//!
//! Write verbs only queue (no waiting, so they stay attached); `flush`, `close`, `__new__` and every
//! read wait for SQLite and run detached. Rows come back as dicts keyed like the Rust fields, with
//! a task's error flattened into `error_type`, `error_message` and `traceback`.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::PyErr;
use std::sync::Arc;

use crate::store::{
    AttemptRow, ErrorInfo, EventRow, FireClaim, GraphRecord, KeyClaim, LogRow, RunFilter,
    RunRecord, RunSummary, Store, StoreError, TaskFact, TaskRef, TaskRow,
};

/// The Python exception class, imported lazily from `tm.exceptions` on first use.
mod exc {
    pyo3::import_exception!(tm.exceptions, StoreError);
}

impl From<StoreError> for PyErr {
    fn from(e: StoreError) -> PyErr {
        exc::StoreError::new_err(e.to_string())
    }
}

/// A task named by node index or by name.
#[derive(FromPyObject)]
enum TaskArg {
    Node(u32),
    Name(String),
}

impl TaskArg {
    fn as_ref(&self) -> TaskRef<'_> {
        match self {
            TaskArg::Node(n) => TaskRef::Node(*n),
            TaskArg::Name(s) => TaskRef::Name(s),
        }
    }
}

/// `(node, name, task_key, inputs_digest, seed, code_version)`, as `begin_run` takes tasks.
type TaskTuple = (
    u32,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
);

fn error_info(
    type_name: Option<String>,
    message: Option<String>,
    traceback: Option<String>,
) -> Option<ErrorInfo> {
    if type_name.is_none() && message.is_none() && traceback.is_none() {
        return None;
    }
    Some(ErrorInfo {
        type_name: type_name.unwrap_or_default(),
        message: message.unwrap_or_default(),
        traceback,
    })
}

fn set_error(d: &Bound<'_, PyDict>, e: Option<&ErrorInfo>) -> PyResult<()> {
    d.set_item("error_type", e.map(|e| e.type_name.as_str()))?;
    d.set_item("error_message", e.map(|e| e.message.as_str()))?;
    d.set_item("traceback", e.and_then(|e| e.traceback.as_deref()))
}

fn run_dict<'py>(py: Python<'py>, r: &RunSummary) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run_id", &r.run_id)?;
    d.set_item("graph", &r.graph)?;
    d.set_item("state", &r.state)?;
    d.set_item("trigger", &r.trigger)?;
    d.set_item("scheduled_us", r.scheduled_us)?;
    d.set_item("created_us", r.created_us)?;
    d.set_item("started_us", r.started_us)?;
    d.set_item("ended_us", r.ended_us)?;
    Ok(d)
}

fn task_dict<'py>(py: Python<'py>, t: &TaskRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("node", t.fact.node)?;
    d.set_item("name", &t.fact.name)?;
    d.set_item("task_key", &t.fact.task_key)?;
    d.set_item("inputs_digest", &t.fact.inputs_digest)?;
    d.set_item("seed", t.fact.seed)?;
    d.set_item("code_version", &t.fact.code_version)?;
    d.set_item("status", &t.status)?;
    d.set_item("attempt", t.attempt)?;
    d.set_item("started_us", t.started_us)?;
    d.set_item("ended_us", t.ended_us)?;
    set_error(&d, t.error.as_ref())?;
    Ok(d)
}

fn attempt_dict<'py>(py: Python<'py>, a: &AttemptRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("node", a.node)?;
    d.set_item("attempt", a.attempt)?;
    d.set_item("started_us", a.started_us)?;
    d.set_item("ended_us", a.ended_us)?;
    d.set_item("status", &a.status)?;
    set_error(&d, a.error.as_ref())?;
    d.set_item("retry_at_us", a.retry_at_us)?;
    Ok(d)
}

fn log_dict<'py>(py: Python<'py>, l: &LogRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("node", l.node)?;
    d.set_item("task", &l.task)?;
    d.set_item("at_us", l.at_us)?;
    d.set_item("level", &l.level)?;
    d.set_item("message", &l.message)?;
    Ok(d)
}

fn graph_dict<'py>(py: Python<'py>, g: &GraphRecord) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", &g.name)?;
    d.set_item("schedule", &g.schedule)?;
    d.set_item("tz", &g.tz)?;
    d.set_item("created_us", g.created_us)?;
    d.set_item("updated_us", g.updated_us)?;
    d.set_item("last_fire_us", g.last_fire_us)?;
    d.set_item("meta_json", &g.meta_json)?;
    Ok(d)
}

fn event_dict<'py>(py: Python<'py>, e: &EventRow) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("id", e.id)?;
    d.set_item("run_id", &e.run_id)?;
    d.set_item("at_us", e.at_us)?;
    d.set_item("kind", &e.kind)?;
    d.set_item("detail_json", &e.detail_json)?;
    Ok(d)
}

fn dicts<'py, T>(
    py: Python<'py>,
    rows: &[T],
    f: fn(Python<'py>, &T) -> PyResult<Bound<'py, PyDict>>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    rows.iter().map(|r| f(py, r)).collect()
}

/// Task tuples from Python, (node, name, task_key, inputs_digest, seed, code_version), as facts.
fn task_facts(tasks: Vec<TaskTuple>) -> Vec<TaskFact> {
    tasks
        .into_iter()
        .map(
            |(node, name, task_key, inputs_digest, seed, code_version)| TaskFact {
                node,
                name,
                task_key,
                inputs_digest,
                seed,
                code_version,
            },
        )
        .collect()
}

/// The run and task history database: queued writes, blocking reads.
#[pyclass(name = "StoreCore", module = "tm._tm", frozen)]
pub struct PyStoreCore {
    store: Arc<Store>,
}

impl PyStoreCore {
    /// The store, shared with the engine's recorder.
    pub(crate) fn shared(&self) -> Arc<Store> {
        self.store.clone()
    }
}

#[pymethods]
impl PyStoreCore {
    /// Opens (creating and migrating) the database at `url`; raises `tm.StoreError`.
    #[new]
    #[pyo3(signature = (url, *, read_only = false, file_mode = None))]
    fn new(py: Python<'_>, url: &str, read_only: bool, file_mode: Option<u32>) -> PyResult<Self> {
        let store = py.detach(|| {
            if read_only {
                Store::open_read_only(url)
            } else {
                Store::open_with_mode(url, file_mode)
            }
        })?;
        Ok(PyStoreCore {
            store: Arc::new(store),
        })
    }

    /// The database file's absolute path, or ":memory:".
    #[getter]
    fn location(&self) -> &str {
        self.store.location()
    }

    /// Records a run and its tasks, given as (node, name, task_key, inputs_digest, seed, code_version).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (run_id, graph, state, trigger, created_us, tasks, *, scheduled_us = None,
                        started_us = None, config_json = None, meta_json = None))]
    fn begin_run(
        &self,
        run_id: String,
        graph: String,
        state: String,
        trigger: String,
        created_us: i64,
        tasks: Vec<TaskTuple>,
        scheduled_us: Option<i64>,
        started_us: Option<i64>,
        config_json: Option<String>,
        meta_json: Option<String>,
    ) -> PyResult<()> {
        let tasks = task_facts(tasks);
        Ok(self.store.begin_run(RunRecord {
            run_id,
            graph,
            state,
            trigger,
            scheduled_us,
            created_us,
            started_us,
            config_json,
            meta_json,
            tasks,
        })?)
    }

    /// Claims the fire of `graph` at `scheduled_us` and records its run (state `running`), in one
    /// transaction; False when a process sharing the database fired it already (detached).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (run_id, graph, trigger, scheduled_us, now_us, owner, meta_json = None, config_json = None))]
    fn claim_fire(
        &self,
        py: Python<'_>,
        run_id: String,
        graph: String,
        trigger: String,
        scheduled_us: i64,
        now_us: i64,
        owner: String,
        meta_json: Option<String>,
        config_json: Option<String>,
    ) -> PyResult<bool> {
        let fire = FireClaim {
            run_id,
            graph,
            trigger,
            scheduled_us,
            now_us,
            owner,
            meta_json,
            config_json,
        };
        Ok(py.detach(|| self.store.claim_fire(&fire))?)
    }

    /// Records run `run_id` of `graph` under idempotency key `key` (state `running`), committed
    /// at once; returns the id of the run that already had the key (and records nothing), or
    /// None (detached).
    #[allow(clippy::too_many_arguments)]
    fn claim_key(
        &self,
        py: Python<'_>,
        run_id: String,
        graph: String,
        trigger: String,
        key: String,
        now_us: i64,
        meta_json: String,
    ) -> PyResult<Option<String>> {
        let claim = KeyClaim {
            run_id,
            graph,
            trigger,
            key,
            now_us,
            meta_json,
        };
        Ok(py.detach(|| self.store.claim_key(&claim))?)
    }

    /// Pauses `graph`'s schedule for every scheduler sharing the database; False when it was
    /// paused already (detached).
    fn pause(&self, py: Python<'_>, graph: &str, now_us: i64, owner: &str) -> PyResult<bool> {
        Ok(py.detach(|| self.store.pause(graph, now_us, owner))?)
    }

    /// Unpauses `graph`; returns when it had been paused, None when it was not (detached).
    fn unpause(&self, py: Python<'_>, graph: &str) -> PyResult<Option<i64>> {
        Ok(py.detach(|| self.store.unpause(graph))?)
    }

    /// The paused graphs as (graph, paused_us, owner), by name (detached).
    fn pauses(&self, py: Python<'_>) -> PyResult<Vec<(String, i64, String)>> {
        let rows = py.detach(|| self.store.pauses())?;
        Ok(rows
            .into_iter()
            .map(|p| (p.graph, p.paused_us, p.owner))
            .collect())
    }

    /// Asks the schedulers sharing the database to run `graph` now; returns the request's id
    /// (detached).
    fn request_trigger(
        &self,
        py: Python<'_>,
        graph: &str,
        params_json: &str,
        now_us: i64,
        owner: &str,
    ) -> PyResult<i64> {
        Ok(py.detach(|| {
            self.store
                .request_trigger(graph, params_json, now_us, owner)
        })?)
    }

    /// The graphs with unclaimed trigger requests (detached).
    fn triggered_graphs(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.store.triggered_graphs())?)
    }

    /// Claims `graph`'s unclaimed trigger requests as (id, params_json) (detached).
    fn claim_triggers(
        &self,
        py: Python<'_>,
        graph: &str,
        now_us: i64,
        owner: &str,
    ) -> PyResult<Vec<(i64, String)>> {
        Ok(py.detach(|| self.store.claim_triggers(graph, now_us, owner))?)
    }

    /// Adds tasks, as (node, name, task_key, inputs_digest, seed, code_version), to a run begun
    /// without them (queued like every write).
    fn add_tasks(&self, run_id: &str, tasks: Vec<TaskTuple>) -> PyResult<()> {
        let tasks = task_facts(tasks);
        Ok(self.store.add_tasks(run_id, tasks)?)
    }

    /// Records the start of an attempt.
    fn task_started(&self, run_id: &str, node: u32, attempt: u32, at_us: i64) -> PyResult<()> {
        Ok(self.store.task_started(run_id, node, attempt, at_us)?)
    }

    /// Records the end of an attempt; with `retry_at_us` the task becomes "retrying".
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (run_id, node, attempt, at_us, status, error_type = None,
                        error_message = None, traceback = None, retry_at_us = None))]
    fn task_ended(
        &self,
        run_id: &str,
        node: u32,
        attempt: u32,
        at_us: i64,
        status: &str,
        error_type: Option<String>,
        error_message: Option<String>,
        traceback: Option<String>,
        retry_at_us: Option<i64>,
    ) -> PyResult<()> {
        let error = error_info(error_type, error_message, traceback);
        Ok(self
            .store
            .task_ended(run_id, node, attempt, at_us, status, error, retry_at_us)?)
    }

    /// Sets a task's status without an attempt (skipped, cancelled, pending again).
    fn task_status(&self, run_id: &str, node: u32, status: &str, at_us: i64) -> PyResult<()> {
        Ok(self.store.task_status(run_id, node, status, at_us)?)
    }

    /// Stores a task's serialized result.
    fn save_result(&self, run_id: &str, node: u32, format: &str, data: &[u8]) -> PyResult<()> {
        Ok(self
            .store
            .save_result(run_id, node, format, data.to_vec())?)
    }

    /// Appends a log line of a task (node None: of the run).
    fn append_log(
        &self,
        run_id: &str,
        node: Option<u32>,
        at_us: i64,
        level: &str,
        message: &str,
    ) -> PyResult<()> {
        Ok(self.store.append_log(run_id, node, at_us, level, message)?)
    }

    /// Records the end of a run.
    fn finish_run(&self, run_id: &str, state: &str, ended_us: i64) -> PyResult<()> {
        Ok(self.store.finish_run(run_id, state, ended_us)?)
    }

    /// Sets a run's state (an unfinished state clears its end time).
    fn set_run_state(&self, run_id: &str, state: &str) -> PyResult<()> {
        Ok(self.store.set_run_state(run_id, state)?)
    }

    /// Inserts or updates a graph.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (name, created_us, updated_us, *, schedule = None, tz = None,
                        last_fire_us = None, meta_json = None))]
    fn upsert_graph(
        &self,
        name: String,
        created_us: i64,
        updated_us: i64,
        schedule: Option<String>,
        tz: Option<String>,
        last_fire_us: Option<i64>,
        meta_json: Option<String>,
    ) -> PyResult<()> {
        Ok(self.store.upsert_graph(GraphRecord {
            name,
            schedule,
            tz,
            created_us,
            updated_us,
            last_fire_us,
            meta_json,
        })?)
    }

    /// Records a scheduler event.
    #[pyo3(signature = (at_us, kind, *, run_id = None, detail_json = None))]
    fn record_event(
        &self,
        at_us: i64,
        kind: &str,
        run_id: Option<&str>,
        detail_json: Option<&str>,
    ) -> PyResult<()> {
        Ok(self.store.record_event(run_id, at_us, kind, detail_json)?)
    }

    /// Deletes old finished runs (beyond `keep_runs` per graph, or ended over `keep_days` ago).
    #[pyo3(signature = (now_us, *, keep_runs = None, keep_days = None))]
    fn prune(&self, now_us: i64, keep_runs: Option<usize>, keep_days: Option<u32>) -> PyResult<()> {
        Ok(self.store.prune(keep_runs, keep_days, now_us)?)
    }

    /// Waits (detached) until every queued write is committed; raises the first error since the
    /// previous flush.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.flush())?)
    }

    /// Flushes and closes (detached). Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        Ok(py.detach(|| self.store.close())?)
    }

    /// The latest write error's message, or None.
    fn last_error(&self) -> Option<String> {
        self.store.last_error().map(|e| e.to_string())
    }

    /// Runs, newest first, as dicts; `before_us`/`before_id` (the last row of the previous page)
    /// continue a listing.
    #[pyo3(signature = (*, graph = None, state = None, limit = None, trigger = None, before_us = None, before_id = None))]
    #[allow(clippy::too_many_arguments)]
    fn list_runs<'py>(
        &self,
        py: Python<'py>,
        graph: Option<String>,
        state: Option<String>,
        limit: Option<usize>,
        trigger: Option<String>,
        before_us: Option<i64>,
        before_id: Option<String>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let before = match (before_us, before_id) {
            (Some(us), Some(id)) => Some((us, id)),
            (None, None) => None,
            _ => {
                return Err(pyo3::exceptions::PyValueError::new_err(
                    "before_us and before_id go together (the last run of the previous page)",
                ))
            }
        };
        let filter = RunFilter {
            graph,
            state,
            trigger,
            before,
            limit,
        };
        let rows = py.detach(|| self.store.list_runs(&filter))?;
        dicts(py, &rows, run_dict)
    }

    /// The ids of the runs whose id starts with `prefix`, in order, at most `limit` (detached).
    #[pyo3(signature = (prefix, limit = 2))]
    fn run_ids_with_prefix(
        &self,
        py: Python<'_>,
        prefix: &str,
        limit: usize,
    ) -> PyResult<Vec<String>> {
        Ok(py.detach(|| self.store.run_ids_with_prefix(prefix, limit))?)
    }

    /// A run as a dict with "config_json", "meta_json" and "tasks" (a list of dicts), or None.
    fn get_run<'py>(&self, py: Python<'py>, run_id: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(detail) = py.detach(|| self.store.get_run(run_id))? else {
            return Ok(None);
        };
        let d = run_dict(py, &detail.run)?;
        d.set_item("config_json", &detail.config_json)?;
        d.set_item("meta_json", &detail.meta_json)?;
        d.set_item("tasks", dicts(py, &detail.tasks, task_dict)?)?;
        Ok(Some(d))
    }

    /// The attempts of one task (by node or name), oldest first.
    fn attempts<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        task: TaskArg,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let rows = py.detach(|| self.store.attempts(run_id, task.as_ref()))?;
        dicts(py, &rows, attempt_dict)
    }

    /// Log lines of a run, or of one task (by node or name).
    #[pyo3(signature = (run_id, task = None))]
    fn logs<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        task: Option<TaskArg>,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let rows = py.detach(|| self.store.logs(run_id, task.as_ref().map(TaskArg::as_ref)))?;
        dicts(py, &rows, log_dict)
    }

    /// Every stored result of a run: (node, format, bytes).
    fn results<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
    ) -> PyResult<Vec<(u32, String, Bound<'py, PyBytes>)>> {
        let rows = py.detach(|| self.store.results(run_id))?;
        Ok(rows
            .into_iter()
            .map(|(node, format, data)| (node, format, PyBytes::new(py, &data)))
            .collect())
    }

    /// One task's result as (format, bytes), or None.
    fn result<'py>(
        &self,
        py: Python<'py>,
        run_id: &str,
        node: u32,
    ) -> PyResult<Option<(String, Bound<'py, PyBytes>)>> {
        let row = py.detach(|| self.store.result(run_id, node))?;
        Ok(row.map(|(format, data)| (format, PyBytes::new(py, &data))))
    }

    /// The in-memory result cache: entries, bytes, capacity, hits, misses, evictions.
    fn cache_info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let i = self.store.cache_info();
        let d = PyDict::new(py);
        d.set_item("entries", i.entries)?;
        d.set_item("bytes", i.bytes)?;
        d.set_item("capacity", i.capacity)?;
        d.set_item("hits", i.hits)?;
        d.set_item("misses", i.misses)?;
        d.set_item("evictions", i.evictions)?;
        Ok(d)
    }

    /// Bounds the in-memory result cache to `bytes` (0 disables it).
    fn set_cache_capacity(&self, bytes: usize) {
        self.store.set_cache_capacity(bytes);
    }

    /// Runs not finished (to resume), oldest first.
    fn unfinished_runs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let rows = py.detach(|| self.store.unfinished_runs())?;
        dicts(py, &rows, run_dict)
    }

    /// One graph as a dict, or None.
    fn graph<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Option<Bound<'py, PyDict>>> {
        let row = py.detach(|| self.store.graph(name))?;
        row.as_ref().map(|g| graph_dict(py, g)).transpose()
    }

    /// Every graph, by name.
    fn graphs<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let rows = py.detach(|| self.store.graphs())?;
        dicts(py, &rows, graph_dict)
    }

    /// The newest `limit` events, newest first.
    #[pyo3(signature = (limit = 100))]
    fn events<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let rows = py.detach(|| self.store.events(limit))?;
        dicts(py, &rows, event_dict)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Closes the store; an error while closing is raised unless another is in flight.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: Option<Bound<'_, PyAny>>,
        _exc_value: Option<Bound<'_, PyAny>>,
        _traceback: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let closed = py.detach(|| self.store.close());
        if exc_type.is_none() {
            closed?;
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("StoreCore({:?})", self.store.location())
    }
}

impl Drop for PyStoreCore {
    fn drop(&mut self) {
        // Usually dropped by the garbage collector while attached: close detached, so the final
        // commit holds up no other Python thread. At interpreter shutdown, close as we are.
        let store = &self.store;
        let detached = Python::try_attach(|py| py.detach(|| store.close()));
        if detached.is_none() {
            let _ = store.close();
        }
    }
}

/// Adds `StoreCore` to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyStoreCore>()
}
