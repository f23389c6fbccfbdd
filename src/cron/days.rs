//! Which days of a month match: day-of-month and day-of-week sets with their Quartz extensions
//! (`L`, `L-n`, `LW`, `nW`, `wL`, `w#k`), and how the two fields combine. A month's matching days
//! depend only on its length and the weekday of its first day.

/// Iterates the set bits of `bits`, lowest first.
fn bits_of(mut bits: u64) -> impl Iterator<Item = i32> {
    std::iter::from_fn(move || {
        let b = (bits != 0).then(|| bits.trailing_zeros() as i32)?;
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
    /// `nW`: bit `n` is "the weekday nearest day `n` (or the last day, in a shorter month),
    /// within the month".
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
            // Past the month's end (`31W` in April) it is the weekday nearest the last day, as
            // in croniter.
            let n = n.min(len);
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

impl DayRule {
    /// Matching days (bit `d` is day `d`) of a month of `len` days whose first day is weekday `w1`.
    pub(crate) fn mask(&self, len: i32, w1: i32) -> u32 {
        let m = match self {
            DayRule::All => u32::MAX,
            DayRule::Dom(dom) => dom.mask(len, w1),
            DayRule::Dow(dow) => dow.mask(len, w1),
            DayRule::Either(dom, dow) => dom.mask(len, w1) | dow.mask(len, w1),
        };
        m & month_mask(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::{Civil, Expression};

    fn e(text: &str) -> Expression {
        Expression::parse(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
    }

    fn d(year: i32, month: u8, day: u8) -> Civil {
        Civil {
            year,
            month,
            day,
            hour: 0,
            minute: 0,
            second: 0,
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
                                                           // Past the month's end: the weekday nearest the last day.
        assert_eq!(days_in("0 0 31W * *", 2024, 4), [30]); // Tuesday
        assert_eq!(days_in("0 0 31W * *", 2028, 4), [28]); // Apr 30 2028 is a Sunday
        assert_eq!(days_in("0 0 30W * *", 2024, 2), [29]); // Thursday
        assert_eq!(days_in("0 0 31W * *", 2026, 2), [27]); // Feb 28 2026 is a Saturday
        assert_eq!(days_in("0 0 1,L,LW * *", 2024, 6), [1, 28, 30]);
    }

    #[test]
    fn quartz_day_of_week() {
        assert_eq!(days_in("0 0 * * 5L", 2024, 6), [28]);
        assert_eq!(days_in("0 0 * * 5l", 2024, 5), [31]);
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
    fn bits_and_month_masks() {
        assert_eq!(bits_of(0b1001_0010).collect::<Vec<_>>(), [1, 4, 7]);
        assert_eq!(bits_of(0).count(), 0);
        assert_eq!(month_mask(31), u32::MAX << 1);
        assert_eq!(month_mask(28).count_ones(), 28);
    }
}
