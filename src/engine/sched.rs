//! The executor: worker threads, per-pool ready queues with bounded concurrency, timers for
//! retries and deadlines.
//!
//! Every mutation happens under one mutex (`Sched`) and is pure bookkeeping. Anything that may call
//! user code or block (observer events, interrupting a running task, spawning a thread, waking
//! workers) is queued in `Sched::after` and performed once the lock is released.

use std::cell::Cell;
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BinaryHeap, HashSet};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::run::{Attempt, Run, RunInner, TaskState};
use super::{CallContext, EventKind, Host, Submission, TaskError};
use crate::clock::Clock;
use crate::dag::NodeId;

/// A worker pool: a name (a task tag) and how many of its tasks may run at once.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// The tag this pool serves ("" for the default pool).
    pub name: String,
    /// Maximum concurrently running tasks.
    pub capacity: usize,
}

/// How [`Executor::cancel`] treats tasks that are already running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelMode {
    /// Let running tasks finish; cancel everything that has not started.
    Drain,
    /// Also interrupt running tasks (they end `cancelled` at once).
    Interrupt,
}

struct Job<V> {
    priority: i32,
    seq: u64,
    run: Arc<RunInner<V>>,
    node: NodeId,
}

/// A job a thread has taken to run: its attempt is opened, and the node's generation read, under
/// the scheduler lock, so a cancel or timeout that lands before the thread starts it is seen.
struct Taken<V> {
    job: Job<V>,
    /// The node's generation when taken; [`Sched::abandon`] moves it on.
    generation: u32,
    attempt: u32,
}

impl<V> PartialEq for Job<V> {
    fn eq(&self, o: &Self) -> bool {
        self.priority == o.priority && self.seq == o.seq
    }
}
impl<V> Eq for Job<V> {}
impl<V> PartialOrd for Job<V> {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl<V> Ord for Job<V> {
    /// Max-heap order: higher priority first, then first-come first-served.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

enum TimerKind<V> {
    /// A retry becomes ready.
    Retry(Job<V>),
    /// An attempt's timeout.
    Deadline {
        run: Arc<RunInner<V>>,
        node: NodeId,
        generation: u32,
        limit: Duration,
    },
    /// A run's timeout.
    RunDeadline {
        run: Arc<RunInner<V>>,
        limit: Duration,
    },
}

struct Timer<V> {
    due: Instant,
    seq: u64,
    kind: TimerKind<V>,
}
impl<V> PartialEq for Timer<V> {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.seq == o.seq
    }
}
impl<V> Eq for Timer<V> {}
impl<V> PartialOrd for Timer<V> {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl<V> Ord for Timer<V> {
    fn cmp(&self, o: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

/// Work to do once the scheduler lock is released.
enum After<V> {
    Emit(Arc<RunInner<V>>, Option<NodeId>, u32, EventKind),
    Interrupt(Arc<RunInner<V>>, NodeId, u32, TaskError),
    /// Deliver a run's queued events (and, at its end, wake its waiters).
    Deliver(Arc<RunInner<V>>),
    SpawnThread,
    NotifyOne,
    NotifyAll,
    /// A timer was added: the timer thread must recompute its wait.
    NotifyTimer,
}

struct Pool<V> {
    capacity: usize,
    running: usize,
    ready: BinaryHeap<Job<V>>,
}

struct Sched<V> {
    pools: Vec<Pool<V>>,
    timers: BinaryHeap<Reverse<Timer<V>>>,
    seq: u64,
    idle: usize,
    shutdown: bool,
    /// Threads stuck in abandoned attempts that have been replaced; they retire when they return.
    stuck: usize,
    /// Replacement threads with no stuck thread left to stand in for (the stuck one was a task
    /// waiting on a nested run, which goes on when its job returns): as many workers retire.
    surplus: usize,
    after: Vec<After<V>>,
    now_us: i64,
    jitter: u64,
    /// (run, node) of running tasks whose slot is lent while they wait on a nested run.
    lent: HashSet<(u64, NodeId)>,
}

struct Shared<V> {
    sched: Mutex<Sched<V>>,
    work: Condvar,
    /// Wakes the timer thread (retries, attempt and run deadlines fire there, so they fire even
    /// when every worker is busy or stuck).
    timer_cv: Condvar,
    host: Arc<dyn Host>,
    clock: Clock,
    /// Handles of the pool workers; a worker that retires removes its own (see
    /// [`Shared::forget_thread`]).
    threads: Mutex<Vec<JoinHandle<()>>>,
    timer: Mutex<Option<JoinHandle<()>>>,
    /// Workers that retired and whose handle is still in `threads` (they are exiting).
    retired: AtomicUsize,
    /// The process that created the executor (its threads exist only there).
    pid: u32,
}

/// Run ids are unique within the process, across executors (callers key per-run state by them).
static NEXT_RUN_ID: AtomicU64 = AtomicU64::new(1);

/// The task a worker thread is running (see [`Executor::wait`]).
#[derive(Clone, Copy)]
struct Current {
    /// The executor's identity.
    exec: usize,
    pool: usize,
    run: u64,
    node: NodeId,
    /// The node's generation when the task was taken, and the node's generation counter: they
    /// differ once the attempt has been abandoned. The pointer is valid while `CURRENT` holds it:
    /// [`run_session`] sets it around [`execute`], which holds the run.
    generation: u32,
    live: *const AtomicU32,
}

impl Current {
    fn is_live(&self) -> bool {
        // SAFETY: see the field's comment; only read on the thread that set it, inside execute.
        unsafe { &*self.live }.load(Ordering::Acquire) == self.generation
    }
}

thread_local! {
    /// The task this thread is running, if it is a worker mid-task.
    static CURRENT: Cell<Option<Current>> = const { Cell::new(None) };
}

/// Sizes of an executor's thread bookkeeping (see [`Executor::debug_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugCounts {
    /// Worker threads the executor still holds a handle of (live, stuck or exiting).
    pub handles: usize,
    /// Threads replaced while stuck in an abandoned attempt that returned and are exiting.
    pub exiting: usize,
    /// Threads still stuck in an abandoned (timed-out or cancelled) attempt, and threads still
    /// to retire because their stuck thread went on (see `Sched::surplus`).
    pub stuck: usize,
}

/// Runs plans on worker threads. Threads start with the first run, not before.
pub struct Executor<V: Send + Sync + 'static> {
    shared: Arc<Shared<V>>,
    pools: Mutex<Vec<PoolConfig>>,
}

impl<V: Send + Sync + 'static> Executor<V> {
    /// An executor with the given pools (pool 0 is the default). Starts no thread.
    pub fn new(host: Arc<dyn Host>, pools: Vec<PoolConfig>, clock: Clock) -> Self {
        let mut pools = pools;
        if pools.is_empty() {
            pools.push(PoolConfig {
                name: String::new(),
                capacity: 1,
            });
        }
        let sched = Sched {
            pools: pools
                .iter()
                .map(|p| Pool {
                    capacity: p.capacity.max(1),
                    running: 0,
                    ready: BinaryHeap::new(),
                })
                .collect(),
            timers: BinaryHeap::new(),
            seq: 0,
            idle: 0,
            shutdown: false,
            stuck: 0,
            surplus: 0,
            after: Vec::new(),
            now_us: 0,
            jitter: 0x9E37_79B9_7F4A_7C15,
            lent: HashSet::new(),
        };
        Executor {
            shared: Arc::new(Shared {
                sched: Mutex::new(sched),
                work: Condvar::new(),
                timer_cv: Condvar::new(),
                host,
                clock,
                threads: Mutex::new(Vec::new()),
                timer: Mutex::new(None),
                retired: AtomicUsize::new(0),
                pid: std::process::id(),
            }),
            pools: Mutex::new(pools),
        }
    }

