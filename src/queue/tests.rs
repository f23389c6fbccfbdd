//! The queue's behaviour, checked on both backends with a hand-driven clock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;

use super::*;

/// A fresh directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tm-queue-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const HOUR_US: i64 = 3_600_000_000;
const T0: i64 = 1_750_000_000_000_000;

fn opts(clock: &Clock) -> Options {
    Options {
        lock_timeout: Duration::from_secs(5),
        lease: Duration::from_secs(3600),
        clock: clock.clone(),
    }
}

/// Runs `f` against a JSON and an SQLite store in `dir`, and against PostgreSQL when
/// `TM_TEST_PG_URL` names a database (pytest sets it: tests/test_pg_queue.py).
fn both(f: impl Fn(&mut dyn Backend, &Clock, &Path)) {
    for name in ["state.json", "state.db"] {
        let dir = TempDir::new();
        let clock = Clock::manual(T0);
        let path = dir.join(name);
        let mut b = open(path.to_str().unwrap(), opts(&clock)).unwrap();
        f(b.as_mut(), &clock, &path);
    }
    if let Some(url) = pg_url() {
        let clock = Clock::manual(T0);
        let mut b = open(&url, opts(&clock)).unwrap();
        f(b.as_mut(), &clock, Path::new(&url));
    }
}

/// A URL of a fresh schema in the `TM_TEST_PG_URL` database, if set.
fn pg_url() -> Option<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let url = std::env::var("TM_TEST_PG_URL").ok()?;
    let schema = format!(
        "tm_queue_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    Some(format!("{url}{sep}options=-csearch_path%3D{schema}"))
}

#[test]
fn postgres_runs_the_shared_queue_tests() {
    // A marker for pytest: the tests above ran on PostgreSQL too when this one ran with a URL.
    if let Some(url) = pg_url() {
        assert!(matches!(Target::parse(&url), Ok(Target::Postgres(_))));
    }
}

fn task(ty: &str, data: &str) -> NewTask {
    NewTask::new(ty, data.as_bytes().to_vec())
}

fn create1(b: &mut dyn Backend, t: NewTask) -> String {
    b.create(&[t]).unwrap().remove(0)
}

fn agent<'a>(agent: &'a str) -> Holder<'a> {
    Holder::Agent {
        agent,
        attempt: None,
    }
}

