use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::clock::Clock;
use crate::dag::DagBuilder;

#[derive(Debug)]
struct Boom(String);
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Boom {}

/// Each task returns 1 + the sum of its parents' values, or fails if its name is listed.
struct SumBody {
    fail: Vec<String>,
    fail_times: AtomicU32,
    calls: AtomicUsize,
    order: Mutex<Vec<NodeId>>,
}

impl SumBody {
    fn new(fail: &[&str], fail_times: u32) -> Self {
        SumBody {
            fail: fail.iter().map(|s| s.to_string()).collect(),
            fail_times: AtomicU32::new(fail_times),
            calls: AtomicUsize::new(0),
            order: Mutex::new(Vec::new()),
        }
    }
}

impl Body<u64> for SumBody {
    fn call(&self, cx: &CallContext<'_, u64>) -> Result<u64, TaskError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.order.lock().unwrap().push(cx.node);
        let name = cx.plan().name(cx.node);
        if self.fail.iter().any(|f| f == name) {
            let left = self.fail_times.load(Ordering::SeqCst);
            if left > 0 {
                self.fail_times.store(left - 1, Ordering::SeqCst);
                return Err(TaskError::Raised {
                    source: Box::new(Boom(format!("{name} failed"))),
                });
            }
        }
        let mut sum = 1;
        for &p in cx.plan().parents(cx.node) {
            sum += *cx.value(p).expect("parent value present");
        }
        Ok(sum)
    }
}

fn plan(edges: &[(&str, &str)], extra: &[&str]) -> Arc<Plan> {
    let mut b: DagBuilder<()> = DagBuilder::new();
    for n in extra {
        b.add_node(n, (), |_, _| true).unwrap();
    }
    for (p, c) in edges {
        let p = b.add_node(p, (), |_, _| true).unwrap();
        let c = b.add_node(c, (), |_, _| true).unwrap();
        b.add_edge(p, c).unwrap();
    }
    Arc::new(b.plan())
}

fn executor(workers: usize) -> Executor<u64> {
    Executor::new(
        Arc::new(NativeHost),
        vec![PoolConfig {
            name: String::new(),
            capacity: workers,
        }],
        Clock::System,
    )
}

fn submit(
    ex: &Executor<u64>,
    plan: &Arc<Plan>,
    body: Arc<dyn Body<u64>>,
    retry: RetryPolicy,
) -> Run<u64> {
    let specs = Arc::new(vec![
        TaskSpec {
            retry,
            ..Default::default()
        };
        plan.len()
    ]);
    ex.submit(Submission {
        plan: plan.clone(),
        specs,
        body,
        options: RunOptions::default(),
        done: Vec::new(),
        cancelled: Vec::new(),
    })
    .unwrap()
}

fn wait(ex: &Executor<u64>, run: &Run<u64>) -> RunState {
    while !ex.wait(run, Duration::from_millis(100)) {}
    run.state()
}

fn id(p: &Plan, name: &str) -> NodeId {
    (0..p.len() as NodeId).find(|n| p.name(*n) == name).unwrap()
}

#[test]
fn diamond_passes_results_in_dependency_order() {
    let p = plan(&[("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")], &[]);
    let ex = executor(4);
    let body = Arc::new(SumBody::new(&[], 0));
    let run = submit(&ex, &p, body.clone(), RetryPolicy::default());
    assert_eq!(wait(&ex, &run), RunState::Completed);
    assert_eq!(run.value(id(&p, "d")), Some(&5));
    let order = body.order.lock().unwrap().clone();
    let pos = |n: &str| order.iter().position(|x| *x == id(&p, n)).unwrap();
    assert!(pos("a") < pos("b") && pos("b") < pos("d") && pos("c") < pos("d"));
}

#[test]
fn failure_skips_descendants_but_not_unrelated_branches() {
    let p = plan(&[("a", "b"), ("b", "c"), ("x", "y")], &[]);
    let ex = executor(2);
    let run = submit(
        &ex,
        &p,
        Arc::new(SumBody::new(&["b"], 100)),
        RetryPolicy::default(),
    );
    assert_eq!(wait(&ex, &run), RunState::Failed);
    assert_eq!(run.task_state(id(&p, "a")), TaskState::Completed);
    assert_eq!(run.task_state(id(&p, "b")), TaskState::Failed);
    assert_eq!(run.task_state(id(&p, "c")), TaskState::Skipped);
    assert_eq!(run.skip_cause(id(&p, "c")), Some(id(&p, "b")));
    assert_eq!(run.task_state(id(&p, "y")), TaskState::Completed);
    let attempts = run.attempts(id(&p, "b"));
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].error.as_ref().unwrap().to_string(), "b failed");
}

