//! `tm._tm.Engine`, `RunHandle` and `TaskContext`: the engine seen from Python.
//!
//! Task calls attach to the interpreter inside a worker's session ([`PyHost::session`]); every wait
//! (for a run, for shutdown) happens detached, in slices, with signal checks in between.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyKeyError, PyKeyboardInterrupt, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use super::errors::exc;
use super::graph::PyGraphCore;
use super::store::PyStoreCore;
use crate::clock::Clock;
use crate::dag::NodeId;
use crate::engine::{
    Body, CallContext, CancelMode, Event, EventKind, Executor, Host, Observer, PoolConfig, Run,
    RunOptions, Submission, TaskError, TaskSpec,
};
use crate::retry::RetryPolicy;
use crate::store::{ErrorInfo, Store, TaskFact, Transition};

type Value = Py<PyAny>;

/// Worker threads get one Python thread state for life and attach once per session.
struct PyHost;

impl Host for PyHost {
    fn worker_main(&self, f: &mut (dyn FnMut() + Send)) {
        Python::attach(|py| {
            py.detach(f);
            forget_dummy_thread(py);
        });
    }
    fn session(&self, f: &mut (dyn FnMut() + Send)) {
        Python::attach(|_py| f());
    }
}

/// Removes this thread's `threading._DummyThread` (made when code on it, a task or a log call,
/// asked for `threading.current_thread()`), as the thread ends: `threading` keeps those until
/// the process exits, and threads replaced after a timeout come and go for the process's life.
fn forget_dummy_thread(py: Python<'_>) {
    let forget = || -> PyResult<()> {
        let threading = py.import("threading")?;
        let ident = threading.call_method0("get_ident")?;
        let active = threading.getattr("_active")?;
        let entry = active.call_method1("get", (&ident,))?;
        if entry.is_instance(&threading.getattr("_DummyThread")?)? {
            active.del_item(&ident)?;
        }
        Ok(())
    };
    // Best effort: at interpreter shutdown `threading` may be gone already.
    let _ = forget();
}