    /// The pools, in index order.
    pub fn pools(&self) -> Vec<PoolConfig> {
        self.pools.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Index of the pool serving `tag`, if any.
    pub fn pool_index(&self, tag: &str) -> Option<usize> {
        self.pools.lock().ok()?.iter().position(|p| p.name == tag)
    }

    /// Adds a pool for `tag` (or returns the existing one's index). Its threads start with the
    /// next run.
    pub fn add_pool(&self, tag: &str, capacity: usize) -> usize {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = pools.iter().position(|p| p.name == tag) {
            return i;
        }
        let mut s = self.shared.lock();
        s.pools.push(Pool {
            capacity: capacity.max(1),
            running: 0,
            ready: BinaryHeap::new(),
        });
        pools.push(PoolConfig {
            name: tag.to_string(),
            capacity: capacity.max(1),
        });
        pools.len() - 1
    }

    fn ensure_threads(&self) -> Result<(), String> {
        {
            let mut timer = self
                .shared
                .timer
                .lock()
                .map_err(|_| "executor state poisoned".to_string())?;
            if timer.is_none() {
                let s2 = self.shared.clone();
                let handle = std::thread::Builder::new()
                    .name("tm-timer".into())
                    .spawn(move || {
                        let host = s2.host.clone();
                        host.worker_main(&mut || timer_loop(&s2));
                    })
                    .map_err(|e| format!("cannot start the timer thread: {e}"))?;
                *timer = Some(handle);
            }
        }
        let want: usize = self
            .pools()
            .iter()
            .map(|p| p.capacity.max(1))
            .sum::<usize>()
            .min(512);
        loop {
            let live = {
                let t = self
                    .shared
                    .threads
                    .lock()
                    .map_err(|_| "executor state poisoned".to_string())?;
                t.len()
                    .saturating_sub(self.shared.retired.load(Ordering::Acquire))
            };
            if live >= want {
                return Ok(());
            }
            spawn_worker(&self.shared)?;
        }
    }

    /// Starts a run and returns its handle at once.
    pub fn submit(&self, sub: Submission<V>) -> Result<Run<V>, String> {
        if sub.specs.len() != sub.plan.len() {
            return Err("one task spec per node is required".into());
        }
        let pool_count = self.pools().len();
        if let Some(bad) = sub.specs.iter().find(|s| s.pool >= pool_count) {
            return Err(format!("unknown pool index {}", bad.pool));
        }
        self.ensure_threads()?;
        let id = NEXT_RUN_ID.fetch_add(1, Ordering::Relaxed);
        let run = Arc::new(RunInner::new(
            id,
            sub.plan,
            sub.specs,
            sub.body,
            sub.options.fail_fast,
            sub.options.observers,
            self.shared.clock.clone(),
        ));
        if run.plan.is_empty() {
            run.record_outcome();
            let state = run.final_state();
            // Delivering the run's end also wakes its waiters.
            run.emit(None, 0, EventKind::RunFinished { state });
            return Ok(Run { inner: run });
        }
        let mut s = self.shared.lock();
        if s.shutdown {
            return Err("executor is shut down".into());
        }
        if let Some(limit) = sub.options.timeout {
            s.seq += 1;
            let seq = s.seq;
            let due = deadline(limit);
            s.timers.push(Reverse(Timer {
                due,
                seq,
                kind: TimerKind::RunDeadline {
                    run: run.clone(),
                    limit,
                },
            }));
            s.after.push(After::NotifyTimer);
        }
        // A resumed run: what completed before starts completed, and its children count it done.
        for (n, value) in sub.done {
            if (n as usize) < run.nodes.len() && run.state_of(n) == TaskState::Pending {
                run.set_state(n, TaskState::Completed);
                if let Some(v) = value {
                    let _ = run.nodes[n as usize].result.set(v);
                }
                for &c in run.plan.children(n) {
                    run.nodes[c as usize]
                        .pending_parents
                        .fetch_sub(1, Ordering::AcqRel);
                }
                run.remaining.fetch_sub(1, Ordering::AcqRel);
            }
        }
        // Cancelled before it starts: applied before any task is ready, so none of them can run.
        if !sub.cancelled.is_empty() {
            run.partly_cancelled.store(true, Ordering::Release);
            let mut affected = Vec::new();
            for &node in &sub.cancelled {
                if node as usize >= run.nodes.len() {
                    continue;
                }
                for n in std::iter::once(node).chain(run.plan.descendants(node)) {
                    run.nodes[n as usize].cancel.store(true, Ordering::Release);
                    affected.push((n, node));
                }
            }
            for (n, node) in affected {
                s.cancel_node(&run, n, if n == node { u32::MAX } else { node });
            }
            if run.remaining.load(Ordering::Acquire) == 0 {
                // Everything was cancelled: the run's end is among the queued actions.
                release(&self.shared, s);
                return Ok(Run { inner: run });
            }
        }
        let roots: Vec<NodeId> = (0..run.plan.len() as NodeId)
            .filter(|&n| {
                run.state_of(n) == TaskState::Pending
                    && run.nodes[n as usize]
                        .pending_parents
                        .load(Ordering::Acquire)
                        == 0
            })
            .collect();
        if roots.is_empty() && run.remaining.load(Ordering::Acquire) == 0 {
            drop(s);
            run.record_outcome();
            let state = run.final_state();
            // Delivering the run's end also wakes its waiters.
            run.emit(None, 0, EventKind::RunFinished { state });
            return Ok(Run { inner: run });
        }
        for &n in &roots {
            s.make_ready(&run, n);
        }
        for _ in 0..roots.len().min(s.idle) {
            s.after.push(After::NotifyOne);
        }
        if sub.options.timeout.is_some() {
            s.after.push(After::NotifyOne);
        }
        release(&self.shared, s);
        Ok(Run { inner: run })
    }

    /// Waits for `run` to end. On a worker thread of this executor (a graph run from inside a task),
    /// the caller gives back its slot and helps run ready tasks meanwhile, so nested runs never
    /// deadlock; elsewhere it waits up to `slice` and returns, so callers can check for signals.
    pub fn wait(&self, run: &Run<V>, slice: Duration) -> bool {
        let me = Arc::as_ptr(&self.shared) as usize;
        match CURRENT.with(|c| c.get()) {
            Some(cur) if cur.exec == me => {
                // Lend the slot, unless the task was abandoned already (its slot is free then).
                // An abandon while the slot is lent finds it in `lent` and leaves the count alone.
                let lent = {
                    let mut s = self.shared.lock();
                    let live = cur.is_live();
                    if live {
                        s.pools[cur.pool].running -= 1;
                        s.lent.insert((cur.run, cur.node));
                        s.after.push(After::NotifyOne);
                    }
                    release(&self.shared, s);
                    live
                };
                CURRENT.with(|c| c.set(None));
                while !run.is_settled() {
                    help_once(&self.shared, &run.inner, slice);
                }
                CURRENT.with(|c| c.set(Some(cur)));
                if lent {
                    // Take the slot back even if the pool is full: the outer task is still
                    // running. Not if it was abandoned meanwhile: the abandon took it back.
                    let mut s = self.shared.lock();
                    if s.lent.remove(&(cur.run, cur.node)) {
                        s.pools[cur.pool].running += 1;
                    }
                }
                true
            }
            _ => run.inner.wait_for(slice).is_some(),
        }
    }

    /// Cancels `run`: tasks that have not started end `cancelled`; running tasks finish
    /// ([`CancelMode::Drain`]) or are interrupted and end `cancelled` at once
    /// ([`CancelMode::Interrupt`]). The run ends `cancelled`. Harmless when repeated or after the end.
    pub fn cancel(&self, run: &Run<V>, mode: CancelMode) {
        let r = &run.inner;
        let mut s = self.shared.lock();
        if r.outcome().is_some() {
            return;
        }
        r.cancelled.store(true, Ordering::Release);
        for n in 0..r.plan.len() as NodeId {
            if mode == CancelMode::Interrupt && r.state_of(n) == TaskState::Running {
                s.abandon(r, n, TaskError::Cancelled, false);
            } else {
                s.cancel_node(r, n, u32::MAX);
            }
        }
        s.after.push(After::NotifyAll);
        release(&self.shared, s);
    }

    /// Cancels task `node` of `run` and its descendants: those not started end `cancelled`, a running
    /// one is interrupted.
    pub fn cancel_task(&self, run: &Run<V>, node: NodeId) {
        let r = &run.inner;
        if node as usize >= r.plan.len() {
            return;
        }
        let mut s = self.shared.lock();
        if r.outcome().is_some() {
            return;
        }
        r.partly_cancelled.store(true, Ordering::Release);
        let affected: Vec<NodeId> = std::iter::once(node)
            .chain(r.plan.descendants(node))
            .collect();
        // Flag them all first, so settling a running one cancels (not skips) the rest.
        for &n in &affected {
            r.nodes[n as usize].cancel.store(true, Ordering::Release);
        }
        for n in affected {
            if r.state_of(n) == TaskState::Running {
                s.abandon(r, n, TaskError::Cancelled, false);
            } else {
                s.cancel_node(r, n, if n == node { u32::MAX } else { node });
            }
        }
        s.after.push(After::NotifyAll);
        release(&self.shared, s);
    }

    /// Stops the workers after their current tasks; queued work is abandoned. Idempotent.
    pub fn shutdown(&self) {
        if std::process::id() != self.shared.pid {
            // A forked child: the worker threads exist only in the parent; there is nothing here
            // to stop, and joining their handles would be undefined.
            return;
        }
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        self.shared.timer_cv.notify_all();
        let timer = self.shared.timer.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = timer {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        let handles: Vec<JoinHandle<()>> = match self.shared.threads.lock() {
            Ok(mut t) => t.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                let _ = h.join();
            }
        }
    }

    /// Bookkeeping sizes, for tests and leak checks (see [`DebugCounts`]).
    pub fn debug_counts(&self) -> DebugCounts {
        let handles = self.shared.threads.lock().map(|t| t.len()).unwrap_or(0);
        let (stuck, surplus) = {
            let s = self.shared.lock();
            (s.stuck, s.surplus)
        };
        DebugCounts {
            handles,
            exiting: self.shared.retired.load(Ordering::Acquire),
            stuck: stuck + surplus,
        }
    }

    /// Number of live worker threads.
    pub fn thread_count(&self) -> usize {
        let n = self.shared.threads.lock().map(|t| t.len()).unwrap_or(0);
        n.saturating_sub(self.shared.retired.load(Ordering::Acquire))
    }
}

impl<V: Send + Sync + 'static> Drop for Executor<V> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn deadline(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(100 * 365 * 86400))
}

fn spawn_worker<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>) -> Result<(), String> {
    let mut threads = shared
        .threads
        .lock()
        .map_err(|_| "executor state poisoned".to_string())?;
    let s2 = shared.clone();
    let handle = std::thread::Builder::new()
        .name(format!("tm-worker-{}", threads.len()))
        .spawn(move || {
            let host = s2.host.clone();
            let mut retired = false;
            host.worker_main(&mut || retired = worker_loop(&s2));
            if retired {
                s2.forget_thread();
            }
        })
        .map_err(|e| format!("cannot start worker thread: {e}"))?;
    threads.push(handle);
    Ok(())
}

