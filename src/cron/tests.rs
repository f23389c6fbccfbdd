//! Module-level tests through the public API: equality and normalised text, and property tests
//! (no input panics; `next_after`/`prev_before` are exact against a second-by-second scan).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use proptest::prelude::*;

use super::calendar::{days_in_month, from_wall_seconds, to_wall_seconds};
use super::*;

fn e(text: &str) -> Expression {
    Expression::parse(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
}

fn hash_of(e: &Expression) -> u64 {
    let mut h = DefaultHasher::new();
    e.hash(&mut h);
    h.finish()
}

#[test]
fn equality_compares_schedules() {
    let groups: &[&[&str]] = &[
        &[
            "0 0 * * 0",
            "0 0 * * 7",
            "0 0 * * SUN",
            "0 0 * * sun",
            "@weekly",
            "0 0 0 * * 0",
        ],
        &["* * * * *", "0 * * * * *", "*/1 * * * *", "0-59 * * * *"],
        &[
            "0 0 * * *",
            "@daily",
            "@midnight",
            "0 0 ? * ?",
            "0 0 1-31 * *",
            "0 0 * * 0-6",
            "0 0 1 * 0-7",
        ],
        &[
            "0 9 * * mon-fri",
            "0 9 * * 1-5",
            "0 9 ? * MON,TUE,WED,THU,FRI",
            "00 09 * * 1-5",
        ],
        &["0 0 1 1 *", "@yearly", "@annually", "0 0 1 jan *"],
        &["0 0 L * *", "0 0 l * *"],
        &["0 0 * * 5L", "0 0 * * 5l", "0 0 * * 5L,5L"],
        &["0 0 1 nov-feb *", "0 0 1 11,12,1,2 *", "0 0 1 11-2 *"],
        &["0 22-1 * * *", "0 22,23,0,1 * * *"],
        &[
            "0 0 * * sat-mon",
            "0 0 * * 6-1",
            "0 0 * * 7-1,6",
            "0 0 * * 0,1,6",
        ],
        &["*/90 * * * *", "0 * * * *", "*/60 * * * *", "0/61 * * * *"],
    ];
    for group in groups {
        let first = e(group[0]);
        for text in group.iter() {
            assert_eq!(e(text), first, "{text:?} vs {:?}", group[0]);
            assert_eq!(hash_of(&e(text)), hash_of(&first), "{text:?}");
        }
    }
    for pair in groups.windows(2) {
        assert_ne!(e(pair[0][0]), e(pair[1][0]));
    }
    assert_ne!(e("0 0 1 * *"), e("0 0 1 * mon"));
    assert_ne!(e("0 0 * * mon"), e("0 0 */1 * mon")); // OR with every day
    assert_eq!(e("0 0 */1 * mon"), e("0 0 * * *"));
}

#[test]
fn display_round_trips() {
    let samples = [
        "*/5 * * * *",
        "0 9 * * mon-fri",
        "0 0 1 * *",
        "1-2,*/15 0 1 3 2",
        "*/7 1-5,20 */3 feb-nov/3 sat,sun",
        "0 0 29 2 *",
        "0 0 30 2 mon",
        "0 0 L,LW,L-2 * 5L,1#2,0#5",
        "0 0 1W * *",
        "0 0 31W 4 *",
        "0 22-2/3 1-L/8 nov-mar sat-mon",
        "*/90 */30 */40 */13 */8",
        "0 0 ? * 5-7",
        "10-50/20 5/3 * * * *",
        "0 */5 1-10 * *",
        "@hourly",
        "0 0 * * fri-sun",
        "5 4 3,17 */2 2/2",
    ];
    for text in samples {
        let x = e(text);
        let again = e(&x.to_string());
        assert_eq!(again, x, "{text:?} -> {x}");
        assert_eq!(again.to_string(), x.to_string());
        assert_eq!(again.has_seconds(), x.has_seconds());
        assert_eq!(text.parse::<Expression>().ok(), Some(x.clone()));
        assert_eq!(format!("{x:?}"), format!("Expression({:?})", x.to_string()));
    }
}

#[test]
fn predicates() {
    assert!(e("0 * * * * *").has_seconds());
    assert!(!e("0 * * * *").has_seconds());
    assert!(!e("@hourly").has_seconds());
    assert!(e("*/15 * * * *").is_hour_wildcard());
    assert!(e("0 0-23 * * *").is_hour_wildcard());
    assert!(e("@hourly").is_hour_wildcard());
    assert!(!e("0 1 * * *").is_hour_wildcard());
    assert!(!e("0 */2 * * *").is_hour_wildcard());
}

#[test]
fn civil_new_validates() {
    assert!(Civil::new(2024, 2, 29, 23, 59, 59).is_some());
    assert!(Civil::new(2023, 2, 29, 0, 0, 0).is_none());
    assert!(Civil::new(2024, 4, 31, 0, 0, 0).is_none());
    assert!(Civil::new(0, 1, 1, 0, 0, 0).is_none());
    assert!(Civil::new(10_000, 1, 1, 0, 0, 0).is_none());
    assert!(Civil::new(2024, 1, 1, 24, 0, 0).is_none());
    assert!(Civil::new(2024, 13, 1, 0, 0, 0).is_none());
    assert!(Civil::new(2024, 1, 0, 0, 0, 0).is_none());
}

/// Release-mode timing sanity: `cargo test --release --no-default-features --lib cron -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run in release mode"]
fn timing() {
    let tz = jiff::tz::TimeZone::get("America/New_York").unwrap_or(jiff::tz::TimeZone::UTC);
    for text in [
        "*/5 * * * *",
        "0 9 * * mon-fri",
        "0 0 1 * *",
        "1-2,*/15 0 1 3 2",
        "0 0 L * 5L",
        "0 0 29 2 *",
    ] {
        let x = e(text);
        let n = 200_000;
        let mut t = Civil {
            year: 2024,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
        };
        let start = std::time::Instant::now();
        for _ in 0..n {
            t = std::hint::black_box(&x).next_after(t).unwrap_or(t);
        }
        let next = start.elapsed().as_nanos() / n;
        let start = std::time::Instant::now();
        for _ in 0..n {
            t = std::hint::black_box(&x).prev_before(t).unwrap_or(t);
        }
        let prev = start.elapsed().as_nanos() / n;
        let mut ts = jiff::Timestamp::from_second(1_704_067_200).unwrap_or(jiff::Timestamp::MIN);
        let start = std::time::Instant::now();
        for _ in 0..n / 10 {
            ts = std::hint::black_box(&x)
                .next_after_in(&tz, ts)
                .unwrap_or(ts);
        }
        let zoned = start.elapsed().as_nanos() / (n / 10);
        let start = std::time::Instant::now();
        for _ in 0..n / 10 {
            std::hint::black_box(Expression::parse(std::hint::black_box(text)).is_ok());
        }
        let parse = start.elapsed().as_nanos() / (n / 10);
        eprintln!("{text:24} parse {parse:4} ns  next_after {next:4} ns  prev_before {prev:4} ns  next_after_in(New York) {zoned:5} ns");
    }
}

/// Fragments of valid and invalid syntax, to build strings that get past the first checks.
const FRAGMENTS: &[&str] = &[
    "*",
    "?",
    "/",
    "-",
    ",",
    " ",
    "  ",
    "\t",
    "0",
    "1",
    "7",
    "12",
    "23",
    "31",
    "59",
    "60",
    "99999999999999999999",
    "L",
    "W",
    "LW",
    "#",
    "l",
    "w",
    "jan",
    "DEC",
    "mon",
    "Sun",
    "fri",
    "@",
    "@daily",
    "@yearly",
    "@x",
    "٣",
    "５",
    "é",
    "\u{0}",
    "-1",
    "*/0",
    "*/",
    "1-",
    "L-",
    "5L",
    "1#5",
    "15W",
    "31W",
    "nov-mar",
    "sat-mon",
    "1-L",
    "",
];

fn from_fragments() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..16).prop_map(|v| v.concat())
}

