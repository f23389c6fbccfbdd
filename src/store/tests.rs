//! Tests of the store through its public verbs, on real files and in memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::*;

/// A fresh path under the temp dir; the directory is removed when the value drops.
pub(super) struct TempDb {
    pub(super) dir: PathBuf,
}

impl TempDb {
    pub(super) fn new(tag: &str) -> TempDb {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tm-store-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        TempDb { dir }
    }
    pub(super) fn path(&self) -> PathBuf {
        self.dir.join("sub").join("tm.db")
    }
    pub(super) fn url(&self) -> String {
        format!("sqlite:///{}", self.path().display())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn open(url: &str) -> Store {
    match Store::open(url) {
        Ok(s) => s,
        Err(e) => panic!("open {url}: {e}"),
    }
}

pub(super) fn run(id: &str, graph: &str, created_us: i64, tasks: &[&str]) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        graph: graph.into(),
        state: "running".into(),
        trigger: "manual".into(),
        scheduled_us: Some(created_us - 1),
        created_us,
        started_us: Some(created_us),
        config_json: Some(r#"{"k": 1}"#.into()),
        meta_json: None,
        tasks: tasks
            .iter()
            .enumerate()
            .map(|(i, name)| TaskFact {
                node: i as u32,
                name: name.to_string(),
                task_key: Some(format!("key-{name}")),
                inputs_digest: Some("d".into()),
                seed: Some(42),
                code_version: Some("v1".into()),
            })
            .collect(),
    }
}

pub(super) fn ok<T>(r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| panic!("store error: {e}"))
}

