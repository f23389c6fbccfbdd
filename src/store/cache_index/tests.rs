//! Tests of the cache index through the store's verbs, on real files.

use super::*;
use crate::store::tests::TempDb;
use crate::store::Store;

fn facts(key: &str) -> CallFacts {
    CallFacts {
        key: key.into(),
        module: "m".into(),
        func: "f".into(),
        seed: Some("7".into()),
        inputs_json: r#"{"x":1}"#.into(),
        version: "v1".into(),
    }
}

fn req(key: &str, pid: i64, now_us: i64) -> ClaimRequest {
    ClaimRequest {
        facts: facts(key),
        use_cache: true,
        owner: Owner {
            pid,
            host: "h".into(),
        },
        now_us,
        lease_us: 1_000,
        takeover: None,
    }
}

fn result(path: &str) -> StoredResult {
    StoredResult {
        result_path: path.into(),
        format: "json".into(),
        content_hash: "abc".into(),
        size: 3,
        expires_us: None,
        duration_us: Some(5),
    }
}

fn token(c: Claim) -> i64 {
    match c {
        Claim::Run { token } => token,
        other => panic!("expected Run, got {other:?}"),
    }
}

/// A database for one test: an SQLite file, or a fresh PostgreSQL schema.
struct Db {
    _tmp: Option<TempDb>,
    url: String,
}

/// The databases a test runs on: SQLite, and PostgreSQL when `TM_TEST_PG_URL` is set.
fn dbs(tag: &str) -> Vec<Db> {
    let tmp = TempDb::new(tag);
    let mut v = vec![Db {
        url: tmp.url(),
        _tmp: Some(tmp),
    }];
    if let Some(url) = crate::store::tests::pg_schema_url() {
        v.push(Db { _tmp: None, url });
    }
    v
}

fn open(db: &Db) -> Store {
    Store::open(&db.url).expect("open")
}

