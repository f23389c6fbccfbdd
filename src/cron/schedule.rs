//! The compiled schedule: per-field bitsets and naive (wall-clock) `matches`/`next`/`prev`.
//!
//! Nothing here allocates or consults a time zone database: a query is a handful of masked
//! `trailing_zeros`/`leading_zeros` jumps per field, plus one weekday computation per month visited.

use super::calendar::{
    days_from_civil, days_in_month, from_wall_seconds, to_wall_seconds, weekday, MAX_YEAR, MIN_YEAR,
};
use super::days::DayRule;
use super::Civil;

/// Lowest set bit of `mask` at or above `from`.
#[inline]
fn next_bit(mask: u64, from: i32) -> Option<i32> {
    let from = from.max(0);
    if from >= 64 {
        return None;
    }
    let m = mask & (u64::MAX << from);
    (m != 0).then(|| m.trailing_zeros() as i32)
}

/// Highest set bit of `mask` at or below `upto`.
#[inline]
fn prev_bit(mask: u64, upto: i32) -> Option<i32> {
    if upto < 0 {
        return None;
    }
    let m = mask & (u64::MAX >> (63 - upto.min(63)));
    (m != 0).then(|| 63 - m.leading_zeros() as i32)
}

/// A compiled cron schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Schedule {
    /// Bit `s` is second `s` (0..=59).
    pub(crate) seconds: u64,
    /// Bit `m` is minute `m` (0..=59).
    pub(crate) minutes: u64,
    /// Bit `h` is hour `h` (0..=23).
    pub(crate) hours: u32,
    /// Bit `m` is month `m` (1..=12).
    pub(crate) months: u16,
    /// Which days of a month match.
    pub(crate) days: DayRule,
}

/// Every hour of the day.
pub(crate) const ALL_HOURS: u32 = (1 << 24) - 1;

impl Schedule {
    /// Matching days of `month` (1..=12) of `year`.
    fn day_mask(&self, year: i32, month: i32) -> u32 {
        let len = days_in_month(year, month);
        if len == 0 {
            return 0;
        }
        let w1 = match self.days {
            DayRule::All => 0,
            _ => weekday(days_from_civil(year, month, 1)),
        };
        self.days.mask(len, w1)
    }

    /// Whether the schedule fires at least once in years 1..=9999.
    ///
    /// Which days match depends only on the month's length and the weekday of its first day, and
    /// every (month, leap or not, weekday of the 1st) combination occurs within those years.
    pub(crate) fn is_satisfiable(&self) -> bool {
        (1..=12).filter(|m| self.months & (1 << m) != 0).any(|m| {
            let lengths: &[i32] = if m == 2 {
                &[28, 29]
            } else {
                &[days_in_month(2001, m)]
            };
            lengths
                .iter()
                .any(|&len| (0..7).any(|w1| self.days.mask(len, w1) != 0))
        })
    }

    /// Whether `t` is a valid date-time at which the schedule fires.
    pub(crate) fn matches(&self, t: Civil) -> bool {
        let (y, mo, d) = (t.year, i32::from(t.month), i32::from(t.day));
        (MIN_YEAR..=MAX_YEAR).contains(&y)
            && t.hour < 24
            && t.minute < 60
            && t.second < 60
            && (1..=12).contains(&mo)
            && self.months & (1 << mo) != 0
            && (1..=31).contains(&d)
            && self.day_mask(y, mo) & (1 << d) != 0
            && self.hours & (1 << t.hour) != 0
            && self.minutes & (1 << t.minute) != 0
            && self.seconds & (1 << t.second) != 0
    }

    /// First fire time strictly after `t` in lexicographic (year, month, .., second) order, so
    /// that even an out-of-range `t` (day 31 of April, hour 25) has a well-defined answer.
    pub(crate) fn next_after(&self, t: Civil) -> Option<Civil> {
        self.search_next([
            t.year,
            i32::from(t.month),
            i32::from(t.day),
            i32::from(t.hour),
            i32::from(t.minute),
            i32::from(t.second) + 1,
        ])
    }

    /// Last fire time strictly before `t` (lexicographic order, as for [`Self::next_after`]).
    pub(crate) fn prev_before(&self, t: Civil) -> Option<Civil> {
        self.search_prev([
            t.year,
            i32::from(t.month),
            i32::from(t.day),
            i32::from(t.hour),
            i32::from(t.minute),
            i32::from(t.second) - 1,
        ])
    }

