//! Fire instants in a time zone, with the DST policy:
//!
//! - a wall time in a spring-forward gap fires at the first instant after the gap (the
//!   transition itself); several such wall times collapse into that one fire;
//! - a wall time in a fall-back fold fires once, in the first pass, unless the hour field is a
//!   wildcard, in which case it fires in both passes.
//!
//! The search walks the zone's segments of constant offset (the stretches between
//! transitions). Inside a segment instant -> wall time is a shift, so the naive search applies
//! directly; the policy only acts at the transition that opens or closes a segment. Walking by
//! instant (not by wall time) keeps `t` inside a fold unambiguous.

use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::schedule::Schedule;

/// `t` rounded down to a whole second.
fn floor_second(t: Timestamp) -> i64 {
    t.as_second() - i64::from(t.subsec_nanosecond() < 0)
}

/// `t` rounded up to a whole second.
fn ceil_second(t: Timestamp) -> i64 {
    t.as_second() + i64::from(t.subsec_nanosecond() > 0)
}

fn timestamp(second: i64) -> Option<Timestamp> {
    Timestamp::from_second(second).ok()
}

/// UTC offset in seconds in effect at `second`.
fn offset_at(tz: &TimeZone, second: i64) -> Option<i64> {
    Some(i64::from(tz.to_offset(timestamp(second)?).seconds()))
}

/// The first transition strictly after `second`: its instant and the offset from then on.
fn next_transition(tz: &TimeZone, second: i64) -> Option<(i64, i64)> {
    let tr = tz.following(timestamp(second)?).next()?;
    let at = tr.timestamp().as_second();
    // Guard the "strictly after" contract rather than trusting every zone source for it.
    (at > second).then(|| (at, i64::from(tr.offset().seconds())))
}

/// The last transition at or before `second`: its instant and the offset before it.
fn prev_transition(tz: &TimeZone, second: i64) -> Option<(i64, i64)> {
    let tr = tz.preceding(timestamp(second.checked_add(1)?)?).next()?;
    let at = tr.timestamp().as_second();
    if at > second {
        return None;
    }
    Some((at, offset_at(tz, at - 1)?))
}

/// First fire instant strictly after `t`.
pub(crate) fn next_after_in(
    s: &Schedule,
    both_passes: bool,
    tz: &TimeZone,
    t: Timestamp,
) -> Option<Timestamp> {
    let lo = floor_second(t);
    let mut offset = offset_at(tz, lo)?;
    // Exclusive lower bound on wall time within the current segment.
    let mut wall_lo = lo + offset;
    // Wall times of the current segment that repeat a fold's first pass and must not fire.
    let mut suppressed = match both_passes {
        true => None,
        false => prev_transition(tz, lo)
            .filter(|&(_, before)| before > offset)
            .map(|(at, before)| (at + offset, at + before)),
    };
    let mut cursor = lo;
    loop {
        let mut c = s.next_after_wall(wall_lo)?;
        if let Some((a, b)) = suppressed {
            if (a..b).contains(&c) {
                c = s.next_after_wall(b - 1)?;
            }
        }
        let Some((at, after)) = next_transition(tz, cursor) else {
            return timestamp(c - offset);
        };
        let end_wall = at + offset;
        if c < end_wall {
            return timestamp(c - offset);
        }
        if after > offset {
            // Gap: wall times [end_wall, at + after) do not exist; any of them fires at `at`.
            if s.next_after_wall(end_wall - 1)
                .is_some_and(|g| g < at + after)
            {
                return timestamp(at);
            }
        }
        suppressed = (after < offset && !both_passes).then_some((at + after, at + offset));
        wall_lo = at + after - 1;
        offset = after;
        cursor = at;
    }
}

