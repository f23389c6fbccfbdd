//! The executor: worker threads, per-pool ready queues with bounded concurrency, retry timers.

use std::cell::Cell;
use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::run::{Attempt, Run, RunInner, TaskState};
use super::{CallContext, Host, Submission, TaskError};
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

struct Job<V> {
    priority: i32,
    seq: u64,
    run: Arc<RunInner<V>>,
    node: NodeId,
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

struct Timer<V> {
    due: Instant,
    job: Job<V>,
}
impl<V> PartialEq for Timer<V> {
    fn eq(&self, o: &Self) -> bool {
        self.due == o.due && self.job.seq == o.job.seq
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
        (self.due, self.job.seq).cmp(&(o.due, o.job.seq))
    }
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
    finished: bool,
}

struct Shared<V> {
    sched: Mutex<Sched<V>>,
    work: Condvar,
    host: Arc<dyn Host>,
    clock: Clock,
    next_run_id: std::sync::atomic::AtomicU64,
    /// A cheap xorshift state for retry jitter.
    rng: std::sync::atomic::AtomicU64,
}

thread_local! {
    /// (executor identity, pool) of the task this thread is running, if it is a worker mid-task.
    static CURRENT: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Runs plans on worker threads. Threads start with the first run, not before.
pub struct Executor<V: Send + Sync + 'static> {
    shared: Arc<Shared<V>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
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
            finished: false,
        };
        Executor {
            shared: Arc::new(Shared {
                sched: Mutex::new(sched),
                work: Condvar::new(),
                host,
                clock,
                next_run_id: std::sync::atomic::AtomicU64::new(1),
                rng: std::sync::atomic::AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            }),
            threads: Mutex::new(Vec::new()),
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

    /// Adds a pool for `tag` (or returns the existing one's index). Threads for it start with the
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
        let mut threads = self
            .threads
            .lock()
            .map_err(|_| "executor state poisoned".to_string())?;
        let want: usize = self
            .pools()
            .iter()
            .map(|p| p.capacity.max(1))
            .sum::<usize>()
            .min(512);
        while threads.len() < want {
            let shared = self.shared.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tm-worker-{}", threads.len()))
                .spawn(move || {
                    let host = shared.host.clone();
                    host.worker_main(&mut || worker_loop(&shared));
                })
                .map_err(|e| format!("cannot start worker thread: {e}"))?;
            threads.push(handle);
        }
        Ok(())
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
        let id = self.shared.next_run_id.fetch_add(1, Ordering::Relaxed);
        let run = Arc::new(RunInner::new(
            id,
            sub.plan,
            sub.specs,
            sub.body,
            sub.options.fail_fast,
            self.shared.clock.clone(),
        ));
        if run.plan.is_empty() {
            run.finish();
            return Ok(Run { inner: run });
        }
        let mut s = self.shared.lock();
        if s.shutdown {
            return Err("executor is shut down".into());
        }
        let mut ready = 0;
        for n in run.plan.roots().collect::<Vec<_>>() {
            s.make_ready(&run, n);
            ready += 1;
        }
        let wake = ready.min(s.idle);
        drop(s);
        for _ in 0..wake {
            self.shared.work.notify_one();
        }
        Ok(Run { inner: run })
    }

    /// Waits for `run` to end. On a worker thread of this executor (a graph run from inside a task),
    /// the caller gives back its slot and helps run ready tasks meanwhile, so nested runs never
    /// deadlock; elsewhere it waits up to `slice` and returns, so callers can check for signals.
    pub fn wait(&self, run: &Run<V>, slice: Duration) -> bool {
        let me = Arc::as_ptr(&self.shared) as usize;
        match CURRENT.with(|c| c.get()) {
            Some((exec, pool)) if exec == me => {
                {
                    let mut s = self.shared.lock();
                    s.pools[pool].running -= 1;
                }
                self.shared.work.notify_one();
                CURRENT.with(|c| c.set(None));
                while !run.is_done() {
                    help_once(&self.shared, &run.inner, slice);
                }
                CURRENT.with(|c| c.set(Some((exec, pool))));
                // Take the slot back even if the pool is full: the outer task is still running.
                self.shared.lock().pools[pool].running += 1;
                true
            }
            _ => run.inner.wait_for(slice).is_some(),
        }
    }

    /// Cancels every task of `run` that has not started; running tasks see the request and the run
    /// ends `cancelled` once they finish. Harmless when repeated or after the end.
    pub fn cancel(&self, run: &Run<V>) {
        let r = &run.inner;
        let mut s = self.shared.lock();
        if r.outcome().is_some() {
            return;
        }
        r.cancelled.store(true, Ordering::Release);
        for n in 0..r.plan.len() as NodeId {
            s.cancel_node(r, n, u32::MAX);
        }
        s.take_finished();
        drop(s);
        self.shared.work.notify_all();
    }