fn every_verb(store: &Store) {
    ok(store.begin_run(run("r1", "etl", 100, &["extract", "load", "report"])));
    ok(store.task_started("r1", 0, 1, 110));
    let boom = ErrorInfo {
        type_name: "ValueError".into(),
        message: "boom".into(),
        traceback: Some("Traceback ...".into()),
    };
    ok(store.task_ended("r1", 0, 1, 120, "failed", Some(boom.clone()), Some(150)));
    ok(store.task_started("r1", 0, 2, 150));
    ok(store.append_log("r1", Some(0), 151, "INFO", "extracting"));
    ok(store.task_ended("r1", 0, 2, 160, "completed", None, None));
    ok(store.save_result("r1", 0, "pickle", vec![1, 2, 3]));
    ok(store.task_started("r1", 1, 1, 170));
    ok(store.task_ended("r1", 1, 1, 180, "failed", Some(boom.clone()), None));
    ok(store.task_status("r1", 2, "skipped", 181));
    ok(store.append_log("r1", None, 182, "WARNING", "run failed"));
    ok(store.finish_run("r1", "failed", 190));
    ok(store.upsert_graph(GraphRecord {
        name: "etl".into(),
        schedule: Some("0 * * * *".into()),
        tz: Some("UTC".into()),
        created_us: 1,
        updated_us: 1,
        last_fire_us: Some(99),
        meta_json: None,
    }));
    ok(store.upsert_graph(GraphRecord {
        name: "etl".into(),
        schedule: Some("*/5 * * * *".into()),
        created_us: 50,
        updated_us: 50,
        ..Default::default()
    }));
    ok(store.record_event(Some("r1"), 191, "missed_fire", Some(r#"{"n": 2}"#)));
    ok(store.record_event(None, 192, "scheduler_started", None));
    ok(store.flush());

    let d = ok(store.get_run("r1")).expect("run r1");
    assert_eq!(d.run.state, "failed");
    assert_eq!(d.run.ended_us, Some(190));
    assert_eq!(d.run.scheduled_us, Some(99));
    assert_eq!(d.config_json.as_deref(), Some(r#"{"k": 1}"#));
    assert_eq!(d.tasks.len(), 3);
    let t0 = &d.tasks[0];
    assert_eq!(t0.fact.name, "extract");
    assert_eq!(t0.fact.task_key.as_deref(), Some("key-extract"));
    assert_eq!(t0.fact.seed, Some(42));
    assert_eq!(
        (t0.status.as_str(), t0.attempt, t0.started_us, t0.ended_us),
        ("completed", 2, Some(110), Some(160))
    );
    assert_eq!(t0.error, None);
    assert_eq!(d.tasks[1].status, "failed");
    assert_eq!(d.tasks[1].error.as_ref(), Some(&boom));
    assert_eq!(
        (d.tasks[2].status.as_str(), d.tasks[2].ended_us),
        ("skipped", Some(181))
    );

    let by_name = ok(store.attempts("r1", "extract"));
    assert_eq!(by_name, ok(store.attempts("r1", 0u32)));
    assert_eq!(by_name.len(), 2);
    assert_eq!(by_name[0].status, "failed");
    assert_eq!(by_name[0].retry_at_us, Some(150));
    assert_eq!(by_name[0].error.as_ref(), Some(&boom));
    assert_eq!(
        (by_name[1].started_us, by_name[1].ended_us),
        (Some(150), Some(160))
    );
    assert!(ok(store.attempts("r1", "nope")).is_empty());

    let logs = ok(store.logs("r1", None));
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].task.as_deref(), Some("extract"));
    assert_eq!(logs[1].node, None);
    assert_eq!(
        ok(store.logs("r1", Some(TaskRef::Name("extract")))).len(),
        1
    );
    assert_eq!(ok(store.logs("r1", Some(TaskRef::Node(1)))).len(), 0);

    assert_eq!(
        ok(store.results("r1")),
        vec![(0, "pickle".to_string(), vec![1, 2, 3])]
    );
    assert_eq!(
        ok(store.result("r1", 0)),
        Some(("pickle".to_string(), std::sync::Arc::from(&[1u8, 2, 3][..])))
    );
    assert_eq!(ok(store.result("r1", 1)), None);

    let g = ok(store.graph("etl")).expect("graph");
    assert_eq!(g.schedule.as_deref(), Some("*/5 * * * *"));
    assert_eq!(
        (g.created_us, g.updated_us, g.last_fire_us),
        (1, 50, Some(99))
    );
    assert_eq!(g.tz, None);
    assert_eq!(ok(store.graphs()).len(), 1);
    assert_eq!(ok(store.graph("other")), None);

    let ev = ok(store.events(10));
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0].kind, "scheduler_started");
    assert_eq!(ev[1].run_id.as_deref(), Some("r1"));
    assert_eq!(ok(store.events(1)).len(), 1);
    assert_eq!(ok(store.get_run("missing")), None);
}

#[test]
fn every_verb_round_trips_in_memory() {
    let store = open(":memory:");
    assert_eq!(store.location(), ":memory:");
    every_verb(&store);
    ok(store.close());
}

#[test]
fn every_verb_round_trips_on_disk_and_survives_reopen() {
    let tmp = TempDb::new("disk");
    {
        let store = open(&tmp.url());
        assert_eq!(store.location(), tmp.path().display().to_string());
        every_verb(&store);
    }
    let store = open(tmp.path().to_str().expect("utf-8 path"));
    assert_eq!(ok(store.get_run("r1")).map(|r| r.tasks.len()), Some(3));
    let mode: String = rusqlite::Connection::open(tmp.path())
        .and_then(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn memory_stores_are_private() {
    let a = open("sqlite://:memory:");
    let b = open(":memory:");
    ok(a.begin_run(run("only-a", "g", 1, &["t"])));
    ok(a.flush());
    ok(b.flush());
    assert_eq!(ok(a.list_runs(&RunFilter::default())).len(), 1);
    assert!(ok(b.list_runs(&RunFilter::default())).is_empty());
}

#[test]
fn list_runs_filters_newest_first_and_unfinished() {
    list_and_filter(open(":memory:"));
}

fn list_and_filter(store: Store) {
    for i in 0..6 {
        let graph = if i % 2 == 0 { "even" } else { "odd" };
        ok(store.begin_run(run(&format!("r{i}"), graph, 10 + i, &["t"])));
    }
    ok(store.finish_run("r0", "completed", 50));
    ok(store.finish_run("r1", "failed", 50));
    ok(store.flush());
    let ids = |f: RunFilter| -> Vec<String> {
        ok(store.list_runs(&f))
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    };
    assert_eq!(
        ids(RunFilter::default()),
        ["r5", "r4", "r3", "r2", "r1", "r0"]
    );
    let even = RunFilter {
        graph: Some("even".into()),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(ids(even), ["r4", "r2"]);
    let failed = RunFilter {
        state: Some("failed".into()),
        ..Default::default()
    };
    assert_eq!(ids(failed), ["r1"]);
    let both = RunFilter {
        graph: Some("odd".into()),
        state: Some("running".into()),
        limit: None,
        ..Default::default()
    };
    assert_eq!(ids(both), ["r5", "r3"]);
    // Keyset pages: after r4 come r3 and r2, and after r1 only r0.
    let page = |id: &str| RunFilter {
        before: Some((
            ok(store.list_runs(&RunFilter::default()))
                .into_iter()
                .find(|r| r.run_id == id)
                .map(|r| r.created_us)
                .unwrap_or_default(),
            id.to_string(),
        )),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(ids(page("r4")), ["r3", "r2"]);
    assert_eq!(ids(page("r1")), ["r0"]);
    let unfinished: Vec<_> = ok(store.unfinished_runs())
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(unfinished, ["r2", "r3", "r4", "r5"]);
}

#[test]
fn group_commit_stores_everything_enqueued_before_one_flush() {
    let tmp = TempDb::new("group");
    group_commit(open(&tmp.url()));
}

fn group_commit(store: Store) {
    let n = 3_000u32;
    let names: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    ok(store.begin_run(run("big", "g", 1, &refs)));
    for node in 0..n {
        ok(store.task_started("big", node, 1, 10));
        ok(store.task_ended("big", node, 1, 20, "completed", None, None));
        ok(store.append_log("big", Some(node), 15, "INFO", "x"));
    }
    ok(store.flush());
    let d = ok(store.get_run("big")).expect("run");
    assert_eq!(d.tasks.len(), n as usize);
    assert!(d
        .tasks
        .iter()
        .all(|t| t.status == "completed" && t.attempt == 1));
    assert_eq!(ok(store.logs("big", None)).len(), n as usize);
}

#[test]
fn a_refused_write_is_reported_and_the_rest_of_its_batch_kept() {
    refused_write(open(":memory:"));
}

fn refused_write(store: Store) {
    ok(store.begin_run(run("r", "g", 1, &["a", "b"])));
    ok(store.task_started("ghost", 0, 1, 5));
    ok(store.task_started("r", 0, 1, 5));
    ok(store.finish_run("ghost", "completed", 6));
    ok(store.begin_run(run("r", "g", 1, &["a"])));
    ok(store.task_started("r", 1, 1, 7));
    match store.flush() {
        Err(StoreError::Rejected { op, run_id, reason }) => {
            assert_eq!((op, run_id.as_deref()), ("task_started", Some("ghost")));
            assert!(reason.contains("no such run"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    // The latest error stays visible; the next flush starts clean.
    match store.last_error() {
        Some(StoreError::Rejected { op, .. }) => assert_eq!(op, "begin_run"),
        other => panic!("expected the duplicate begin_run, got {other:?}"),
    }
    ok(store.flush());
    let d = ok(store.get_run("r")).expect("run");
    assert_eq!(d.tasks.len(), 2);
    assert_eq!(d.tasks[0].status, "running");
    assert_eq!(d.tasks[1].status, "running");
}

#[test]
fn a_batch_that_cannot_be_written_is_reported_with_its_size_and_the_store_recovers() {
    let tmp = TempDb::new("full");
    let store = open(&tmp.url());
    ok(store.begin_run(run("r", "g", 1, &["a"])));
    ok(store.flush());
    let pages: i64 = rusqlite::Connection::open(tmp.path())
        .and_then(|c| c.query_row("PRAGMA page_count", [], |r| r.get(0)))
        .expect("page count");
    // A database that may not grow behaves as a full disk would (SQLITE_FULL).
    ok(store
        .backend
        .submit(Write::Raw(format!("PRAGMA max_page_count = {pages}"))));
    ok(store.flush());
    ok(store.save_result("r", 0, "bytes", vec![7; 64 * 1024]));
    ok(store.append_log("r", Some(0), 2, "INFO", "after"));
    match store.flush() {
        Err(StoreError::WriteFailed { lost, source, .. }) => {
            // 2 if both writes were in one batch, 1 if the log line got a batch of its own.
            assert!(lost >= 1);
            assert_eq!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DiskFull)
            );
        }
        other => panic!("expected WriteFailed, got {other:?}"),
    }
    assert!(matches!(
        store.last_error(),
        Some(StoreError::WriteFailed { .. })
    ));
    assert_eq!(ok(store.results("r")), vec![]);
    ok(store
        .backend
        .submit(Write::Raw("PRAGMA max_page_count = 1073741823".into())));
    ok(store.save_result("r", 0, "bytes", vec![7; 64 * 1024]));
    ok(store.flush());
    assert_eq!(ok(store.results("r")).len(), 1);
}

#[test]
fn two_stores_on_one_file_write_concurrently_without_locked_errors() {
    let tmp = TempDb::new("two");
    let url = tmp.url();
    // Both open at once too: the migration must happen exactly once.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let url = url.clone();
            std::thread::spawn(move || -> Result<(), StoreError> {
                let store = Store::open(&url)?;
                for r in 0..40 {
                    let id = format!("w{w}-r{r}");
                    store.begin_run(run(&id, "g", r, &["a", "b", "c"]))?;
                    for node in 0..3 {
                        store.task_started(&id, node, 1, r)?;
                        store.task_ended(&id, node, 1, r + 1, "completed", None, None)?;
                    }
                    store.finish_run(&id, "completed", r + 2)?;
                    // Many small batches: maximal contention for the write lock.
                    store.flush()?;
                }
                store.close()
            })
        })
        .collect();
    for w in writers {
        match w.join() {
            Ok(result) => ok(result),
            Err(_) => panic!("writer thread panicked"),
        }
    }
    let store = open(&url);
    let runs = ok(store.list_runs(&RunFilter::default()));
    assert_eq!(runs.len(), 80);
    assert!(runs.iter().all(|r| r.state == "completed"));
}

#[test]
fn readers_read_while_the_writer_writes() {
    let tmp = TempDb::new("rw");
    read_while_writing(open(&tmp.url()));
}

#[test]
fn readers_read_while_the_writer_writes_in_memory() {
    // An in-memory database has no WAL: a commit briefly excludes readers, and both sides wait.
    read_while_writing(open(":memory:"));
}

fn read_while_writing(store: Store) {
    let store = Arc::new(store);
    ok(store.begin_run(run("r", "g", 1, &["a"])));
    ok(store.flush());
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || -> Result<(), StoreError> {
            // Many commits, so the reader meets the writer mid-way.
            for chunk in 0..40 {
                for i in 0..500 {
                    store.append_log("r", Some(0), chunk * 500 + i, "INFO", "line")?;
                }
                store.flush()?;
            }
            Ok(())
        })
    };
    // Each read sees a committed prefix of the log, growing over time.
    let mut seen = 0;
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let n = ok(store.logs("r", None)).len();
        assert!(n >= seen, "a reader went back in time: {n} < {seen}");
        seen = n;
        reads += 1;
    }
    match writer.join() {
        Ok(result) => ok(result),
        Err(_) => panic!("writer panicked"),
    }
    assert_eq!(ok(store.logs("r", None)).len(), 20_000);
}

#[test]
fn prune_keeps_recent_and_unfinished_runs() {
    prune_runs(open(":memory:"));
}

fn prune_runs(store: Store) {
    const DAY: i64 = 86_400_000_000;
    let now = 100 * DAY;
    for i in 0..5i64 {
        let id = format!("a{i}");
        ok(store.begin_run(run(&id, "a", now - (10 - i) * DAY, &["t"])));
        ok(store.save_result(&id, 0, "bytes", vec![0; 10]));
        ok(store.append_log(&id, Some(0), 1, "INFO", "x"));
        ok(store.task_started(&id, 0, 1, 1));
        ok(store.finish_run(&id, "completed", now - (10 - i) * DAY));
        ok(store.record_event(Some(&id), 1, "fired", None));
    }
    ok(store.begin_run(run("b-old", "b", now - 30 * DAY, &["t"])));
    ok(store.finish_run("b-old", "failed", now - 30 * DAY));
    ok(store.begin_run(run("b-running", "b", now - 40 * DAY, &["t"])));
    ok(store.record_event(None, now - 40 * DAY, "old", None));
    ok(store.record_event(None, now, "new", None));
    ok(store.flush());

    // Keep the newest 3 finished runs of each graph: a0 and a1 go.
    ok(store.prune(Some(3), None, now));
    ok(store.flush());
    let ids = || -> Vec<String> {
        let mut v: Vec<_> = ok(store.list_runs(&RunFilter::default()))
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids(), ["a2", "a3", "a4", "b-old", "b-running"]);
    assert_eq!(ok(store.results("a0")), vec![]);
    assert_eq!(ok(store.logs("a1", None)), vec![]);
    assert_eq!(ok(store.events(100)).len(), 5);

    // Then drop what ended more than 7 days ago: a2 (8 days) and b-old; the running one stays.
    ok(store.prune(None, Some(7), now));
    ok(store.flush());
    assert_eq!(ids(), ["a3", "a4", "b-running"]);
    let kinds: Vec<_> = ok(store.events(100)).into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["new", "fired", "fired"]);
    ok(store.prune(None, None, now));
    ok(store.flush());
    assert_eq!(ids().len(), 3);

    // Claimed fires older than the cutoff go; a recent one still guards its tick.
    let fire = |id: &str, scheduled_us: i64, now_us: i64| FireClaim {
        run_id: id.into(),
        graph: "c".into(),
        trigger: "schedule".into(),
        scheduled_us,
        now_us,
        owner: "host:1".into(),
        meta_json: None,
        config_json: None,
    };
    assert!(ok(store.claim_fire(&fire("c-old", 1, now - 20 * DAY))));
    assert!(ok(store.claim_fire(&fire("c-new", 2, now))));
    ok(store.prune(None, Some(7), now));
    ok(store.flush());
    assert!(ok(store.claim_fire(&fire("c-old-again", 1, now))));
    assert!(!ok(store.claim_fire(&fire("c-new-again", 2, now))));
}

#[test]
fn close_is_idempotent_and_later_verbs_fail() {
    let tmp = TempDb::new("close");
    let store = open(&tmp.url());
    ok(store.begin_run(run("r", "g", 1, &["a"])));
    ok(store.close());
    ok(store.close());
    assert!(matches!(
        store.task_started("r", 0, 1, 1),
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.flush(), Err(StoreError::Closed)));
    assert!(matches!(store.get_run("r"), Err(StoreError::Closed)));
    // Close committed the queued write and released the file: the WAL is checkpointed away.
    assert!(!tmp.path().with_extension("db-wal").exists());
    drop(store);
    let again = open(&tmp.url());
    assert!(ok(again.get_run("r")).is_some());
}

#[test]
fn close_reports_the_first_unflushed_error() {
    let store = open(":memory:");
    ok(store.finish_run("ghost", "completed", 1));
    assert!(matches!(store.close(), Err(StoreError::Rejected { .. })));
    ok(store.close());
}

fn transitions(store: &Store, pairs: u32, tasks_per_run: u32) -> f64 {
    let runs = pairs / tasks_per_run;
    let names: Vec<String> = (0..tasks_per_run).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for r in 0..runs {
        ok(store.begin_run(run(&format!("bench-{r}"), "bench", i64::from(r), &refs)));
    }
    ok(store.flush());
    let start = Instant::now();
    for r in 0..runs {
        let id = format!("bench-{r}");
        for node in 0..tasks_per_run {
            ok(store.task_started(&id, node, 1, 1));
            ok(store.task_ended(&id, node, 1, 2, "completed", None, None));
        }
    }
    ok(store.flush());
    f64::from(2 * runs * tasks_per_run) / start.elapsed().as_secs_f64()
}

#[test]
fn many_transitions_commit() {
    let tmp = TempDb::new("smoke");
    let store = open(&tmp.url());
    let rate = transitions(&store, 5_000, 100);
    assert!(rate > 0.0);
    let d = ok(store.get_run("bench-49")).expect("run");
    assert!(d.tasks.iter().all(|t| t.status == "completed"));
}

/// `cargo test --release --no-default-features --lib store::tests::bench -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_transitions_per_second() {
    let tmp = TempDb::new("bench");
    let store = open(&tmp.url());
    let rate = transitions(&store, 100_000, 1_000);
    println!("file: {rate:.0} transitions committed per second (100k started+ended pairs)");
    let mem = open(":memory:");
    let rate = transitions(&mem, 100_000, 1_000);
    println!("memory: {rate:.0} transitions committed per second");
    for _ in 0..3 {
        let us = whole_runs(&store, 5, 10_000);
        println!("file: {us:.2} us per task for a whole run (facts, states, attempts, run end)");
    }
}