#[test]
fn retries_until_success_and_records_attempts() {
    let p = plan(&[("a", "b")], &[]);
    let ex = executor(1);
    let retry = RetryPolicy {
        retries: 3,
        delay: Duration::from_millis(1),
        ..Default::default()
    };
    let run = submit(&ex, &p, Arc::new(SumBody::new(&["b"], 2)), retry);
    assert_eq!(wait(&ex, &run), RunState::Completed);
    let attempts = run.attempts(id(&p, "b"));
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts[0].error.is_some() && attempts[1].error.is_some() && attempts[2].error.is_none()
    );
    assert!(attempts[1].started_us >= attempts[0].retry_at_us.unwrap());
}

#[test]
fn retries_exhausted_fail_the_task() {
    let p = plan(&[], &["a"]);
    let ex = executor(1);
    let retry = RetryPolicy {
        retries: 2,
        ..Default::default()
    };
    let run = submit(&ex, &p, Arc::new(SumBody::new(&["a"], 10)), retry);
    assert_eq!(wait(&ex, &run), RunState::Failed);
    assert_eq!(run.attempts(0).len(), 3);
}

#[test]
fn wide_and_long_graphs_complete() {
    let mut b: DagBuilder<()> = DagBuilder::new();
    let root = b.add_node("root", (), |_, _| true).unwrap();
    let mut prev = root;
    for i in 0..2000 {
        let n = b.add_node(&format!("w{i}"), (), |_, _| true).unwrap();
        b.add_edge(root, n).unwrap();
        let c = b.add_node(&format!("c{i}"), (), |_, _| true).unwrap();
        b.add_edge(prev, c).unwrap();
        prev = c;
    }
    let p = Arc::new(b.plan());
    let ex = executor(4);
    let body = Arc::new(SumBody::new(&[], 0));
    let run = submit(&ex, &p, body.clone(), RetryPolicy::default());
    assert_eq!(wait(&ex, &run), RunState::Completed);
    assert_eq!(body.calls.load(Ordering::SeqCst), p.len());
    assert_eq!(run.value(prev), Some(&2001));
}

/// A task that runs a whole graph on the same executor, as a Python task calling a sub-graph does.
struct NestedBody {
    ex: Mutex<Option<Arc<Executor<u64>>>>,
    inner: Arc<Plan>,
}

impl Body<u64> for NestedBody {
    fn call(&self, _cx: &CallContext<'_, u64>) -> Result<u64, TaskError> {
        let ex = self.ex.lock().unwrap().clone().unwrap();
        let run = submit(
            &ex,
            &self.inner,
            Arc::new(SumBody::new(&[], 0)),
            RetryPolicy::default(),
        );
        wait(&ex, &run);
        Ok(*run.value(id(&self.inner, "z")).unwrap())
    }
}

#[test]
fn nested_runs_on_a_single_worker_do_not_deadlock() {
    let ex = Arc::new(executor(1));
    let inner = plan(&[("y", "z")], &[]);
    let body = Arc::new(NestedBody {
        ex: Mutex::new(Some(ex.clone())),
        inner,
    });
    let outer = plan(&[], &["p", "q", "r"]);
    let run = submit(&ex, &outer, body.clone(), RetryPolicy::default());
    assert_eq!(wait(&ex, &run), RunState::Completed);
    assert_eq!(run.value(0), Some(&2));
    body.ex.lock().unwrap().take();
}

