//! The compiled schedule: per-field bitsets, naive (wall-clock) `matches`/`next`/`prev`, and the
//! integer calendar arithmetic they need.
//!
//! Nothing here allocates or consults a time zone database: a query is a handful of masked
//! `trailing_zeros`/`leading_zeros` jumps per field, plus one weekday computation per month visited.

use super::Civil;

/// Earliest year a fire time may have.
pub(crate) const MIN_YEAR: i32 = 1;
/// Latest year a fire time may have.
pub(crate) const MAX_YEAR: i32 = 9999;

const SECONDS_PER_DAY: i64 = 86_400;

/// Whether `year` is a leap year in the proleptic Gregorian calendar.
pub(crate) const fn is_leap(year: i32) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Number of days in `month` (1..=12) of `year`; 0 for an invalid month.
pub(crate) const fn days_in_month(year: i32, month: i32) -> i32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (month 1..=12).
///
/// Counts years from March so that the leap day is the last day of the counting year; `era` is a
/// 400-year cycle of 146 097 days.
pub(crate) fn days_from_civil(year: i32, month: i32, day: i32) -> i64 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = i64::from(if month > 2 { month - 3 } else { month + 9 });
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: `(year, month, day)`.
pub(crate) fn civil_from_days(days: i64) -> (i64, i32, i32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // Both values are small (1..=31 and 1..=12), so the narrowing is exact.
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as i32;
    let month = (if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    }) as i32;
    (year_of_era + era * 400 + i64::from(month <= 2), month, day)
}

/// Day of the week of a day number from [`days_from_civil`]: 0 = Sunday .. 6 = Saturday.
pub(crate) fn weekday(days: i64) -> i32 {
    // 1970-01-01 was a Thursday.
    (days + 4).rem_euclid(7) as i32
}

/// Wall-clock seconds since 1970-01-01T00:00:00 (no time zone) of a valid `Civil`.
pub(crate) fn to_wall_seconds(c: Civil) -> i64 {
    days_from_civil(c.year, i32::from(c.month), i32::from(c.day)) * SECONDS_PER_DAY
        + i64::from(c.hour) * 3600
        + i64::from(c.minute) * 60
        + i64::from(c.second)
}

/// Inverse of [`to_wall_seconds`]; `None` if the year does not fit an `i32`.
pub(crate) fn from_wall_seconds(secs: i64) -> Option<Civil> {
    let (year, month, day) = civil_from_days(secs.div_euclid(SECONDS_PER_DAY));
    let rem = secs.rem_euclid(SECONDS_PER_DAY);
    Some(Civil {
        year: i32::try_from(year).ok()?,
        month: month as u8,
        day: day as u8,
        hour: (rem / 3600) as u8,
        minute: (rem / 60 % 60) as u8,
        second: (rem % 60) as u8,
    })
}

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

/// Iterates the set bits of `bits`, lowest first.
fn bits_of(mut bits: u64) -> impl Iterator<Item = i32> {
    std::iter::from_fn(move || {
        let b = next_bit(bits, 0)?;
        bits &= bits - 1;
        Some(b)
    })
}

/// Mask of days `1..=len` (bit `d` is day `d`).
#[inline]
fn month_mask(len: i32) -> u32 {
    // len <= 31, so the u64 value fits 32 bits.
    ((1u64 << (len + 1)) - 2) as u32
}

/// Day-of-month part of a schedule, Quartz extensions included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct DomSet {
    /// Plain days: bit `d` is day `d` (1..=31).
    pub(crate) days: u32,
    /// `L` and `L-n`: bit `n` is "the last day of the month minus `n`" (bit 0 is `L`).
    pub(crate) last: u32,
    /// `LW`: the last weekday (Monday..Friday) of the month.
    pub(crate) last_weekday: bool,
    /// `nW`: bit `n` is "the weekday nearest day `n`, within the month".
    pub(crate) nearest_weekday: u32,
}

impl DomSet {
    /// Matching days of a month of `len` days whose first day is weekday `w1`.
    fn mask(&self, len: i32, w1: i32) -> u32 {
        let mut m = self.days;
        for n in bits_of(u64::from(self.last)) {
            if n < len {
                m |= 1 << (len - n);
            }
        }
        if self.last_weekday {
            let d = match (w1 + len - 1) % 7 {
                6 => len - 1,
                0 => len - 2,
                _ => len,
            };
            m |= 1 << d;
        }
        for n in bits_of(u64::from(self.nearest_weekday)) {
            if n > len {
                continue;
            }
            // Saturday moves back to Friday and Sunday forward to Monday, unless that would
            // leave the month: then it goes two days the other way.
            let d = match (w1 + n - 1) % 7 {
                6 if n == 1 => 3,
                6 => n - 1,
                0 if n == len => n - 2,
                0 => n + 1,
                _ => n,
            };
            m |= 1 << d;
        }
        m
    }
}

