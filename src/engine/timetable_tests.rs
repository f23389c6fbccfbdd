use std::thread;

use super::*;

fn us(text: &str) -> i64 {
    text.parse::<Timestamp>()
        .map(|t| t.as_microsecond())
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn iso(micros: i64) -> String {
    Timestamp::from_microsecond(micros)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn timing(expr: &str, tz: &str) -> Timing {
    with_rule(Rule::Cron {
        expr: Expression::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")),
        tz: TimeZone::get(tz).unwrap_or_else(|e| panic!("{tz}: {e}")),
    })
}

fn with_rule(rule: Rule) -> Timing {
    Timing {
        rule,
        jitter_us: 0,
        grace_us: 1_000_000,
        catchup: Catchup::Latest,
        max_catchup: 100,
    }
}

/// Moves the clock to the next due time and returns what fired there.
fn step(tt: &Timetable) -> Vec<Fire> {
    let due = tt.next_due().expect("a due time");
    tt.clock().set_micros(due);
    let (fires, at) = tt.wait(Duration::ZERO);
    assert_eq!(at, due);
    tt.handled(at);
    fires
}

fn sequence(expr: &str, tz: &str, from: &str, n: usize) -> Vec<String> {
    let tt = Timetable::new(Clock::manual(us(from)));
    tt.add("g", timing(expr, tz), None);
    (0..n)
        .flat_map(|_| step(&tt))
        .map(|f| {
            assert_eq!(f.kind, FireKind::Scheduled);
            iso(f.scheduled_us)
        })
        .collect()
}

#[test]
fn london_fall_back_fires_once_at_0130() {
    // 2026-10-25: 01:00-02:00 happens twice (BST then GMT).
    let got = sequence("30 1 * * *", "Europe/London", "2026-10-23T12:00:00Z", 4);
    assert_eq!(
        got,
        [
            "2026-10-24T00:30:00Z", // 01:30 BST
            "2026-10-25T00:30:00Z", // 01:30 BST, first pass of the fold; not again at 01:30 GMT
            "2026-10-26T01:30:00Z", // 01:30 GMT
            "2026-10-27T01:30:00Z",
        ]
    );
}

#[test]
fn london_hourly_fires_in_both_passes_of_the_fold() {
    let got = sequence("30 * * * *", "Europe/London", "2026-10-24T23:00:00Z", 4);
    assert_eq!(
        got,
        [
            "2026-10-24T23:30:00Z", // 00:30 BST
            "2026-10-25T00:30:00Z", // 01:30 BST
            "2026-10-25T01:30:00Z", // 01:30 GMT
            "2026-10-25T02:30:00Z", // 02:30 GMT
        ]
    );
}

#[test]
fn london_spring_forward_fires_at_the_end_of_the_gap() {
    // 2026-03-29: 01:00 GMT jumps to 02:00 BST; 01:30 does not exist.
    let got = sequence("30 1 * * *", "Europe/London", "2026-03-27T12:00:00Z", 3);
    assert_eq!(
        got,
        [
            "2026-03-28T01:30:00Z", // 01:30 GMT
            "2026-03-29T01:00:00Z", // 02:00 BST, the first instant after the gap
            "2026-03-30T00:30:00Z", // 01:30 BST
        ]
    );
}

#[test]
fn month_ends_and_leap_days() {
    let got = sequence("0 0 31 * *", "UTC", "2027-12-31T12:00:00Z", 7);
    let months: Vec<&str> = got.iter().map(|s| &s[..10]).collect();
    assert_eq!(
        months,
        [
            "2028-01-31",
            "2028-03-31",
            "2028-05-31",
            "2028-07-31",
            "2028-08-31",
            "2028-10-31",
            "2028-12-31"
        ]
    );
    let got = sequence("0 6 29 2 *", "Asia/Tokyo", "2027-01-01T00:00:00Z", 2);
    assert_eq!(got, ["2028-02-28T21:00:00Z", "2032-02-28T21:00:00Z"]);
}

fn outage(catchup: Catchup, max_catchup: usize) -> Vec<(FireKind, String)> {
    let clock = Clock::manual(us("2026-01-01T10:30:00Z"));
    let tt = Timetable::new(clock.clone());
    let mut t = timing("0 * * * *", "UTC");
    t.catchup = catchup;
    t.max_catchup = max_catchup;
    // The previous process handled 00:00 and was down until 10:30.
    tt.add("g", t, Some(us("2026-01-01T00:00:00Z")));
    let (fires, _) = tt.wait(Duration::ZERO);
    assert!(fires.iter().all(|f| f.count == 1 && f.graph == "g"));
    // Nothing due any more until 11:00.
    assert_eq!(tt.next_due(), Some(us("2026-01-01T11:00:00Z")));
    fires
        .into_iter()
        .map(|f| (f.kind, iso(f.scheduled_us)[11..16].to_string()))
        .collect()
}

fn hours(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|h| format!("{h:02}:00")).collect()
}

#[test]
fn catchup_none_records_every_missed_fire() {
    let got = outage(Catchup::None, 100);
    assert!(got.iter().all(|(k, _)| *k == FireKind::Missed));
    let times: Vec<String> = got.into_iter().map(|(_, t)| t).collect();
    assert_eq!(times, hours(1, 10));
}

#[test]
fn catchup_latest_runs_the_newest_missed_fire() {
    let got = outage(Catchup::Latest, 100);
    assert_eq!(got.len(), 10);
    assert!(got[..9].iter().all(|(k, _)| *k == FireKind::Missed));
    assert_eq!(got[9], (FireKind::Catchup, "10:00".to_string()));
}

#[test]
fn catchup_all_runs_at_most_max_catchup_newest() {
    let got = outage(Catchup::All, 3);
    let missed: Vec<&str> = got
        .iter()
        .filter(|(k, _)| *k == FireKind::Missed)
        .map(|(_, t)| t.as_str())
        .collect();
    let run: Vec<&str> = got
        .iter()
        .filter(|(k, _)| *k == FireKind::Catchup)
        .map(|(_, t)| t.as_str())
        .collect();
    assert_eq!(missed, hours(1, 7));
    assert_eq!(run, ["08:00", "09:00", "10:00"]);
    let all = outage(Catchup::All, 100);
    assert!(all.iter().all(|(k, _)| *k == FireKind::Catchup));
    assert_eq!(all.len(), 10);
}

#[test]
fn fires_within_grace_are_on_time_and_latest_needs_no_catchup_then() {
    let clock = Clock::manual(us("2026-01-01T03:00:00.5Z"));
    let tt = Timetable::new(clock);
    tt.add(
        "g",
        timing("0 * * * *", "UTC"),
        Some(us("2026-01-01T00:00:00Z")),
    );
    let (fires, _) = tt.wait(Duration::ZERO);
    let kinds: Vec<FireKind> = fires.iter().map(|f| f.kind).collect();
    assert_eq!(
        kinds,
        [FireKind::Missed, FireKind::Missed, FireKind::Scheduled]
    );
    assert_eq!(iso(fires[2].scheduled_us), "2026-01-01T03:00:00Z");
}

#[test]
fn a_long_outage_is_listed_then_summarised_never_dropped() {
    let clock = Clock::manual(us("2026-01-02T00:00:00.5Z"));
    let tt = Timetable::new(clock);
    let mut t = timing("* * * * * *", "UTC");
    t.catchup = Catchup::None;
    t.grace_us = 0;
    tt.add("g", t, Some(us("2026-01-01T00:00:00Z")));
    let (fires, _) = tt.wait(Duration::ZERO);
    assert_eq!(fires.len(), MAX_LISTED + 1);
    let total: u64 = fires.iter().map(|f| f.count).sum();
    assert_eq!(total, 86_400);
    let last = fires.last().expect("summary");
    assert_eq!(iso(last.through_us), "2026-01-02T00:00:00Z");
    assert_eq!(
        last.scheduled_us,
        fires[MAX_LISTED - 1].scheduled_us + 1_000_000
    );
}

#[test]
fn jitter_is_deterministic_bounded_and_spreads_names() {
    assert_eq!(jitter_offset("a", 0), 0);
    let j = 60_000_000;
    let offsets: Vec<i64> = (0..50)
        .map(|i| jitter_offset(&format!("g{i}"), j))
        .collect();
    assert!(offsets.iter().all(|o| (0..j).contains(o)));
    assert_eq!(offsets[7], jitter_offset("g7", j));
    let distinct: std::collections::HashSet<_> = offsets.iter().collect();
    assert!(distinct.len() > 40);

    let tt = Timetable::new(Clock::manual(us("2026-01-01T00:00:00Z")));
    let mut t = timing("0 * * * *", "UTC");
    t.jitter_us = j;
    tt.add("g7", t, None);
    let fires = step(&tt);
    assert_eq!(fires[0].scheduled_us, us("2026-01-01T01:00:00Z"));
    assert_eq!(fires[0].due_us, fires[0].scheduled_us + offsets[7]);
}

#[test]
fn several_graphs_fire_in_due_order_and_remove_stops_one() {
    let tt = Timetable::new(Clock::manual(us("2026-01-01T00:00:00Z")));
    tt.add("every2", timing("*/2 * * * *", "UTC"), None);
    tt.add("every3", timing("*/3 * * * *", "UTC"), None);
    let mut seen = Vec::new();
    for _ in 0..4 {
        for f in step(&tt) {
            seen.push(format!("{}@{}", f.graph, &iso(f.scheduled_us)[14..16]));
        }
    }
    assert_eq!(
        seen,
        [
            "every2@02",
            "every3@03",
            "every2@04",
            "every2@06",
            "every3@06"
        ]
    );
    assert!(tt.remove("every2"));
    assert!(!tt.remove("every2"));
    assert_eq!(tt.graphs(), ["every3"]);
    let f = step(&tt);
    assert_eq!(f.len(), 1);
    assert_eq!(iso(f[0].scheduled_us), "2026-01-01T00:09:00Z");
}

#[test]
fn re_adding_keeps_the_position_and_churn_does_not_grow_the_heap() {
    let tt = Timetable::new(Clock::manual(us("2026-01-01T00:00:00Z")));
    tt.add("g", timing("0 * * * *", "UTC"), None);
    step(&tt);
    tt.add("g", timing("0 * * * *", "UTC"), None);
    assert_eq!(
        tt.next_fire("g"),
        Some((us("2026-01-01T02:00:00Z"), us("2026-01-01T02:00:00Z")))
    );
    for _ in 0..1000 {
        tt.add("h", timing("0 * * * *", "UTC"), None);
        tt.remove("h");
    }
    assert_eq!(tt.shared.lock().heap.len(), 1);
}

#[test]
fn a_waiter_wakes_when_the_manual_clock_reaches_a_due_time() {
    let clock = Clock::manual(us("2026-01-01T00:00:00Z"));
    let tt = Arc::new(Timetable::new(clock.clone()));
    tt.add("g", timing("0 * * * *", "UTC"), None);
    tt.wait(Duration::ZERO); // consume the wake from add()
    let waiter = {
        let tt = Arc::clone(&tt);
        thread::spawn(move || tt.wait(Duration::from_secs(30)))
    };
    // A move short of the due time fires nothing; the waiter keeps waiting (settle proves it
    // looked at the new time).
    clock.set_micros(us("2026-01-01T00:30:00Z"));
    assert!(tt.settle(Duration::from_secs(30)));
    clock.set_micros(us("2026-01-01T01:00:00Z"));
    let (fires, at) = waiter.join().expect("waiter");
    assert_eq!(at, us("2026-01-01T01:00:00Z"));
    assert_eq!(fires.len(), 1);
    assert!(!tt.settle(Duration::ZERO));
    tt.handled(at);
    assert!(tt.settle(Duration::ZERO));
}

#[test]
fn wake_interrupts_a_wait_without_fires() {
    let tt = Arc::new(Timetable::new(Clock::System));
    let waiter = {
        let tt = Arc::clone(&tt);
        thread::spawn(move || tt.wait(Duration::from_secs(30)))
    };
    tt.wake();
    let (fires, _) = waiter.join().expect("waiter");
    assert!(fires.is_empty());
}

#[test]
fn system_clock_fires_a_seconds_schedule() {
    let tt = Timetable::new(Clock::System);
    tt.add("s", timing("* * * * * *", "UTC"), None);
    let mut fired = Vec::new();
    while fired.len() < 2 {
        let (fires, now) = tt.wait(Duration::from_secs(5));
        for f in fires {
            assert!(f.due_us <= now);
            fired.push(f.scheduled_us);
        }
    }
    assert_eq!(fired[1] - fired[0], 1_000_000);
    assert_eq!(fired[0] % 1_000_000, 0);
}

#[test]
fn intervals_count_elapsed_time_from_their_anchor() {
    let every = |period_us, anchor_us| Rule::Every {
        period_us,
        anchor_us,
    };
    let five_min = 300_000_000;
    let r = every(five_min, 0);
    assert_eq!(
        r.next_after(us("2026-03-29T00:58:00Z")),
        Some(us("2026-03-29T01:00:00Z"))
    );
    // Strictly after: a fire time itself moves on by a whole period.
    assert_eq!(
        r.next_after(us("2026-03-29T01:00:00Z")),
        Some(us("2026-03-29T01:05:00Z"))
    );
    // Anchored elsewhere, and before the epoch.
    let r = every(five_min, us("2026-01-01T00:02:30Z"));
    assert_eq!(
        r.next_after(us("2026-03-29T01:00:00Z")),
        Some(us("2026-03-29T01:02:30Z"))
    );
    assert_eq!(
        r.next_after(us("1969-12-31T23:59:59Z")),
        Some(us("1970-01-01T00:02:30Z"))
    );
    // Past the representable range: no fire, no overflow.
    assert_eq!(every(i64::MAX / 2, 0).next_after(i64::MAX - 5), None);
    let last = Timestamp::MAX.as_microsecond();
    assert_eq!(every(3_600_000_000, 0).next_after(last - 1), None);
}

#[test]
fn an_interval_ignores_daylight_saving() {
    // Through London's spring-forward night: one fire per elapsed hour, 23 on a 23-hour day.
    let tt = Timetable::new(Clock::manual(us("2026-03-29T00:00:00Z") - 1));
    tt.add(
        "g",
        with_rule(Rule::Every {
            period_us: 3_600_000_000,
            anchor_us: 0,
        }),
        None,
    );
    let fires: Vec<i64> = (0..4)
        .flat_map(|_| step(&tt))
        .map(|f| f.scheduled_us)
        .collect();
    let gaps: Vec<i64> = fires.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(fires[0], us("2026-03-29T00:00:00Z"));
    assert_eq!(gaps, [3_600_000_000; 3]);
}