#[test]
fn cancel_stops_pending_tasks_and_is_idempotent() {
    let p = plan(&[("a", "b"), ("b", "c")], &[]);
    let ex = executor(1);
    // Retrying with a long delay keeps `a` waiting so the run can be cancelled mid-way.
    let retry = RetryPolicy {
        retries: 1,
        delay: Duration::from_secs(3600),
        ..Default::default()
    };
    let run = submit(&ex, &p, Arc::new(SumBody::new(&["a"], 1)), retry);
    while run.task_state(id(&p, "a")) != TaskState::Retrying {
        std::thread::yield_now();
    }
    ex.cancel(&run, CancelMode::Drain);
    ex.cancel(&run, CancelMode::Drain);
    assert_eq!(wait(&ex, &run), RunState::Cancelled);
    assert!(["a", "b", "c"]
        .iter()
        .all(|n| run.task_state(id(&p, n)) == TaskState::Cancelled));
    ex.cancel(&run, CancelMode::Drain);
    assert_eq!(run.state(), RunState::Cancelled);
}

/// Records the most tasks ever running at once (each stays 2 ms, so tasks that can overlap do).
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Body<u64> for Gauge {
    fn call(&self, _cx: &CallContext<'_, u64>) -> Result<u64, TaskError> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(2));
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(0)
    }
}

#[test]
fn pool_capacity_bounds_concurrency() {
    let names: Vec<String> = (0..24).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let p = plan(&[], &refs);
    let ex: Executor<u64> = Executor::new(
        Arc::new(NativeHost),
        vec![
            PoolConfig {
                name: String::new(),
                capacity: 3,
            },
            PoolConfig {
                name: "io".into(),
                capacity: 2,
            },
        ],
        Clock::System,
    );
    let gauge = Arc::new(Gauge::default());
    let specs = Arc::new(
        (0..24)
            .map(|i| TaskSpec {
                pool: i % 2,
                ..Default::default()
            })
            .collect::<Vec<_>>(),
    );
    let run = ex
        .submit(Submission {
            plan: p,
            specs,
            body: gauge.clone(),
            options: RunOptions::default(),
            done: Vec::new(),
            cancelled: Vec::new(),
        })
        .unwrap();
    assert_eq!(wait(&ex, &run), RunState::Completed);
    assert!(gauge.max.load(Ordering::SeqCst) <= 5);
    assert_eq!(ex.thread_count(), 5);
}

#[test]
fn empty_plan_completes_immediately_and_shutdown_is_idempotent() {
    let ex = executor(2);
    let run = submit(
        &ex,
        &Arc::new(Plan::default()),
        Arc::new(SumBody::new(&[], 0)),
        RetryPolicy::default(),
    );
    assert_eq!(run.state(), RunState::Completed);
    ex.shutdown();
    ex.shutdown();
}

/// Blocks `slow` until released (or interrupted); everything else returns at once.
struct Blocking {
    gate: Mutex<bool>,
    cv: std::sync::Condvar,
    interrupted: AtomicUsize,
    calls: AtomicUsize,
}

