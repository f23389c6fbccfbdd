//! `tm._tm.Engine`, `RunHandle` and `TaskContext`: the engine seen from Python.
//!
//! Task calls attach to the interpreter inside a worker's session ([`PyHost::session`]); every wait
//! (for a run, for shutdown) happens detached, in slices, with signal checks in between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyError, PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use super::errors::exc;
use super::graph::PyGraphCore;
use crate::clock::Clock;
use crate::dag::NodeId;
use crate::engine::{
    Body, CallContext, Executor, Host, PoolConfig, Run, RunOptions, Submission, TaskError, TaskSpec,
};
use crate::retry::RetryPolicy;

type Value = Py<PyAny>;

/// Worker threads get one Python thread state for life and attach once per session.
struct PyHost;

impl Host for PyHost {
    fn worker_main(&self, f: &mut (dyn FnMut() + Send)) {
        Python::attach(|py| py.detach(f));
    }
    fn session(&self, f: &mut (dyn FnMut() + Send)) {
        Python::attach(|_py| f());
    }
}

/// Where a parameter's value comes from.
enum Source {
    Parent(NodeId),
    Config,
    Context,
    AllParents,
    Value(Py<PyAny>),
}

struct NodeCall {
    func: Py<PyAny>,
    params: Vec<(Py<PyString>, Source)>,
    args: Option<Py<PyTuple>>,
    retry_on: Option<Py<PyAny>>,
    give_up_on: Option<Py<PyAny>>,
}

/// The Python side of a run: the callables and how to fill their parameters.
struct PyBody {
    nodes: Vec<NodeCall>,
    names: Vec<Py<PyString>>,
    config: Py<PyAny>,
    meta: Py<PyAny>,
}

impl PyBody {
    fn kwargs<'py>(
        &self,
        py: Python<'py>,
        cx: &CallContext<'_, Value>,
        call: &NodeCall,
    ) -> PyResult<Bound<'py, PyDict>> {
        let kw = PyDict::new(py);
        for (name, source) in &call.params {
            match source {
                Source::Parent(p) => {
                    let v = cx
                        .value(*p)
                        .map(|v| v.bind(py).clone())
                        .unwrap_or_else(|| py.None().into_bound(py));
                    kw.set_item(name.bind(py), v)?;
                }
                Source::Config => kw.set_item(name.bind(py), self.config.bind(py))?,
                Source::Context => {
                    let ctx = PyTaskContext {
                        run: cx.run(),
                        node: cx.node,
                        attempt: cx.attempt,
                        task: self.names[cx.node as usize].clone_ref(py),
                        meta: self.meta.clone_ref(py),
                    };
                    kw.set_item(name.bind(py), Py::new(py, ctx)?)?;
                }
                Source::AllParents => {
                    for &p in cx.plan().parents(cx.node) {
                        let key = self.names[p as usize].bind(py);
                        if !kw.contains(key)? {
                            let v = cx
                                .value(p)
                                .map(|v| v.bind(py).clone())
                                .unwrap_or_else(|| py.None().into_bound(py));
                            kw.set_item(key, v)?;
                        }
                    }
                }
                Source::Value(v) => kw.set_item(name.bind(py), v.bind(py))?,
            }
        }
        Ok(kw)
    }
}

impl Body<Value> for PyBody {
    fn call(&self, cx: &CallContext<'_, Value>) -> Result<Value, TaskError> {
        Python::attach(|py| {
            let call = &self.nodes[cx.node as usize];
            let result = self.kwargs(py, cx, call).and_then(|kw| {
                let args = match &call.args {
                    Some(a) => a.bind(py).clone(),
                    None => PyTuple::empty(py),
                };
                call.func.bind(py).call(args, Some(&kw))
            });
            result.map(Bound::unbind).map_err(|e| {
                if e.is_instance_of::<exc::TaskCancelled>(py) {
                    TaskError::Cancelled
                } else {
                    TaskError::Raised {
                        source: Box::new(e),
                    }
                }
            })
        })
    }