/// Day-of-week part of a schedule, Quartz extensions included. Weekdays are 0 = Sunday .. 6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct DowSet {
    /// Plain weekdays: bit `w` is weekday `w`.
    pub(crate) days: u8,
    /// `wL`: bit `w` is "the last weekday `w` of the month".
    pub(crate) last: u8,
    /// `w#k`: `nth[k - 1]` bit `w` is "the `k`-th weekday `w` of the month".
    pub(crate) nth: [u8; 5],
}

impl DowSet {
    /// Matching days of a month of `len` days whose first day is weekday `w1`.
    fn mask(&self, len: i32, w1: i32) -> u32 {
        let mut m = 0u32;
        if self.days != 0 {
            // Rotate so that bit k says whether day k+1 matches, then repeat the week 5 times.
            let days = u32::from(self.days);
            let week = ((days >> w1) | (days << (7 - w1))) & 0x7f;
            m = (week | week << 7 | week << 14 | week << 21 | week << 28) << 1;
        }
        let w_last = (w1 + len - 1) % 7;
        for w in bits_of(u64::from(self.last)) {
            m |= 1 << (len - (w_last - w + 7) % 7);
        }
        for (k, &set) in (0i32..).zip(self.nth.iter()) {
            for w in bits_of(u64::from(set)) {
                let d = 1 + (w - w1 + 7) % 7 + 7 * k;
                if d <= len {
                    m |= 1 << d;
                }
            }
        }
        m
    }
}

