//! The state of one run: per-task states, results, attempts, and the run's outcome.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::{Body, Event, EventKind, Observer, TaskError, TaskSpec};
use crate::clock::Clock;
use crate::dag::{NodeId, Plan};

/// The state of one task in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TaskState {
    /// Waiting for parents.
    Pending = 0,
    /// Ready and queued for a worker.
    Scheduled = 1,
    /// Running on a worker.
    Running = 2,
    /// Failed, waiting for its next attempt.
    Retrying = 3,
    /// Finished with a result.
    Completed = 4,
    /// Failed after its last attempt.
    Failed = 5,
    /// Cancelled before it finished.
    Cancelled = 6,
    /// Not run because a parent failed.
    Skipped = 7,
}

impl TaskState {
    fn from_u8(v: u8) -> TaskState {
        match v {
            0 => TaskState::Pending,
            1 => TaskState::Scheduled,
            2 => TaskState::Running,
            3 => TaskState::Retrying,
            4 => TaskState::Completed,
            5 => TaskState::Failed,
            6 => TaskState::Cancelled,
            _ => TaskState::Skipped,
        }
    }

    /// Whether the task will not change state again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Completed | TaskState::Failed | TaskState::Cancelled | TaskState::Skipped
        )
    }

    /// The lower-case name users see.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Scheduled => "scheduled",
            TaskState::Running => "running",
            TaskState::Retrying => "retrying",
            TaskState::Completed => "completed",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Skipped => "skipped",
        }
    }
}

/// The state of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Tasks are still running or waiting.
    Running,
    /// Every task completed.
    Completed,
    /// At least one task failed.
    Failed,
    /// The run was cancelled.
    Cancelled,
}

impl RunState {
    /// The lower-case name users see.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
}

/// One attempt of a task.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// 0-based attempt number.
    pub number: u32,
    /// Start, microseconds since the Unix epoch.
    pub started_us: i64,
    /// End, microseconds since the Unix epoch (0 while running).
    pub ended_us: i64,
    /// The error that ended the attempt, if it failed.
    pub error: Option<Arc<TaskError>>,
    /// When the next attempt is due (microseconds since the epoch), if one was scheduled.
    pub retry_at_us: Option<i64>,
}

/// Per-node runtime record.
pub(crate) struct NodeRt<V> {
    pub state: AtomicU8,
    pub pending_parents: AtomicU32,
    pub result: OnceLock<V>,
    pub cancel: AtomicBool,
    pub log: Mutex<Vec<Attempt>>,
    /// Why the node was skipped or cancelled (the failed parent, or u32::MAX).
    pub cause: AtomicU32,
    /// Bumped when a running attempt is abandoned (timeout, cancel), so its late return is ignored.
    pub generation: AtomicU32,
}

/// Shared state of one run (owned by the engine and by every [`Run`] handle).
pub(crate) struct RunInner<V> {
    pub id: u64,
    pub plan: Arc<Plan>,
    pub specs: Arc<Vec<TaskSpec>>,
    pub body: Arc<dyn Body<V>>,
    pub nodes: Vec<NodeRt<V>>,
    /// Nodes not yet terminal.
    pub remaining: AtomicUsize,
    pub failed: AtomicBool,
    pub cancelled: AtomicBool,
    /// Some task was cancelled on its own (the run ends cancelled unless a task failed).
    pub partly_cancelled: AtomicBool,
    pub fail_fast: bool,
    /// The run hit its deadline.
    pub timed_out: AtomicBool,
    pub observers: Vec<Arc<dyn Observer>>,
    /// Events not yet delivered, in order, and the lock of the one thread delivering them.
    pub events: Mutex<std::collections::VecDeque<Event>>,
    pub delivering: Mutex<()>,
    pub started_us: i64,
    pub ended_us: AtomicI64,
    pub done: Mutex<Option<RunState>>,
    /// The run ended and its observers have been told; waiters return only then.
    pub settled: AtomicBool,
    pub done_cv: Condvar,
    pub clock: Clock,
}