/// Last fire instant strictly before `t`.
pub(crate) fn prev_before_in(
    s: &Schedule,
    both_passes: bool,
    tz: &TimeZone,
    t: Timestamp,
) -> Option<Timestamp> {
    let hi = ceil_second(t);
    let mut offset = offset_at(tz, hi)?;
    // Exclusive upper bound on wall time within the current segment.
    let mut wall_hi = hi + offset;
    let mut cursor = hi;
    loop {
        let c = s.prev_before_wall(wall_hi)?;
        let Some((at, before)) = prev_transition(tz, cursor) else {
            return timestamp(c - offset);
        };
        let start_wall = at + offset;
        // After a fold, the wall times [start_wall, at + before) are a second pass.
        let lowest = if before > offset && !both_passes {
            at + before
        } else {
            start_wall
        };
        if c >= lowest {
            return timestamp(c - offset);
        }
        // A gap before this segment fires at its first instant, if that is before `t`.
        if before < offset
            && at < hi
            && s.prev_before_wall(start_wall)
                .is_some_and(|g| g >= at + before)
        {
            return timestamp(at);
        }
        wall_hi = at + before;
        offset = before;
        cursor = at - 1;
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use jiff::tz::{self, TimeZone};
    use jiff::Timestamp;

    use crate::cron::calendar::from_wall_seconds;
    use crate::cron::Expression;

    fn e(text: &str) -> Expression {
        Expression::parse(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap_or_else(|err| panic!("{name}: {err}"))
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap_or_else(|err| panic!("{text}: {err}"))
    }

    /// `next_after_in` then `prev_before_in` agree with `expected` (a chain of consecutive fires).
    fn assert_chain(text: &str, tz: &TimeZone, start: &str, expected: &[&str]) {
        let e = e(text);
        let mut t = at(start);
        for want in expected {
            let got = e.next_after_in(tz, t);
            assert_eq!(got, Some(at(want)), "{text:?} next after {t} in {tz:?}");
            t = at(want);
        }
        for pair in expected.windows(2) {
            assert_eq!(
                e.prev_before_in(tz, at(pair[1])),
                Some(at(pair[0])),
                "{text:?} prev before {}",
                pair[1]
            );
        }
    }

    #[test]
    fn new_york_spring_forward() {
        let ny = zone("America/New_York");
        // 2024-03-10 02:00 EST -> 03:00 EDT at 07:00Z; 02:00..02:59 do not exist.
        assert_chain(
            "30 2 * * *",
            &ny,
            "2024-03-10T05:00Z",
            &["2024-03-10T07:00Z", "2024-03-11T06:30Z"],
        );
        assert_chain(
            "*/15 * * * *",
            &ny,
            "2024-03-10T06:40Z",
            &[
                "2024-03-10T06:45Z",
                "2024-03-10T07:00Z",
                "2024-03-10T07:15Z",
            ],
        );
        assert_chain(
            "0 3 * * *",
            &ny,
            "2024-03-10T05:00Z",
            &["2024-03-10T07:00Z", "2024-03-11T07:00Z"],
        );
        assert_chain(
            "*/20 2 * * *",
            &ny,
            "2024-03-09T12:00Z",
            &["2024-03-10T07:00Z", "2024-03-11T06:00Z"],
        );
    }

    #[test]
    fn new_york_fall_back() {
        let ny = zone("America/New_York");
        // 2024-11-03 02:00 EDT -> 01:00 EST at 06:00Z; 01:00..01:59 happen twice.
        assert_chain(
            "*/15 * * * *",
            &ny,
            "2024-11-03T05:40Z",
            &[
                "2024-11-03T05:45Z", // 01:45 EDT
                "2024-11-03T06:00Z", // 01:00 EST
                "2024-11-03T06:15Z",
                "2024-11-03T06:30Z",
                "2024-11-03T06:45Z",
                "2024-11-03T07:00Z", // 02:00 EST
            ],
        );
        assert_chain(
            "30 1 * * *",
            &ny,
            "2024-11-03T04:00Z",
            &["2024-11-03T05:30Z", "2024-11-04T06:30Z"],
        );
        let fixed = e("30 1 * * *");
        // From inside the second pass, the repeated 01:30 is skipped both ways.
        assert_eq!(
            fixed.next_after_in(&ny, at("2024-11-03T06:10Z")),
            Some(at("2024-11-04T06:30Z"))
        );
        assert_eq!(
            fixed.prev_before_in(&ny, at("2024-11-03T06:45Z")),
            Some(at("2024-11-03T05:30Z"))
        );
        let hourly = e("30 * * * *");
        assert_eq!(
            hourly.next_after_in(&ny, at("2024-11-03T05:30Z")),
            Some(at("2024-11-03T06:30Z"))
        );
        assert_eq!(
            hourly.prev_before_in(&ny, at("2024-11-03T06:30Z")),
            Some(at("2024-11-03T05:30Z"))
        );
    }

    #[test]
    fn london_and_dublin() {
        // Dublin's tzdb data uses negative DST (winter is the "daylight saving" period); only
        // offsets matter here, so both zones behave alike.
        for name in ["Europe/London", "Europe/Dublin"] {
            let tz = zone(name);
            // 2024-03-31 01:00 GMT -> 02:00 BST/IST at 01:00Z: 01:30 fires at 02:00 local.
            assert_chain(
                "30 1 * * *",
                &tz,
                "2024-03-30T12:00Z",
                &["2024-03-31T01:00Z", "2024-04-01T00:30Z"],
            );
            // 2024-10-27 02:00 BST/IST -> 01:00 GMT at 01:00Z: 01:30 fires once, at 01:30 BST.
            assert_chain(
                "30 1 * * *",
                &tz,
                "2024-10-26T12:00Z",
                &["2024-10-27T00:30Z", "2024-10-28T01:30Z"],
            );
            assert_chain(
                "0 * * * *",
                &tz,
                "2024-10-26T23:30Z",
                &["2024-10-27T00:00Z", "2024-10-27T01:00Z"],
            );
        }
    }

    #[test]
    fn lord_howe_half_hour_shifts() {
        let tz = zone("Australia/Lord_Howe");
        // 2024-04-07 02:00 +11 -> 01:30 +10:30 at 2024-04-06T15:00Z: 01:30..01:59 repeat.
        assert_chain(
            "*/15 * * * *",
            &tz,
            "2024-04-06T14:20Z",
            &[
                "2024-04-06T14:30Z",
                "2024-04-06T14:45Z",
                "2024-04-06T15:00Z",
                "2024-04-06T15:15Z",
                "2024-04-06T15:30Z",
            ],
        );
        assert_chain(
            "45 1 * * *",
            &tz,
            "2024-04-06T12:00Z",
            &["2024-04-06T14:45Z", "2024-04-07T15:15Z"],
        );
        // 2024-10-06 02:00 +10:30 -> 02:30 +11 at 2024-10-05T15:30Z: 02:00..02:29 do not exist.
        assert_chain(
            "*/15 * * * *",
            &tz,
            "2024-10-05T15:10Z",
            &[
                "2024-10-05T15:15Z",
                "2024-10-05T15:30Z",
                "2024-10-05T15:45Z",
            ],
        );
        assert_chain(
            "15 2 * * *",
            &tz,
            "2024-10-05T12:00Z",
            &["2024-10-05T15:30Z", "2024-10-06T15:15Z"],
        );
    }

    #[test]
    fn utc_and_fixed_offsets() {
        let nine = e("0 9 * * *");
        let t = at("2024-01-01T00:00Z");
        assert_eq!(
            nine.next_after_in(&TimeZone::UTC, t),
            Some(at("2024-01-01T09:00Z"))
        );
        assert_eq!(
            nine.prev_before_in(&TimeZone::UTC, t),
            Some(at("2023-12-31T09:00Z"))
        );
        let plus5 = TimeZone::fixed(tz::offset(5));
        assert_eq!(nine.next_after_in(&plus5, t), Some(at("2024-01-01T04:00Z")));
        assert_eq!(
            nine.prev_before_in(&plus5, t),
            Some(at("2023-12-31T04:00Z"))
        );
        let minus330 = TimeZone::fixed(
            tz::Offset::from_seconds(-(3 * 3600 + 1800)).unwrap_or(tz::Offset::UTC),
        );
        assert_eq!(
            nine.next_after_in(&minus330, t),
            Some(at("2024-01-01T12:30Z"))
        );
    }

    #[test]
    fn sub_second_instants() {
        let every = e("* * * * * *");
        let utc = TimeZone::UTC;
        let t = at("2024-01-01T00:00:00.5Z");
        assert_eq!(
            every.next_after_in(&utc, t),
            Some(at("2024-01-01T00:00:01Z"))
        );
        assert_eq!(
            every.prev_before_in(&utc, t),
            Some(at("2024-01-01T00:00:00Z"))
        );
        let before_epoch = at("1969-12-31T23:59:59.5Z");
        assert_eq!(
            every.next_after_in(&utc, before_epoch),
            Some(at("1970-01-01T00:00:00Z"))
        );
        assert_eq!(
            every.prev_before_in(&utc, before_epoch),
            Some(at("1969-12-31T23:59:59Z"))
        );
        let quarter = e("*/15 * * * *");
        let ny = zone("America/New_York");
        assert_eq!(
            quarter.next_after_in(&ny, at("2024-11-03T05:45:00.5Z")),
            Some(at("2024-11-03T06:00Z"))
        );
        assert_eq!(
            quarter.prev_before_in(&ny, at("2024-11-03T06:00:00.25Z")),
            Some(at("2024-11-03T06:00Z"))
        );
    }

    #[test]
    fn extreme_instants() {
        let every = e("* * * * *");
        let ny = zone("America/New_York");
        for t in [
            Timestamp::MIN,
            Timestamp::MAX,
            at("0001-01-01T00:00Z"),
            at("9999-12-30T00:00Z"),
        ] {
            let _ = every.next_after_in(&ny, t);
            let _ = every.prev_before_in(&ny, t);
        }
        assert_eq!(every.next_after_in(&TimeZone::UTC, Timestamp::MAX), None);
        assert_eq!(every.prev_before_in(&TimeZone::UTC, Timestamp::MIN), None);
        assert_eq!(
            every.next_after_in(&TimeZone::UTC, Timestamp::MIN),
            Some(at("0001-01-01T00:00Z"))
        );
    }

    /// Second-by-minute reference for the DST policy: walks instants one minute at a time.
    struct Oracle<'a> {
        e: &'a Expression,
        tz: &'a TimeZone,
        /// Offsets already looked up (the walks revisit the same minutes many times).
        offsets: RefCell<HashMap<i64, i64>>,
    }

    impl<'a> Oracle<'a> {
        fn new(e: &'a Expression, tz: &'a TimeZone) -> Self {
            Oracle {
                e,
                tz,
                offsets: RefCell::default(),
            }
        }

        fn offset(&self, second: i64) -> i64 {
            *self.offsets.borrow_mut().entry(second).or_insert_with(|| {
                let t = Timestamp::from_second(second).unwrap_or(Timestamp::MIN);
                i64::from(self.tz.to_offset(t).seconds())
            })
        }

        fn matches_wall(&self, wall: i64) -> bool {
            from_wall_seconds(wall).is_some_and(|c| self.e.matches(c))
        }

        fn fires(&self, x: i64) -> bool {
            let o = self.offset(x);
            let wall = x + o;
            if self.matches_wall(wall) {
                // Second pass of a fold: the same wall time was shown earlier, at offset `o1`.
                let o1 = self.offset(x - 7200);
                let repeat = o1 > o && self.offset(wall - o1) == o1 && wall - o1 < x;
                if !repeat || self.e.is_hour_wildcard() {
                    return true;
                }
            }
            let before = self.offset(x - 1);
            before < o
                && (x + before..x + o)
                    .step_by(60)
                    .any(|w| self.matches_wall(w))
        }

        fn next(&self, t: i64) -> Option<i64> {
            (1..=3 * 1440)
                .map(|k| (t.div_euclid(60) + k) * 60)
                .find(|&x| self.fires(x))
        }

        fn prev(&self, t: i64) -> Option<i64> {
            let top = (t + 59).div_euclid(60);
            (1..=3 * 1440)
                .map(|k| (top - k) * 60)
                .find(|&x| self.fires(x))
        }
    }

    #[test]
    fn agrees_with_minute_walk_around_transitions() {
        let cases = [
            ("America/New_York", "2024-03-10T07:00Z"),
            ("America/New_York", "2024-11-03T06:00Z"),
            ("Europe/London", "2024-03-31T01:00Z"),
            ("Europe/Dublin", "2024-10-27T01:00Z"),
            ("Australia/Lord_Howe", "2024-04-06T15:00Z"),
            ("Australia/Lord_Howe", "2024-10-05T15:30Z"),
        ];
        let schedules = [
            "*/15 * * * *",
            "30 1 * * *",
            "0 2 * * *",
            "30 2 * * *",
            "0,30 1-3 * * *",
            "15 * * * *",
            "45 1 * * *",
        ];
        for (name, transition) in cases {
            let tz = zone(name);
            let center = at(transition).as_second();
            for text in schedules {
                let e = e(text);
                let oracle = Oracle::new(&e, &tz);
                for k in -14..=14 {
                    let t = center + k * 13 * 60 + (k % 3) * 20;
                    let ts = Timestamp::from_second(t).unwrap_or(Timestamp::MIN);
                    let next = e.next_after_in(&tz, ts).map(|x| x.as_second());
                    assert_eq!(next, oracle.next(t), "{text:?} next after {ts} in {name}");
                    let prev = e.prev_before_in(&tz, ts).map(|x| x.as_second());
                    assert_eq!(prev, oracle.prev(t), "{text:?} prev before {ts} in {name}");
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 96, ..Default::default() })]

        #[test]
        fn random_schedules_follow_the_policy(
            minutes in proptest::sample::select(&["*/15", "0", "30", "0,45", "*/7", "59", "10-20"][..]),
            hours in proptest::sample::select(&["*", "1", "2", "1-2", "*/2", "0,3", "23"][..]),
            case in 0..6usize,
            shift in -4 * 3600i64..4 * 3600,
        ) {
            let cases = [
                ("America/New_York", "2024-03-10T07:00Z"),
                ("America/New_York", "2024-11-03T06:00Z"),
                ("Europe/London", "2024-10-27T01:00Z"),
                ("Europe/Dublin", "2024-03-31T01:00Z"),
                ("Australia/Lord_Howe", "2024-04-06T15:00Z"),
                ("Australia/Lord_Howe", "2024-10-05T15:30Z"),
            ];
            let (name, transition) = cases[case];
            let tz = zone(name);
            let e = e(&format!("{minutes} {hours} * * *"));
            let oracle = Oracle::new(&e, &tz);
            let t = at(transition).as_second() + shift;
            let ts = Timestamp::from_second(t).unwrap_or(Timestamp::MIN);
            let next = e.next_after_in(&tz, ts);
            proptest::prop_assert_eq!(next.map(|x| x.as_second()), oracle.next(t));
            let prev = e.prev_before_in(&tz, ts);
            proptest::prop_assert_eq!(prev.map(|x| x.as_second()), oracle.prev(t));
            if let Some(next) = next {
                proptest::prop_assert!(e.prev_before_in(&tz, next).is_some_and(|p| p <= ts));
            }
            if let Some(prev) = prev {
                proptest::prop_assert!(e.next_after_in(&tz, prev).is_some_and(|n| n >= ts));
            }
        }
    }
}