impl<V: Send + Sync + 'static> Shared<V> {
    /// Called by a retiring worker (replaced while stuck in an abandoned attempt) once it is done
    /// with the host: drops its own handle, which detaches the thread, so that its stack and
    /// thread record are freed as it exits instead of being kept for a join at shutdown.
    fn forget_thread(&self) {
        let me = std::thread::current().id();
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = threads.iter().position(|h| h.thread().id() == me) {
            drop(threads.swap_remove(i));
        }
        // Under the lock, with the handle gone: `len - retired` stays the live thread count.
        // (At shutdown the handles were drained already; the count still goes back down.)
        let _ = self
            .retired
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1));
    }

    fn lock(&self) -> MutexGuard<'_, Sched<V>> {
        // A poisoned lock means a panic inside pure bookkeeping; the state is still consistent
        // enough to shut down, so keep going rather than propagate a panic to Python.
        let mut s = self.sched.lock().unwrap_or_else(|p| p.into_inner());
        s.now_us = self.clock.now_micros();
        s
    }
}

/// Releases the scheduler lock, then performs the work queued under it.
fn release<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>, mut s: MutexGuard<'_, Sched<V>>) {
    if s.after.is_empty() {
        return;
    }
    let mut after = std::mem::take(&mut s.after);
    // Queue events while still holding the lock, so each run's events keep the order in which
    // things happened even when several threads deliver at once.
    for a in after.iter_mut() {
        if let After::Emit(run, node, attempt, kind) = a {
            let kind = std::mem::replace(kind, EventKind::Cancelled);
            run.queue_event(*node, *attempt, kind);
            *a = After::Deliver(run.clone());
        }
    }
    drop(s);
    for a in after {
        match a {
            After::Emit(run, ..) | After::Deliver(run) => run.deliver_events(),
            After::Interrupt(run, node, attempt, reason) => {
                run.body.interrupt(node, attempt, &reason)
            }
            After::SpawnThread => {
                let _ = spawn_worker(shared);
            }
            After::NotifyOne => shared.work.notify_one(),
            After::NotifyAll => shared.work.notify_all(),
            After::NotifyTimer => shared.timer_cv.notify_one(),
        }
    }
}