#[test]
fn ids_have_the_seed_form_and_tasks_start_pending() {
    both(|b, _, _| {
        let id = create1(b, task("analyze", r#"{"file": "data.csv"}"#));
        let (ty, hex) = id.rsplit_once('_').unwrap();
        assert_eq!(ty, "analyze");
        assert_eq!(hex.len(), 8);
        assert!(hex
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let t = b.get(&id).unwrap().unwrap();
        assert_eq!(t.status, "pending");
        assert_eq!(t.data, br#"{"file":"data.csv"}"#);
        assert_eq!(t.created_at.as_deref().map(str::len), Some(19));
        assert_eq!(t.locked_by, None);
        assert_eq!(t.attempt, 0);
        assert!(b.get("nope_00000000").unwrap().is_none());
    });
}

#[test]
fn claims_take_the_oldest_matching_task_once() {
    both(|b, _, _| {
        let a1 = create1(b, task("a", "{}"));
        let b1 = create1(b, task("b", "{}"));
        let a2 = create1(b, task("a", "{}"));
        let t = b.claim("w1", Some(&["b".to_owned()])).unwrap().unwrap();
        assert_eq!(t.id, b1);
        assert_eq!((t.status.as_str(), t.attempt), ("in_progress", 1));
        assert_eq!(t.locked_by.as_deref(), Some("w1"));
        assert!(b.claim("w1", Some(&["b".to_owned()])).unwrap().is_none());
        assert_eq!(b.claim("w2", None).unwrap().unwrap().id, a1);
        let both_types = ["a".to_owned(), "b".to_owned()];
        assert_eq!(b.claim("w3", Some(&both_types)).unwrap().unwrap().id, a2);
        assert!(b.claim("w4", None).unwrap().is_none());
    });
}

#[test]
fn claim_many_takes_tasks_in_claim_order_with_their_own_leases() {
    both(|b, clock, _| {
        let low = create1(b, task("t", "{}"));
        let hi = create1(
            b,
            NewTask {
                priority: 3,
                ..task("t", "{}")
            },
        );
        let other = create1(b, task("u", "{}"));
        let last = create1(b, task("t", "{}"));
        let ts = ["t".to_owned()];
        let got = b.claim_many("w", Some(&ts), 2).unwrap();
        let ids: Vec<&str> = got.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, [hi.as_str(), low.as_str()]);
        for t in &got {
            assert_eq!((t.status.as_str(), t.attempt), ("in_progress", 1));
            assert_eq!(t.locked_by.as_deref(), Some("w"));
        }
        let rest = b.claim_many("v", None, 10).unwrap();
        let ids: Vec<&str> = rest.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, [other.as_str(), last.as_str()]);
        assert!(b.claim_many("v", None, 10).unwrap().is_empty());
        // Leases expire one by one like single claims: all four come back after an hour.
        clock.set_micros(T0 + HOUR_US);
        assert_eq!(b.claim_many("x", None, 10).unwrap().len(), 4);
    });
}

fn item<'a>(id: &'a str, attempt: Option<u32>, result: Option<&'a [u8]>) -> Completion<'a> {
    Completion {
        id,
        attempt,
        status: Status::Completed,
        result,
    }
}

#[test]
fn complete_many_finishes_what_the_agent_holds_all_or_nothing() {
    both(|b, _, _| {
        let parent = create1(b, task("p", "{}"));
        let child = create1(
            b,
            NewTask {
                parent_id: Some(parent.clone()),
                wait_for_parent: true,
                ..task("c", "{}")
            },
        );
        let other = create1(b, task("p", r#"{"k":1}"#));
        let held = b.claim_many("w", Some(&["p".to_owned()]), 5).unwrap();
        assert_eq!(held.len(), 2);
        // A bad result fails the whole batch: the first task is not completed either.
        let bad = [item(&parent, None, None), item(&other, None, Some(b"{x"))];
        assert!(matches!(
            b.complete_many("w", &bad),
            Err(QueueError::Invalid(_))
        ));
        assert_eq!(b.get(&parent).unwrap().unwrap().status, "in_progress");
        let stale = item(&other, Some(7), None);
        let done = b
            .complete_many(
                "w",
                &[
                    item(&parent, Some(1), None),
                    stale,
                    item(&child, None, None),
                    item(&other, Some(1), Some(br#"{"ok": true}"#)),
                ],
            )
            .unwrap();
        assert_eq!(done, [true, false, false, true]);
        assert_eq!(b.get(&parent).unwrap().unwrap().status, "completed");
        let o = b.get(&other).unwrap().unwrap();
        assert_eq!(o.data, br#"{"k":1,"result":{"ok":true}}"#);
        // The parent's completion released its waiting child, in the same step.
        assert_eq!(b.claim("w", None).unwrap().unwrap().id, child);
        let failed = Completion {
            status: Status::Pending,
            ..item(&child, None, None)
        };
        assert!(b.complete_many("w", &[failed]).is_err());
    });
}

#[test]
fn priority_orders_claims_then_age() {
    both(|b, _, _| {
        let low = create1(b, task("t", "{}"));
        let mut hi = task("t", "{}");
        hi.priority = 5;
        let hi1 = create1(b, hi.clone());
        let hi2 = create1(b, hi);
        let other = create1(
            b,
            NewTask {
                priority: 9,
                ..task("u", "{}")
            },
        );
        let ts = ["t".to_owned()];
        let order: Vec<String> = (0..3)
            .map(|_| b.claim("w", Some(&ts)).unwrap().unwrap().id)
            .collect();
        assert_eq!(order, [hi1, hi2, low]);
        assert_eq!(b.claim("w", None).unwrap().unwrap().id, other);
    });
}

#[test]
fn only_the_holder_completes_or_releases() {
    both(|b, _, _| {
        let id = create1(b, task("t", r#"{"x": 1}"#));
        assert!(!b
            .complete(&id, "w1", None, Status::Completed, None)
            .unwrap());
        b.claim("w1", None).unwrap().unwrap();
        assert!(!b
            .complete(&id, "w2", None, Status::Completed, None)
            .unwrap());
        assert!(!b.release(&id, agent("w2")).unwrap());
        assert!(!b
            .complete(&id, "w1", Some(7), Status::Completed, None)
            .unwrap());
        assert!(b
            .complete(
                &id,
                "w1",
                Some(1),
                Status::Completed,
                Some(br#"{"out": [1, 2]}"#)
            )
            .unwrap());
        assert!(!b
            .complete(&id, "w1", None, Status::Completed, None)
            .unwrap());
        let t = b.get(&id).unwrap().unwrap();
        assert_eq!(t.status, "completed");
        assert_eq!(t.data, br#"{"x":1,"result":{"out":[1,2]}}"#);
        assert!(t.completed_at.is_some());
        assert_eq!(
            t.locked_by.as_deref(),
            Some("w1"),
            "the last holder is kept"
        );
        assert!(matches!(
            b.complete(&id, "w1", None, Status::Pending, None),
            Err(QueueError::Invalid(_))
        ));
    });
}

#[test]
fn release_returns_the_task_to_pending() {
    both(|b, _, _| {
        let id = create1(b, task("t", "{}"));
        b.claim("w1", None).unwrap().unwrap();
        assert!(b.release(&id, agent("w1")).unwrap());
        let t = b.get(&id).unwrap().unwrap();
        assert_eq!(
            (t.status.as_str(), t.locked_by, t.locked_at),
            ("pending", None, None)
        );
        let again = b.claim("w2", None).unwrap().unwrap();
        assert_eq!((again.id.as_str(), again.attempt), (id.as_str(), 2));
        assert!(b.release(&id, Holder::Anyone).unwrap());
        assert!(!b.release(&id, Holder::Anyone).unwrap());
    });
}

#[test]
fn expired_leases_come_back_and_stale_holders_are_fenced() {
    both(|b, clock, _| {
        let id = create1(b, task("t", "{}"));
        let first = b.claim("w", None).unwrap().unwrap();
        clock.set_micros(T0 + HOUR_US - 1);
        assert!(b.claim("x", None).unwrap().is_none(), "lease still valid");
        clock.set_micros(T0 + HOUR_US);
        // The same agent id claims again (a restarted worker): only the new attempt may finish.
        let second = b.claim("w", None).unwrap().unwrap();
        assert_eq!(
            (second.id.as_str(), first.attempt, second.attempt),
            (id.as_str(), 1, 2)
        );
        assert!(!b
            .complete(&id, "w", Some(1), Status::Completed, None)
            .unwrap());
        assert!(!b.extend_lease(&id, "w", Some(1)).unwrap());
        assert!(b
            .complete(&id, "w", Some(2), Status::Completed, None)
            .unwrap());
    });
}

#[test]
fn an_expired_lease_is_swept_even_when_another_task_is_claimed() {
    both(|b, clock, _| {
        let a = create1(b, task("a", "{}"));
        let c = create1(b, task("c", "{}"));
        b.claim("w", Some(&["a".to_owned()])).unwrap().unwrap();
        clock.set_micros(T0 + 2 * HOUR_US);
        assert_eq!(
            b.claim("w", Some(&["c".to_owned()])).unwrap().unwrap().id,
            c
        );
        let t = b.get(&a).unwrap().unwrap();
        assert_eq!((t.status.as_str(), t.locked_by), ("pending", None));
        assert!(!b.complete(&a, "w", None, Status::Completed, None).unwrap());
    });
}

#[test]
fn extend_lease_keeps_a_task() {
    both(|b, clock, _| {
        let id = create1(b, task("t", "{}"));
        b.claim("w", None).unwrap().unwrap();
        clock.set_micros(T0 + HOUR_US / 2);
        assert!(b.extend_lease(&id, "w", Some(1)).unwrap());
        assert!(!b.extend_lease(&id, "other", None).unwrap());
        clock.set_micros(T0 + HOUR_US + 1);
        assert!(b.claim("x", None).unwrap().is_none());
        assert_eq!(b.next_expiry().unwrap(), Some(T0 + HOUR_US / 2 + HOUR_US));
        clock.set_micros(T0 + HOUR_US / 2 + HOUR_US);
        assert_eq!(b.claim("x", None).unwrap().unwrap().attempt, 2);
    });
}

#[test]
fn max_attempts_fails_an_abandoned_task() {
    both(|b, clock, _| {
        let id = create1(
            b,
            NewTask {
                max_attempts: Some(2),
                ..task("t", "{}")
            },
        );
        b.claim("w", None).unwrap().unwrap();
        clock.set_micros(T0 + HOUR_US);
        assert_eq!(b.claim("w", None).unwrap().unwrap().attempt, 2);
        clock.set_micros(T0 + 2 * HOUR_US);
        assert!(b.claim("w", None).unwrap().is_none());
        let t = b.get(&id).unwrap().unwrap();
        assert_eq!(t.status, "failed");
        assert!(t.completed_at.is_some());
        assert_eq!(t.max_attempts, Some(2));
        // An explicit release counts too.
        let r = create1(
            b,
            NewTask {
                max_attempts: Some(1),
                ..task("t", "{}")
            },
        );
        b.claim("w", None).unwrap().unwrap();
        assert!(b.release(&r, agent("w")).unwrap());
        assert_eq!(b.get(&r).unwrap().unwrap().status, "failed");
    });
}

#[test]
fn children_wait_for_their_parent() {
    both(|b, _, _| {
        let p = create1(b, task("p", "{}"));
        let waiting = NewTask {
            parent_id: Some(p.clone()),
            wait_for_parent: true,
            ..task("c", "{}")
        };
        let c1 = create1(b, waiting.clone());
        let free = create1(
            b,
            NewTask {
                parent_id: Some(p.clone()),
                ..task("c", "{}")
            },
        );
        let ts = ["c".to_owned()];
        assert_eq!(b.claim("w", Some(&ts)).unwrap().unwrap().id, free);
        assert!(b.claim("w", Some(&ts)).unwrap().is_none(), "c1 waits");
        assert_eq!(b.claim("w", None).unwrap().unwrap().id, p);
        assert!(b.claim("w", Some(&ts)).unwrap().is_none());
        assert!(b.complete(&p, "w", None, Status::Completed, None).unwrap());
        assert_eq!(b.claim("w", Some(&ts)).unwrap().unwrap().id, c1);
        // Created after the parent completed: claimable at once.
        let c2 = create1(b, waiting);
        assert_eq!(b.claim("w", Some(&ts)).unwrap().unwrap().id, c2);
        let kids: Vec<String> = b.children(&p).unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(kids, [c1, free, c2]);
        assert!(matches!(
            b.create(&[NewTask {
                parent_id: Some("ghost_00000000".into()),
                wait_for_parent: true,
                ..task("c", "{}")
            }]),
            Err(QueueError::Invalid(_))
        ));
    });
}

#[test]
fn a_failed_parent_cancels_the_tasks_waiting_below_it() {
    both(|b, _, _| {
        let p = create1(b, task("p", "{}"));
        let wait = |parent: &str| NewTask {
            parent_id: Some(parent.to_owned()),
            wait_for_parent: true,
            ..task("c", "{}")
        };
        let c = create1(b, wait(&p));
        let g = create1(b, wait(&c));
        let loose = create1(
            b,
            NewTask {
                parent_id: Some(p.clone()),
                ..task("c", "{}")
            },
        );
        b.claim("w", Some(&["p".to_owned()])).unwrap().unwrap();
        assert!(b.complete(&p, "w", None, Status::Failed, None).unwrap());
        for id in [&c, &g] {
            assert_eq!(b.get(id).unwrap().unwrap().status, "cancelled");
        }
        assert_eq!(b.get(&loose).unwrap().unwrap().status, "pending");
        // Creating a waiter under a failed parent cancels it at once.
        let late = create1(b, wait(&p));
        assert_eq!(b.get(&late).unwrap().unwrap().status, "cancelled");
    });
}

#[test]
fn cancel_applies_to_pending_tasks_only() {
    both(|b, _, _| {
        let a = create1(b, task("t", "{}"));
        let w = create1(
            b,
            NewTask {
                parent_id: Some(a.clone()),
                wait_for_parent: true,
                ..task("t", "{}")
            },
        );
        let c = create1(b, task("t", "{}"));
        assert!(b.cancel(&a).unwrap());
        assert_eq!(b.get(&w).unwrap().unwrap().status, "cancelled");
        assert!(!b.cancel(&a).unwrap());
        assert_eq!(b.claim("w", None).unwrap().unwrap().id, c);
        assert!(!b.cancel(&c).unwrap());
        assert!(!b.cancel("missing_00000000").unwrap());
    });
}

#[test]
fn summary_counts_and_metadata() {
    both(|b, clock, _| {
        for ty in ["x", "y", "x"] {
            create1(b, task(ty, "{}"));
        }
        b.claim("w", None).unwrap().unwrap();
        clock.set_micros(T0 + 5_000_000);
        b.update_metadata(br#"{"version": "2.0", "n": [1]}"#)
            .unwrap();
        b.update_metadata(br#"{"version": "2.1"}"#).unwrap();
        let s = b.summary().unwrap();
        assert_eq!(s.total, 3);
        assert_eq!(
            s.status_counts,
            [("pending".to_owned(), 2), ("in_progress".to_owned(), 1)]
        );
        assert_eq!(s.type_counts, [("x".to_owned(), 2), ("y".to_owned(), 1)]);
        let meta = jsontext::object_members(&s.metadata).unwrap();
        let keys: Vec<&str> = meta.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["initialized_at", "last_updated", "version", "n"]);
        assert_eq!(meta[2].1, br#""2.1""#);
        let ctx = Ctx::new(&opts(clock));
        let last = jsontext::decode_string(&meta[1].1).unwrap();
        assert_eq!(ctx.parse_iso(&last), Some(T0 + 5_000_000));
        assert!(matches!(
            b.update_metadata(b"[1]"),
            Err(QueueError::Invalid(_))
        ));
    });
}

#[test]
fn list_filters_and_limits() {
    both(|b, _, _| {
        let ids: Vec<String> = (0..5)
            .map(|i| create1(b, task(if i % 2 == 0 { "e" } else { "o" }, "{}")))
            .collect();
        b.claim("w", None).unwrap().unwrap();
        let all = b.list(&ListFilter::default()).unwrap();
        assert_eq!(
            all.iter().map(|t| &t.id).collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>()
        );
        let evens = b
            .list(&ListFilter {
                task_type: Some("e".into()),
                status: Some("pending".into()),
                limit: Some(1),
            })
            .unwrap();
        assert_eq!(evens.len(), 1);
        assert_eq!(evens[0].id, ids[2]);
    });
}

#[test]
fn invalid_new_tasks_are_refused_and_nothing_is_created() {
    both(|b, _, _| {
        for bad in [task("", "{}"), task("t", "[1]"), task("t", "{oops")] {
            assert!(matches!(
                b.create(&[task("t", "{}"), bad]),
                Err(QueueError::Invalid(_))
            ));
        }
        assert_eq!(b.summary().unwrap().total, 0);
    });
}

#[test]
fn version_changes_when_another_handle_writes() {
    both(|b, clock, path| {
        let v0 = b.version().unwrap();
        let mut other = open(path.to_str().unwrap(), opts(clock)).unwrap();
        other.create(&[task("t", "{}")]).unwrap();
        let v1 = b.version().unwrap();
        assert_ne!(v1, v0);
        b.create(&[task("t", "{}")]).unwrap();
        assert_ne!(b.version().unwrap(), v1, "our own writes count too");
        assert_eq!(b.claim("w", None).unwrap().unwrap().task_type, "t");
    });
}

#[test]
fn migration_round_trips_json_sqlite_json() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let src = dir.join("a.json");
    {
        let mut b = open(src.to_str().unwrap(), opts(&clock)).unwrap();
        let p = create1(b.as_mut(), task("p", r#"{"k": "v", "n": 1.50}"#));
        create1(
            b.as_mut(),
            NewTask {
                parent_id: Some(p.clone()),
                wait_for_parent: true,
                priority: 3,
                max_attempts: Some(4),
                ..task("c", "{}")
            },
        );
        b.claim("w", Some(&["p".to_owned()])).unwrap().unwrap();
        b.update_metadata(br#"{"owner": "me"}"#).unwrap();
    }
    let db = dir.join("b.db");
    let back = dir.join("c.json");
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    assert_eq!(migrate(&s(&src), &s(&db), opts(&clock)).unwrap(), 2);
    assert_eq!(migrate(&s(&db), &s(&back), opts(&clock)).unwrap(), 2);
    let a = open(&s(&src), opts(&clock)).unwrap().snapshot().unwrap();
    let c = open(&s(&back), opts(&clock)).unwrap().snapshot().unwrap();
    assert_eq!(a, c);
    assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    // The migrated database behaves: the child waits for the in-progress parent.
    let mut d = open(&s(&db), opts(&clock)).unwrap();
    assert!(d.claim("x", Some(&["c".to_owned()])).unwrap().is_none());
    let parent = &a.tasks[0];
    assert!(d
        .complete(&parent.id, "w", Some(1), Status::Completed, None)
        .unwrap());
    assert_eq!(d.claim("x", None).unwrap().unwrap().priority, 3);
    // A destination with tasks is refused.
    assert!(matches!(
        migrate(&s(&src), &s(&db), opts(&clock)),
        Err(QueueError::Invalid(_))
    ));
}

// ---- JSON state file specifics ----

/// A state file as the seed writes it: `json.dump(state, f, indent=2)` from CPython.
const SEED_FILE: &str = r#"{
  "workflow_type": "generic",
  "metadata": {
    "initialized_at": "2024-01-01T10:00:00",
    "last_updated": "2024-01-01T12:00:00.250000",
    "custom_field": "custom_value"
  },
  "tasks": {
    "analyze_1a2b3c4d": {
      "type": "analyze",
      "status": "pending",
      "parent_id": null,
      "locked_by": null,
      "locked_at": null,
      "created_at": "2024-01-01T10:00:00",
      "completed_at": null,
      "data": {
        "file": "data.csv",
        "params": {
          "threshold": 0.8,
          "tags": [],
          "nested": {}
        },
        "caf\u00e9": "\u20ac"
      }
    },
    "validate_00ff00ff": {
      "type": "validate",
      "status": "in_progress",
      "parent_id": "analyze_1a2b3c4d",
      "locked_by": "worker-001",
      "locked_at": "2024-01-01T11:00:00.123456",
      "created_at": "2024-01-01T10:00:01",
      "completed_at": null,
      "data": {
        "validation_type": "schema"
      },
      "note": "kept"
    }
  }
}"#;

#[test]
fn a_seed_file_renders_back_byte_for_byte() {
    assert_eq!(
        String::from_utf8(json::render_doc_for_test(SEED_FILE.as_bytes())).unwrap(),
        SEED_FILE
    );
    let snap = json::parse_for_test(SEED_FILE.as_bytes()).unwrap();
    assert_eq!(snap.tasks.len(), 2);
    assert_eq!(
        snap.tasks[1].extra,
        [("note".to_owned(), br#""kept""#.to_vec())]
    );
    assert_eq!(
        snap.tasks[0].data,
        br#"{"file":"data.csv","params":{"threshold":0.8,"tags":[],"nested":{}},"caf\u00e9":"\u20ac"}"#
    );
    // Rendering from scratch (every entry re-rendered) gives the same text.
    assert_eq!(String::from_utf8(export_json(&snap)).unwrap(), SEED_FILE);
}

#[test]
fn changes_to_a_seed_file_touch_only_the_changed_entry() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let path = dir.join("s.json");
    std::fs::write(&path, SEED_FILE).unwrap();
    let mut b = JsonBackend::open(&path, opts(&clock)).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        SEED_FILE,
        "open does not rewrite"
    );
    let t = b
        .claim("w2", Some(&["validate".to_owned()]))
        .unwrap()
        .unwrap();
    assert_eq!(
        t.id, "validate_00ff00ff",
        "its lease from 2024 has long expired"
    );
    assert_eq!(t.attempt, 1);
    let text = std::fs::read_to_string(&path).unwrap();
    let ctx = Ctx::new(&opts(&clock));
    let expected = SEED_FILE
        .replace(
            "\"last_updated\": \"2024-01-01T12:00:00.250000\"",
            &format!("\"last_updated\": \"{}\"", ctx.iso(T0)),
        )
        .replace("\"worker-001\"", "\"w2\"")
        .replace(
            "\"2024-01-01T11:00:00.123456\"",
            &format!("\"{}\"", ctx.iso(T0)),
        )
        .replace(
            "\"data\": {\n        \"validation_type\": \"schema\"\n      },",
            "\"data\": {\n        \"validation_type\": \"schema\"\n      },\n      \"attempt\": 1,",
        );
    assert_eq!(text, expected);
    assert!(!dir.join("s.json.tmp").exists());
}

#[test]
fn a_repeated_task_id_keeps_the_last_value_in_the_first_place() {
    let text = br#"{"tasks": {
        "a_1": {"type": "a", "status": "pending", "data": {"v": 1}},
        "b_2": {"type": "b", "status": "pending", "data": {}},
        "a_1": {"type": "a", "status": "failed", "data": {"v": 2}}
    }}"#;
    let snap = json::parse_for_test(text).unwrap();
    let got: Vec<(&str, &str)> = snap
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), t.status.as_str()))
        .collect();
    assert_eq!(got, [("a_1", "failed"), ("b_2", "pending")]);
    assert_eq!(snap.tasks[0].data, br#"{"v":2}"#);
}

#[test]
fn handles_that_take_turns_always_see_the_file() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let path = dir.join("turns.json");
    let mut a = JsonBackend::open(&path, opts(&clock)).unwrap();
    let mut b = JsonBackend::open(&path, opts(&clock)).unwrap();
    let tasks: Vec<NewTask> = (0..50)
        .map(|i| task("t", &format!("{{\"i\":{i}}}")))
        .collect();
    a.create(&tasks).unwrap();
    for i in 0..60 {
        let (x, y): (&mut JsonBackend, &mut JsonBackend) = if i % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        clock.set_micros(T0 + i);
        if let Some(t) = x.claim("w", None).unwrap() {
            assert!(y
                .complete(&t.id, "w", Some(t.attempt), Status::Completed, None)
                .unwrap());
        }
        if i % 7 == 0 {
            y.create(&[task("u", "{}")]).unwrap();
        }
        // The cached state of both handles equals a fresh parse of the file.
        let fresh = json::parse_for_test(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(x.snapshot().unwrap(), fresh);
        assert_eq!(y.snapshot().unwrap(), fresh);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            export_json(&fresh),
            "the file is always in the canonical format"
        );
    }
    assert_eq!(a.summary().unwrap().status_counts[0].0, "completed");
}

#[test]
fn a_corrupt_state_file_is_reported_and_left_alone() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let path = dir.join("bad.json");
    let cases: [&[u8]; 5] = [
        b"{\"tasks\": {\"a_1\": {\"type\": \"a\", \"status\": \"pending\",}}}",
        b"",
        b"[1, 2]",
        b"{\"tasks\": {\"a_1\": {\"type\": 3, \"status\": \"pending\"}}}",
        b"{\"tasks\": []}",
    ];
    for bytes in cases {
        std::fs::write(&path, bytes).unwrap();
        let err = match JsonBackend::open(&path, opts(&clock)) {
            Err(e) => e,
            Ok(_) => panic!("{:?} accepted", String::from_utf8_lossy(bytes)),
        };
        let QueueError::Corrupt { message, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(!message.is_empty());
        assert!(err.to_string().contains("left untouched"));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
    // Corruption after opening is reported by the next operation, still without writing.
    std::fs::write(&path, SEED_FILE).unwrap();
    let mut b = JsonBackend::open(&path, opts(&clock)).unwrap();
    std::fs::write(&path, b"{\"tasks\": {").unwrap();
    let e = b.create(&[task("t", "{}")]).unwrap_err();
    assert!(e.to_string().contains("line 1 column 12"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"tasks\": {");
}

#[test]
fn a_held_lock_times_out() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let path = dir.join("l.json");
    let mut o = opts(&clock);
    o.lock_timeout = Duration::from_millis(30);
    let mut b = JsonBackend::open(&path, o).unwrap();
    let holder = std::fs::File::create(b.lock_path()).unwrap();
    holder.lock().unwrap();
    let e = b.create(&[task("t", "{}")]).unwrap_err();
    assert!(matches!(e, QueueError::LockTimeout { .. }), "{e:?}");
    assert!(e.to_string().contains("l.json.lock"));
    // Reads need no lock.
    assert_eq!(b.summary().unwrap().total, 0);
    holder.unlock().unwrap();
    assert_eq!(b.create(&[task("t", "{}")]).unwrap().len(), 1);
}

#[test]
fn a_deleted_lock_file_is_not_locked_any_more() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let path = dir.join("l.json");
    let mut o = opts(&clock);
    o.lock_timeout = Duration::from_millis(30);
    let mut b = JsonBackend::open(&path, o).unwrap();
    b.create(&[task("t", "{}")]).unwrap(); // the backend now keeps the lock file open
    std::fs::remove_file(b.lock_path()).unwrap();
    // Another process creates the lock file again and holds it: a lock on the deleted file
    // would exclude nobody, so the backend must wait for this one.
    let holder = std::fs::File::create(b.lock_path()).unwrap();
    holder.lock().unwrap();
    let e = b.create(&[task("t", "{}")]).unwrap_err();
    assert!(matches!(e, QueueError::LockTimeout { .. }), "{e:?}");
    holder.unlock().unwrap();
    assert_eq!(b.create(&[task("t", "{}")]).unwrap().len(), 1);
    assert_eq!(b.summary().unwrap().total, 2);
}

#[test]
fn a_missing_state_file_is_created_with_the_seed_structure() {
    let dir = TempDir::new();
    let clock = Clock::manual(T0);
    let path = dir.join("states").join("wf.json");
    JsonBackend::open(&path, opts(&clock)).unwrap();
    let ctx = Ctx::new(&opts(&clock));
    let ts = ctx.iso(T0);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!(
            "{{\n  \"workflow_type\": \"generic\",\n  \"metadata\": {{\n    \"initialized_at\": \
             \"{ts}\",\n    \"last_updated\": \"{ts}\"\n  }},\n  \"tasks\": {{}}\n}}"
        )
    );
}

#[test]
fn iso_timestamps_match_python_isoformat() {
    let ctx = Ctx {
        clock: Clock::manual(0),
        tz: jiff::tz::TimeZone::UTC,
        lease_us: 0,
        lock_timeout: Duration::ZERO,
    };
    assert_eq!(ctx.iso(1_704_103_200_000_000), "2024-01-01T10:00:00");
    assert_eq!(ctx.iso(1_704_103_200_000_042), "2024-01-01T10:00:00.000042");
    assert_eq!(
        ctx.parse_iso("2024-01-01T10:00:00.000042"),
        Some(1_704_103_200_000_042)
    );
    assert_eq!(
        ctx.parse_iso("2024-01-01T11:00:00+01:00"),
        Some(1_704_103_200_000_000)
    );
    assert_eq!(ctx.parse_iso("yesterday"), None);
}

proptest! {
    /// The digit-by-digit `iso` writes what `format!` would, in a zone with transitions, for any
    /// instant from year 1 to 9999, and reads back to the same microsecond.
    #[test]
    fn iso_matches_formatting_and_round_trips(us in -62_135_596_800_000_000i64..253_402_300_799_999_999) {
        let ctx = Ctx {
            clock: Clock::manual(0),
            tz: jiff::tz::TimeZone::get("America/New_York").unwrap(),
            lease_us: 0,
            lock_timeout: Duration::ZERO,
        };
        let dt = ctx.tz.to_datetime(jiff::Timestamp::from_microsecond(us).unwrap());
        prop_assume!((1..=9999).contains(&dt.year()));
        let mut want = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second()
        );
        let micro = dt.subsec_nanosecond() / 1000;
        if micro != 0 {
            want.push_str(&format!(".{micro:06}"));
        }
        let got = ctx.iso(us);
        prop_assert_eq!(&got, &want);
        let back = ctx.parse_iso(&got).unwrap();
        // A wall time in a repeated hour reads back as its first occurrence.
        prop_assert!(back == us || back == us - 3_600_000_000, "{got}: {back} vs {us}");
    }
}

#[test]
fn targets_pick_the_backend() {
    assert_eq!(
        Target::parse("a/b.json").unwrap(),
        Target::Json("a/b.json".into())
    );
    assert_eq!(
        Target::parse("a/B.JSON").unwrap(),
        Target::Json("a/B.JSON".into())
    );
    assert_eq!(
        Target::parse("a/b.db").unwrap(),
        Target::Sqlite("a/b.db".into())
    );
    assert_eq!(
        Target::parse("sqlite:///rel.db").unwrap(),
        Target::Sqlite("rel.db".into())
    );
    assert_eq!(
        Target::parse("sqlite:////abs/x.db").unwrap(),
        Target::Sqlite("/abs/x.db".into())
    );
    assert!(Target::parse("sqlite://").is_err());
    assert!(Target::parse("").is_err());
}

// ---- SQLite specifics ----

#[test]
fn claims_use_the_partial_indexes() {
    let dir = TempDir::new();
    let path = dir.join("q.db");
    SqliteBackend::open(&path, Options::default()).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // As the backend's connections are configured (plans never depend on bound values).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .unwrap();
    let plan = |sql: &str, n: usize| -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let args: Vec<String> = (0..n).map(|i| format!("v{i}")).collect();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join(" | ")
    };
    for n in [0, 1, 3, 20] {
        let p = plan(&sqlite::claim_sql_for_test(n), n);
        eprintln!("{n}: {p}");
        // One probe per type of the by-type index, or a walk of the any-type index.
        let by_type = matches!(n, 1 | 3);
        for step in p.split(" | ").filter(|s| s.contains("tm_queue_tasks")) {
            let ready = step.contains("INDEX tm_queue_ready")
                && step.contains("tm_queue_ready_by_type") == by_type;
            assert!(ready || step.contains("PRIMARY KEY"), "{n}: {p}");
        }
    }
    let [by_id, by_row] = sqlite::COMPLETE_SQL_FOR_TEST;
    assert!(plan(by_id, 6).contains("INDEX sqlite_autoindex_tm_queue_tasks"));
    let p = plan(by_row, 7);
    assert!(p.contains("INTEGER PRIMARY KEY"), "{p}");
    let children: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM tm_queue_tasks WHERE parent_id = ?1 ORDER BY seq",
            ["p"],
            |r| r.get(3),
        )
        .unwrap();
    assert!(children.contains("INDEX tm_queue_children"), "{children}");
}

#[test]
fn statements_are_compiled_once() {
    // SQLite (built with STAT4) would compile a statement again at each call if its plan could
    // depend on a bound value: the typed claims did, next to the partial indexes (twice the cost
    // of the claim). The backend's connections forbid that.
    let dir = TempDir::new();
    let path = dir.join("q.db");
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let tasks: Vec<NewTask> = (0..40).map(|i| task(["a", "b"][i % 2], "{}")).collect();
    b.create(&tasks).unwrap();
    let one = vec!["a".to_owned()];
    let two = vec!["a".to_owned(), "b".to_owned()];
    for i in 0..30 {
        let types = match i % 3 {
            0 => None,
            1 => Some(one.as_slice()),
            _ => Some(two.as_slice()),
        };
        let w = format!("w{i}");
        let t = b.claim(&w, types).unwrap().unwrap();
        assert!(b.extend_lease(&t.id, &w, Some(t.attempt)).unwrap());
        // The other statements, with values that change from call to call.
        let mut child = task("c", "{}");
        child.parent_id = Some(t.id.clone());
        child.wait_for_parent = i % 2 == 0;
        let child = create1(&mut b, child);
        assert_eq!(b.children(&t.id).unwrap().len(), 1);
        assert!(b.get(&child).unwrap().is_some());
        let result = format!("{{\"i\":{i}}}");
        let (result, status) = match i % 4 {
            0 => (None, Status::Completed),
            1 => (Some(result.as_bytes()), Status::Completed),
            2 => (None, Status::Failed),
            _ => {
                assert!(b.release(&t.id, agent(&w)).unwrap());
                let again = b.claim(&w, types).unwrap().unwrap();
                assert_eq!(again.id, t.id);
                (Some(result.as_bytes()), Status::Cancelled)
            }
        };
        assert!(b.complete(&t.id, &w, None, status, result).unwrap());
        b.cancel(&child).unwrap();
        let filter = ListFilter {
            status: Some(["pending", "completed"][i % 2].to_owned()),
            task_type: Some(["a", "b", "c"][i % 3].to_owned()),
            limit: Some(i + 1),
        };
        b.list(&filter).unwrap();
        b.summary().unwrap();
    }
    let conn = b.conn_for_test();
    // Every statement the backend keeps prepared, claims, completions and the rest.
    let mut again = Vec::new();
    // SAFETY: walks this connection's statements on its own thread; none is finalized meanwhile.
    unsafe {
        let db = conn.handle();
        let mut stmt = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
        while !stmt.is_null() {
            let n = rusqlite::ffi::sqlite3_stmt_status(
                stmt,
                rusqlite::ffi::SQLITE_STMTSTATUS_REPREPARE,
                0,
            );
            // Once is the schema being created after `BEGIN IMMEDIATE` was first prepared.
            if n > 1 {
                let sql = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_sql(stmt));
                again.push((n, sql.to_string_lossy().into_owned()));
            }
            stmt = rusqlite::ffi::sqlite3_next_stmt(db, stmt);
        }
    }
    assert!(again.is_empty(), "compiled again: {again:#?}");
    for n in [0, 1, 2] {
        let stmt = conn.prepare_cached(&sqlite::claim_sql_for_test(n)).unwrap();
        let again = stmt.get_status(rusqlite::StatementStatus::RePrepare);
        let runs = stmt.get_status(rusqlite::StatementStatus::Run);
        assert_eq!((n, again), (n, 0), "claim of {n} types compiled again");
        assert!(
            runs >= 10,
            "claim of {n} types not taken from the cache: {runs} runs"
        );
    }
}

#[test]
fn a_completion_finds_the_row_its_process_claimed() {
    let dir = TempDir::new();
    let path = dir.join("q.db");
    let mut a = SqliteBackend::open(&path, Options::default()).unwrap();
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let tasks: Vec<NewTask> = (0..8)
        .map(|i| task("job", &format!("{{\"n\":{i}}}")))
        .collect();
    let ids = a.create(&tasks).unwrap();
    let runs = |b: &mut SqliteBackend| -> Vec<i32> {
        let conn = b.conn_for_test();
        sqlite::COMPLETE_SQL_FOR_TEST
            .iter()
            .map(|sql| {
                let stmt = conn.prepare_cached(sql).unwrap();
                stmt.get_status(rusqlite::StatementStatus::Run)
            })
            .collect()
    };
    // Claimed and completed by one backend: by row. Claimed by `a`, completed by `b` (another
    // process's completion, as the agent may hand its id on): by id. Released and claimed again
    // by `b`: `a`'s note is stale and its completion is refused all the same.
    for _ in 0..3 {
        let t = a.claim("w", None).unwrap().unwrap();
        assert!(a
            .complete(&t.id, "w", None, Status::Completed, None)
            .unwrap());
    }
    let t = a.claim("w", None).unwrap().unwrap();
    assert!(b.complete(&t.id, "w", None, Status::Failed, None).unwrap());
    let t = a.claim("w", None).unwrap().unwrap();
    assert!(a.release(&t.id, agent("w")).unwrap());
    let again = b.claim("v", None).unwrap().unwrap();
    assert_eq!(again.id, t.id);
    assert!(!a
        .complete(&t.id, "w", None, Status::Completed, None)
        .unwrap());
    assert!(b
        .complete(&t.id, "v", None, Status::Completed, None)
        .unwrap());
    assert_eq!(runs(&mut a), vec![0, 4]);
    assert_eq!(runs(&mut b), vec![1, 1]);
    let done: Vec<String> = ids[..5]
        .iter()
        .map(|id| a.get(id).unwrap().unwrap().status)
        .collect();
    assert_eq!(
        done,
        ["completed", "completed", "completed", "failed", "completed"]
    );
}

#[test]
fn sqlite_lock_timeout_is_a_lock_timeout() {
    let dir = TempDir::new();
    let path = dir.join("busy.db");
    let o = Options {
        lock_timeout: Duration::from_millis(30),
        ..Options::default()
    };
    let mut b = SqliteBackend::open(&path, o).unwrap();
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let e = b.create(&[task("t", "{}")]).unwrap_err();
    assert!(matches!(e, QueueError::LockTimeout { .. }), "{e:?}");
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(b.create(&[task("t", "{}")]).unwrap().len(), 1);
}

#[test]
fn the_log_is_copied_back_and_starts_over_while_an_agent_keeps_committing() {
    log_starts_over_with_agents(1);
}

#[test]
fn the_log_starts_over_while_agents_with_checkpointers_of_their_own_take_turns() {
    // Each agent's commits ask its own checkpointer, and only again after the log grew by
    // another `ASK_AGAIN_PAGES`: the asks of one must not leave the log to grow because another
    // agent's checkpointer was at work when it asked.
    log_starts_over_with_agents(4);
}

fn log_starts_over_with_agents(agents: usize) {
    // Checkpoints run on the checkpointer's thread while the agent goes on committing. Without
    // its final full checkpoint (or with no checkpoint at all) the log would never be copied
    // back whole, so it would never start over: these 12,000 commits append 40 MB of frames.
    let dir = TempDir::new();
    let path = dir.join("log.db");
    let mut backends: Vec<SqliteBackend> = (0..agents)
        .map(|_| SqliteBackend::open(&path, Options::default()).unwrap())
        .collect();
    let tasks: Vec<NewTask> = (0..6000)
        .map(|i| task("job", &format!("{{\"n\":{i}}}")))
        .collect();
    backends[0].create(&tasks).unwrap();
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let mut largest = 0;
    for i in 0..tasks.len() {
        let b = &mut backends[i % agents];
        let t = b.claim("w", None).unwrap().unwrap();
        assert!(b
            .complete(&t.id, "w", None, Status::Completed, None)
            .unwrap());
        largest = largest.max(std::fs::metadata(&wal).unwrap().len());
    }
    // The log file is reused from its start, so its size is the most it ever held: about the
    // 4,000-page threshold plus what was appended while a checkpoint ran.
    assert!(
        largest < 16 << 20,
        "the log grew to {largest} bytes: it never started over"
    );
    let db_bytes = std::fs::metadata(&path).unwrap().len();
    assert!(
        db_bytes > 1 << 20,
        "nothing was copied back: {db_bytes} bytes"
    );
    assert_eq!(
        backends[0].summary().unwrap().status_counts,
        vec![("completed".to_owned(), 6000)]
    );
}

#[test]
fn a_file_that_is_not_a_database_is_an_error() {
    let dir = TempDir::new();
    let path = dir.join("text.db");
    std::fs::write(
        &path,
        "hello, I am not a database, just a line of text...........",
    )
    .unwrap();
    let e = match SqliteBackend::open(&path, Options::default()) {
        Err(e) => e,
        Ok(_) => panic!("opened"),
    };
    assert!(matches!(e, QueueError::Sqlite { .. }), "{e:?}");
}

#[test]
#[ignore = "timing probe, run by hand with --release"]
fn probe_sqlite_throughput() {
    let dir = TempDir::new();
    let path = dir.join("p.db");
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let n = std::env::var("TM_PROBE_N").map_or(4000, |v| v.parse().unwrap());
    let tasks: Vec<NewTask> = (0..n)
        .map(|i| task("job", &format!("{{\"n\":{i}}}")))
        .collect();
    b.create(&tasks).unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        let t = b.claim("w", None).unwrap().unwrap();
        assert!(b
            .complete(&t.id, "w", None, Status::Completed, None)
            .unwrap());
    }
    eprintln!(
        "sqlite core: {:.0}/s",
        n as f64 / t0.elapsed().as_secs_f64()
    );
}

#[test]
#[ignore = "timing probe, run by hand with --release"]
fn probe_json_costs() {
    let dir = TempDir::new();
    let path = dir.join("p.json");
    let mut b = JsonBackend::open(&path, Options::default()).unwrap();
    let n = 20_000;
    let tasks: Vec<NewTask> = (0..n)
        .map(|i| task("job", &format!("{{\"n\":{i}}}")))
        .collect();
    b.create(&tasks).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    eprintln!("file: {} bytes", bytes.len());
    let t0 = std::time::Instant::now();
    for _ in 0..10 {
        json::parse_for_test(&bytes).unwrap();
    }
    eprintln!("parse+snapshot: {:?}", t0.elapsed() / 10);
    let t0 = std::time::Instant::now();
    for _ in 0..10 {
        json::render_doc_for_test(&bytes);
    }
    eprintln!("parse+render: {:?}", t0.elapsed() / 10);
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        let t = b.claim("w", None).unwrap().unwrap();
        b.complete(&t.id, "w", None, Status::Completed, None)
            .unwrap();
    }
    eprintln!("cached claim+complete: {:?}", t0.elapsed() / 20);
    let mut other = JsonBackend::open(&path, Options::default()).unwrap();
    let t0 = std::time::Instant::now();
    for i in 0..20 {
        let b: &mut JsonBackend = if i % 2 == 0 { &mut b } else { &mut other };
        let t = b.claim("w", None).unwrap().unwrap();
        b.complete(&t.id, "w", None, Status::Completed, None)
            .unwrap();
    }
    eprintln!("alternating claim+complete: {:?}", t0.elapsed() / 20);
}

/// A task entry for the parse tests: `k` picks the id, `v` the contents.
fn entry(k: u8, v: u8) -> Task {
    let status = ["pending", "in_progress", "completed", "failed", "cancelled"][v as usize % 5];
    Task {
        id: format!("t_{k:08x}"),
        task_type: "t".into(),
        status: status.into(),
        parent_id: None,
        locked_by: (status == "in_progress").then(|| format!("agent-{v}")),
        locked_at: None,
        created_at: Some("2026-11-23T10:00:00".into()),
        completed_at: None,
        data: format!("{{\"k\":{k},\"v\":{v}}}").into_bytes(),
        priority: 0,
        attempt: u32::from(v % 3),
        max_attempts: None,
        wait_for_parent: false,
        extra: Vec::new(),
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Change(usize, u8),
    Remove(usize),
    Insert(usize, u8),
    Swap(usize, usize),
    Repeat(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Edit::Change(i, v)),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), any::<u8>()).prop_map(|(i, k)| Edit::Insert(i, k)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Edit::Swap(i, j)),
        any::<usize>().prop_map(Edit::Repeat),
    ]
}