thread_local! {
    /// The print captures of the task calls running on this thread, innermost last (a task that
    /// waits on a nested run may run that run's tasks on its own thread): (capture, node, whether
    /// the call printed).
    static CAPTURE: std::cell::RefCell<Vec<(Py<PyAny>, NodeId, bool)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// `(capture, node)` of the task call running on this thread whose prints are kept, or None.
/// Called by `sys.stdout`'s stand-in on each write; marks the call as one that printed.
#[pyfunction]
fn print_target(py: Python<'_>) -> Option<(Py<PyAny>, NodeId)> {
    CAPTURE.with_borrow_mut(|stack| {
        stack.last_mut().map(|(c, node, printed)| {
            *printed = true;
            (c.clone_ref(py), *node)
        })
    })
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
    /// Tasks that do not run Python code on the calling thread (async, process pool) stop through
    /// their own hook: `hook(attempt, "timeout" | "cancelled")`.
    interrupt_hook: Option<Py<PyAny>>,
    /// Keep the result in the store (pickled) so a resumed run can feed it to the children.
    persist: bool,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const INTERRUPTED: u8 = 2;

/// Which thread runs which attempt of a node, so an interrupt reaches exactly that attempt.
#[derive(Default)]
struct LiveCall {
    thread: AtomicU64,
    attempt: AtomicU32,
    state: AtomicU8,
}

/// The Python side of a run: the callables and how to fill their parameters.
struct PyBody {
    program: Arc<Program>,
    /// Where persisted results go: (store, run id).
    persist_to: Option<(Arc<Store>, String)>,
    /// One per node, for this run only.
    live: Vec<LiveCall>,
    config: Py<PyAny>,
    meta: Py<PyAny>,
    /// Attempts already recorded per node (a resumed run; empty otherwise): `context.attempt`
    /// counts on from them, as the store's attempt numbers do.
    attempt_base: Vec<u32>,
    /// Where what the run's tasks print goes (see [`print_target`]); `capture.done(node)` is
    /// called after a call that printed.
    capture: Option<Py<PyAny>>,
}

/// A graph compiled for the engine once and reused by every run: the callables, how to fill their
/// parameters, the scheduling specs and the task names.
struct Program {
    plan: Arc<crate::dag::Plan>,
    /// Shared with the programs [`PyProgram::with_roots`] derives, which replace only the roots.
    nodes: Vec<Arc<NodeCall>>,
    specs: Arc<Vec<TaskSpec>>,
    names: Arc<Vec<Py<PyString>>>,
}

/// Parameter descriptions as `Engine.prepare` takes them: `(name, kind, payload)`.
type ParamSpec = (Py<PyString>, u8, Py<PyAny>);

fn sources(py: Python<'_>, params: Vec<ParamSpec>) -> PyResult<Vec<(Py<PyString>, Source)>> {
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
    Ok(ps)
}

/// A compiled graph (see `Engine.prepare`).
#[pyclass(name = "Program", module = "tm._tm", frozen)]
pub struct PyProgram {
    inner: Arc<Program>,
}

#[pymethods]
impl PyProgram {
    fn __len__(&self) -> usize {
        self.inner.nodes.len()
    }

    /// This program with new parameters for some tasks (a graph's roots, for a run with
    /// arguments): `roots` holds `(node, params, args)` as in `Engine.prepare`'s calls. Everything
    /// else is shared with this program, so this costs a pointer copy per task, not a compile.
    fn with_roots(
        &self,
        py: Python<'_>,
        roots: Vec<(usize, Vec<ParamSpec>, Option<Py<PyTuple>>)>,
    ) -> PyResult<PyProgram> {
        let p = &self.inner;
        let mut nodes = p.nodes.clone();
        for (i, params, args) in roots {
            let Some(base) = p.nodes.get(i) else {
                return Err(PyValueError::new_err(format!(
                    "the program has no task {i}"
                )));
            };
            nodes[i] = Arc::new(NodeCall {
                func: base.func.clone_ref(py),
                params: sources(py, params)?,
                args,
                retry_on: base.retry_on.as_ref().map(|r| r.clone_ref(py)),
                give_up_on: base.give_up_on.as_ref().map(|g| g.clone_ref(py)),
                interrupt_hook: base.interrupt_hook.as_ref().map(|h| h.clone_ref(py)),
                persist: base.persist,
            });
        }
        Ok(PyProgram {
            inner: Arc::new(Program {
                plan: p.plan.clone(),
                nodes,
                specs: p.specs.clone(),
                names: p.names.clone(),
            }),
        })
    }
}

impl PyBody {
    /// Pickles a result into the store; a result that cannot be pickled fails the task clearly.
    fn persist(&self, py: Python<'_>, node: NodeId, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some((store, run_id)) = &self.persist_to else {
            return Ok(());
        };
        // Sealed with the store's key (tm._signing): only a holder of the key can write what a
        // resume unpickles.
        let pickled = py
            .import("tm._signing")?
            .call_method1("dumps_for", (store.location(), value))
            .map_err(|e| {
                let name = self.program.names[node as usize].bind(py).to_string();
                let err = pyo3::exceptions::PyTypeError::new_err(format!(
                    "task {name:?} has persist=True but its result cannot be pickled: {e}"
                ));
                err.set_cause(py, Some(e));
                err
            })?;
        let bytes: Vec<u8> = pickled.extract()?;
        store
            .save_result(run_id, node, "pickle", bytes)
            .map_err(|e| {
                // The same exception class (tm.StoreError), naming the task.
                let name = self.program.names[node as usize].bind(py).to_string();
                let err = PyErr::from(e);
                let msg = format!(
                    "task {name:?} has persist=True but its result cannot be stored: {}",
                    err.value(py)
                );
                match err.get_type(py).call1((msg,)) {
                    Ok(named) => PyErr::from_value(named),
                    Err(_) => err,
                }
            })
    }

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
                        attempt: self
                            .attempt_base
                            .get(cx.node as usize)
                            .copied()
                            .unwrap_or(0)
                            + cx.attempt,
                        task: self.program.names[cx.node as usize].clone_ref(py),
                        meta: self.meta.clone_ref(py),
                    };
                    kw.set_item(name.bind(py), Py::new(py, ctx)?)?;
                }
                Source::AllParents => {
                    for &p in cx.plan().parents(cx.node) {
                        let key = self.program.names[p as usize].bind(py);
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
            let call = &self.program.nodes[cx.node as usize];
            let live = &self.live[cx.node as usize];
            let result = self.kwargs(py, cx, call).and_then(|kw| {
                let args = match &call.args {
                    Some(a) => a.bind(py).clone(),
                    None => PyTuple::empty(py),
                };
                // Both the interrupter and this thread change `state` only while attached, so with the
                // GIL an asynchronous exception is either raised inside this call or cleared below.
                let me = unsafe { pyo3::ffi::PyThread_get_thread_ident() } as u64;
                live.thread.store(me, Ordering::Release);
                live.attempt.store(cx.attempt, Ordering::Release);
                live.state.store(RUNNING, Ordering::Release);
                if cx.is_abandoned() {
                    // Given up on (timed out, cancelled) before the mark above: an interrupt
                    // that came meanwhile found nothing to stop, so the task must not start.
                    // One that comes later waits for the GIL and then finds the call IDLE.
                    live.state.store(IDLE, Ordering::Release);
                    return Err(exc::TaskCancelled::new_err(
                        "the task was stopped before it started",
                    ));
                }
                // No Python runs for this unless the task prints (see `print_target`).
                if let Some(c) = &self.capture {
                    CAPTURE.with_borrow_mut(|stack| stack.push((c.clone_ref(py), cx.node, false)));
                }
                let out = call.func.bind(py).call(args, Some(&kw));
                // A later attempt (timed out meanwhile, retried on another thread) may own the
                // record now: leave it alone. Either way, an interrupt aimed at this call must not
                // hit the next task this thread runs.
                let mine = live.attempt.load(Ordering::Acquire) == cx.attempt
                    && live.thread.load(Ordering::Acquire) == me;
                let interrupted = if mine {
                    live.state.swap(IDLE, Ordering::AcqRel) == INTERRUPTED
                } else {
                    true
                };
                if interrupted && call.interrupt_hook.is_none() {
                    unsafe {
                        pyo3::ffi::PyThreadState_SetAsyncExc(
                            me as std::ffi::c_ulong as _,
                            std::ptr::null_mut(),
                        );
                    }
                }
                // Left once no interrupt can land here any more (a pending one was cleared).
                if self.capture.is_some() {
                    if let Some((c, node, printed)) = CAPTURE.with_borrow_mut(Vec::pop) {
                        if printed {
                            let done = c.bind(py).call_method1(pyo3::intern!(py, "done"), (node,));
                            if let Err(e) = done {
                                e.write_unraisable(py, Some(c.bind(py)));
                            }
                        }
                    }
                }
                out
            });
            let result = result.and_then(|v| {
                if call.persist {
                    self.persist(py, cx.node, &v)?;
                }
                Ok(v)
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

    fn interrupt(&self, node: NodeId, attempt: u32, reason: &TaskError) {
        let call = &self.program.nodes[node as usize];
        let timeout = matches!(reason, TaskError::Timeout(_));
        let live = &self.live[node as usize];
        Python::attach(|py| {
            if live.attempt.load(Ordering::Acquire) != attempt
                || live
                    .state
                    .compare_exchange(RUNNING, INTERRUPTED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return;
            }
            let thread = live.thread.load(Ordering::Acquire);
            if let Some(hook) = &call.interrupt_hook {
                let why = if timeout { "timeout" } else { "cancelled" };
                if let Err(e) = hook.bind(py).call1((thread, why)) {
                    e.write_unraisable(py, Some(hook.bind(py)));
                }
                return;
            }
            let exc_type = if timeout {
                py.get_type::<exc::TaskTimeout>()
            } else {
                py.get_type::<exc::TaskCancelled>()
            };
            // Raised in the task's thread at its next bytecode boundary; blocking C calls finish first.
            unsafe {
                pyo3::ffi::PyThreadState_SetAsyncExc(thread as _, exc_type.as_ptr());
            }
        });
    }

    fn retryable(&self, node: NodeId, error: &TaskError) -> bool {
        let call = &self.program.nodes[node as usize];
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

    /// Sizes of the thread bookkeeping, for leak checks: `{"handles", "exiting", "stuck"}`
    /// (threads held, replaced threads that returned and are exiting, threads still stuck in a
    /// timed-out or cancelled attempt).
    fn debug_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.exec.debug_counts();
        let d = PyDict::new(py);
        d.set_item("handles", c.handles)?;
        d.set_item("exiting", c.exiting)?;
        d.set_item("stuck", c.stuck)?;
        Ok(d)
    }

    /// Compiles a graph for the engine; the result is reused by every run of the graph.
    /// `calls[i]` is `(func, params, args, retry_on, give_up_on, persist)` for node i, where params are
    /// `(name, kind, payload)` with kind 0 parent index, 1 config, 2 context, 3 all parents,
    /// 4 constant; `specs[i]` is
    /// `(pool, priority, retries, delay, backoff, max_delay, jitter, timeout, retry_timeouts)`.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        py: Python<'_>,
        graph: &Bound<'_, PyGraphCore>,
        calls: Vec<(
            Py<PyAny>,
            Vec<ParamSpec>,
            Option<Py<PyTuple>>,
            Option<Py<PyAny>>,
            Option<Py<PyAny>>,
            bool,
        )>,
        specs: Vec<(
            usize,
            i32,
            u32,
            f64,
            f64,
            Option<f64>,
            f64,
            Option<f64>,
            bool,
        )>,
    ) -> PyResult<PyProgram> {
        let plan = graph.get().plan();
        if calls.len() != plan.len() || specs.len() != plan.len() {
            return Err(PyValueError::new_err(
                "one call and one spec per task are required",
            ));
        }
        let mut nodes = Vec::with_capacity(calls.len());
        for (func, params, args, retry_on, give_up_on, persist) in calls {
            let ps = sources(py, params)?;
            let interrupt_hook = func
                .bind(py)
                .getattr_opt("_tm_interrupt")?
                .map(Bound::unbind);
            nodes.push(Arc::new(NodeCall {
                func,
                params: ps,
                args,
                retry_on,
                give_up_on,
                interrupt_hook,
                persist,
            }));
        }
        let mut task_specs = Vec::with_capacity(specs.len());
        for (
            pool,
            priority,
            retries,
            delay,
            backoff,
            max_delay,
            jitter,
            task_timeout,
            retry_timeouts,
        ) in specs
        {
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
            let timeout = task_timeout.map(|t| secs(t, "timeout")).transpose()?;
            task_specs.push(TaskSpec {
                pool,
                priority,
                retry,
                timeout,
                retry_timeouts,
            });
        }
        let names = Arc::new(
            (0..plan.len() as NodeId)
                .map(|i| PyString::new(py, plan.name(i)).unbind())
                .collect(),
        );
        let program = Program {
            plan,
            nodes,
            specs: Arc::new(task_specs),
            names,
        };
        Ok(PyProgram {
            inner: Arc::new(program),
        })
    }

    /// Starts a run of a compiled graph. `observer` is `(callback, mask)`:
    /// `callback(run_id, node, attempt, at_us, kind, error, extra, state)` is called for the event
    /// kinds whose bit is set in `mask` (see `EVENT_KINDS`); `record` is `(store, run_id)`; with
    /// `add_tasks`, the run's task rows are recorded first (a new run); `attempts` lists
    /// `(node, attempts already recorded)` of a resumed run, whose new attempts follow them;
    /// `cancelled` nodes (and their descendants) are cancelled before any task starts.
    /// `capture`: what tasks print on their thread is routed to it (see `print_target`), and
    /// `capture.done(node)` is called after each call that printed.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (program, config, meta, fail_fast = false, timeout = None, observer = None, started = None, record = None, done = None, keep = None, add_tasks = false, attempts = None, cancelled = None, capture = None))]
    fn submit(
        &self,
        py: Python<'_>,
        program: &Bound<'_, PyProgram>,
        config: Py<PyAny>,
        meta: Py<PyAny>,
        fail_fast: bool,
        timeout: Option<f64>,
        observer: Option<(Py<PyAny>, u32)>,
        started: Option<Bound<'_, pyo3::types::PyList>>,
        record: Option<(Bound<'_, PyStoreCore>, String)>,
        done: Option<Vec<(u32, Option<Py<PyAny>>)>>,
        keep: Option<(Option<usize>, Option<u32>)>,
        add_tasks: bool,
        attempts: Option<Vec<(u32, u32)>>,
        cancelled: Option<Vec<u32>>,
        capture: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyRunHandle>> {
        let program = program.get().inner.clone();
        if let (true, Some((store, run_id))) = (add_tasks, &record) {
            // The task rows of a new run, built here rather than as Python objects; queued ahead
            // of every transition of the run.
            let store = store.get().shared();
            let plan = &program.plan;
            py.detach(|| {
                let facts = (0..plan.len() as NodeId)
                    .map(|i| TaskFact {
                        node: i,
                        name: plan.name(i).to_string(),
                        ..TaskFact::default()
                    })
                    .collect();
                store.add_tasks(run_id, facts)
            })?;
        }
        let done = done.unwrap_or_default();
        let persist_to = record
            .as_ref()
            .map(|(store, id)| (store.get().shared(), id.clone()));
        let live = (0..program.nodes.len())
            .map(|_| LiveCall::default())
            .collect();
        let plan = program.plan.clone();
        let specs = program.specs.clone();
        // A resumed run's attempts already recorded, per node: new attempts are numbered after
        // them, in the store and in `context.attempt`.
        let mut base = Vec::new();
        for (node, n) in attempts.unwrap_or_default() {
            let i = node as usize;
            if i >= plan.len() {
                return Err(PyKeyError::new_err(format!("no task {node}")));
            }
            if i >= base.len() {
                base.resize(i + 1, 0);
            }
            base[i] = n;
        }
        let body = Arc::new(PyBody {
            program,
            persist_to,
            live,
            config,
            meta,
            attempt_base: base.clone(),
            capture,
        });
        let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
        if let Some((store, run_id)) = record {
            // Recorded in Rust: every transition is one queued write, batched by the writer thread.
            observers.push(Arc::new(StoreRecorder {
                store: store.get().shared(),
                run_id,
                base,
                keep,
            }));
        }
        if let Some((callback, mask)) = observer {
            observers.push(Arc::new(PyObserver { callback, mask }));
        }
        let timeout = timeout.map(|t| secs(t, "timeout")).transpose()?;
        let options = RunOptions {
            fail_fast,
            timeout,
            observers,
        };
        let sub = Submission {
            plan,
            specs,
            body,
            options,
            done,
            cancelled: cancelled.unwrap_or_default(),
        };
        let exec = self.exec.clone();
        let run = py
            .detach(move || exec.submit(sub))
            .map_err(exc::ExecutorError::new_err)?;
        let handle = Py::new(
            py,
            PyRunHandle {
                run,
                exec: self.exec.clone(),
            },
        )?;
        if let Some(list) = started {
            list.append(handle.clone_ref(py))?;
        }
        Ok(handle)
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

impl Drop for PyEngine {
    fn drop(&mut self) {
        // Dropped by the garbage collector while attached: stop the workers detached, or a worker
        // waiting to attach for its next task would wait forever for this thread.
        let exec = self.exec.clone();
        Python::attach(|py| py.detach(move || exec.shutdown()));
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
                let (exec, run) = (self.exec.clone(), self.run.clone());
                if !e.is_instance_of::<PyKeyboardInterrupt>(py) || interrupted.is_some() {
                    // Second Ctrl-C (or another exception from a signal handler): interrupt the
                    // running tasks and stop waiting.
                    py.detach(move || exec.cancel(&run, CancelMode::Interrupt));
                    return Err(e);
                }
                // First Ctrl-C: start nothing new, let running tasks finish.
                py.detach(move || exec.cancel(&run, CancelMode::Drain));
                interrupted = Some(e);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) && interrupted.is_none() {
                return Ok(false);
            }
        }
    }

    /// Cancels the run: tasks not started end `cancelled`; running ones are interrupted (or, with
    /// `interrupt=False`, allowed to finish). The run ends `cancelled`. Harmless to repeat.
    #[pyo3(signature = (interrupt = true))]
    fn cancel(&self, py: Python<'_>, interrupt: bool) {
        let (exec, run) = (self.exec.clone(), self.run.clone());
        let mode = if interrupt {
            CancelMode::Interrupt
        } else {
            CancelMode::Drain
        };
        py.detach(move || exec.cancel(&run, mode));
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
    /// The run's id: its id in the store (32 hex digits) when the run is recorded, else the
    /// engine's number for it.
    #[getter]
    fn run_id(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Ok(meta) = self.meta.bind(py).cast::<PyDict>() {
            if let Some(id) = meta.get_item("run_id")? {
                return Ok(id.unbind());
            }
        }
        Ok(self.run.id().into_pyobject(py)?.into_any().unbind())
    }

    /// The task's name.
    #[getter]
    fn task(&self, py: Python<'_>) -> Py<PyString> {
        self.task.clone_ref(py)
    }

    /// 0-based attempt number. A resumed run counts on from the attempts recorded before it, so
    /// `attempt + 1` is the attempt number `tm show` gives.
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

    /// A logger for this task (logger name `tm.task.<task>`); with a store, INFO and above are
    /// also kept with the run (`tm logs RUN_ID TASK`).
    #[getter]
    fn logger<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("tm.executor")?.call_method1(
            "_task_logger",
            (self.meta.bind(py), self.task.bind(py), self.node),
        )
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

/// Event kinds by bit position in an observer mask (must match `tm/executor.py`).
const EVENT_KINDS: [&str; 7] = [
    "started",
    "completed",
    "retrying",
    "failed",
    "skipped",
    "cancelled",
    "run_finished",
];

/// Forwards engine events to a Python callback (hooks and the `tm` logger).
struct PyObserver {
    callback: Py<PyAny>,
    mask: u32,
}

impl Observer for PyObserver {
    fn event(&self, run_id: u64, ev: &Event) {
        let (bit, error, retry_at, extra) = match &ev.kind {
            EventKind::Started => (0, None, None, None),
            EventKind::Completed => (1, None, None, None),
            EventKind::Retrying { error, retry_at_us } => {
                (2, Some(error), Some(*retry_at_us), None)
            }
            EventKind::Failed { error } => (3, Some(error), None, None),
            EventKind::Skipped { cause } => (4, None, None, Some(*cause as i64)),
            EventKind::Cancelled => (5, None, None, None),
            EventKind::RunFinished { state } => (6, None, None, Some(*state as i64)),
        };
        if self.mask & (1 << bit) == 0 {
            return;
        }
        Python::attach(|py| {
            let err = match error.map(|e| error_object(py, e)).transpose() {
                Ok(e) => e,
                Err(e) => {
                    e.write_unraisable(py, None);
                    return;
                }
            };
            let state = match &ev.kind {
                EventKind::RunFinished { state } => Some(state.as_str()),
                _ => None,
            };
            let args = (
                run_id,
                ev.node,
                ev.attempt,
                ev.at_us,
                EVENT_KINDS[bit],
                err,
                retry_at.or(extra),
                state,
            );
            if let Err(e) = self.callback.bind(py).call1(args) {
                // A failing hook must not break the run; report it like an exception in __del__.
                e.write_unraisable(py, Some(self.callback.bind(py)));
            }
        });
    }
}

/// Records a run's transitions in the store (attempts are 1-based there).
struct StoreRecorder {
    store: Arc<Store>,
    run_id: String,
    /// Attempts already recorded per node (a resumed run): new attempts are numbered after them.
    base: Vec<u32>,
    /// Retention applied when the run ends: (keep_runs per graph, keep_days).
    keep: Option<(Option<usize>, Option<u32>)>,
}

/// The type, message and traceback of a task error, for the store.
fn error_info(e: &TaskError) -> ErrorInfo {
    match e {
        TaskError::Timeout(d) => ErrorInfo {
            type_name: "TaskTimeout".into(),
            message: format!("task timed out after {:.3}s", d.as_secs_f64()),
            traceback: None,
        },
        TaskError::Cancelled => ErrorInfo {
            type_name: "TaskCancelled".into(),
            message: "task cancelled".into(),
            traceback: None,
        },
        TaskError::Raised { source } => match source.downcast_ref::<PyErr>() {
            Some(err) => Python::attach(|py| {
                let type_name = err
                    .get_type(py)
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                let message = err
                    .value(py)
                    .str()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                let traceback = py
                    .import("traceback")
                    .and_then(|tb| {
                        // The traceback lives in the PyErr, not necessarily on the value yet.
                        let trace = err
                            .traceback(py)
                            .map(|t| t.into_any())
                            .unwrap_or_else(|| py.None().into_bound(py));
                        tb.call_method1(
                            "format_exception",
                            (err.get_type(py), err.value(py), trace),
                        )
                    })
                    .and_then(|lines| PyString::new(py, "").call_method1("join", (lines,)))
                    .and_then(|t| t.extract::<String>())
                    .ok();
                ErrorInfo {
                    type_name,
                    message,
                    traceback,
                }
            }),
            None => ErrorInfo {
                type_name: "Error".into(),
                message: source.to_string(),
                traceback: None,
            },
        },
    }
}

impl StoreRecorder {
    /// The recorded (1-based) number of the event's attempt.
    fn attempt(&self, ev: &Event) -> u32 {
        let base = ev
            .node
            .and_then(|n| self.base.get(n as usize).copied())
            .unwrap_or(0);
        base + ev.attempt + 1
    }
}

impl Observer for StoreRecorder {
    /// A delivery's task transitions go to the writer as ONE queued write (one allocation and one
    /// channel message per batch, not per transition); the run's end follows it.
    fn events(&self, run_id: u64, evs: &[Event]) {
        let mut items = Vec::with_capacity(evs.len());
        for ev in evs {
            let attempt = self.attempt(ev);
            let at_us = ev.at_us;
            let item = match (&ev.kind, ev.node) {
                (EventKind::Started, Some(node)) => Transition::Started {
                    node,
                    attempt,
                    at_us,
                },
                (EventKind::Completed, Some(node)) => Transition::Ended {
                    node,
                    attempt,
                    at_us,
                    status: Cow::Borrowed("completed"),
                    error: None,
                    retry_at_us: None,
                },
                (EventKind::Retrying { error, retry_at_us }, Some(node)) => Transition::Ended {
                    node,
                    attempt,
                    at_us,
                    status: Cow::Borrowed("failed"),
                    error: Some(Box::new(error_info(error))),
                    retry_at_us: Some(*retry_at_us),
                },
                (EventKind::Failed { error }, Some(node)) => Transition::Ended {
                    node,
                    attempt,
                    at_us,
                    status: Cow::Borrowed("failed"),
                    error: Some(Box::new(error_info(error))),
                    retry_at_us: None,
                },
                (EventKind::Skipped { .. }, Some(node)) => Transition::Status {
                    node,
                    status: Cow::Borrowed("skipped"),
                    at_us,
                },
                (EventKind::Cancelled, Some(node)) => Transition::Status {
                    node,
                    status: Cow::Borrowed("cancelled"),
                    at_us,
                },
                (EventKind::RunFinished { .. }, _) => {
                    // Writes only fail once the store is closed; the run must go on regardless.
                    let _ = self
                        .store
                        .transitions(&self.run_id, std::mem::take(&mut items));
                    self.event(run_id, ev);
                    continue;
                }
                _ => continue,
            };
            items.push(item);
        }
        let _ = self.store.transitions(&self.run_id, items);
    }

    fn event(&self, _run_id: u64, ev: &Event) {
        let id = &self.run_id;
        let attempt = self.attempt(ev);
        // Writes only fail once the store is closed; the run itself must go on regardless.
        let _ = match (&ev.kind, ev.node) {
            (EventKind::Started, Some(n)) => self.store.task_started(id, n, attempt, ev.at_us),
            (EventKind::Completed, Some(n)) => {
                self.store
                    .task_ended(id, n, attempt, ev.at_us, "completed", None, None)
            }
            (EventKind::Retrying { error, retry_at_us }, Some(n)) => self.store.task_ended(
                id,
                n,
                attempt,
                ev.at_us,
                "failed",
                Some(error_info(error)),
                Some(*retry_at_us),
            ),
            (EventKind::Failed { error }, Some(n)) => self.store.task_ended(
                id,
                n,
                attempt,
                ev.at_us,
                "failed",
                Some(error_info(error)),
                None,
            ),
            (EventKind::Skipped { .. }, Some(n)) => {
                self.store.task_status(id, n, "skipped", ev.at_us)
            }
            (EventKind::Cancelled, Some(n)) => self.store.task_status(id, n, "cancelled", ev.at_us),
            (EventKind::RunFinished { state }, _) => {
                let done = self.store.finish_run(id, state.as_str(), ev.at_us);
                if let Some((runs, days)) = self.keep {
                    // Queued after the run's end, so this run counts as finished when pruning.
                    let _ = self.store.prune(runs, days, ev.at_us);
                }
                done
            }
            _ => Ok(()),
        };
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGraphCore>()?;
    m.add_class::<PyEngine>()?;
    m.add_class::<PyProgram>()?;
    m.add_class::<PyRunHandle>()?;
    m.add_class::<PyTaskContext>()?;
    m.add_function(wrap_pyfunction!(print_target, m)?)?;
    Ok(())
}