    /// Cancels task `node` of `run` and its descendants (those not yet started end `cancelled`).
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
        r.nodes[node as usize].cancel.store(true, Ordering::Release);
        s.cancel_node(r, node, u32::MAX);
        for d in r.plan.descendants(node) {
            r.nodes[d as usize].cancel.store(true, Ordering::Release);
            s.cancel_node(r, d, node);
        }
        s.take_finished();
        drop(s);
        self.shared.work.notify_all();
    }

    /// Stops the workers after their current tasks; queued work is abandoned. Idempotent.
    pub fn shutdown(&self) {
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        let handles: Vec<JoinHandle<()>> = match self.threads.lock() {
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

    /// Number of worker threads started so far.
    pub fn thread_count(&self) -> usize {
        self.threads.lock().map(|t| t.len()).unwrap_or(0)
    }
}

impl<V: Send + Sync + 'static> Drop for Executor<V> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<V: Send + Sync + 'static> Shared<V> {
    fn lock(&self) -> MutexGuard<'_, Sched<V>> {
        // A poisoned lock means a panic inside pure bookkeeping; the state is still consistent
        // enough to shut down, so keep going rather than propagate a panic to Python.
        self.sched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn jitter_unit(&self) -> f64 {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl<V> Sched<V> {
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

    /// Takes the best ready job from any pool with a free slot.
    fn take(&mut self) -> Option<Job<V>> {
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
            return Some(job);
        }
    }

    /// Moves due retry timers to the ready queues; returns the time until the next one.
    fn fire_timers(&mut self, now: Instant) -> Option<Duration> {
        while let Some(Reverse(t)) = self.timers.peek() {
            if t.due > now {
                return Some(t.due - now);
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            let job = t.job;
            if job.run.state_of(job.node) == TaskState::Retrying {
                job.run.set_state(job.node, TaskState::Scheduled);
                let pool = job.run.specs[job.node as usize].pool;
                self.pools[pool].ready.push(job);
            }
        }
        None
    }

    /// Marks a not-yet-started node terminal (cancelled, or skipped when `cause` is a failed parent).
    fn cancel_node(&mut self, run: &RunInner<V>, n: NodeId, cause: NodeId) {
        let st = run.state_of(n);
        if st.is_terminal() || st == TaskState::Running {
            return;
        }
        run.set_state(
            n,
            if cause == u32::MAX || run.cancelled.load(Ordering::Acquire) {
                TaskState::Cancelled
            } else {
                TaskState::Skipped
            },
        );
        run.nodes[n as usize].cause.store(cause, Ordering::Release);
        self.node_done(run);
    }

    fn node_done(&mut self, run: &RunInner<V>) {
        if run.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            run.finish();
            self.finished = true;
        }
    }

    /// Whether a run ended since the last call (helpers waiting on it must be woken).
    fn take_finished(&mut self) -> bool {
        std::mem::take(&mut self.finished)
    }
}

/// Runs one job on this thread (inside a host session) and records its outcome.
/// Returns how many jobs it made ready.
fn execute<V: Send + Sync + 'static>(shared: &Shared<V>, job: Job<V>) -> usize {
    let run = &job.run;
    let n = job.node;
    let attempt = {
        let mut log = run.nodes[n as usize]
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let number = log.len() as u32;
        log.push(Attempt {
            number,
            started_us: shared.clock.now_micros(),
            ended_us: 0,
            error: None,
            retry_at_us: None,
        });
        number
    };
    let pool = run.specs[n as usize].pool;
    let outcome = {
        let cx = CallContext {
            run,
            node: n,
            attempt,
        };
        run.body.call(&cx)
    };
    let ended = shared.clock.now_micros();
    match outcome {
        Ok(v) => {
            let _ = run.nodes[n as usize].result.set(v);
            close_attempt(run, n, ended, None, None);
            let mut s = shared.lock();
            s.pools[pool].running -= 1;
            run.set_state(n, TaskState::Completed);
            let mut ready = 0;
            for &c in run.plan.children(n) {
                if run.nodes[c as usize]
                    .pending_parents
                    .fetch_sub(1, Ordering::AcqRel)
                    == 1
                    && run.state_of(c) == TaskState::Pending
                {
                    s.make_ready(run, c);
                    ready += 1;
                }
            }
            s.node_done(run);
            ready
        }
        Err(err) => {
            let failures = attempt + 1;
            let spec = &run.specs[n as usize];
            let cancelled = matches!(err, TaskError::Cancelled) || run.is_cancel_requested(n);
            let retry = !cancelled && spec.retry.allows(failures) && run.body.retryable(n, &err);
            if retry {
                let delay = spec.retry.delay_for(attempt, shared.jitter_unit());
                let retry_at = ended.saturating_add(delay.as_micros().min(i64::MAX as u128) as i64);
                close_attempt(run, n, ended, Some(err), Some(retry_at));
                let mut s = shared.lock();
                s.pools[pool].running -= 1;
                run.set_state(n, TaskState::Retrying);
                s.seq += 1;
                let due = Instant::now()
                    .checked_add(delay)
                    .unwrap_or_else(|| Instant::now() + Duration::from_secs(86400 * 365));
                let seq = s.seq;
                s.timers.push(Reverse(Timer {
                    due,
                    job: Job {
                        priority: job.priority,
                        seq,
                        run: run.clone(),
                        node: n,
                    },
                }));
                drop(s);
                // A waiting worker must recompute its timeout to include this timer.
                shared.work.notify_one();
                0
            } else {
                close_attempt(run, n, ended, Some(err), None);
                let mut s = shared.lock();
                s.pools[pool].running -= 1;
                if cancelled {
                    run.partly_cancelled.store(true, Ordering::Release);
                    run.set_state(n, TaskState::Cancelled);
                } else {
                    run.set_state(n, TaskState::Failed);
                    run.failed.store(true, Ordering::Release);
                }
                s.node_done(run);
                for d in run.plan.descendants(n) {
                    s.cancel_node(run, d, n);
                }
                if run.fail_fast && !cancelled {
                    for m in 0..run.plan.len() as NodeId {
                        if run.state_of(m) != TaskState::Running {
                            s.cancel_node(run, m, u32::MAX);
                        } else {
                            run.nodes[m as usize].cancel.store(true, Ordering::Release);
                        }
                    }
                }
                0
            }
        }
    }
}

fn close_attempt<V>(
    run: &RunInner<V>,
    n: NodeId,
    ended: i64,
    err: Option<TaskError>,
    retry_at: Option<i64>,
) {
    let mut log = run.nodes[n as usize]
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(a) = log.last_mut() {
        a.ended_us = ended;
        a.error = err.map(Arc::new);
        a.retry_at_us = retry_at;
    }
}

/// Runs `first` and then keeps taking ready jobs within one host session while any remain.
fn run_session<V: Send + Sync + 'static>(shared: &Shared<V>, first: Job<V>) {
    let me = shared as *const Shared<V> as usize;
    let mut next = Some(first);
    shared.host.clone().session(&mut || {
        while let Some(job) = next.take() {
            let pool = job.run.specs[job.node as usize].pool;
            let outer = CURRENT.with(|c| c.replace(Some((me, pool))));
            let made_ready = execute(shared, job);
            CURRENT.with(|c| c.set(outer));
            let mut s = shared.lock();
            let taken = s.take();
            // This thread continues with one job; wake idle workers for the rest.
            let extra = made_ready
                .saturating_sub(usize::from(taken.is_some()))
                .min(s.idle);
            let finished = s.take_finished();
            drop(s);
            if finished {
                shared.work.notify_all();
            } else {
                for _ in 0..extra {
                    shared.work.notify_one();
                }
            }
            next = taken;
        }
    });
}

fn worker_loop<V: Send + Sync + 'static>(shared: &Arc<Shared<V>>) {
    loop {
        let job = {
            let mut s = shared.lock();
            loop {
                if s.shutdown {
                    return;
                }
                let wait = s.fire_timers(Instant::now());
                if let Some(job) = s.take() {
                    break job;
                }
                s.idle += 1;
                s = match wait {
                    Some(d) => shared
                        .work
                        .wait_timeout(s, d)
                        .map(|r| r.0)
                        .unwrap_or_else(|p| p.into_inner().0),
                    None => shared.work.wait(s).unwrap_or_else(|p| p.into_inner()),
                };
                s.idle -= 1;
            }
        };
        run_session(shared, job);
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
    let wait = s.fire_timers(Instant::now());
    if let Some(job) = s.take() {
        drop(s);
        run_session(shared, job);
        return;
    }
    if run.outcome().is_some() {
        return;
    }
    s.idle += 1;
    let d = wait.map_or(slice, |w| w.min(slice));
    s = shared
        .work
        .wait_timeout(s, d)
        .map(|r| r.0)
        .unwrap_or_else(|p| p.into_inner().0);
    s.idle -= 1;
}