impl<V> RunInner<V> {
    pub fn new(
        id: u64,
        plan: Arc<Plan>,
        specs: Arc<Vec<TaskSpec>>,
        body: Arc<dyn Body<V>>,
        fail_fast: bool,
        observers: Vec<Arc<dyn Observer>>,
        clock: Clock,
    ) -> Self {
        let nodes = (0..plan.len() as NodeId)
            .map(|n| NodeRt {
                state: AtomicU8::new(TaskState::Pending as u8),
                pending_parents: AtomicU32::new(plan.parents(n).len() as u32),
                result: OnceLock::new(),
                cancel: AtomicBool::new(false),
                log: Mutex::new(Vec::new()),
                cause: AtomicU32::new(u32::MAX),
                generation: AtomicU32::new(0),
            })
            .collect();
        RunInner {
            id,
            remaining: AtomicUsize::new(plan.len()),
            plan,
            specs,
            body,
            nodes,
            failed: AtomicBool::new(false),
            cancelled: AtomicBool::new(false),
            partly_cancelled: AtomicBool::new(false),
            fail_fast,
            timed_out: AtomicBool::new(false),
            observers,
            events: Mutex::new(std::collections::VecDeque::new()),
            delivering: Mutex::new(()),
            started_us: clock.now_micros(),
            ended_us: AtomicI64::new(0),
            done: Mutex::new(None),
            settled: AtomicBool::new(false),
            done_cv: Condvar::new(),
            clock,
        }
    }

    pub fn state_of(&self, n: NodeId) -> TaskState {
        TaskState::from_u8(self.nodes[n as usize].state.load(Ordering::Acquire))
    }

    pub fn set_state(&self, n: NodeId, s: TaskState) {
        self.nodes[n as usize]
            .state
            .store(s as u8, Ordering::Release);
    }

    pub fn value(&self, n: NodeId) -> Option<&V> {
        self.nodes.get(n as usize)?.result.get()
    }

    pub fn is_cancel_requested(&self, n: NodeId) -> bool {
        self.cancelled.load(Ordering::Acquire)
            || self.nodes[n as usize].cancel.load(Ordering::Acquire)
    }

    /// Delivers an event to the run's observers (never under an engine lock).
    pub fn emit(&self, node: Option<NodeId>, attempt: u32, kind: EventKind) {
        self.queue_event(node, attempt, kind);
        self.deliver_events();
    }

    /// Appends an event to the run's queue. Called under the scheduler lock (or by the only thread
    /// touching the run), so the queue's order is the order in which things happened.
    pub fn queue_event(&self, node: Option<NodeId>, attempt: u32, kind: EventKind) {
        let ends_run = matches!(kind, EventKind::RunFinished { .. });
        if self.observers.is_empty() && !ends_run {
            return;
        }
        let ev = Event {
            node,
            attempt,
            at_us: self.clock.now_micros(),
            kind,
        };
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(ev);
    }

