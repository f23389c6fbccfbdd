//! The engine: runs [`Plan`]s of tasks on bounded worker pools.
//!
//! Threads and the interpreter: worker threads are plain OS threads. User code is reached only
//! through [`Body`], and every batch of calls is wrapped in [`Host::session`] (for Python: one
//! attachment to the interpreter). A worker keeps its session while ready work remains, so a chain
//! of small tasks pays no thread or GIL hand-off per task; it leaves the session before it waits for
//! anything (a lock held by another waiter, a condition variable, a timer).
//!
//! The scheduler state is one mutex whose critical sections are pure Rust bookkeeping and never run
//! user code, so a thread attached to the interpreter may take it without risking a deadlock.

mod run;
mod sched;
pub mod timetable;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

pub use run::{Attempt, Run, RunState, TaskState};
pub use sched::CancelMode;
pub use sched::{DebugCounts, Executor, PoolConfig};
pub use timetable::{jitter_offset, Catchup, Fire, FireKind, Rule, Timetable, Timing};

use crate::dag::{NodeId, Plan};
use crate::retry::RetryPolicy;

/// How a task attempt ended without a value.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The task's code raised or returned an error; `source` is the original error (for Python, a `PyErr`).
    #[error("{source}")]
    Raised {
        /// The user's error, kept intact for the caller.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The attempt ran longer than its timeout.
    #[error("task timed out after {0:?}")]
    Timeout(Duration),
    /// The task was cancelled.
    #[error("task cancelled")]
    Cancelled,
}

/// Per-task scheduling options, one per plan node.
#[derive(Clone, Debug, Default)]
pub struct TaskSpec {
    /// Index of the worker pool (0 is the default pool).
    pub pool: usize,
    /// Higher runs first among ready tasks of one pool.
    pub priority: i32,
    /// Retry policy for failed attempts.
    pub retry: RetryPolicy,
    /// Longest an attempt may run; past it the attempt fails with [`TaskError::Timeout`].
    pub timeout: Option<Duration>,
    /// Whether a timed-out attempt may be retried (the task's retry filters accept timeouts).
    pub retry_timeouts: bool,
}

/// Something that happened in a run, delivered to [`Observer`]s outside every engine lock.
#[derive(Debug, Clone)]
pub enum EventKind {
    /// A task attempt started.
    Started,
    /// A task completed.
    Completed,
    /// An attempt failed and another is scheduled at `retry_at_us`.
    Retrying {
        /// The attempt's error.
        error: Arc<TaskError>,
        /// When the next attempt is due (microseconds since the epoch).
        retry_at_us: i64,
    },
    /// The task failed for good.
    Failed {
        /// The last attempt's error.
        error: Arc<TaskError>,
    },
    /// The task was skipped because `cause` failed.
    Skipped {
        /// The failed ancestor.
        cause: NodeId,
    },
    /// The task was cancelled.
    Cancelled,
    /// The run ended.
    RunFinished {
        /// Its final state.
        state: RunState,
    },
}

/// One event of a run.
#[derive(Debug, Clone)]
pub struct Event {
    /// The task (None for run-level events).
    pub node: Option<NodeId>,
    /// The attempt number the event belongs to.
    pub attempt: u32,
    /// When it happened, microseconds since the epoch.
    pub at_us: i64,
    /// What happened.
    pub kind: EventKind,
}

/// Receives a run's events (hooks, logging, the store). Called outside engine locks, possibly from
/// several threads at once; must not block for long.
pub trait Observer: Send + Sync + 'static {
    /// One event of run `run_id`.
    fn event(&self, run_id: u64, ev: &Event);

    /// Several events of run `run_id`, in order: what was queued since the last delivery. An
    /// observer that can take them at once (the store: one queued write) overrides this.
    fn events(&self, run_id: u64, evs: &[Event]) {
        for ev in evs {
            self.event(run_id, ev);
        }
    }
}