    fn retryable(&self, node: NodeId, error: &TaskError) -> bool {
        let call = &self.nodes[node as usize];
        let TaskError::Raised { source } = error else {
            return true;
        };
        let Some(err) = source.downcast_ref::<PyErr>() else {
            return true;
        };
        Python::attach(|py| {
            let value = err.value(py);
            // Only ordinary exceptions are retried: KeyboardInterrupt and SystemExit end the task.
            if !value.is_instance_of::<pyo3::exceptions::PyException>() {
                return false;
            }
            if let Some(g) = &call.give_up_on {
                if value.is_instance(g.bind(py)).unwrap_or(false) {
                    return false;
                }
            }
            match &call.retry_on {
                Some(r) => value.is_instance(r.bind(py)).unwrap_or(false),
                None => true,
            }
        })
    }
}

fn secs(v: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a non-negative number of seconds, got {v}"
        ))
    })
}

/// The engine: worker pools and the runs on them.
#[pyclass(name = "Engine", module = "tm._tm", frozen)]
pub struct PyEngine {
    exec: Arc<Executor<Value>>,
}

#[pymethods]
impl PyEngine {
    /// `pools` is a list of (tag, capacity); the first is the default pool for untagged tasks.
    #[new]
    fn new(pools: Vec<(String, usize)>) -> PyResult<Self> {
        if pools.is_empty() {
            return Err(PyValueError::new_err("at least one pool is required"));
        }
        if let Some((name, _)) = pools.iter().find(|(_, c)| *c == 0) {
            return Err(PyValueError::new_err(format!(
                "pool {name:?} must have at least one worker"
            )));
        }
        let pools = pools
            .into_iter()
            .map(|(name, capacity)| PoolConfig { name, capacity })
            .collect();
        Ok(PyEngine {
            exec: Arc::new(Executor::new(Arc::new(PyHost), pools, Clock::System)),
        })
    }

    /// Index of the pool for `tag`, or None.
    fn pool_index(&self, tag: &str) -> Option<usize> {
        self.exec.pool_index(tag)
    }

    /// Adds a pool for `tag` with `capacity` workers (or returns the existing one's index).
    fn add_pool(&self, tag: &str, capacity: usize) -> PyResult<usize> {
        if capacity == 0 {
            return Err(PyValueError::new_err(format!(
                "pool {tag:?} must have at least one worker"
            )));
        }
        Ok(self.exec.add_pool(tag, capacity))
    }

    /// Number of worker threads started so far (none before the first run).
    #[getter]
    fn thread_count(&self) -> usize {
        self.exec.thread_count()
    }

    /// Starts a run. `calls[i]` is `(func, params, args, retry_on, give_up_on)` for node i, where
    /// params are `(name, kind, payload)` with kind 0 parent index, 1 config, 2 context,
    /// 3 all parents, 4 constant; `specs[i]` is `(pool, priority, retries, delay, backoff, max_delay, jitter)`.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (graph, calls, specs, config, meta, fail_fast = false))]
    fn submit(
        &self,
        py: Python<'_>,
        graph: &Bound<'_, PyGraphCore>,
        calls: Vec<(
            Py<PyAny>,
            Vec<(Py<PyString>, u8, Py<PyAny>)>,
            Option<Py<PyTuple>>,
            Option<Py<PyAny>>,
            Option<Py<PyAny>>,
        )>,
        specs: Vec<(usize, i32, u32, f64, f64, Option<f64>, f64)>,
        config: Py<PyAny>,
        meta: Py<PyAny>,
        fail_fast: bool,
    ) -> PyResult<PyRunHandle> {
        let plan = graph.get().plan();
        if calls.len() != plan.len() || specs.len() != plan.len() {
            return Err(PyValueError::new_err(
                "one call and one spec per task are required",
            ));
        }
        let mut nodes = Vec::with_capacity(calls.len());
        for (func, params, args, retry_on, give_up_on) in calls {
            let mut ps = Vec::with_capacity(params.len());
            for (name, kind, payload) in params {
                let source = match kind {
                    0 => Source::Parent(payload.extract::<u32>(py)?),
                    1 => Source::Config,
                    2 => Source::Context,
                    3 => Source::AllParents,
                    _ => Source::Value(payload),
                };
                ps.push((name, source));
            }
            nodes.push(NodeCall {
                func,
                params: ps,
                args,
                retry_on,
                give_up_on,
            });
        }
        let mut task_specs = Vec::with_capacity(specs.len());
        for (pool, priority, retries, delay, backoff, max_delay, jitter) in specs {
            if !(0.0..=1.0).contains(&jitter) || backoff < 0.0 {
                return Err(PyValueError::new_err(
                    "jitter must be in [0, 1] and backoff non-negative",
                ));
            }
            let retry = RetryPolicy {
                retries,
                delay: secs(delay, "retry_delay")?,
                backoff,
                max_delay: max_delay.map(|m| secs(m, "max_delay")).transpose()?,
                jitter,
            };
            task_specs.push(TaskSpec {
                pool,
                priority,
                retry,
            });
        }
        let names = (0..plan.len() as NodeId)
            .map(|i| PyString::new(py, plan.name(i)).unbind())
            .collect();
        let body = Arc::new(PyBody {
            nodes,
            names,
            config,
            meta,
        });
        let sub = Submission {
            plan,
            specs: Arc::new(task_specs),
            body,
            options: RunOptions { fail_fast },
        };
        let exec = self.exec.clone();
        let run = py
            .detach(move || exec.submit(sub))
            .map_err(exc::ExecutorError::new_err)?;
        Ok(PyRunHandle {
            run,
            exec: self.exec.clone(),
        })
    }