/// One list item of a field with values `min..=max`: ranges in either order (a reversed one
/// wraps) and steps up to three times the field's span.
fn item(min: u32, max: u32) -> BoxedStrategy<String> {
    let span = max - min + 1;
    prop_oneof![
        Just("*".to_string()),
        (min..=max).prop_map(|v| v.to_string()),
        (min..=max, min..=max).prop_map(|(a, b)| format!("{a}-{b}")),
        (1..=3 * span).prop_map(|s| format!("*/{s}")),
        (min..=max, min..=max, 1..=3 * span).prop_map(|(a, b, s)| format!("{a}-{b}/{s}")),
        (min..=max, 1..=3 * span).prop_map(|(a, s)| format!("{a}/{s}")),
    ]
    .boxed()
}

fn field(min: u32, max: u32, extra: &'static [&'static str]) -> BoxedStrategy<String> {
    let one = if extra.is_empty() {
        item(min, max)
    } else {
        prop_oneof![4 => item(min, max), 1 => prop::sample::select(extra).prop_map(str::to_string)]
            .boxed()
    };
    let list = prop::collection::vec(one, 1..=3).prop_map(|v| v.join(","));
    prop_oneof![2 => Just("*".to_string()), 3 => list].boxed()
}

fn expression() -> impl Strategy<Value = String> {
    (
        prop::option::of(field(0, 59, &[])),
        field(0, 59, &[]),
        field(0, 23, &[]),
        field(1, 31, &["L", "LW", "L-3", "1-L/8", "20-L", "?"]),
        field(1, 12, &["jan", "jun-aug"]),
        field(0, 7, &["5L", "1#2", "0#5", "mon-fri", "?"]),
    )
        .prop_map(|(s, mi, h, dom, mo, dow)| {
            let five = format!("{mi} {h} {dom} {mo} {dow}");
            match s {
                Some(s) => format!("{s} {five}"),
                None => five,
            }
        })
}

