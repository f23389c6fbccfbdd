//! Cron expressions: parse once into per-field bitsets, evaluate without re-parsing.
//!
//! The Python binding (`src/python/cron.rs`) depends on exactly these items: [`Civil`],
//! [`CronError`], and [`Expression`] with `parse`, `has_seconds`, `is_hour_wildcard`, `matches`,
//! `next_after`, `prev_before`, `next_after_in`, `prev_before_in`, `Display`, `FromStr`, `Eq`,
//! `Hash`, `Clone` and `Debug`.
//!
//! Syntax: five fields `minute hour day-of-month month day-of-week`, or six with a leading
//! `second` field, or one of `@yearly @annually @monthly @weekly @daily @midnight @hourly`. Each
//! field is a comma list of `*`, `N`, `A-B`, `*/S`, `A-B/S` and `N/S` (from `N` to the field's
//! end); `jan`..`dec` and `sun`..`sat` in their own fields; `?` as a whole day field means `*`.
//! A step may be any positive number: one longer than its range keeps the range's start only
//! (`*/90` in minutes is minute 0). A reversed range wraps around the field's end (`22-2` in hours
//! is 22, 23, 0, 1, 2; `nov-mar`, `sat-mon`), and its step counts on through the wrap. Quartz
//! extensions: day-of-month `L`, `A-L` (to the month's last day), `L-n`, `LW`, `nW` (the whole
//! field; past a month's end, the weekday nearest its last day); day-of-week `wL` (`w` a
//! number), `w#k`. When both day fields restrict (neither is exactly `*` or `?`), a day matches
//! if either matches.
//!
//! ```
//! use tm::cron::{Civil, Expression};
//!
//! let e: Expression = "0 9 * * mon-fri".parse()?;
//! let t = Civil { year: 2024, month: 6, day: 1, hour: 12, minute: 0, second: 0 };
//! let next = Civil { year: 2024, month: 6, day: 3, hour: 9, minute: 0, second: 0 };
//! assert_eq!(e.next_after(t), Some(next));
//! assert_eq!(e.to_string(), "0 9 * * 1-5");
//! # Ok::<(), tm::cron::CronError>(())
//! ```

mod calendar;
mod days;
mod format;
mod parse;
mod schedule;
mod tz;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use schedule::{Schedule, ALL_HOURS};

/// A wall-clock date-time with one-second resolution (no time zone), years 1..=9999.
///
/// Ordering is lexicographic on (year, month, day, hour, minute, second), which is chronological
/// for valid values. Fields are public, so a value may be invalid (day 31 of April); queries then
/// treat it by that same order: `next_after` of April 31 is the first fire from May 1 on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Civil {
    /// Year, 1..=9999 for fire times.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month, 1..=31.
    pub day: u8,
    /// Hour, 0..=23.
    pub hour: u8,
    /// Minute, 0..=59.
    pub minute: u8,
    /// Second, 0..=59.
    pub second: u8,
}