    /// Delivers queued events in order, one deliverer at a time; the end of the run also wakes
    /// its waiters, after every earlier event. Never blocks: if another thread is delivering (it
    /// may be waiting to attach to the interpreter while this one is attached), that thread takes
    /// these events too.
    pub fn deliver_events(&self) {
        loop {
            let guard = match self.delivering.try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                // Everything queued so far, taken under one lock and handed over at once.
                let batch: Vec<Event> = {
                    let mut q = self.events.lock().unwrap_or_else(|p| p.into_inner());
                    if q.is_empty() {
                        break;
                    }
                    q.drain(..).collect()
                };
                for o in &self.observers {
                    o.events(self.id, &batch);
                }
                if batch
                    .iter()
                    .any(|ev| matches!(ev.kind, EventKind::RunFinished { .. }))
                {
                    self.wake_waiters();
                }
            }
            drop(guard);
            // An event queued while we were finishing would otherwise wait for the next one.
            if self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_empty()
            {
                return;
            }
        }
    }

    /// Records the final state (visible to `outcome()` at once) without waking waiters, so the
    /// run's last events can be delivered before anyone waiting on it returns.
    pub fn record_outcome(&self) {
        let state = self.final_state();
        self.ended_us
            .store(self.clock.now_micros(), Ordering::Release);
        if let Ok(mut d) = self.done.lock() {
            *d = Some(state);
        }
    }

    /// Wakes threads waiting for the run to end (after its last events were delivered).
    pub fn wake_waiters(&self) {
        // Setting the flag under the lock orders it with any waiter's check.
        let guard = self.done.lock();
        self.settled.store(true, Ordering::Release);
        drop(guard);
        self.done_cv.notify_all();
    }

    /// Whether the run ended and its last events were delivered.
    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// The state the run ends in, given what happened so far.
    pub fn final_state(&self) -> RunState {
        if self.timed_out.load(Ordering::Acquire) {
            RunState::Failed
        } else if self.cancelled.load(Ordering::Acquire) {
            RunState::Cancelled
        } else if self.failed.load(Ordering::Acquire) {
            RunState::Failed
        } else if self.partly_cancelled.load(Ordering::Acquire) {
            RunState::Cancelled
        } else {
            RunState::Completed
        }
    }

    pub fn outcome(&self) -> Option<RunState> {
        self.done.lock().ok().and_then(|d| *d)
    }

    /// Waits up to `timeout` for the run to end; returns its final state if it did.
    pub fn wait_for(&self, timeout: Duration) -> Option<RunState> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.done.lock().ok()?;
        loop {
            if let Some(s) = *guard {
                if self.settled.load(Ordering::Acquire) {
                    return Some(s);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = self.done_cv.wait_timeout(guard, left).ok()?.0;
        }
    }
}

/// A handle on a submitted run: its state, results and attempts, readable while it runs.
pub struct Run<V> {
    pub(crate) inner: Arc<RunInner<V>>,
}

impl<V> Clone for Run<V> {
    fn clone(&self) -> Self {
        Run {
            inner: self.inner.clone(),
        }
    }
}

impl<V> Run<V> {
    /// The run's id (unique within the process).
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The plan being run.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.inner.plan
    }

    /// The run's state.
    pub fn state(&self) -> RunState {
        self.inner.outcome().unwrap_or(RunState::Running)
    }

    /// Whether the run has ended.
    pub fn is_done(&self) -> bool {
        self.inner.outcome().is_some()
    }

    /// Whether the run has ended and its observers have seen its last event.
    pub fn is_settled(&self) -> bool {
        self.inner.is_settled()
    }

    /// Waits up to `timeout` for the run to end (without helping); returns the final state if it did.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<RunState> {
        self.inner.wait_for(timeout)
    }

    /// The state of task `n`.
    pub fn task_state(&self, n: NodeId) -> TaskState {
        self.inner.state_of(n)
    }

    /// The result of task `n`, once completed.
    pub fn value(&self, n: NodeId) -> Option<&V> {
        self.inner.value(n)
    }

    /// The attempts of task `n` so far.
    pub fn attempts(&self, n: NodeId) -> Vec<Attempt> {
        self.inner.nodes[n as usize]
            .log
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }

    /// The failed parent that caused task `n` to be skipped, if any.
    pub fn skip_cause(&self, n: NodeId) -> Option<NodeId> {
        let c = self.inner.nodes[n as usize].cause.load(Ordering::Acquire);
        (c != u32::MAX).then_some(c)
    }

    /// Start and end of the run, microseconds since the epoch (end is 0 while running).
    pub fn times(&self) -> (i64, i64) {
        (
            self.inner.started_us,
            self.inner.ended_us.load(Ordering::Acquire),
        )
    }

    /// Whether cancellation was requested for the run or for task `n`.
    pub fn is_cancel_requested(&self, n: NodeId) -> bool {
        self.inner.is_cancel_requested(n)
    }
}