/// Microseconds per task to record `runs` whole runs of `tasks` tasks each (begin, a start and an
/// end per task, the run's end), committed; run ids are as long as the executor's (UUIDs).
fn whole_runs(store: &Store, runs: u32, tasks: u32) -> f64 {
    let names: Vec<String> = (0..tasks).map(|i| format!("t{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let start = Instant::now();
    for r in 0..runs {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{n:08x}-0000-4000-8000-{r:012x}");
        let mut rec = run(&id, "bench", i64::from(r), &[]);
        ok(store.begin_run(rec.clone()));
        rec.tasks = run(&id, "bench", 0, &refs).tasks;
        ok(store.add_tasks(&id, rec.tasks));
        for node in 0..tasks {
            ok(store.task_started(&id, node, 1, 1));
            ok(store.task_ended(&id, node, 1, 2, "completed", None, None));
        }
        ok(store.finish_run(&id, "completed", 3));
    }
    ok(store.flush());
    start.elapsed().as_secs_f64() * 1e6 / f64::from(runs * tasks)
}

#[test]
fn store_is_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    shared::<Store>();
    shared::<StoreError>();
}

#[test]
fn results_are_served_from_memory_within_the_byte_budget() {
    let tmp = TempDb::new("result-cache");
    let store = open(&tmp.url());
    ok(store.begin_run(run("r", "g", 1, &["a", "b", "c"])));
    ok(store.save_result("r", 0, "pickle", vec![7; 100]));
    ok(store.flush());
    // Written here: read back without the database. Proven by deleting the row behind its back.
    let side = rusqlite::Connection::open(tmp.path()).expect("side connection");
    side.execute("DELETE FROM task_results", [])
        .expect("delete");
    let (format, data) = ok(store.result("r", 0)).expect("cached");
    assert_eq!((format.as_str(), data.len()), ("pickle", 100));
    assert_eq!(store.cache_info().hits, 1);
    // Not cached: read from the database once, then from memory.
    side.execute(
        "INSERT INTO task_results (rid, node, format, data) \
         SELECT rid, 1, 'json', x'3432' FROM runs WHERE run_id = 'r'",
        [],
    )
    .expect("insert");
    assert_eq!(
        ok(store.result("r", 1)).map(|r| r.1.to_vec()),
        Some(b"42".to_vec())
    );
    side.execute("DELETE FROM task_results", [])
        .expect("delete");
    assert_eq!(
        ok(store.result("r", 1)).map(|r| r.1.to_vec()),
        Some(b"42".to_vec())
    );
    let info = store.cache_info();
    assert_eq!((info.hits, info.misses, info.entries), (2, 1, 2));
    // Bounded: a budget smaller than both evicts the older one.
    let one = store.cache_info().bytes / 2 + 10;
    store.set_cache_capacity(one);
    let info = store.cache_info();
    assert!(
        info.bytes <= one && info.entries == 1 && info.evictions >= 1,
        "{info:?}"
    );
    // A miss on a result that is nowhere is None, and is not remembered.
    assert_eq!(ok(store.result("r", 2)), None);
    assert_eq!(store.cache_info().entries, 1);
}

#[test]
fn clean_first_attempts_are_implicit_rows_and_read_back_whole() {
    let tmp = TempDb::new("implicit-attempts");
    let store = open(&tmp.url());
    ok(store.begin_run(run("r", "g", 1, &["clean", "flaky", "again"])));
    // One batch: clean completes at once; flaky fails, retries and completes.
    ok(store.task_started("r", 0, 1, 10));
    ok(store.task_ended("r", 0, 1, 11, "completed", None, None));
    let boom = ErrorInfo {
        type_name: "KeyError".into(),
        message: "k".into(),
        traceback: None,
    };
    ok(store.task_started("r", 1, 1, 10));
    ok(store.task_ended("r", 1, 1, 12, "failed", Some(boom), Some(13)));
    ok(store.task_started("r", 1, 2, 13));
    ok(store.task_ended("r", 1, 2, 14, "completed", None, None));
    ok(store.task_started("r", 2, 1, 20));
    ok(store.task_ended("r", 2, 1, 21, "completed", None, None));
    ok(store.flush());
    let side = rusqlite::Connection::open(tmp.path()).expect("side connection");
    let rows = |node: u32| -> i64 {
        side.query_row(
            "SELECT count(*) FROM attempts WHERE node = ?1",
            [node],
            |r| r.get(0),
        )
        .expect("count")
    };
    assert_eq!(
        (rows(0), rows(1), rows(2)),
        (0, 2, 0),
        "clean attempts have no row"
    );
    let clean = ok(store.attempts("r", "clean"));
    assert_eq!(clean.len(), 1);
    assert_eq!(
        (clean[0].attempt, clean[0].started_us, clean[0].ended_us),
        (1, Some(10), Some(11))
    );
    assert_eq!(clean[0].status, "completed");
    let flaky = ok(store.attempts("r", 1u32));
    assert_eq!(
        flaky
            .iter()
            .map(|a| (a.attempt, a.status.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "failed"), (2, "completed")]
    );
    // "again" runs a second time (a resume re-running it): its first attempt becomes a row
    // before the second one changes the task's state, so the history keeps both.
    ok(store.task_status("r", 2, "pending", 30));
    ok(store.task_started("r", 2, 2, 31));
    ok(store.task_ended("r", 2, 2, 32, "completed", None, None));
    ok(store.flush());
    let again = ok(store.attempts("r", "again"));
    assert_eq!(
        again
            .iter()
            .map(|a| (a.attempt, a.started_us, a.ended_us))
            .collect::<Vec<_>>(),
        vec![(1, Some(20), Some(21)), (2, Some(31), Some(32))]
    );
}

/// A store on a fresh schema of the PostgreSQL database that `TM_TEST_PG_URL` names, or `None`
/// (the test passes vacuously) when it is unset: `cargo test` needs no server, and pytest runs
/// these tests against its real one (tests/test_pg_store.py).
fn pg_store() -> Option<Store> {
    pg_schema_url().map(|url| open(&url))
}

/// The URL of a fresh schema in the `TM_TEST_PG_URL` database, if that is set.
pub(super) fn pg_schema_url() -> Option<String> {
    static N: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("TM_TEST_PG_URL").ok()?;
    let schema = format!(
        "tm_rust_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = postgres::Client::connect(&url, postgres::NoTls).expect("connect");
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .expect("create schema");
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-csearch_path%3D{schema}"))
}

#[test]
fn postgres_every_verb_and_reopen() {
    let Some(store) = pg_store() else { return };
    assert!(
        store.location().starts_with("postgres"),
        "{}",
        store.location()
    );
    every_verb(&store);
    let url = store.location().to_string();
    ok(store.close());
    // Reopening migrates nothing and sees the data.
    let again = open(&url);
    assert_eq!(ok(again.get_run("r1")).map(|r| r.tasks.len()), Some(3));
}

#[test]
fn postgres_list_and_filter() {
    if let Some(store) = pg_store() {
        list_and_filter(store);
    }
}

#[test]
fn postgres_group_commit() {
    if let Some(store) = pg_store() {
        group_commit(store);
    }
}

#[test]
fn postgres_refused_write() {
    if let Some(store) = pg_store() {
        refused_write(store);
    }
}

#[test]
fn postgres_prune() {
    if let Some(store) = pg_store() {
        prune_runs(store);
    }
}

#[test]
fn postgres_readers_read_while_the_writer_writes() {
    if let Some(store) = pg_store() {
        read_while_writing(store);
    }
}

#[test]
fn pauses_and_trigger_requests_are_shared_by_stores_on_one_file() {
    let tmp = TempDb::new("control");
    let (a, b) = (open(&tmp.url()), open(&tmp.url()));
    assert!(ok(a.pause("nightly", 10, "host:1")));
    assert!(!ok(b.pause("nightly", 20, "host:2")));
    let paused = ok(b.pauses());
    assert_eq!(
        paused,
        [Pause {
            graph: "nightly".into(),
            paused_us: 10,
            owner: "host:1".into()
        }]
    );
    assert_eq!(ok(b.unpause("nightly")), Some(10));
    assert_eq!(ok(a.unpause("nightly")), None);
    assert!(ok(a.pauses()).is_empty());

    let first = ok(a.request_trigger("g", r#"{"n":1}"#, 30, "host:1"));
    let second = ok(b.request_trigger("g", "{}", 31, "host:2"));
    ok(a.request_trigger("other", "{}", 32, "host:1"));
    assert!(second > first);
    let mut graphs = ok(b.triggered_graphs());
    graphs.sort();
    assert_eq!(graphs, ["g", "other"]);
    // Each request goes to exactly one claimer.
    let claimed = ok(b.claim_triggers("g", 40, "host:2"));
    assert_eq!(
        claimed,
        [
            (first, r#"{"n":1}"#.to_string()),
            (second, "{}".to_string())
        ]
    );
    assert!(ok(a.claim_triggers("g", 41, "host:1")).is_empty());
    assert_eq!(ok(a.triggered_graphs()), ["other"]);
}

#[test]
fn run_ids_are_found_by_prefix_and_like_wildcards_are_literal() {
    let tmp = TempDb::new("prefix");
    let store = open(&tmp.url());
    for id in ["abc1", "abc2", "abd0", "a%c9", "a_c8"] {
        ok(store.begin_run(run(id, "g", 1, &["t"])));
    }
    ok(store.flush());
    assert_eq!(ok(store.run_ids_with_prefix("abc", 10)), ["abc1", "abc2"]);
    assert_eq!(ok(store.run_ids_with_prefix("abc", 1)), ["abc1"]);
    assert_eq!(ok(store.run_ids_with_prefix("abd", 10)), ["abd0"]);
    assert_eq!(ok(store.run_ids_with_prefix("a%", 10)), ["a%c9"]);
    assert_eq!(ok(store.run_ids_with_prefix("a_", 10)), ["a_c8"]);
    assert!(ok(store.run_ids_with_prefix("b", 10)).is_empty());
    assert_eq!(ok(store.run_ids_with_prefix("", 10)).len(), 5);
}