    /// [`Self::next_after`] on wall-clock seconds since 1970-01-01T00:00:00.
    pub(crate) fn next_after_wall(&self, wall: i64) -> Option<i64> {
        self.next_after(from_wall_seconds(wall)?)
            .map(to_wall_seconds)
    }

    /// [`Self::prev_before`] on wall-clock seconds since 1970-01-01T00:00:00.
    pub(crate) fn prev_before_wall(&self, wall: i64) -> Option<i64> {
        self.prev_before(from_wall_seconds(wall)?)
            .map(to_wall_seconds)
    }

    /// Smallest fire time >= the cursor `[year, month, day, hour, minute, second]`. Cursor fields
    /// may overflow their range (second 60, day 32): the search then carries into the next field.
    fn search_next(&self, cursor: [i32; 6]) -> Option<Civil> {
        let [mut y, mut mo, mut d, mut h, mut mi, mut s] = cursor;
        if y < MIN_YEAR {
            [y, mo, d, h, mi, s] = [MIN_YEAR, 1, 1, 0, 0, 0];
        }
        // The day mask of the month last looked at (year, month, mask).
        let mut cached = (0, 0, 0u32);
        loop {
            if y > MAX_YEAR {
                return None;
            }
            match next_bit(u64::from(self.months), mo) {
                None => {
                    [y, mo, d, h, mi, s] = [y + 1, 1, 1, 0, 0, 0];
                    continue;
                }
                Some(m) if m != mo => [mo, d, h, mi, s] = [m, 1, 0, 0, 0],
                Some(_) => {}
            }
            if (cached.0, cached.1) != (y, mo) {
                cached = (y, mo, self.day_mask(y, mo));
            }
            match next_bit(u64::from(cached.2), d) {
                None => {
                    [mo, d, h, mi, s] = [mo + 1, 1, 0, 0, 0];
                    continue;
                }
                Some(x) if x != d => [d, h, mi, s] = [x, 0, 0, 0],
                Some(_) => {}
            }
            match next_bit(u64::from(self.hours), h) {
                None => {
                    [d, h, mi, s] = [d + 1, 0, 0, 0];
                    continue;
                }
                Some(x) if x != h => [h, mi, s] = [x, 0, 0],
                Some(_) => {}
            }
            match next_bit(self.minutes, mi) {
                None => {
                    [h, mi, s] = [h + 1, 0, 0];
                    continue;
                }
                Some(x) if x != mi => [mi, s] = [x, 0],
                Some(_) => {}
            }
            match next_bit(self.seconds, s) {
                None => [mi, s] = [mi + 1, 0],
                Some(x) => return Some(civil(y, mo, d, h, mi, x)),
            }
        }
    }

    /// Largest fire time <= the cursor; fields may underflow (second -1, day 0) and borrow, or
    /// exceed their range (hour 25), which then means "the end of that field".
    fn search_prev(&self, cursor: [i32; 6]) -> Option<Civil> {
        let [mut y, mut mo, mut d, mut h, mut mi, mut s] = cursor;
        if y > MAX_YEAR {
            [y, mo, d, h, mi, s] = [MAX_YEAR, 12, 31, 23, 59, 59];
        }
        let mut cached = (0, 0, 0u32);
        loop {
            if y < MIN_YEAR {
                return None;
            }
            match prev_bit(u64::from(self.months), mo) {
                None => {
                    [y, mo, d, h, mi, s] = [y - 1, 12, 31, 23, 59, 59];
                    continue;
                }
                Some(m) if m != mo => [mo, d, h, mi, s] = [m, 31, 23, 59, 59],
                Some(_) => {}
            }
            if (cached.0, cached.1) != (y, mo) {
                cached = (y, mo, self.day_mask(y, mo));
            }
            match prev_bit(u64::from(cached.2), d) {
                None => {
                    [mo, d, h, mi, s] = [mo - 1, 31, 23, 59, 59];
                    continue;
                }
                Some(x) if x != d => [d, h, mi, s] = [x, 23, 59, 59],
                Some(_) => {}
            }
            match prev_bit(u64::from(self.hours), h) {
                None => {
                    [d, h, mi, s] = [d - 1, 23, 59, 59];
                    continue;
                }
                Some(x) if x != h => [h, mi, s] = [x, 59, 59],
                Some(_) => {}
            }
            match prev_bit(self.minutes, mi) {
                None => {
                    [h, mi, s] = [h - 1, 59, 59];
                    continue;
                }
                Some(x) if x != mi => [mi, s] = [x, 59],
                Some(_) => {}
            }
            match prev_bit(self.seconds, s) {
                None => [mi, s] = [mi - 1, 59],
                Some(x) => return Some(civil(y, mo, d, h, mi, x)),
            }
        }
    }
}

