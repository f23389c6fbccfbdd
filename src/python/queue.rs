//! `tm._tm.QueueCore`: the agent queue's core seen from Python (`tm.queue.TaskManager` wraps it).
//!
//! Task data crosses the boundary as JSON text: Python encodes with its C encoder, the core stores
//! text, and dicts come back with `data` decoded by `json.loads`. Every store operation, and every
//! wait, runs detached from the interpreter; blocking claims wait in slices and check signals.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};
use pyo3::{intern, IntoPyObjectExt};

use crate::clock::Clock;
use crate::fork_gate::{ForkLocal, Pass};
use crate::queue::{
    self, Backend, Completion, Holder, ListFilter, NewTask, Options, QueueError, Status, Task,
    Waiter,
};

mod exc {
    pyo3::import_exception!(tm.queue, QueueLockTimeout);
    pyo3::import_exception!(tm.queue, CorruptStateError);
    pyo3::import_exception!(tm.exceptions, StoreError);
}

/// The one mapping from queue errors to Python exceptions.
fn to_py(e: QueueError) -> PyErr {
    let msg = e.to_string();
    match e {
        QueueError::LockTimeout { .. } => exc::QueueLockTimeout::new_err(msg),
        QueueError::Corrupt { .. } => exc::CorruptStateError::new_err(msg),
        QueueError::Io { .. } | QueueError::Sqlite { .. } | QueueError::Postgres { .. } => {
            exc::StoreError::new_err(msg)
        }
        QueueError::Invalid(_) => PyValueError::new_err(msg),
    }
}

static JSON_LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// `json.loads`'s own C scanner (`json._default_decoder.scan_once`), if this Python has it.
static JSON_SCAN: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();

/// `json.loads(text)`. Text the scanner reads whole from its first character (what the queue
/// stores: compact JSON) is decoded by the scanner alone, skipping the three Python-level calls
/// `json.loads` makes around it (0.4 µs against 1.9 µs for a small object); anything else
/// (leading or trailing space, an error) goes through `json.loads`, for its result or its error.
fn loads<'py>(py: Python<'py>, text: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let s = std::str::from_utf8(text).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let s = PyString::new(py, s);
    let scan = JSON_SCAN.get_or_init(py, || {
        py.import("json")
            .and_then(|j| j.getattr("_default_decoder")?.getattr("scan_once"))
            .ok()
            .map(Bound::unbind)
    });
    if let Some(scan) = scan {
        if let Ok((value, end)) = scan
            .bind(py)
            .call1((&s, 0))
            .and_then(|r| r.extract::<(Bound<'py, PyAny>, usize)>())
        {
            if end == s.len()? {
                return Ok(value);
            }
        }
    }
    let f = JSON_LOADS.get_or_try_init(py, || {
        Ok::<_, PyErr>(py.import("json")?.getattr("loads")?.unbind())
    })?;
    f.bind(py).call1((s,))
}

/// A task as the seed's dict, plus tm's fields (`priority`, `attempt`, `max_attempts`,
/// `wait_for_parent`) and any unknown keys the state file holds.
fn task_dict<'py>(py: Python<'py>, t: &Task) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item(intern!(py, "id"), &t.id)?;
    d.set_item(intern!(py, "type"), &t.task_type)?;
    d.set_item(intern!(py, "status"), &t.status)?;
    d.set_item(intern!(py, "parent_id"), &t.parent_id)?;
    d.set_item(intern!(py, "locked_by"), &t.locked_by)?;
    d.set_item(intern!(py, "locked_at"), &t.locked_at)?;
    d.set_item(intern!(py, "created_at"), &t.created_at)?;
    d.set_item(intern!(py, "completed_at"), &t.completed_at)?;
    d.set_item(intern!(py, "data"), loads(py, &t.data)?)?;
    d.set_item(intern!(py, "priority"), t.priority)?;
    d.set_item(intern!(py, "attempt"), t.attempt)?;
    d.set_item(intern!(py, "max_attempts"), t.max_attempts)?;
    d.set_item(intern!(py, "wait_for_parent"), t.wait_for_parent)?;
    for (k, v) in &t.extra {
        if !d.contains(k)? {
            d.set_item(k, loads(py, v)?)?;
        }
    }
    Ok(d)
}

fn task_list<'py>(py: Python<'py>, tasks: &[Task]) -> PyResult<Bound<'py, PyList>> {
    let items = tasks
        .iter()
        .map(|t| task_dict(py, t))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, items)
}

fn seconds(v: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a non-negative number, got {v}"))
    })
}

