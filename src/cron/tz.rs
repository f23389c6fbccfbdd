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
pub(crate) fn next_after_in(s: &Schedule, both_passes: bool, tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
    let lo = floor_second(t);
    let mut offset = offset_at(tz, lo)?;
    // Exclusive lower bound on wall time within the current segment.
    let mut wall_lo = lo + offset;
    // Wall times of the current segment that repeat a fold's first pass and must not fire.
    let mut suppressed = match prev_transition(tz, lo) {
        Some((at, before)) if before > offset && !both_passes => Some((at + offset, at + before)),
        _ => None,
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
            if s.next_after_wall(end_wall - 1).is_some_and(|g| g < at + after) {
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
pub(crate) fn prev_before_in(s: &Schedule, both_passes: bool, tz: &TimeZone, t: Timestamp) -> Option<Timestamp> {
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
        let lowest = if before > offset && !both_passes { at + before } else { start_wall };
        if c >= lowest {
            return timestamp(c - offset);
        }
        // A gap before this segment fires at its first instant, if that is before `t`.
        if before < offset && at < hi && s.prev_before_wall(start_wall).is_some_and(|g| g >= at + before) {
            return timestamp(at);
        }
        wall_hi = at + before;
        offset = before;
        cursor = at - 1;
    }
}