fn civil() -> impl Strategy<Value = Civil> {
    (
        prop_oneof![4 => 1990..2040i32, 1 => 1..=9999i32],
        1..=12u8,
        1..=31u8,
        0..24u8,
        0..60u8,
        0..60u8,
    )
        .prop_map(|(year, month, day, hour, minute, second)| {
            let day = day.min(days_in_month(year, i32::from(month)) as u8);
            Civil {
                year,
                month,
                day,
                hour,
                minute,
                second,
            }
        })
}

/// Window (in seconds) below which the property test checks every second in between.
const BRUTE_FORCE: i64 = 50_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), frag in from_fragments()) {
        for text in [text, frag] {
            if let Ok(x) = Expression::parse(&text) {
                prop_assert_eq!(Expression::parse(&x.to_string()), Ok(x.clone()));
                let t = Civil { year: 2024, month: 1, day: 1, hour: 0, minute: 0, second: 0 };
                prop_assert!(x.next_after(t).is_some() || x.prev_before(t).is_some());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn next_and_prev_are_exact(text in expression(), t in civil()) {
        let Ok(x) = Expression::parse(&text) else { return Ok(()) };
        prop_assert_eq!(Expression::parse(&x.to_string()), Ok(x.clone()));
        let wall = to_wall_seconds(t);
        if let Some(next) = x.next_after(t) {
            prop_assert!(next > t);
            prop_assert!(x.matches(next), "{} does not match {:?}", text, next);
            prop_assert!(x.prev_before(next).is_some_and(|p| p <= t));
            let gap = to_wall_seconds(next) - wall;
            if gap <= BRUTE_FORCE {
                for s in wall + 1..wall + gap {
                    let between = from_wall_seconds(s);
                    prop_assert!(!between.is_some_and(|c| x.matches(c)), "{} matches {:?}", text, between);
                }
            }
        }
        if let Some(prev) = x.prev_before(t) {
            prop_assert!(prev < t);
            prop_assert!(x.matches(prev), "{} does not match {:?}", text, prev);
            prop_assert!(x.next_after(prev).is_some_and(|n| n >= t));
            let gap = wall - to_wall_seconds(prev);
            if gap <= BRUTE_FORCE {
                for s in wall - gap + 1..wall {
                    let between = from_wall_seconds(s);
                    prop_assert!(!between.is_some_and(|c| x.matches(c)), "{} matches {:?}", text, between);
                }
            }
        }
        prop_assert!(x.next_after(t).is_some() || x.prev_before(t).is_some());
    }
}