impl<V: Send + Sync + 'static> Sched<V> {
    fn make_ready(&mut self, run: &Arc<RunInner<V>>, n: NodeId) {
        let spec = &run.specs[n as usize];
        run.set_state(n, TaskState::Scheduled);
        self.seq += 1;
        let job = Job {
            priority: spec.priority,
            seq: self.seq,
            run: run.clone(),
            node: n,
        };
        self.pools[spec.pool].ready.push(job);
    }

    fn jitter_unit(&mut self) -> f64 {
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Takes the best ready job from any pool with a free slot, and opens its attempt.
    fn take(&mut self) -> Option<Taken<V>> {
        loop {
            let mut best: Option<usize> = None;
            for (i, p) in self.pools.iter().enumerate() {
                if p.running >= p.capacity {
                    continue;
                }
                if let Some(top) = p.ready.peek() {
                    if best.is_none_or(|b| self.pools[b].ready.peek().is_some_and(|bt| top > bt)) {
                        best = Some(i);
                    }
                }
            }
            let i = best?;
            let job = self.pools[i].ready.pop()?;
            // Cancelled or skipped while queued: drop it and look again.
            if job.run.state_of(job.node) != TaskState::Scheduled {
                continue;
            }
            self.pools[i].running += 1;
            job.run.set_state(job.node, TaskState::Running);
            let node = &job.run.nodes[job.node as usize];
            let generation = node.generation.load(Ordering::Acquire);
            let attempt = {
                let mut log = node.log.lock().unwrap_or_else(|p| p.into_inner());
                let number = log.len() as u32;
                // Most tasks run once: don't let the first push reserve room for four attempts.
                log.reserve_exact(1);
                log.push(Attempt {
                    number,
                    started_us: self.now_us,
                    ended_us: 0,
                    error: None,
                    retry_at_us: None,
                });
                number
            };
            return Some(Taken {
                job,
                generation,
                attempt,
            });
        }
    }

    /// Handles due timers; returns the time until the next one.
    fn fire_timers(&mut self, now: Instant) -> Option<Duration> {
        while let Some(Reverse(t)) = self.timers.peek() {
            if t.due > now {
                return Some(t.due - now);
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            match t.kind {
                TimerKind::Retry(job) => {
                    if job.run.state_of(job.node) == TaskState::Retrying {
                        job.run.set_state(job.node, TaskState::Scheduled);
                        let pool = job.run.specs[job.node as usize].pool;
                        self.pools[pool].ready.push(job);
                        self.after.push(After::NotifyOne);
                    }
                }
                TimerKind::Deadline {
                    run,
                    node,
                    generation,
                    limit,
                } => {
                    let live =
                        run.nodes[node as usize].generation.load(Ordering::Acquire) == generation;
                    if live && run.state_of(node) == TaskState::Running {
                        let retry = run.specs[node as usize].retry_timeouts;
                        self.abandon(&run, node, TaskError::Timeout(limit), retry);
                    }
                }
                TimerKind::RunDeadline { run, limit } => {
                    if run.outcome().is_none() {
                        run.timed_out.store(true, Ordering::Release);
                        run.failed.store(true, Ordering::Release);
                        for n in 0..run.plan.len() as NodeId {
                            if run.state_of(n) == TaskState::Running {
                                self.abandon(&run, n, TaskError::Timeout(limit), false);
                            } else {
                                self.cancel_node(&run, n, u32::MAX);
                            }
                        }
                    }
                }
            }
        }
        None
    }

    /// Gives up on the running attempt of `n`: frees its slot, replaces the thread stuck in it,
    /// asks the task to stop, and settles the attempt as failed with `reason`.
    fn abandon(&mut self, run: &Arc<RunInner<V>>, n: NodeId, reason: TaskError, may_retry: bool) {
        let node = &run.nodes[n as usize];
        node.generation.fetch_add(1, Ordering::AcqRel);
        // A task waiting on a nested run has lent its slot already.
        if !self.lent.remove(&(run.id, n)) {
            self.pools[run.specs[n as usize].pool].running -= 1;
        }
        self.stuck += 1;
        self.after.push(After::SpawnThread);
        let interrupt = match &reason {
            TaskError::Timeout(d) => TaskError::Timeout(*d),
            _ => TaskError::Cancelled,
        };
        let attempt = node
            .log
            .lock()
            .map(|l| l.len().saturating_sub(1) as u32)
            .unwrap_or(0);
        self.after
            .push(After::Interrupt(run.clone(), n, attempt, interrupt));
        let now = self.now_us;
        self.settle_error(run, n, attempt, reason, now, may_retry);
        self.after.push(After::NotifyAll);
    }

    /// Records a failed attempt: schedules a retry, or fails (or cancels) the task for good and
    /// settles its descendants.
    fn settle_error(
        &mut self,
        run: &Arc<RunInner<V>>,
        n: NodeId,
        attempt: u32,
        err: TaskError,
        ended: i64,
        retryable: bool,
    ) {
        let spec = &run.specs[n as usize];
        let cancelled = matches!(err, TaskError::Cancelled) || run.is_cancel_requested(n);
        let retry = retryable && !cancelled && spec.retry.allows(attempt + 1);
        let err = Arc::new(err);
        if retry {
            let unit = self.jitter_unit();
            let delay = spec.retry.delay_for(attempt, unit);
            let retry_at = ended.saturating_add(delay.as_micros().min(i64::MAX as u128) as i64);
            close_attempt(run, n, ended, Some(err.clone()), Some(retry_at));
            run.set_state(n, TaskState::Retrying);
            self.seq += 1;
            let seq = self.seq;
            let job = Job {
                priority: spec.priority,
                seq,
                run: run.clone(),
                node: n,
            };
            self.timers.push(Reverse(Timer {
                due: deadline(delay),
                seq,
                kind: TimerKind::Retry(job),
            }));
            self.after.push(After::NotifyTimer);
            self.after.push(After::Emit(
                run.clone(),
                Some(n),
                attempt,
                EventKind::Retrying {
                    error: err,
                    retry_at_us: retry_at,
                },
            ));
            return;
        }
        close_attempt(run, n, ended, Some(err.clone()), None);
        if cancelled {
            run.partly_cancelled.store(true, Ordering::Release);
            run.set_state(n, TaskState::Cancelled);
            self.after.push(After::Emit(
                run.clone(),
                Some(n),
                attempt,
                EventKind::Cancelled,
            ));
        } else {
            run.set_state(n, TaskState::Failed);
            run.failed.store(true, Ordering::Release);
            self.after.push(After::Emit(
                run.clone(),
                Some(n),
                attempt,
                EventKind::Failed { error: err },
            ));
        }
        for d in run.plan.descendants(n) {
            self.cancel_node(run, d, n);
        }
        if run.fail_fast && !cancelled {
            for m in 0..run.plan.len() as NodeId {
                if m == n {
                    continue;
                }
                if run.state_of(m) == TaskState::Running {
                    self.abandon(run, m, TaskError::Cancelled, false);
                } else {
                    self.cancel_node(run, m, u32::MAX);
                }
            }
        }
        self.node_done(run);
    }

    /// Records a completed task and readies its children; returns how many became ready.
    fn complete(&mut self, run: &Arc<RunInner<V>>, n: NodeId, attempt: u32) -> usize {
        run.set_state(n, TaskState::Completed);
        self.after.push(After::Emit(
            run.clone(),
            Some(n),
            attempt,
            EventKind::Completed,
        ));
        let mut ready = 0;
        for &c in run.plan.children(n) {
            if run.nodes[c as usize]
                .pending_parents
                .fetch_sub(1, Ordering::AcqRel)
                == 1
                && run.state_of(c) == TaskState::Pending
            {
                self.make_ready(run, c);
                ready += 1;
            }
        }
        self.node_done(run);
        ready
    }

    /// Marks a not-yet-started node terminal (cancelled, or skipped when `cause` is a failed parent).
    fn cancel_node(&mut self, run: &Arc<RunInner<V>>, n: NodeId, cause: NodeId) {
        let st = run.state_of(n);
        if st.is_terminal() || st == TaskState::Running {
            return;
        }
        // Skipped means "a parent failed" in a run that is otherwise going on; a run that was
        // cancelled or hit its deadline cancels what it did not start.
        let skipped = cause != u32::MAX
            && !run.cancelled.load(Ordering::Acquire)
            && !run.timed_out.load(Ordering::Acquire)
            && !run.is_cancel_requested(n);
        run.set_state(
            n,
            if skipped {
                TaskState::Skipped
            } else {
                TaskState::Cancelled
            },
        );
        run.nodes[n as usize].cause.store(cause, Ordering::Release);
        let kind = if skipped {
            EventKind::Skipped { cause }
        } else {
            EventKind::Cancelled
        };
        self.after.push(After::Emit(run.clone(), Some(n), 0, kind));
        self.node_done(run);
    }

    fn node_done(&mut self, run: &Arc<RunInner<V>>) {
        if run.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            run.record_outcome();
            let state = run.final_state();
            self.after.push(After::Emit(
                run.clone(),
                None,
                0,
                EventKind::RunFinished { state },
            ));
            // Threads helping with this run (nested waits) must notice it ended.
            self.after.push(After::NotifyAll);
        }
    }
}