/// Builds a `Civil` from search cursor values, which are in range when this is called.
fn civil(year: i32, month: i32, day: i32, hour: i32, minute: i32, second: i32) -> Civil {
    Civil {
        year,
        month: month as u8,
        day: day as u8,
        hour: hour as u8,
        minute: minute as u8,
        second: second as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::Expression;

    fn c(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Civil {
        Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        }
    }

    fn d(year: i32, month: u8, day: u8) -> Civil {
        c(year, month, day, 0, 0, 0)
    }

    fn e(text: &str) -> Expression {
        match Expression::parse(text) {
            Ok(e) => e,
            Err(err) => panic!("{text:?}: {err}"),
        }
    }

    #[test]
    fn bit_jumps() {
        assert_eq!(next_bit(0b1010, 0), Some(1));
        assert_eq!(next_bit(0b1010, 2), Some(3));
        assert_eq!(next_bit(0b1010, 4), None);
        assert_eq!(next_bit(u64::MAX, 63), Some(63));
        assert_eq!(next_bit(u64::MAX, 64), None);
        assert_eq!(next_bit(1, -5), Some(0));
        assert_eq!(prev_bit(0b1010, 2), Some(1));
        assert_eq!(prev_bit(0b1010, 0), None);
        assert_eq!(prev_bit(0b1010, 500), Some(3));
        assert_eq!(prev_bit(u64::MAX, -1), None);
    }

    #[test]
    fn next_after_basics() {
        let t = c(2024, 1, 31, 20, 0, 0);
        assert_eq!(e("1-2,*/15 0 1 3 2").next_after(t), Some(d(2024, 3, 1)));
        assert_eq!(
            e("*/5 * * * *").next_after(c(2024, 12, 31, 23, 58, 30)),
            Some(d(2025, 1, 1))
        );
        assert_eq!(
            e("*/5 * * * *").next_after(c(2024, 5, 5, 5, 5, 0)),
            Some(c(2024, 5, 5, 5, 10, 0))
        );
        assert_eq!(
            e("0 9 * * mon-fri").next_after(c(2024, 6, 7, 9, 0, 0)),
            Some(c(2024, 6, 10, 9, 0, 0))
        );
        assert_eq!(
            e("0 0 1 * *").next_after(d(2024, 1, 31)),
            Some(d(2024, 2, 1))
        );
        assert_eq!(
            e("0 0 31 * *").next_after(d(2024, 1, 31)),
            Some(d(2024, 3, 31))
        );
        assert_eq!(
            e("* * * * * *").next_after(c(2024, 2, 28, 23, 59, 59)),
            Some(d(2024, 2, 29))
        );
        assert_eq!(
            e("* * * * * *").next_after(c(2023, 2, 28, 23, 59, 59)),
            Some(d(2023, 3, 1))
        );
        assert_eq!(
            e("30 15 10 * * *").next_after(c(2024, 1, 1, 0, 0, 0)),
            Some(c(2024, 1, 1, 10, 15, 30))
        );
    }

    #[test]
    fn february_29() {
        let leap_day = e("0 0 29 2 *");
        assert_eq!(leap_day.next_after(d(2024, 2, 29)), Some(d(2028, 2, 29)));
        assert_eq!(leap_day.next_after(d(1997, 1, 1)), Some(d(2000, 2, 29)));
        assert_eq!(leap_day.next_after(d(2096, 3, 1)), Some(d(2104, 2, 29)));
        assert_eq!(leap_day.next_after(d(1896, 3, 1)), Some(d(1904, 2, 29)));
        assert_eq!(leap_day.prev_before(d(2104, 2, 29)), Some(d(2096, 2, 29)));
        assert_eq!(leap_day.prev_before(d(2000, 2, 29)), Some(d(1996, 2, 29)));
        assert_eq!(leap_day.prev_before(d(1904, 1, 1)), Some(d(1896, 2, 29)));
        // Fifth Monday of February: only in leap years whose February starts on a Monday.
        let fifth_monday = e("0 0 * 2 1#5");
        assert_eq!(fifth_monday.next_after(d(2016, 3, 1)), Some(d(2044, 2, 29)));
        assert_eq!(
            fifth_monday.prev_before(d(2044, 2, 29)),
            Some(d(2016, 2, 29))
        );
    }

    #[test]
    fn prev_before_basics() {
        assert_eq!(
            e("*/5 * * * *").prev_before(d(2025, 1, 1)),
            Some(c(2024, 12, 31, 23, 55, 0))
        );
        assert_eq!(
            e("0 0 31 * *").prev_before(d(2024, 3, 31)),
            Some(d(2024, 1, 31))
        );
        assert_eq!(
            e("0 9 * * mon-fri").prev_before(c(2024, 6, 10, 9, 0, 0)),
            Some(c(2024, 6, 7, 9, 0, 0))
        );
        assert_eq!(
            e("1-2,*/15 0 1 3 2").prev_before(d(2024, 3, 1)),
            Some(c(2023, 3, 28, 0, 45, 0))
        );
        assert_eq!(
            e("* * * * * *").prev_before(d(2024, 3, 1)),
            Some(c(2024, 2, 29, 23, 59, 59))
        );
    }

    #[test]
    fn year_bounds() {
        let every = e("* * * * * *");
        assert_eq!(every.next_after(c(9999, 12, 31, 23, 59, 59)), None);
        assert_eq!(every.prev_before(c(1, 1, 1, 0, 0, 0)), None);
        assert_eq!(
            every.next_after(c(0, 6, 1, 0, 0, 0)),
            Some(c(1, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            every.next_after(c(i32::MIN, 1, 1, 0, 0, 0)),
            Some(c(1, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            every.prev_before(c(10_000, 1, 1, 0, 0, 0)),
            Some(c(9999, 12, 31, 23, 59, 59))
        );
        assert_eq!(every.next_after(c(i32::MAX, 1, 1, 0, 0, 0)), None);
        assert_eq!(every.prev_before(c(i32::MIN, 1, 1, 0, 0, 0)), None);
        assert_eq!(e("0 0 29 2 *").next_after(d(9997, 1, 1)), None);
        assert_eq!(e("0 0 29 2 *").prev_before(d(5, 1, 1)), Some(d(4, 2, 29)));
        assert_eq!(e("0 0 29 2 *").prev_before(d(4, 2, 29)), None);
    }

    #[test]
    fn out_of_range_inputs_use_lexicographic_order() {
        let midnight = e("0 0 * * *");
        assert_eq!(
            midnight.next_after(c(2024, 4, 31, 0, 0, 0)),
            Some(d(2024, 5, 1))
        );
        assert_eq!(
            midnight.prev_before(c(2024, 4, 31, 0, 0, 0)),
            Some(d(2024, 4, 30))
        );
        assert_eq!(
            midnight.next_after(c(2024, 13, 0, 0, 0, 0)),
            Some(d(2025, 1, 1))
        );
        assert_eq!(
            midnight.prev_before(c(2024, 0, 5, 0, 0, 0)),
            Some(d(2023, 12, 31))
        );
        assert_eq!(
            midnight.next_after(c(2024, 5, 5, 25, 61, 61)),
            Some(d(2024, 5, 6))
        );
        assert_eq!(
            midnight.prev_before(c(2024, 5, 5, 255, 255, 255)),
            Some(d(2024, 5, 5))
        );
        assert!(!midnight.matches(c(2024, 2, 30, 0, 0, 0)));
        assert!(!midnight.matches(c(2024, 1, 1, 24, 0, 0)));
        assert!(!midnight.matches(c(0, 1, 1, 0, 0, 0)));
        assert!(midnight.matches(d(2024, 1, 1)));
    }

    #[test]
    fn satisfiability_is_exact() {
        let satisfiable = |text: &str| Expression::parse(text).is_ok();
        assert!(!satisfiable("0 0 30 2 *"));
        assert!(!satisfiable("0 0 31 4,6,9,11 *"));
        assert!(satisfiable("0 0 30W 2 *")); // the weekday nearest February's last day
        assert!(!satisfiable("0 0 L-29 2 *"));
        assert!(satisfiable("0 0 L-28 2 *"));
        assert!(satisfiable("0 0 29 2 *"));
        assert!(satisfiable("0 0 29W 2 *"));
        assert!(satisfiable("0 0 31 1-12 *"));
        assert!(satisfiable("0 0 30 2 mon"));
        assert!(satisfiable("0 0 * 2 1#5"));
        assert!(satisfiable("0 0 * 4 0#5"));
    }
}