impl Civil {
    /// A validated date-time, or `None` if any field is out of range for years 1..=9999.
    pub fn new(year: i32, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> Option<Civil> {
        let valid = (calendar::MIN_YEAR..=calendar::MAX_YEAR).contains(&year)
            && (1..=12).contains(&month)
            && day >= 1
            && i32::from(day) <= calendar::days_in_month(year, i32::from(month))
            && hour < 24
            && minute < 60
            && second < 60;
        valid.then_some(Civil {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
    }
}

/// Why an expression was rejected. `Display` names the field and quotes the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The expression is empty or only whitespace.
    #[error("empty cron expression")]
    Empty,
    /// The expression does not have 5 or 6 whitespace-separated fields (or is a macro followed
    /// by more text).
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week), 6 with a leading second \
         field, or a single @macro; found {found} fields"
    )]
    FieldCount {
        /// Number of whitespace-separated fields found.
        found: usize,
    },
    /// A word starting with `@` that is not a known macro.
    #[error(
        "unknown macro {text:?}; expected one of @yearly, @annually, @monthly, @weekly, @daily, \
         @midnight, @hourly"
    )]
    UnknownMacro {
        /// The unknown macro as written.
        text: String,
    },
    /// A field item is malformed: junk, empty list item, bad step, a name in the wrong field, a
    /// negative number, `?` or `nW` that is not the whole field, a day name before `L`.
    #[error("{field} field: {message} in {text:?}")]
    Syntax {
        /// Field name: `second`, `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The offending list item (the whole field for an empty item).
        text: String,
        /// What is wrong with it.
        message: String,
    },
    /// A number outside the range allowed at its position.
    #[error("{field} field: value {value} out of range {min}-{max} in {text:?}")]
    OutOfRange {
        /// Field name: `second`, `minute`, `hour`, `day-of-month`, `month` or `day-of-week`.
        field: &'static str,
        /// The number as written (it may not fit any integer type).
        value: String,
        /// Smallest value allowed there.
        min: u32,
        /// Largest value allowed there.
        max: u32,
        /// The list item containing the number.
        text: String,
    },
    /// The expression is valid but matches no date-time in years 1..=9999 (`0 0 30 2 *`).
    #[error(
        "day-of-month field: {day_of_month:?} never falls in month field {month:?} \
         (day-of-week {day_of_week:?}), so expression {text:?} can never fire"
    )]
    Unsatisfiable {
        /// The expression, fields separated by single spaces.
        text: String,
        /// The day-of-month field as written.
        day_of_month: String,
        /// The month field as written.
        month: String,
        /// The day-of-week field as written.
        day_of_week: String,
    },
}

/// A compiled cron expression.
///
/// Equality and hashing compare the compiled schedule, not the text: `0 0 * * 0`, `0 0 * * 7`
/// and `0 0 * * SUN` are equal, and so are `* * * * *` and `0 * * * * *` (same fire times).
/// `Display` gives the normalised text, which parses back to an equal expression.
#[derive(Clone)]
pub struct Expression {
    schedule: Schedule,
    has_seconds: bool,
}

impl Expression {
    /// Parses and compiles `text`; rejects anything invalid or that can never fire.
    pub fn parse(text: &str) -> Result<Self, CronError> {
        let (schedule, has_seconds) = parse::parse(text)?;
        Ok(Expression {
            schedule,
            has_seconds,
        })
    }

    /// Whether the expression has a leading seconds field.
    pub fn has_seconds(&self) -> bool {
        self.has_seconds
    }

    /// Whether the hour field matches every hour (DST policy: such schedules fire in both passes
    /// of a fold).
    pub fn is_hour_wildcard(&self) -> bool {
        self.schedule.hours == ALL_HOURS
    }

    /// Whether `t` is a fire time (false for an invalid `t`).
    pub fn matches(&self, t: Civil) -> bool {
        self.schedule.matches(t)
    }

    /// First fire time strictly after `t` (None past year 9999).
    pub fn next_after(&self, t: Civil) -> Option<Civil> {
        self.schedule.next_after(t)
    }

    /// Last fire time strictly before `t` (None before year 1).
    pub fn prev_before(&self, t: Civil) -> Option<Civil> {
        self.schedule.prev_before(t)
    }

    /// First fire instant strictly after `t` in `tz`, following the DST policy: a wall time in a
    /// spring-forward gap fires at the end of the gap; in a fall-back fold a fixed-hour schedule
    /// fires in the first pass only, an hour-wildcard schedule in both.
    pub fn next_after_in(
        &self,
        tz: &jiff::tz::TimeZone,
        t: jiff::Timestamp,
    ) -> Option<jiff::Timestamp> {
        tz::next_after_in(&self.schedule, self.is_hour_wildcard(), tz, t)
    }

    /// Last fire instant strictly before `t` in `tz`, following the DST policy of
    /// [`Expression::next_after_in`].
    pub fn prev_before_in(
        &self,
        tz: &jiff::tz::TimeZone,
        t: jiff::Timestamp,
    ) -> Option<jiff::Timestamp> {
        tz::prev_before_in(&self.schedule, self.is_hour_wildcard(), tz, t)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.schedule == other.schedule
    }
}

impl Eq for Expression {}

impl Hash for Expression {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.schedule.hash(state);
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Expression")
            .field(&self.to_string())
            .finish()
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        format::write_schedule(f, &self.schedule, self.has_seconds)
    }
}

impl FromStr for Expression {
    type Err = CronError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::parse(s)
    }
}

#[cfg(test)]
mod tests;