fn final_status(s: &str) -> PyResult<Status> {
    match Status::parse(s) {
        Some(st) if st.is_final() => Ok(st),
        _ => Err(PyValueError::new_err(format!(
            "status must be 'completed', 'failed' or 'cancelled', got {s:?}"
        ))),
    }
}

/// Longest detached wait between two signal checks in a blocking claim.
const SLICE: Duration = Duration::from_millis(100);
/// How often a blocking claim looks for a change in the store.
const POLL: Duration = Duration::from_millis(2);

/// One queue store (a JSON state file or an SQLite database), shared by the threads of a process.
///
/// Fork safety: every call into the store holds a fork pass ([`crate::fork_gate`]), so a
/// `fork` by another thread waits for calls in flight, and the child never inherits the
/// backend's mutex (or SQLite's) locked by a thread it does not have. Blocking claims wait
/// outside the pass and outside any mutex.
#[pyclass(name = "QueueCore", module = "tm._tm", frozen)]
pub struct PyQueueCore {
    backend: Mutex<Box<dyn Backend>>,
    /// The store's change signals for blocking claims (PostgreSQL), this process's own.
    waiters: Mutex<ForkLocal<Waiters>>,
    kind: &'static str,
}

/// Change signals not in use: a blocking claim takes one out for its wait (or opens one) and
/// puts it back after, so no mutex is held while it waits.
#[derive(Default)]
struct Waiters {
    /// Whether the store has change signals at all (None: not asked yet; false: poll).
    known: Option<bool>,
    idle: Vec<Box<dyn Waiter>>,
}

impl PyQueueCore {
    /// Runs `f` on the backend, holding a fork pass and the backend's mutex. Call detached.
    fn op<R>(&self, f: impl FnOnce(&mut dyn Backend) -> queue::Result<R>) -> queue::Result<R> {
        let _pass = Pass::enter();
        let mut b = self.backend.lock().unwrap_or_else(|p| p.into_inner());
        f(b.as_mut())
    }

    /// Runs `f` on the backend with the interpreter detached.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut dyn Backend) -> queue::Result<R> + Send,
    ) -> PyResult<R> {
        py.detach(|| self.op(f)).map_err(to_py)
    }

    /// Waits (detached) until the store's version differs from `version` or `until` passes.
    fn wait_change(&self, version: u64, until: Instant) -> queue::Result<bool> {
        let mut waiter = {
            let _pass = Pass::enter();
            let mut slot = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            let slot = slot.get();
            match slot.idle.pop() {
                Some(w) => Some(w),
                None if slot.known == Some(false) => None,
                None => {
                    let w = self.op(|b| b.waiter())?;
                    slot.known = Some(w.is_some());
                    w
                }
            }
        };
        // Listening began before this version check, so a change committed after it wakes
        // the wait below; a missed signal costs at most one slice.
        let changed = loop {
            let v = self.op(|b| b.version())?;
            if v != version {
                break true;
            }
            let now = Instant::now();
            if now >= until {
                break false;
            }
            match waiter.as_mut() {
                Some(w) => w.wait(until - now)?,
                None => std::thread::sleep(POLL.min(until - now)),
            }
        };
        if let Some(w) = waiter {
            let _pass = Pass::enter();
            let mut slot = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            slot.get().idle.push(w);
        }
        Ok(changed)
    }
}

#[pymethods]
impl PyQueueCore {
    /// Opens (creating if needed) the store `target` names: a `.json` path, another path or
    /// `sqlite:///...`.
    #[new]
    #[pyo3(signature = (target, lock_timeout, lease_seconds))]
    fn new(
        py: Python<'_>,
        target: String,
        lock_timeout: f64,
        lease_seconds: f64,
    ) -> PyResult<Self> {
        let opts = Options {
            lock_timeout: seconds(lock_timeout, "lock_timeout")?,
            lease: seconds(lease_seconds, "task_timeout_hours")?,
            clock: Clock::System,
        };
        let parsed = queue::Target::parse(&target).map_err(to_py)?;
        let kind = match parsed {
            queue::Target::Json(_) => "json",
            queue::Target::Sqlite(_) => "sqlite",
            queue::Target::Postgres(_) => "postgresql",
        };
        let backend = py
            .detach(|| {
                let _pass = Pass::enter();
                parsed.open(opts)
            })
            .map_err(to_py)?;
        Ok(PyQueueCore {
            backend: Mutex::new(backend),
            waiters: Mutex::new(ForkLocal::new(Waiters::default())),
            kind,
        })
    }