fn close_attempt<V>(
    run: &RunInner<V>,
    n: NodeId,
    ended: i64,
    err: Option<Arc<TaskError>>,
    retry_at: Option<i64>,
) {
    let mut log = run.nodes[n as usize]
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(a) = log.last_mut() {
        a.ended_us = ended;
        a.error = err;
        a.retry_at_us = retry_at;
    }
}

/// What became of a job run on this thread.
struct Executed {
    made_ready: usize,
    /// The attempt had been abandoned (timed out or cancelled) while it ran.
    abandoned: bool,
}

/// Runs one job on this thread (inside a host session) and records its outcome.
fn execute<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>, taken: Taken<V>) -> Executed {
    #[cfg(test)]
    tests_hook::before_execute(taken.job.run.plan.name(taken.job.node));
    let Taken {
        job,
        generation,
        attempt,
    } = taken;
    let run = &job.run;
    let n = job.node;
    let node = &run.nodes[n as usize];
    // Cancelled (or timed out) between being taken and now: the attempt is settled and the slot
    // given back; the task must not start. (One that lands after this check reaches the body
    // through `Body::interrupt`; a body that marks itself interruptible checks
    // `CallContext::is_abandoned` after marking, for an interrupt that came before the mark.)
    if node.generation.load(Ordering::Acquire) != generation {
        return given_up(shared, shared.lock());
    }
    let spec = &run.specs[n as usize];
    if let Some(limit) = spec.timeout {
        let mut s = shared.lock();
        s.seq += 1;
        let seq = s.seq;
        let kind = TimerKind::Deadline {
            run: run.clone(),
            node: n,
            generation,
            limit,
        };
        s.timers.push(Reverse(Timer {
            due: deadline(limit),
            seq,
            kind,
        }));
        s.after.push(After::NotifyTimer);
        release(shared, s);
    }
    run.emit(Some(n), attempt, EventKind::Started);
    let outcome = {
        let cx = CallContext {
            run,
            node: n,
            attempt,
            generation,
        };
        run.body.call(&cx)
    };
    // Ask the body (user code) about retries before taking the lock.
    let retryable = match &outcome {
        Err(e @ TaskError::Raised { .. }) => run.body.retryable(n, e),
        _ => true,
    };
    let ended = shared.clock.now_micros();
    // Checked under the lock: an abandon (which moves the generation) holds it too.
    let mut s = shared.lock();
    if node.generation.load(Ordering::Acquire) != generation {
        // Timed out or cancelled meanwhile: the attempt is settled and this thread was replaced.
        return given_up(shared, s);
    }
    let pool = spec.pool;
    s.pools[pool].running -= 1;
    let made_ready = match outcome {
        Ok(v) => {
            let _ = node.result.set(v);
            close_attempt(run, n, ended, None, None);
            s.complete(run, n, attempt)
        }
        Err(err) => {
            s.settle_error(run, n, attempt, err, ended, retryable);
            0
        }
    };
    release(shared, s);
    Executed {
        made_ready,
        abandoned: false,
    }
}