    /// Stops the worker threads after their current tasks (waits detached). Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        let exec = self.exec.clone();
        py.detach(move || exec.shutdown());
    }
}

fn error_object(py: Python<'_>, e: &TaskError) -> PyResult<Py<PyAny>> {
    match e {
        TaskError::Raised { source } => match source.downcast_ref::<PyErr>() {
            Some(err) => Ok(err.value(py).clone().into_any().unbind()),
            None => exc::ExecutorError::new_err(source.to_string())
                .into_value(py)
                .into_py_any(py),
        },
        TaskError::Timeout(d) => {
            exc::TaskTimeout::new_err(format!("task timed out after {:.3}s", d.as_secs_f64()))
                .into_value(py)
                .into_py_any(py)
        }
        TaskError::Cancelled => exc::TaskCancelled::new_err("task cancelled")
            .into_value(py)
            .into_py_any(py),
    }
}

/// A submitted run: wait for it, cancel it, read its tasks.
#[pyclass(name = "RunHandle", module = "tm._tm", frozen)]
pub struct PyRunHandle {
    run: Run<Value>,
    exec: Arc<Executor<Value>>,
}

#[pymethods]
impl PyRunHandle {
    /// The run id (unique in this process).
    #[getter]
    fn id(&self) -> u64 {
        self.run.id()
    }