    /// "json" or "sqlite".
    #[getter]
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// Creates tasks from (type, data JSON, parent_id, priority, max_attempts, wait_for_parent)
    /// tuples, all or none; returns their ids.
    #[allow(clippy::type_complexity)]
    fn create(
        &self,
        py: Python<'_>,
        tasks: Vec<(String, String, Option<String>, i64, Option<u32>, bool)>,
    ) -> PyResult<Vec<String>> {
        let tasks: Vec<NewTask> = tasks
            .into_iter()
            .map(
                |(task_type, data, parent_id, priority, max_attempts, wait_for_parent)| NewTask {
                    task_type,
                    data: data.into_bytes(),
                    parent_id,
                    priority,
                    max_attempts,
                    wait_for_parent,
                },
            )
            .collect();
        self.with(py, |b| b.create(&tasks))
    }

    /// Claims the best pending task of `types` (None: any), waiting up to `wait` seconds for one.
    #[pyo3(signature = (agent, types = None, wait = None))]
    fn claim<'py>(
        &self,
        py: Python<'py>,
        agent: String,
        types: Option<Vec<String>>,
        wait: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        let types = types.filter(|t| !t.is_empty());
        let deadline = match wait {
            Some(w) => Some(Instant::now() + seconds(w, "wait")?),
            None => None,
        };
        loop {
            let (task, version, expiry) = self.with(py, |b| {
                let t = b.claim(&agent, types.as_deref())?;
                if t.is_some() || deadline.is_none() {
                    return Ok((t, 0, None));
                }
                Ok((None, b.version()?, b.next_expiry()?))
            })?;
            if let Some(t) = task {
                return task_dict(py, &t).map(Some);
            }
            let Some(deadline) = deadline else {
                return Ok(None);
            };
            // Wake for a change by another process, a lease that expires, or the deadline.
            let mut wake = deadline;
            if let Some(at) = expiry {
                // At least one poll interval ahead: a lease the store reports as expired but a
                // claim did not recover yet must not turn this into a busy loop.
                let ahead = at.saturating_sub(Clock::System.now_micros()).max(0) as u64;
                let ahead = Duration::from_micros(ahead).max(POLL);
                wake = wake.min(Instant::now() + ahead);
            }
            loop {
                let slice_end = wake.min(Instant::now() + SLICE);
                let changed = py
                    .detach(|| self.wait_change(version, slice_end))
                    .map_err(to_py)?;
                py.check_signals()?;
                if changed || Instant::now() >= wake {
                    break;
                }
            }
            if Instant::now() >= deadline {
                // One last look, so a task that arrived at the deadline is not missed.
                let t = self.with(py, |b| b.claim(&agent, types.as_deref()))?;
                return t.map(|t| task_dict(py, &t)).transpose();
            }
        }
    }

    /// Ends a task the agent holds; `result` (JSON text) goes to `data["result"]`.
    #[pyo3(signature = (task_id, agent, status, result = None, attempt = None))]
    fn complete(
        &self,
        py: Python<'_>,
        task_id: String,
        agent: String,
        status: &str,
        result: Option<String>,
        attempt: Option<u32>,
    ) -> PyResult<bool> {
        let status = final_status(status)?;
        self.with(py, |b| {
            b.complete(
                &task_id,
                &agent,
                attempt,
                status,
                result.as_deref().map(str::as_bytes),
            )
        })
    }

    /// Claims up to `limit` tasks of `types` (None: any) in one step, best first; never waits.
    #[pyo3(signature = (agent, limit, types = None))]
    fn claim_many<'py>(
        &self,
        py: Python<'py>,
        agent: String,
        limit: usize,
        types: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let types = types.filter(|t| !t.is_empty());
        let ts = self.with(py, |b| b.claim_many(&agent, types.as_deref(), limit))?;
        task_list(py, &ts)
    }

    /// Ends several tasks the agent holds in one step, from (task_id, attempt, status, result
    /// JSON text) tuples; all or none on an error. One flag per item.
    #[allow(clippy::type_complexity)]
    fn complete_many(
        &self,
        py: Python<'_>,
        agent: String,
        items: Vec<(String, Option<u32>, String, Option<String>)>,
    ) -> PyResult<Vec<bool>> {
        let statuses = items
            .iter()
            .map(|(_, _, s, _)| final_status(s))
            .collect::<PyResult<Vec<Status>>>()?;
        let items: Vec<Completion<'_>> = items
            .iter()
            .zip(statuses)
            .map(|((id, attempt, _, result), status)| Completion {
                id,
                attempt: *attempt,
                status,
                result: result.as_deref().map(str::as_bytes),
            })
            .collect();
        self.with(py, |b| b.complete_many(&agent, &items))
    }

    /// Returns a task to pending. `agent` None releases whoever holds it.
    #[pyo3(signature = (task_id, agent = None, attempt = None))]
    fn release(
        &self,
        py: Python<'_>,
        task_id: String,
        agent: Option<String>,
        attempt: Option<u32>,
    ) -> PyResult<bool> {
        self.with(py, |b| {
            let holder = match &agent {
                Some(a) => Holder::Agent { agent: a, attempt },
                None => Holder::Anyone,
            };
            b.release(&task_id, holder)
        })
    }

    /// Restarts the lease of a task the agent holds.
    #[pyo3(signature = (task_id, agent, attempt = None))]
    fn extend_lease(
        &self,
        py: Python<'_>,
        task_id: String,
        agent: String,
        attempt: Option<u32>,
    ) -> PyResult<bool> {
        self.with(py, |b| b.extend_lease(&task_id, &agent, attempt))
    }

    /// Cancels a pending task.
    fn cancel(&self, py: Python<'_>, task_id: String) -> PyResult<bool> {
        self.with(py, |b| b.cancel(&task_id))
    }

    /// One task, or None.
    fn get<'py>(&self, py: Python<'py>, task_id: String) -> PyResult<Option<Bound<'py, PyDict>>> {
        let t = self.with(py, |b| b.get(&task_id))?;
        t.map(|t| task_dict(py, &t)).transpose()
    }

    /// The children of a task, oldest first.
    fn children<'py>(&self, py: Python<'py>, task_id: String) -> PyResult<Bound<'py, PyList>> {
        let ts = self.with(py, |b| b.children(&task_id))?;
        task_list(py, &ts)
    }

    /// Tasks, oldest first, optionally filtered.
    #[pyo3(signature = (status = None, task_type = None, limit = None))]
    fn list_tasks<'py>(
        &self,
        py: Python<'py>,
        status: Option<String>,
        task_type: Option<String>,
        limit: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let filter = ListFilter {
            status,
            task_type,
            limit,
        };
        let ts = self.with(py, |b| b.list(&filter))?;
        task_list(py, &ts)
    }

    /// `get_status_summary()`'s dict.
    fn summary<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(py, |b| b.summary())?;
        let d = PyDict::new(py);
        d.set_item("total_tasks", s.total)?;
        let counts = |pairs: &[(String, u64)]| -> PyResult<Bound<'py, PyDict>> {
            let c = PyDict::new(py);
            for (k, n) in pairs {
                c.set_item(k, n)?;
            }
            Ok(c)
        };
        d.set_item("status_counts", counts(&s.status_counts)?)?;
        d.set_item("type_counts", counts(&s.type_counts)?)?;
        d.set_item("metadata", loads(py, &s.metadata)?)?;
        Ok(d)
    }

    /// Merges a JSON object (text) into the workflow metadata.
    fn update_metadata(&self, py: Python<'_>, members: String) -> PyResult<()> {
        self.with(py, |b| b.update_metadata(members.as_bytes()))
    }

    /// The whole queue in the seed's state-file format, written to `path` or returned.
    #[pyo3(signature = (path = None))]
    fn export<'py>(
        &self,
        py: Python<'py>,
        path: Option<std::path::PathBuf>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let text = self.with(py, |b| Ok(queue::export_json(&b.snapshot()?)))?;
        match path {
            Some(p) => {
                py.detach(|| std::fs::write(&p, &text)).map_err(|e| {
                    to_py(QueueError::Io {
                        op: "write",
                        path: p.clone(),
                        source: e,
                    })
                })?;
                Ok(None)
            }
            None => {
                let s = String::from_utf8_lossy(&text);
                Ok(Some(s.into_owned().into_bound_py_any(py)?))
            }
        }
    }
}

/// Copies every task and the metadata of `src` into `dst` (which must hold no tasks).
#[pyfunction]
#[pyo3(signature = (src, dst, lock_timeout = 5.0))]
fn queue_migrate(py: Python<'_>, src: String, dst: String, lock_timeout: f64) -> PyResult<usize> {
    let opts = Options {
        lock_timeout: seconds(lock_timeout, "lock_timeout")?,
        ..Options::default()
    };
    // Without a fork pass: it drops its queues at the end, and dropping one joins its
    // checkpointer thread, which may wait for a fork that waits for the pass.
    py.detach(|| queue::migrate(&src, &dst, opts))
        .map_err(to_py)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyQueueCore>()?;
    m.add_function(wrap_pyfunction!(queue_migrate, m)?)?;
    Ok(())
}