/// The end of an attempt that was abandoned (its slot given back, this thread replaced): the
/// thread no longer counts as stuck, and retires.
fn given_up<V: Send + Sync + 'static>(
    shared: &Arc<Shared<V>>,
    mut s: MutexGuard<'_, Sched<V>>,
) -> Executed {
    s.stuck = s.stuck.saturating_sub(1);
    release(shared, s);
    Executed {
        made_ready: 0,
        abandoned: true,
    }
}

/// Runs `first` and then keeps taking ready jobs within one host session while any remain.
/// Returns true when this thread should retire (it was stuck in an abandoned attempt and has been
/// replaced).
fn run_session<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>, first: Taken<V>) -> bool {
    let me = Arc::as_ptr(shared) as usize;
    let mut next = Some(first);
    let mut retire = false;
    shared.host.clone().session(&mut || {
        while let Some(job) = next.take() {
            let (run, node) = (&job.job.run, job.job.node);
            let current = Current {
                exec: me,
                pool: run.specs[node as usize].pool,
                run: run.id,
                node,
                generation: job.generation,
                live: &run.nodes[node as usize].generation,
            };
            let outer = CURRENT.with(|c| c.replace(Some(current)));
            let done = execute(shared, job);
            CURRENT.with(|c| c.set(outer));
            if done.abandoned {
                retire = true;
                return;
            }
            let mut s = shared.lock();
            let taken = s.take();
            // This thread continues with one job; wake idle workers for the rest.
            let extra = done
                .made_ready
                .saturating_sub(usize::from(taken.is_some()))
                .min(s.idle);
            for _ in 0..extra {
                s.after.push(After::NotifyOne);
            }
            release(shared, s);
            next = taken;
        }
    });
    retire
}