fn file_of(tasks: Vec<Task>, note: &str) -> Vec<u8> {
    export_json(&Snapshot {
        top: vec![("workflow_type".into(), b"\"generic\"".to_vec())],
        metadata: vec![("last_updated".into(), format!("\"{note}\"").into_bytes())],
        tasks,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Reading a version of the state file against the version before it (how a handle catches
    /// up with another process's write) gives exactly what reading it afresh gives, whatever
    /// changed in between: entries edited, removed, added, moved, repeated, or the whole file
    /// written in another layout.
    #[test]
    fn reading_after_a_previous_version_equals_reading_afresh(
        base in proptest::collection::vec((0u8..48, any::<u8>()), 0..24),
        edits in proptest::collection::vec(edit(), 0..6),
        compact in any::<bool>(),
    ) {
        let old_tasks: Vec<Task> = base.iter().map(|&(k, v)| entry(k, v)).collect();
        let old = file_of(old_tasks.clone(), "a");
        let mut tasks = json::parse_for_test(&old).unwrap().tasks;
        for e in edits {
            let n = tasks.len();
            match e {
                Edit::Change(i, v) if n > 0 => {
                    let k = u8::from_str_radix(&tasks[i % n].id[2..], 16).unwrap_or(0);
                    tasks[i % n] = entry(k, v);
                }
                Edit::Remove(i) if n > 0 => {
                    tasks.remove(i % n);
                }
                Edit::Insert(i, k) => tasks.insert(i % (n + 1), entry(k % 64, k)),
                Edit::Swap(i, j) if n > 0 => tasks.swap(i % n, j % n),
                Edit::Repeat(i) if n > 0 => {
                    let t = tasks[i % n].clone();
                    tasks.push(t);
                }
                _ => {}
            }
        }
        let mut new = file_of(tasks, "b");
        if compact {
            let v: serde_json::Value = serde_json::from_slice(&new).unwrap();
            new = serde_json::to_vec(&v).unwrap();
        }
        let fresh = json::parse_for_test(&new).unwrap();
        let (after, rendered) = json::parse_after_for_test(&old, &new).unwrap();
        prop_assert_eq!(&after, &fresh);
        prop_assert_eq!(rendered, json::render_doc_for_test(&new));
    }

    /// A version with a byte that is not UTF-8 anywhere (between entries taken over from the
    /// version before, inside one, or in one that changed) is refused with the message reading
    /// it afresh gives, which names that byte.
    #[test]
    fn a_byte_that_is_not_utf8_is_found_wherever_it_is(
        base in proptest::collection::vec((0u8..48, any::<u8>()), 1..24),
        changed in any::<prop::sample::Index>(),
        value in any::<u8>(),
        at in any::<prop::sample::Index>(),
        bad in 0x80u8..=0xff,
    ) {
        let old_tasks: Vec<Task> = base.iter().map(|&(k, v)| entry(k, v)).collect();
        let old = file_of(old_tasks.clone(), "a");
        let mut tasks = json::parse_for_test(&old).unwrap().tasks;
        let i = changed.index(tasks.len());
        let k = u8::from_str_radix(&tasks[i].id[2..], 16).unwrap_or(0);
        tasks[i] = entry(k, value);
        let mut new = file_of(tasks, "a");
        let at = at.index(new.len());
        // A lone continuation byte or a lead byte followed by ASCII: never UTF-8.
        new[at] = bad;
        let expected = format!("not UTF-8 text (byte {at})");
        prop_assert_eq!(json::parse_for_test(&new).unwrap_err(), expected.clone());
        prop_assert_eq!(json::parse_after_for_test(&old, &new).unwrap_err(), expected);
    }
}

/// `.cargo/config.toml` builds the bundled SQLite with options that save work on every call
/// (see the comments there); a build that lost them would be slower without failing anything.
#[test]
fn the_bundled_sqlite_is_built_with_the_chosen_options() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    for wanted in [
        "DEFAULT_MEMSTATUS=0",
        "OMIT_SHARED_CACHE",
        "MAX_EXPR_DEPTH=0",
        "USE_ALLOCA",
        "ENABLE_API_ARMOR",
    ] {
        assert!(
            options.iter().any(|o| o == wanted),
            "{wanted} not in {options:?}"
        );
    }
}

/// Leaf pages of the task table, and the bytes of `room` its rows hold, by status.
fn task_pages(path: &Path) -> (i64, Vec<(String, Option<i64>)>) {
    let c = rusqlite::Connection::open(path).unwrap();
    let pages = c
        .query_row(
            "SELECT count(*) FROM dbstat WHERE name = 'tm_queue_tasks' AND pagetype = 'leaf'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rooms = c
        .prepare("SELECT DISTINCT status, length(room) FROM tm_queue_tasks ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    (pages, rooms)
}

#[test]
fn claims_and_completions_rewrite_rows_in_their_pages() {
    // A row that grew past its page's free space would be moved by a rebalance that splits
    // pages: with rows appended in order (pages full), every claim and completion did.
    let dir = TempDir::new();
    let path = dir.join("room.db");
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let tasks: Vec<NewTask> = (0..400)
        .map(|i| task("job", &format!("{{\"n\":{i}}}")))
        .collect();
    b.create(&tasks).unwrap();
    let (before, rooms) = task_pages(&path);
    assert_eq!(rooms, vec![("pending".to_owned(), Some(112))]);
    let agent = "agent-0123456789abcdef0123456789abcdef0123456789"; // 48 characters
    for _ in 0..tasks.len() / 2 {
        let t = b.claim(agent, None).unwrap().unwrap();
        assert!(b
            .complete(&t.id, agent, None, Status::Completed, None)
            .unwrap());
    }
    let held = b.claim(agent, None).unwrap().unwrap();
    let (after, rooms) = task_pages(&path);
    assert_eq!(
        rooms,
        vec![
            ("completed".to_owned(), None),
            ("in_progress".to_owned(), Some(24)),
            ("pending".to_owned(), Some(112)),
        ]
    );
    assert!(
        after <= before,
        "the task table went from {before} to {after} leaf pages"
    );
    assert!(b
        .complete(&held.id, agent, None, Status::Completed, None)
        .unwrap());
}

#[test]
fn a_queue_made_before_rows_had_room_gains_the_column_and_keeps_working() {
    let dir = TempDir::new();
    let path = dir.join("old.db");
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let old = create1(&mut b, task("job", "{\"n\":1}"));
    drop(b);
    // The table as an earlier tm made it.
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(
            "UPDATE tm_queue_tasks SET room = NULL; ALTER TABLE tm_queue_tasks DROP COLUMN room",
        )
        .unwrap();
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let new = create1(&mut b, task("job", "{\"n\":2}"));
    let (_, rooms) = task_pages(&path);
    assert_eq!(
        rooms,
        vec![
            ("pending".to_owned(), None),
            ("pending".to_owned(), Some(112))
        ]
    );
    for want in [&old, &new] {
        let t = b.claim("w", None).unwrap().unwrap();
        assert_eq!(&t.id, want);
        assert!(b
            .complete(&t.id, "w", None, Status::Completed, None)
            .unwrap());
    }
    let (_, rooms) = task_pages(&path);
    assert_eq!(rooms, vec![("completed".to_owned(), None)]);
}

#[test]
fn a_new_queue_has_512_byte_pages_and_one_made_with_larger_pages_keeps_them() {
    let dir = TempDir::new();
    let page_size = |path: &Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap()
    };
    // A database an earlier tm made had 1 KiB pages: opening it keeps them.
    let old = dir.join("old.db");
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute_batch("PRAGMA page_size = 1024; PRAGMA journal_mode = WAL; VACUUM")
        .unwrap();
    for (name, pages) in [("new.db", 512), ("old.db", 1024)] {
        let path = dir.join(name);
        let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
        // Rows that fit a page and rows that spill over several.
        let small = format!("{{\"n\":\"{}\"}}", "s".repeat(100));
        let big = format!("{{\"n\":\"{}\"}}", "b".repeat(5000));
        let ids = b.create(&[task("job", &small), task("job", &big)]).unwrap();
        for (id, data) in ids.iter().zip([&small, &big]) {
            let t = b.claim("w", None).unwrap().unwrap();
            assert_eq!((&t.id, t.data.as_slice()), (id, data.as_bytes()));
            assert!(b
                .complete(id, "w", None, Status::Completed, Some(data.as_bytes()))
                .unwrap());
            let done = b.get(id).unwrap().unwrap();
            assert_eq!(done.status, "completed");
            assert!(done.data.len() > 2 * data.len(), "{name}: result not kept");
        }
        drop(b);
        assert_eq!(page_size(&path), pages, "{name}");
    }
}

#[test]
fn opening_a_made_queue_only_reads_so_a_held_write_lock_does_not_stop_it() {
    let dir = TempDir::new();
    let path = dir.join("q.db");
    let mut b = SqliteBackend::open(&path, Options::default()).unwrap();
    let id = create1(&mut b, task("job", "{}"));
    drop(b);
    // An index an earlier tm did not make is made at the next open (which then writes).
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("DROP INDEX tm_queue_children").unwrap();
    drop(SqliteBackend::open(&path, Options::default()).unwrap());
    let indexes: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'tm_queue_children'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(indexes, 1);
    // Another connection holds the write lock: opening and reading go on, writing waits.
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    let opts = Options {
        lock_timeout: Duration::from_millis(50),
        ..Options::default()
    };
    let mut b = SqliteBackend::open(&path, opts).unwrap();
    assert_eq!(b.get(&id).unwrap().unwrap().status, "pending");
    assert!(matches!(
        b.claim("w", None),
        Err(QueueError::LockTimeout { .. })
    ));
    c.execute_batch("ROLLBACK").unwrap();
    assert_eq!(b.claim("w", None).unwrap().unwrap().id, id);
}

#[test]
fn a_claim_with_nothing_to_claim_does_not_wait_for_a_held_write_lock() {
    let dir = TempDir::new();
    let path = dir.join("q.db");
    let opts = Options {
        lock_timeout: Duration::from_millis(50),
        ..Options::default()
    };
    let mut b = SqliteBackend::open(&path, opts.clone()).unwrap();
    let id = create1(&mut b, task("job", "{}"));
    let held = b.claim("w", None).unwrap().unwrap();
    assert_eq!(held.id, id);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Nothing claimable (the one task is held): empty at once, not a lock timeout; for batches too.
    assert_eq!(b.claim("w", None).unwrap().map(|t| t.id), None);
    assert!(b.claim_many("w", None, 4).unwrap().is_empty());
    c.execute_batch("ROLLBACK").unwrap();
    let other = create1(&mut b, task("other", "{}"));
    c.execute_batch("BEGIN IMMEDIATE").unwrap();
    // A task of another type is not claimable by this filter; a claimable one waits for the lock.
    let job = ["job".to_owned()];
    assert_eq!(b.claim("w", Some(&job)).unwrap().map(|t| t.id), None);
    assert!(matches!(
        b.claim("w", None),
        Err(QueueError::LockTimeout { .. })
    ));
    c.execute_batch("ROLLBACK").unwrap();
    assert_eq!(b.claim("w", None).unwrap().unwrap().id, other);
    // Without the lock held elsewhere the claim is the usual transaction.
    assert!(b.complete(&id, "w", None, Status::Completed, None).unwrap());
    assert_eq!(b.claim("w", None).unwrap().map(|t| t.id), None);
}