impl Blocking {
    fn new() -> Self {
        Blocking {
            gate: Mutex::new(false),
            cv: std::sync::Condvar::new(),
            interrupted: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        }
    }
    fn open(&self) {
        *self.gate.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl Body<u64> for Blocking {
    fn call(&self, cx: &CallContext<'_, u64>) -> Result<u64, TaskError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if cx.plan().name(cx.node) == "slow" {
            let mut g = self.gate.lock().unwrap();
            while !*g {
                g = self.cv.wait(g).unwrap();
            }
        }
        Ok(7)
    }
    fn interrupt(&self, _node: NodeId, _attempt: u32, _reason: &TaskError) {
        self.interrupted.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn timed_out_attempt_frees_its_slot_and_is_retried() {
    let p = plan(&[], &["slow", "fast"]);
    let ex = executor(1);
    let body = Arc::new(Blocking::new());
    let mut specs = vec![TaskSpec::default(); 2];
    let slow = id(&p, "slow") as usize;
    specs[slow].timeout = Some(Duration::from_millis(20));
    specs[slow].retry = RetryPolicy {
        retries: 1,
        ..Default::default()
    };
    specs[slow].retry_timeouts = true;
    let run = ex
        .submit(Submission {
            plan: p.clone(),
            specs: Arc::new(specs),
            body: body.clone(),
            options: RunOptions::default(),
            done: Vec::new(),
            cancelled: Vec::new(),
        })
        .unwrap();
    // With one worker stuck in `slow`, `fast` can only complete if the timeout freed the slot.
    assert_eq!(wait(&ex, &run), RunState::Failed);
    body.open();
    assert_eq!(run.task_state(id(&p, "fast")), TaskState::Completed);
    assert_eq!(run.task_state(id(&p, "slow")), TaskState::Failed);
    let attempts = run.attempts(id(&p, "slow"));
    assert_eq!(attempts.len(), 2);
    assert!(attempts
        .iter()
        .all(|a| matches!(a.error.as_deref(), Some(TaskError::Timeout(_)))));
    assert_eq!(body.interrupted.load(Ordering::SeqCst), 2);
}

#[test]
fn interrupting_cancel_ends_running_tasks_at_once() {
    let p = plan(&[("slow", "after")], &[]);
    let ex = executor(2);
    let body = Arc::new(Blocking::new());
    let run = submit(&ex, &p, body.clone(), RetryPolicy::default());
    while run.task_state(id(&p, "slow")) != TaskState::Running {
        std::thread::yield_now();
    }
    ex.cancel(&run, CancelMode::Interrupt);
    assert_eq!(wait(&ex, &run), RunState::Cancelled);
    assert_eq!(run.task_state(id(&p, "slow")), TaskState::Cancelled);
    assert_eq!(run.task_state(id(&p, "after")), TaskState::Cancelled);
    assert_eq!(body.interrupted.load(Ordering::SeqCst), 1);
    body.open();
}

#[test]
fn run_deadline_fails_the_run() {
    let p = plan(&[("slow", "after")], &["other"]);
    let ex = executor(2);
    let body = Arc::new(Blocking::new());
    let specs = Arc::new(vec![TaskSpec::default(); p.len()]);
    let options = RunOptions {
        timeout: Some(Duration::from_millis(20)),
        ..Default::default()
    };
    let run = ex
        .submit(Submission {
            plan: p.clone(),
            specs,
            body: body.clone(),
            options,
            done: Vec::new(),
            cancelled: Vec::new(),
        })
        .unwrap();
    assert_eq!(wait(&ex, &run), RunState::Failed);
    assert_eq!(run.task_state(id(&p, "slow")), TaskState::Failed);
    assert_eq!(run.task_state(id(&p, "after")), TaskState::Cancelled);
    assert_eq!(run.task_state(id(&p, "other")), TaskState::Completed);
    body.open();
}

struct Recorder(Mutex<Vec<String>>);
impl Observer for Recorder {
    fn event(&self, _run: u64, ev: &Event) {
        let what = match &ev.kind {
            EventKind::Started => "started",
            EventKind::Completed => "completed",
            EventKind::Retrying { .. } => "retrying",
            EventKind::Failed { .. } => "failed",
            EventKind::Skipped { .. } => "skipped",
            EventKind::Cancelled => "cancelled",
            EventKind::RunFinished { .. } => "run",
        };
        self.0
            .lock()
            .unwrap()
            .push(format!("{}:{what}", ev.node.map_or(-1, |n| n as i64)));
    }
}

#[test]
fn observers_see_every_transition_in_order() {
    let p = plan(&[("a", "b"), ("b", "c")], &[]);
    let ex = executor(1);
    let rec = Arc::new(Recorder(Mutex::new(Vec::new())));
    let specs = Arc::new(vec![
        TaskSpec {
            retry: RetryPolicy {
                retries: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        3
    ]);
    let options = RunOptions {
        observers: vec![rec.clone()],
        ..Default::default()
    };
    let run = ex
        .submit(Submission {
            plan: p.clone(),
            specs,
            body: Arc::new(SumBody::new(&["b"], 5)),
            options,
            done: Vec::new(),
            cancelled: Vec::new(),
        })
        .unwrap();
    assert_eq!(wait(&ex, &run), RunState::Failed);
    let (a, b, c) = (id(&p, "a"), id(&p, "b"), id(&p, "c"));
    let expect = vec![
        format!("{a}:started"),
        format!("{a}:completed"),
        format!("{b}:started"),
        format!("{b}:retrying"),
        format!("{b}:started"),
        format!("{b}:failed"),
        format!("{c}:skipped"),
        "-1:run".to_string(),
    ];
    assert_eq!(*rec.0.lock().unwrap(), expect);
}

/// A cancel that lands after a worker took a task but before it started it: the task does not
/// run, its attempt is closed as cancelled, and the worker's slot is given back exactly once (the
/// slot was once given back twice, and the pool then never ran anything again).
#[test]
fn a_cancel_between_taking_and_starting_a_task_gives_its_slot_back_once() {
    use std::sync::mpsc::channel;

    let p = plan(&[], &["taken-then-cancelled"]);
    let ex = executor(1);
    let (reached_tx, reached) = channel::<()>();
    let (go, go_rx) = channel::<()>();
    let (reached_tx, go_rx) = (Mutex::new(reached_tx), Mutex::new(go_rx));
    sched::tests_hook::set(Some(Arc::new(move |name: &str| {
        if name == "taken-then-cancelled" {
            reached_tx.lock().unwrap().send(()).unwrap();
            go_rx.lock().unwrap().recv().unwrap();
        }
    })));
    let body = Arc::new(SumBody::new(&[], 0));
    let run = submit(&ex, &p, body.clone(), RetryPolicy::default());
    reached.recv().unwrap();
    ex.cancel(&run, CancelMode::Interrupt);
    go.send(()).unwrap();
    assert_eq!(wait_at_most_30s(&ex, &run), RunState::Cancelled);
    sched::tests_hook::set(None);
    let n = id(&p, "taken-then-cancelled");
    assert_eq!(run.task_state(n), TaskState::Cancelled);
    let attempts = run.attempts(n);
    assert_eq!(attempts.len(), 1);
    assert!(attempts[0].ended_us > 0);
    assert!(matches!(
        attempts[0].error.as_deref(),
        Some(TaskError::Cancelled)
    ));
    // The one worker slot is free again: the next run runs (a leaked slot would leave it queued).
    let p2 = plan(&[("a", "b")], &[]);
    let run2 = submit(&ex, &p2, body.clone(), RetryPolicy::default());
    assert_eq!(wait_at_most_30s(&ex, &run2), RunState::Completed);
    assert_eq!(
        body.calls.load(Ordering::SeqCst),
        2,
        "the cancelled task never ran"
    );
}

/// Reports, once let go, whether the engine had given up on the attempt it was running.
struct Asks {
    started: Mutex<std::sync::mpsc::Sender<()>>,
    go: Mutex<std::sync::mpsc::Receiver<()>>,
    abandoned: Mutex<Vec<(String, bool)>>,
}

impl Body<u64> for Asks {
    fn call(&self, cx: &CallContext<'_, u64>) -> Result<u64, TaskError> {
        let name = cx.plan().name(cx.node).to_owned();
        if name == "held" {
            self.started.lock().unwrap().send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
        }
        self.abandoned
            .lock()
            .unwrap()
            .push((name, cx.is_abandoned()));
        Ok(0)
    }
}

/// A body that marks itself interruptible checks `is_abandoned` afterwards (the Python body
/// does): it must be true once the engine has given up on the running attempt, and only then.
#[test]
fn a_body_can_tell_that_its_attempt_was_abandoned() {
    use std::sync::mpsc::channel;

    let (started_tx, started) = channel::<()>();
    let (go, go_rx) = channel::<()>();
    let body = Arc::new(Asks {
        started: Mutex::new(started_tx),
        go: Mutex::new(go_rx),
        abandoned: Mutex::new(Vec::new()),
    });
    let ex = executor(2);
    let held = plan(&[], &["held"]);
    let run = submit(&ex, &held, body.clone(), RetryPolicy::default());
    started.recv().unwrap();
    ex.cancel(&run, CancelMode::Interrupt);
    go.send(()).unwrap();
    assert_eq!(wait_at_most_30s(&ex, &run), RunState::Cancelled);
    let free = plan(&[("free", "after")], &[]);
    let run = submit(&ex, &free, body.clone(), RetryPolicy::default());
    assert_eq!(wait_at_most_30s(&ex, &run), RunState::Completed);
    // The abandoned body reports on its own (replaced) thread, after its run has ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while body.abandoned.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let mut seen = body.abandoned.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("after".to_owned(), false),
            ("free".to_owned(), false),
            ("held".to_owned(), true)
        ]
    );
}

/// Runs a nested graph (its one task, "slow", waits for the gate) from inside its own task and
/// waits for it, as a task calling `Executor.run` does.
struct Nesting {
    ex: std::sync::OnceLock<Arc<Executor<u64>>>,
    inner: Arc<Blocking>,
    inner_runs: Mutex<Vec<Run<u64>>>,
}

impl Body<u64> for Nesting {
    fn call(&self, _cx: &CallContext<'_, u64>) -> Result<u64, TaskError> {
        let ex = self.ex.get().expect("executor set");
        let p = plan(&[], &["slow"]);
        let run = submit(ex, &p, self.inner.clone(), RetryPolicy::default());
        self.inner_runs.lock().unwrap().push(run.clone());
        while !ex.wait(&run, Duration::from_millis(100)) {}
        Ok(run.value(0).copied().unwrap_or(0))
    }
}

/// A task that is cancelled while it waits on a nested run has lent its slot to that run: the
/// cancel must not give the slot back a second time (the count went one below the truth, and
/// below zero when the nested task then ended).
#[test]
fn a_task_cancelled_while_waiting_on_a_nested_run_gives_its_slot_back_once() {
    let ex = Arc::new(executor(1));
    let body = Arc::new(Nesting {
        ex: std::sync::OnceLock::new(),
        inner: Arc::new(Blocking::new()),
        inner_runs: Mutex::new(Vec::new()),
    });
    let _ = body.ex.set(ex.clone());
    let p = plan(&[], &["outer"]);
    let run = submit(&ex, &p, body.clone(), RetryPolicy::default());
    // The outer task is waiting and its nested task is running (on the same, only worker).
    while body.inner.calls.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    ex.cancel(&run, CancelMode::Interrupt);
    assert_eq!(wait_at_most_30s(&ex, &run), RunState::Cancelled);
    body.inner.open();
    let inner = body.inner_runs.lock().unwrap()[0].clone();
    assert_eq!(wait_at_most_30s(&ex, &inner), RunState::Completed);
    // The pool has its one slot, neither lost nor doubled: two one-task runs in turn complete,
    // and a run of two independent tasks never has both running at once.
    let counting = Arc::new(Gauge::default());
    for _ in 0..2 {
        let r = submit(
            &ex,
            &plan(&[], &["a", "b"]),
            counting.clone(),
            RetryPolicy::default(),
        );
        assert_eq!(wait_at_most_30s(&ex, &r), RunState::Completed);
    }
    assert_eq!(counting.max.load(Ordering::SeqCst), 1);
}

/// Like [`wait`], but a run that has not ended after 30 s fails the test instead of hanging it
/// (what a lost worker slot or a dead worker looks like).
fn wait_at_most_30s(ex: &Executor<u64>, run: &Run<u64>) -> RunState {
    for _ in 0..300 {
        if ex.wait(run, Duration::from_millis(100)) {
            return run.state();
        }
    }
    panic!("the run did not end: a worker slot was lost or a worker died");
}

#[test]
fn threads_replaced_after_timeouts_are_released_when_they_return() {
    // Each timed-out attempt leaves its thread stuck in the task and starts a replacement; once
    // the stuck threads return they must be gone for good, not kept (joinable, with their stacks)
    // until shutdown: a long-lived executor would otherwise grow with every timeout.
    let p = plan(&[], &["slow"]);
    let ex = executor(1);
    let body = Arc::new(Blocking::new());
    let mut specs = vec![TaskSpec::default(); 1];
    specs[0].timeout = Some(Duration::from_millis(5));
    let specs = Arc::new(specs);
    for _ in 0..6 {
        let run = ex
            .submit(Submission {
                plan: p.clone(),
                specs: specs.clone(),
                body: body.clone(),
                options: RunOptions::default(),
                done: Vec::new(),
                cancelled: Vec::new(),
            })
            .unwrap();
        assert_eq!(wait_at_most_30s(&ex, &run), RunState::Failed);
    }
    let before = ex.debug_counts();
    assert_eq!(before.stuck, 6, "{before:?}");
    body.open();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = ex.debug_counts();
        // Only the live worker is left (a retiring thread drops its handle just after it stops
        // counting as stuck or exiting, so the three are awaited together).
        if c.stuck == 0 && c.exiting == 0 && c.handles == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "threads never retired: {c:?}"
        );
        std::thread::yield_now();
    }
    assert_eq!(ex.thread_count(), 1);
}