/// A pool worker's life; returns true when it retires (it was replaced while stuck in an
/// abandoned attempt), false at shutdown.
fn worker_loop<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>) -> bool {
    loop {
        let job = {
            let mut s = shared.lock();
            loop {
                if s.shutdown {
                    return false;
                }
                if s.surplus > 0 {
                    s.surplus -= 1;
                    shared.retired.fetch_add(1, Ordering::AcqRel);
                    return true;
                }
                if let Some(job) = s.take() {
                    break job;
                }
                s.idle += 1;
                s = shared.work.wait(s).unwrap_or_else(|p| p.into_inner());
                s.idle -= 1;
            }
        };
        if run_session(shared, job) {
            shared.retired.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
}

/// The timer thread: fires retries and deadlines when due, whatever the workers are doing.
fn timer_loop<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>) {
    let mut s = shared.lock();
    loop {
        if s.shutdown {
            return;
        }
        // The guard may come back from a long wait: refresh the time attempts are closed with.
        s.now_us = shared.clock.now_micros();
        let wait = s.fire_timers(Instant::now());
        if !s.after.is_empty() {
            release(shared, s);
            s = shared.lock();
            continue;
        }
        s = match wait {
            Some(d) => shared
                .timer_cv
                .wait_timeout(s, d)
                .map(|r| r.0)
                .unwrap_or_else(|p| p.into_inner().0),
            None => shared.timer_cv.wait(s).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// One round of helping from a thread waiting on `run`: run a ready job if there is one, else wait
/// for work or for the run to end, at most `slice`.
fn help_once<V: Send + Sync + 'static>(
    shared: &Arc<Shared<V>>,
    run: &Arc<RunInner<V>>,
    slice: Duration,
) {
    let mut s = shared.lock();
    if let Some(job) = s.take() {
        drop(s);
        // A helper is inside a task of its own: if its job is abandoned it goes back to waiting,
        // and the thread started to replace it is one too many; a worker retires for it.
        if run_session(shared, job) {
            let mut s = shared.lock();
            s.surplus += 1;
            s.after.push(After::NotifyOne);
            release(shared, s);
        }
        return;
    }
    if run.outcome().is_some() {
        return;
    }
    s.idle += 1;
    s = shared
        .work
        .wait_timeout(s, slice)
        .map(|r| r.0)
        .unwrap_or_else(|p| p.into_inner().0);
    s.idle -= 1;
}

/// A point tests can stop a worker at: after it took a job, before it runs it.
#[cfg(test)]
pub(crate) mod tests_hook {
    use std::sync::{Arc, Mutex};

    type Hook = Arc<dyn Fn(&str) + Send + Sync>;
    static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

    /// Installs (or removes) the function called with the task's name.
    pub(crate) fn set(hook: Option<Hook>) {
        *HOOK.lock().unwrap_or_else(|p| p.into_inner()) = hook;
    }

    pub(super) fn before_execute(name: &str) {
        let hook = HOOK.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(h) = hook {
            h(name);
        }
    }
}