    /// "running", "completed", "failed" or "cancelled".
    #[getter]
    fn state(&self) -> &'static str {
        self.run.state().as_str()
    }

    /// Whether the run has ended.
    fn done(&self) -> bool {
        self.run.is_done()
    }

    /// Waits up to `timeout` seconds (forever if None); returns whether the run ended. Ctrl-C once
    /// cancels the tasks that have not started and waits for the running ones; twice stops waiting.
    /// Either way KeyboardInterrupt reaches the caller.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let deadline = match timeout {
            Some(t) => Some(Instant::now() + secs(t, "timeout")?),
            None => None,
        };
        let mut interrupted: Option<PyErr> = None;
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let (exec, run) = (self.exec.clone(), self.run.clone());
            let done = py.detach(move || exec.wait(&run, slice));
            if done {
                return match interrupted {
                    Some(e) => Err(e),
                    None => Ok(true),
                };
            }
            if let Err(e) = py.check_signals() {
                if !e.is_instance_of::<PyKeyboardInterrupt>(py) || interrupted.is_some() {
                    let exec = self.exec.clone();
                    let run = self.run.clone();
                    py.detach(move || exec.cancel(&run));
                    return Err(e);
                }
                let (exec, run) = (self.exec.clone(), self.run.clone());
                py.detach(move || exec.cancel(&run));
                interrupted = Some(e);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) && interrupted.is_none() {
                return Ok(false);
            }
        }
    }

    /// Cancels the tasks that have not started; the run ends `cancelled`. Harmless to repeat.
    fn cancel(&self, py: Python<'_>) {
        let (exec, run) = (self.exec.clone(), self.run.clone());
        py.detach(move || exec.cancel(&run));
    }

    /// Cancels task `node` and its descendants.
    fn cancel_task(&self, py: Python<'_>, node: u32) {
        let (exec, run) = (self.exec.clone(), self.run.clone());
        py.detach(move || exec.cancel_task(&run, node));
    }

    /// Number of tasks.
    fn __len__(&self) -> usize {
        self.run.plan().len()
    }

    /// Task names in node order.
    fn names(&self) -> Vec<String> {
        let p = self.run.plan();
        (0..p.len() as NodeId)
            .map(|i| p.name(i).to_string())
            .collect()
    }

    /// The state name of every task, in node order.
    fn task_states(&self) -> Vec<&'static str> {
        (0..self.run.plan().len() as NodeId)
            .map(|i| self.run.task_state(i).as_str())
            .collect()
    }

    /// The state name of task `node`.
    fn task_state(&self, node: u32) -> PyResult<&'static str> {
        self.check(node)?;
        Ok(self.run.task_state(node).as_str())
    }

    /// The result of task `node`; KeyError if it has none.
    fn value(&self, py: Python<'_>, node: u32) -> PyResult<Py<PyAny>> {
        self.check(node)?;
        self.run
            .value(node)
            .map(|v| v.clone_ref(py))
            .ok_or_else(|| {
                PyKeyError::new_err(format!(
                    "task {:?} has no result ({})",
                    self.run.plan().name(node),
                    self.run.task_state(node).as_str()
                ))
            })
    }

    /// Attempts of task `node`: (number, started_us, ended_us, error or None, retry_at_us or None).
    #[allow(clippy::type_complexity)]
    fn attempts(
        &self,
        py: Python<'_>,
        node: u32,
    ) -> PyResult<Vec<(u32, i64, i64, Option<Py<PyAny>>, Option<i64>)>> {
        self.check(node)?;
        self.run
            .attempts(node)
            .into_iter()
            .map(|a| {
                let err = a.error.as_ref().map(|e| error_object(py, e)).transpose()?;
                Ok((a.number, a.started_us, a.ended_us, err, a.retry_at_us))
            })
            .collect()
    }

    /// The failed parent that made task `node` skip, or None.
    fn skip_cause(&self, node: u32) -> PyResult<Option<u32>> {
        self.check(node)?;
        Ok(self.run.skip_cause(node))
    }

    /// (started_us, ended_us) of the run; ended is 0 while it runs.
    fn times(&self) -> (i64, i64) {
        self.run.times()
    }
}

impl PyRunHandle {
    fn check(&self, node: u32) -> PyResult<()> {
        if node as usize >= self.run.plan().len() {
            return Err(PyKeyError::new_err(format!("no task {node}")));
        }
        Ok(())
    }
}

/// What a task sees of its run when it asks for a `context` parameter.
#[pyclass(name = "TaskContext", module = "tm._tm", frozen)]
pub struct PyTaskContext {
    run: Run<Value>,
    node: NodeId,
    attempt: u32,
    task: Py<PyString>,
    meta: Py<PyAny>,
}

#[pymethods]
impl PyTaskContext {
    /// The run id.
    #[getter]
    fn run_id(&self) -> u64 {
        self.run.id()
    }

    /// The task's name.
    #[getter]
    fn task(&self, py: Python<'_>) -> Py<PyString> {
        self.task.clone_ref(py)
    }

    /// 0-based attempt number.
    #[getter]
    fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether the run or this task was asked to stop; long tasks should check it and return.
    #[getter]
    fn cancelled(&self) -> bool {
        self.run.is_cancel_requested(self.node)
    }

    /// Run metadata given at submission (graph name, logical time, trigger).
    #[getter]
    fn meta(&self, py: Python<'_>) -> Py<PyAny> {
        self.meta.clone_ref(py)
    }

    /// The graph's name.
    #[getter]
    fn graph(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.meta.bind(py).get_item("graph")?.unbind())
    }

    /// The logical (scheduled) time of the run, or None for manual runs.
    #[getter]
    fn scheduled_at(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self.meta.bind(py).get_item("scheduled_at")?.unbind())
    }

    /// A logger named `tm.task.<task>`.
    #[getter]
    fn logger<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let name = format!("tm.task.{}", self.task.bind(py).to_str()?);
        py.import("logging")?.call_method1("getLogger", (name,))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "TaskContext(run_id={}, task={:?}, attempt={})",
            self.run.id(),
            self.task.bind(py).to_str()?,
            self.attempt
        ))
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGraphCore>()?;
    m.add_class::<PyEngine>()?;
    m.add_class::<PyRunHandle>()?;
    m.add_class::<PyTaskContext>()?;
    Ok(())
}