/// How day-of-month and day-of-week combine, in canonical form (so that derived equality is
/// equality of schedules): a field that matches every day never appears, and the field that does
/// not restrict is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum DayRule {
    /// Every day.
    All,
    /// Only day-of-month restricts.
    Dom(DomSet),
    /// Only day-of-week restricts.
    Dow(DowSet),
    /// Both restrict: a day matches if either matches.
    Either(DomSet, DowSet),
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
    /// Matching days of a month of `len` days whose first day is weekday `w1`.
    fn day_mask_for(&self, len: i32, w1: i32) -> u32 {
        let m = match &self.days {
            DayRule::All => u32::MAX,
            DayRule::Dom(dom) => dom.mask(len, w1),
            DayRule::Dow(dow) => dow.mask(len, w1),
            DayRule::Either(dom, dow) => dom.mask(len, w1) | dow.mask(len, w1),
        };
        m & month_mask(len)
    }

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
        self.day_mask_for(len, w1)
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
                .any(|&len| (0..7).any(|w1| self.day_mask_for(len, w1) != 0))
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

    /// Fire days of `text` (at midnight) in one month.
    fn days_in(text: &str, year: i32, month: u8) -> Vec<u8> {
        let e = e(text);
        (1..=31)
            .filter(|&day| e.matches(d(year, month, day)))
            .collect()
    }

    #[test]
    fn leap_years() {
        assert!(is_leap(2000) && is_leap(2024) && is_leap(1600) && is_leap(4));
        assert!(!is_leap(1900) && !is_leap(2100) && !is_leap(2023) && !is_leap(1));
        assert_eq!(days_in_month(2000, 2), 29);
        assert_eq!(days_in_month(1900, 2), 28);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2024, 4), 30);
        assert_eq!(days_in_month(2024, 13), 0);
    }

    #[test]
    fn day_numbers_and_weekdays() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(weekday(days_from_civil(2024, 6, 1)), 6); // Saturday
        assert_eq!(weekday(days_from_civil(1, 1, 1)), 1); // Monday
        assert_eq!(weekday(days_from_civil(9999, 12, 31)), 5); // Friday
                                                               // Every day of years 1..=9999 round-trips and days are consecutive.
        let mut expected = days_from_civil(1, 1, 1);
        for year in 1..=9999 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    let n = days_from_civil(year, month, day);
                    assert_eq!(n, expected);
                    assert_eq!(civil_from_days(n), (i64::from(year), month, day));
                    expected += 1;
                }
            }
        }
    }

    #[test]
    fn wall_seconds_round_trip() {
        for t in [
            c(1, 1, 1, 0, 0, 0),
            c(1969, 12, 31, 23, 59, 59),
            c(2024, 2, 29, 12, 34, 56),
            c(9999, 12, 31, 23, 59, 59),
        ] {
            assert_eq!(from_wall_seconds(to_wall_seconds(t)), Some(t));
        }
        assert_eq!(to_wall_seconds(c(1970, 1, 2, 0, 0, 1)), 86_401);
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
        assert_eq!(bits_of(0b1001_0010).collect::<Vec<_>>(), [1, 4, 7]);
    }

    #[test]
    fn quartz_day_of_month() {
        assert_eq!(days_in("0 0 L * *", 2024, 2), [29]);
        assert_eq!(days_in("0 0 L * *", 2023, 2), [28]);
        assert_eq!(days_in("0 0 L * *", 2100, 2), [28]);
        assert_eq!(days_in("0 0 L-2 * *", 2023, 2), [26]);
        assert_eq!(days_in("0 0 L-30 * *", 2024, 1), [1]);
        assert_eq!(days_in("0 0 L-30 * *", 2024, 4), Vec::<u8>::new());
        assert_eq!(days_in("0 0 LW * *", 2024, 8), [30]); // Aug 31 2024 is a Saturday
        assert_eq!(days_in("0 0 LW * *", 2024, 3), [29]); // Mar 31 2024 is a Sunday
        assert_eq!(days_in("0 0 LW * *", 2024, 7), [31]); // Wednesday
        assert_eq!(days_in("0 0 1W * *", 2024, 6), [3]); // Jun 1 2024 is a Saturday
        assert_eq!(days_in("0 0 1W * *", 2024, 9), [2]); // Sep 1 2024 is a Sunday
        assert_eq!(days_in("0 0 31W * *", 2024, 3), [29]); // Mar 31 2024 is a Sunday
        assert_eq!(days_in("0 0 30W * *", 2024, 11), [29]); // Nov 30 2024 is a Saturday
        assert_eq!(days_in("0 0 15W * *", 2024, 6), [14]); // Saturday -> Friday
        assert_eq!(days_in("0 0 15W * *", 2024, 9), [16]); // Sunday -> Monday
        assert_eq!(days_in("0 0 15W * *", 2024, 5), [15]); // Wednesday
        assert_eq!(days_in("0 0 31W * *", 2024, 4), Vec::<u8>::new()); // no April 31
        assert_eq!(days_in("0 0 1,L,15W * *", 2024, 6), [1, 14, 30]);
    }

    #[test]
    fn quartz_day_of_week() {
        assert_eq!(days_in("0 0 * * 5L", 2024, 6), [28]);
        assert_eq!(days_in("0 0 * * friL", 2024, 5), [31]);
        assert_eq!(days_in("0 0 * * 0L,7L", 2024, 3), [31]);
        assert_eq!(days_in("0 0 * * 1#2", 2024, 6), [10]);
        assert_eq!(days_in("0 0 * * 6#1", 2024, 6), [1]);
        assert_eq!(days_in("0 0 * * 5#5", 2024, 5), [31]);
        assert_eq!(days_in("0 0 * * 5#5", 2024, 6), Vec::<u8>::new());
        assert_eq!(days_in("0 0 * * 1#5", 2024, 2), Vec::<u8>::new());
        assert_eq!(days_in("0 0 * * 4#5", 2024, 2), [29]);
        assert_eq!(days_in("0 0 * * sun#1,sat", 2024, 6), [1, 2, 8, 15, 22, 29]);
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches.
        assert_eq!(days_in("0 0 13 * fri", 2024, 9), [6, 13, 20, 27]);
        assert_eq!(days_in("0 0 1-3 * mon", 2024, 6), [1, 2, 3, 10, 17, 24]);
        // One is `*` or `?`: only the other restricts.
        assert_eq!(days_in("0 0 13 * *", 2024, 9), [13]);
        assert_eq!(days_in("0 0 13 * ?", 2024, 9), [13]);
        assert_eq!(days_in("0 0 ? * fri", 2024, 9), [6, 13, 20, 27]);
        // A restricting field that matches every day makes every day match.
        assert_eq!(days_in("0 0 */1 * fri", 2024, 9).len(), 30);
        assert_eq!(days_in("0 0 1 * 0-6", 2024, 9).len(), 30);
        // `0 0 30 2 mon` is satisfiable thanks to the OR rule.
        assert_eq!(
            e("0 0 30 2 mon").next_after(d(2024, 1, 1)),
            Some(d(2024, 2, 5))
        );
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
        assert!(!satisfiable("0 0 30W 2 *"));
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