#[test]
fn first_claim_runs_then_others_wait_then_hit() {
    for tmp in dbs("cache-claim") {
        let store = open(&tmp);
        assert_eq!(store.cache_lookup("k", 0).expect("lookup"), None);
        let t = token(store.cache_claim(&req("k", 1, 10)).expect("claim"));
        match store.cache_claim(&req("k", 2, 11)).expect("claim") {
            Claim::Busy(s) => {
                assert_eq!(s.status, "RUNNING");
                assert_eq!(s.owner.map(|o| o.pid), Some(1));
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        let e = store
            .cache_complete(&facts("k"), t, &result("/r/1.json"), 20)
            .expect("complete");
        assert_eq!(e.facts.seed.as_deref(), Some("7"));
        match store.cache_claim(&req("k", 2, 21)).expect("claim") {
            Claim::Hit(hit) => assert_eq!(hit, e),
            other => panic!("expected Hit, got {other:?}"),
        }
        assert_eq!(store.cache_lookup("k", 22).expect("lookup"), Some(e));
        let found = store.cache_find("k").expect("find");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0.status, "COMPLETED");
        assert_eq!(found[0].0.duration_us, Some(5));
    }
}

#[test]
fn a_second_store_sees_the_first_ones_claim() {
    for tmp in dbs("cache-two") {
        let (a, b) = (open(&tmp), open(&tmp));
        let t = token(a.cache_claim(&req("k", 1, 10)).expect("claim"));
        assert!(matches!(
            b.cache_claim(&req("k", 2, 11)).expect("claim"),
            Claim::Busy(_)
        ));
        a.cache_complete(&facts("k"), t, &result("/r"), 12)
            .expect("complete");
        assert!(matches!(
            b.cache_claim(&req("k", 2, 13)).expect("claim"),
            Claim::Hit(_)
        ));
    }
}

#[test]
fn expired_lease_or_dead_owner_is_taken_over() {
    for tmp in dbs("cache-lease") {
        let store = open(&tmp);
        let t1 = token(store.cache_claim(&req("k", 1, 0)).expect("claim"));
        // Lease 1000 us: at 999 still busy, at 1000 it has run out.
        assert!(matches!(
            store.cache_claim(&req("k", 2, 999)).expect("claim"),
            Claim::Busy(_)
        ));
        let t2 = token(store.cache_claim(&req("k", 2, 1_000)).expect("claim"));
        assert!(t2 > t1);
        // The old owner has lost the key: its heartbeat and release say so.
        assert!(!store.cache_heartbeat("k", t1, 5_000).expect("hb"));
        assert!(store.cache_heartbeat("k", t2, 5_000).expect("hb"));
        assert!(!store
            .cache_release("k", t1, "FAILED", None, 1_001)
            .expect("release"));
        // Owner 2 is proved dead by a caller on its host: taken over before the lease ends.
        let mut r = req("k", 3, 1_002);
        assert!(matches!(
            store.cache_claim(&r).expect("claim"),
            Claim::Busy(_)
        ));
        r.takeover = Some(Owner {
            pid: 2,
            host: "h".into(),
        });
        let t3 = token(store.cache_claim(&r).expect("claim"));
        assert!(t3 > t2);
        // A result from a lost lease is still stored, but the state stays with the new owner.
        store
            .cache_complete(&facts("k"), t2, &result("/late"), 1_003)
            .expect("complete");
        let (state, entry) = store.cache_find("k").expect("find").remove(0);
        assert_eq!(state.status, "RUNNING");
        assert_eq!(state.owner.map(|o| o.pid), Some(3));
        assert_eq!(entry.map(|e| e.result.result_path), Some("/late".into()));
    }
}

#[test]
fn forced_run_supersedes_and_ttl_expires() {
    for tmp in dbs("cache-force") {
        let store = open(&tmp);
        let t = token(store.cache_claim(&req("k", 1, 0)).expect("claim"));
        let mut r = result("/old");
        r.expires_us = Some(100);
        store
            .cache_complete(&facts("k"), t, &r, 1)
            .expect("complete");
        let mut force = req("k", 1, 2);
        force.use_cache = false;
        let t = token(store.cache_claim(&force).expect("claim"));
        store
            .cache_complete(&facts("k"), t, &result("/new"), 3)
            .expect("complete");
        let hit = store.cache_lookup("k", 4).expect("lookup");
        assert_eq!(hit.map(|e| e.result.result_path), Some("/new".into()));
        // Only the entry with a time to live expires.
        let t = token(store.cache_claim(&force).expect("claim"));
        store
            .cache_release("k", t, "FAILED", Some(("ValueError", "bad")), 5)
            .expect("release");
        let hit = store.cache_lookup("k", 1_000).expect("lookup");
        assert_eq!(hit.map(|e| e.result.result_path), Some("/new".into()));
        let (state, _) = store.cache_find("k").expect("find").remove(0);
        assert_eq!(state.status, "FAILED");
        assert_eq!(state.error_message.as_deref(), Some("bad"));
    }
}

#[test]
fn supersede_deletes_only_older_entries_of_the_key() {
    for tmp in dbs("cache-supersede") {
        let store = open(&tmp);
        let mut force = req("k", 1, 0);
        force.use_cache = false;
        let mut ids = Vec::new();
        for (i, path) in ["/a", "/b", "/c"].into_iter().enumerate() {
            let t = token(store.cache_claim(&force).expect("claim"));
            let e = store
                .cache_complete(&facts("k"), t, &result(path), i as i64)
                .expect("complete");
            ids.push(e.id);
        }
        let t = token(store.cache_claim(&req("other", 1, 5)).expect("claim"));
        store
            .cache_complete(&facts("other"), t, &result("/other"), 6)
            .expect("complete");
        let gone = store.cache_supersede("k", ids[2]).expect("supersede");
        let mut paths: Vec<_> = gone.iter().map(|e| e.result.result_path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["/a", "/b"]);
        let left: Vec<_> = store
            .cache_entries(&CacheFilter::default())
            .expect("entries")
            .into_iter()
            .map(|e| e.result.result_path)
            .collect();
        assert_eq!(left, ["/other", "/c"]);
        let hit = store.cache_lookup("k", 7).expect("lookup");
        assert_eq!(hit.map(|e| e.result.result_path), Some("/c".into()));
        assert!(store
            .cache_supersede("k", ids[2])
            .expect("again")
            .is_empty());
    }
}

#[test]
fn expired_entry_is_a_miss() {
    for tmp in dbs("cache-ttl") {
        let store = open(&tmp);
        let t = token(store.cache_claim(&req("k", 1, 0)).expect("claim"));
        let mut r = result("/old");
        r.expires_us = Some(100);
        store
            .cache_complete(&facts("k"), t, &r, 1)
            .expect("complete");
        assert!(store.cache_lookup("k", 99).expect("lookup").is_some());
        assert!(store.cache_lookup("k", 100).expect("lookup").is_none());
        assert!(matches!(
            store.cache_claim(&req("k", 1, 100)).expect("claim"),
            Claim::Run { .. }
        ));
    }
}

#[test]
fn clear_by_function_and_age() {
    for tmp in dbs("cache-clear") {
        let store = open(&tmp);
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let mut f = facts(key);
            if *key == "c" {
                f.func = "g".into();
            }
            let mut r = req(key, 1, i as i64 * 10);
            r.facts = f.clone();
            let t = token(store.cache_claim(&r).expect("claim"));
            store
                .cache_complete(&f, t, &result(key), i as i64 * 10)
                .expect("complete");
        }
        let filter = CacheFilter {
            func: Some("m.f".into()),
            ..Default::default()
        };
        assert_eq!(store.cache_entries(&filter).expect("ls").len(), 2);
        let mut nested = facts("n");
        nested.func = "outer.<locals>.f".into();
        let mut r = req("n", 1, 1);
        r.facts = nested.clone();
        let t = token(store.cache_claim(&r).expect("claim"));
        store
            .cache_complete(&nested, t, &result("n"), 1)
            .expect("complete");
        let by_tail = |func: &str| {
            let filter = CacheFilter {
                func: Some(func.into()),
                ..Default::default()
            };
            store.cache_entries(&filter).expect("ls").len()
        };
        assert_eq!(by_tail("f"), 3);
        assert_eq!(by_tail("<locals>.f"), 1);
        assert_eq!(by_tail("r.<locals>.f"), 0);
        assert_eq!(by_tail("m.outer.<locals>.f"), 1);
        store
            .cache_clear(&CacheFilter {
                func: Some("outer.<locals>.f".into()),
                ..Default::default()
            })
            .expect("clear");
        let old = CacheFilter {
            func: Some("f".into()),
            created_before_us: Some(5),
            limit: None,
        };
        let gone = store.cache_clear(&old).expect("clear");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].facts.key, "a");
        assert!(store.cache_find("a").expect("find").is_empty());
        let all = store.cache_entries(&CacheFilter::default()).expect("ls");
        let keys: Vec<_> = all.iter().map(|e| e.facts.key.as_str()).collect();
        assert_eq!(keys, ["c", "b"]);
        assert_eq!(
            store
                .cache_states(&CacheFilter::default())
                .expect("st")
                .len(),
            2
        );
    }
}

/// `cargo test --release --no-default-features --lib cache_index::timing -- --ignored --nocapture`
#[cfg(test)]
mod timing {
    use super::*;
    use crate::store::tests::TempDb;
    use crate::store::Store;

    #[test]
    #[ignore]
    fn lookup_cost() {
        let tmp = TempDb::new("cache-timing");
        let store = Store::open(&tmp.url()).expect("open");
        let f = CacheFilter::default();
        for (label, n) in [("lookup", 0), ("states", 1), ("entries", 2)] {
            let t0 = std::time::Instant::now();
            for _ in 0..20_000 {
                match n {
                    0 => drop(store.cache_lookup("nokey", 0).expect("lookup")),
                    1 => drop(store.cache_states(&f).expect("states")),
                    _ => drop(store.cache_entries(&f).expect("entries")),
                }
            }
            eprintln!("{label}: {:?} per call", t0.elapsed() / 20_000);
        }
    }
}
