//! Proleptic Gregorian calendar arithmetic on plain integers: leap years, month lengths, day
//! numbers, weekdays, and wall-clock seconds. No time zone and no allocation.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