/// What a run's tasks execute: the seam between the engine and user code.
pub trait Body<V>: Send + Sync + 'static {
    /// Runs one attempt of task `cx.node`. Parent results are available through `cx`.
    fn call(&self, cx: &CallContext<'_, V>) -> Result<V, TaskError>;

    /// Whether a failed attempt may be retried (the retry policy still bounds the count).
    fn retryable(&self, _node: NodeId, _error: &TaskError) -> bool {
        true
    }

    /// Asks attempt `attempt` of `node`, still running, to stop (timed out or cancelled). Called
    /// outside engine locks from a thread that is not running the task; the attempt's outcome is
    /// already settled by the engine and whatever the call eventually returns is discarded. A later
    /// attempt of the same node may already be running elsewhere and must not be disturbed.
    fn interrupt(&self, _node: NodeId, _attempt: u32, _reason: &TaskError) {}
}

/// What a task attempt can see of its run.
pub struct CallContext<'a, V> {
    run: &'a Arc<run::RunInner<V>>,
    /// The node being run.
    pub node: NodeId,
    /// 0-based attempt number.
    pub attempt: u32,
    /// The node's generation when this attempt was taken (see [`CallContext::is_abandoned`]).
    generation: u32,
}

impl<'a, V> CallContext<'a, V> {
    /// The result of a completed node (parents are always complete when a task runs).
    pub fn value(&self, node: NodeId) -> Option<&'a V> {
        self.run.value(node)
    }

    /// The plan being run.
    pub fn plan(&self) -> &'a Plan {
        &self.run.plan
    }

    /// The run's id.
    pub fn run_id(&self) -> u64 {
        self.run.id
    }

    /// A handle on the run (for contexts that outlive the call).
    pub fn run(&self) -> Run<V> {
        Run {
            inner: self.run.clone(),
        }
    }

    /// Whether the run or this task was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.run.is_cancel_requested(self.node)
    }

    /// Whether the engine has given up on this attempt (timed out or cancelled): its outcome
    /// will be ignored, and [`Body::interrupt`] was or will be called for it. A body that marks
    /// itself interruptible checks this afterwards, so that an interrupt which came before the
    /// mark (and found nothing to interrupt) is not lost.
    pub fn is_abandoned(&self) -> bool {
        self.run.nodes[self.node as usize]
            .generation
            .load(Ordering::Acquire)
            != self.generation
    }
}

/// The environment worker threads run in (for Python: attachment to the interpreter).
pub trait Host: Send + Sync + 'static {
    /// Wraps a worker thread's whole life (for Python: creates the thread state once, detached).
    fn worker_main(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }
    /// Wraps a batch of task calls (for Python: one attachment).
    fn session(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }
}

/// A host for plain Rust task bodies.
#[derive(Debug, Default, Clone, Copy)]
pub struct NativeHost;

impl Host for NativeHost {}

/// Options for one run.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Cancel everything else as soon as one task fails.
    pub fail_fast: bool,
    /// Longest the whole run may take: past it, running tasks fail with a timeout, the rest are
    /// cancelled and the run ends failed.
    pub timeout: Option<Duration>,
    /// Receivers of the run's events.
    pub observers: Vec<Arc<dyn Observer>>,
}

/// Everything needed to start a run.
pub struct Submission<V> {
    /// The validated graph.
    pub plan: Arc<Plan>,
    /// One spec per node.
    pub specs: Arc<Vec<TaskSpec>>,
    /// The code the tasks run.
    pub body: Arc<dyn Body<V>>,
    /// Run options.
    pub options: RunOptions,
    /// Nodes that completed in an earlier life of this run (resume), with their results when
    /// kept: they start `completed` and are not run again.
    pub done: Vec<(NodeId, Option<V>)>,
    /// Nodes cancelled before the run starts (with their descendants): none of them ever runs.
    pub cancelled: Vec<NodeId>,
}

#[cfg(test)]
mod tests;
