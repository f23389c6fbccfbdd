//! Text to compiled schedule: fields, list items, names, Quartz extensions, and errors that name
//! the field and quote the offending item.

use super::days::{DayRule, DomSet, DowSet};
use super::schedule::Schedule;
use super::CronError;

/// Which names and extensions a field accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plain,
    DayOfMonth,
    Month,
    DayOfWeek,
}

/// The range and vocabulary of one field.
pub(crate) struct Field {
    /// Name used in error messages.
    pub(crate) name: &'static str,
    /// Smallest value accepted (and the start of `*`).
    pub(crate) min: u32,
    /// Largest value accepted (and the end of `N/S`).
    pub(crate) max: u32,
    /// End of `*` (differs from `max` only for day-of-week, where 7 repeats Sunday).
    pub(crate) star_max: u32,
    kind: Kind,
}

pub(crate) const SECOND: Field = Field::plain("second", 0, 59);
pub(crate) const MINUTE: Field = Field::plain("minute", 0, 59);
pub(crate) const HOUR: Field = Field::plain("hour", 0, 23);
pub(crate) const DAY_OF_MONTH: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    star_max: 31,
    kind: Kind::DayOfMonth,
};
pub(crate) const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    star_max: 12,
    kind: Kind::Month,
};
pub(crate) const DAY_OF_WEEK: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    star_max: 6,
    kind: Kind::DayOfWeek,
};

impl Field {
    const fn plain(name: &'static str, min: u32, max: u32) -> Field {
        Field {
            name,
            min,
            max,
            star_max: max,
            kind: Kind::Plain,
        }
    }

    /// How many distinct values the field has: the length of the cycle a reversed range wraps
    /// around (7 for day-of-week, where 7 is Sunday again).
    fn cycle(&self) -> u32 {
        self.star_max - self.min + 1
    }

    fn syntax(&self, text: &str, message: String) -> CronError {
        CronError::Syntax {
            field: self.name,
            text: text.to_string(),
            message,
        }
    }

    fn out_of_range(&self, text: &str, value: &str, min: u32, max: u32) -> CronError {
        CronError::OutOfRange {
            field: self.name,
            value: value.to_string(),
            min,
            max,
            text: text.to_string(),
        }
    }
}

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// The fields each `@macro` stands for.
const MACROS: [(&str, &str); 7] = [
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

/// Parses and compiles `text`; returns the schedule and whether a seconds field was given.
pub(crate) fn parse(text: &str) -> Result<(Schedule, bool), CronError> {
    let tokens: Vec<&str> = text.split_ascii_whitespace().collect();
    let Some(first) = tokens.first() else {
        return Err(CronError::Empty);
    };
    if first.starts_with('@') {
        if tokens.len() != 1 {
            return Err(CronError::FieldCount {
                found: tokens.len(),
            });
        }
        let Some((_, fields)) = MACROS
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(first))
        else {
            return Err(CronError::UnknownMacro {
                text: (*first).to_string(),
            });
        };
        return parse(fields);
    }
    let (second, rest) = match tokens.len() {
        5 => ("0", &tokens[..]),
        6 => (tokens[0], &tokens[1..]),
        found => return Err(CronError::FieldCount { found }),
    };
    let [minute, hour, dom, month, dow] = rest else {
        return Err(CronError::FieldCount {
            found: tokens.len(),
        });
    };

    // In field order, so that the first bad field is the one reported.
    let seconds = parse_field(&SECOND, second)?.0;
    let minutes = parse_field(&MINUTE, minute)?.0;
    let hours = parse_field(&HOUR, hour)?.0 as u32;
    let (dom_bits, dom_special) = parse_field(&DAY_OF_MONTH, dom)?;
    let months = parse_field(&MONTH, month)?.0 as u16;
    let (dow_bits, dow_special) = parse_field(&DAY_OF_WEEK, dow)?;
    let dom_set = DomSet {
        days: dom_bits as u32,
        ..dom_special.dom
    };
    // 7 is Sunday again.
    let dow_set = DowSet {
        days: ((dow_bits | dow_bits >> 7) & 0x7f) as u8,
        ..dow_special.dow
    };
    let days = day_rule(dom_set, is_restricted(dom), dow_set, is_restricted(dow));
    let schedule = Schedule {
        seconds,
        minutes,
        hours,
        months,
        days,
    };
    if !schedule.is_satisfiable() {
        return Err(CronError::Unsatisfiable {
            text: tokens.join(" "),
            day_of_month: dom.to_string(),
            month: month.to_string(),
            day_of_week: dow.to_string(),
        });
    }
    Ok((schedule, tokens.len() == 6))
}

/// A day field restricts unless its text is exactly `*` or `?` (Vixie cron and croniter).
fn is_restricted(field: &str) -> bool {
    field != "*" && field != "?"
}

/// The canonical day rule: a restricting field that matches every day makes the whole rule
/// "every day" (alone, or OR-ed with the other field).
fn day_rule(dom: DomSet, dom_restricted: bool, dow: DowSet, dow_restricted: bool) -> DayRule {
    let dom_all = dom.days == u32::MAX << 1;
    let dow_all = dow.days == 0x7f;
    match (dom_restricted, dow_restricted) {
        (true, false) if !dom_all => DayRule::Dom(dom),
        (false, true) if !dow_all => DayRule::Dow(dow),
        (true, true) if !dom_all && !dow_all => DayRule::Either(dom, dow),
        _ => DayRule::All,
    }
}

/// Quartz extensions found in a day field.
#[derive(Default)]
struct Special {
    dom: DomSet,
    dow: DowSet,
}

/// Parses one field: a comma list of items, into a value bitset and any day extensions.
fn parse_field(field: &Field, text: &str) -> Result<(u64, Special), CronError> {
    let day_field = matches!(field.kind, Kind::DayOfMonth | Kind::DayOfWeek);
    if day_field && text == "?" {
        return Ok((star_bits(field), Special::default()));
    }
    if day_field && text.contains('?') {
        // croniter and cronsim both refuse `?,*`, `?/2`: `?` only ever stands for a whole field.
        return Err(field.syntax(text, "\"?\" must be the whole field".to_string()));
    }
    let in_list = field.kind == Kind::DayOfMonth && text.contains(',');
    let mut bits = 0u64;
    let mut special = Special::default();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(field.syntax(text, "empty list item".to_string()));
        }
        let handled = match field.kind {
            Kind::DayOfMonth => dom_special(item, in_list, text, &mut special.dom)?,
            Kind::DayOfWeek => dow_special(item, &mut special.dow)?,
            _ => false,
        };
        if !handled {
            bits |= parse_item(field, item)?;
        }
    }
    Ok((bits, special))
}

/// The values of `*`.
fn star_bits(field: &Field) -> u64 {
    (field.min..=field.star_max).fold(0, |bits, v| bits | 1 << v)
}

/// `*`, `N`, `A-B`, each optionally followed by `/S`. A reversed range (`22-2`, `nov-mar`) wraps
/// around the end of the field, and its step counts on through the wrap.
fn parse_item(field: &Field, item: &str) -> Result<u64, CronError> {
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(parse_step(field, item, step)?)),
        None => (item, None),
    };
    let (lo, hi) = if base == "*" {
        (field.min, field.star_max)
    } else if base.starts_with('-') {
        return Err(field.syntax(item, format!("negative value {base:?}")));
    } else if let Some((a, b)) = base.split_once('-') {
        let lo = value(field, item, a)?;
        let hi = if field.kind == Kind::DayOfMonth && b.eq_ignore_ascii_case("l") {
            field.max // `1-L`: to the last day of each month
        } else {
            value(field, item, b)?
        };
        (lo, hi)
    } else {
        let v = value(field, item, base)?;
        (v, if step.is_some() { field.max } else { v })
    };
    // Any step is valid; one longer than the range leaves its start alone (`*/90` is minute 0).
    let step = usize::try_from(step.unwrap_or(1)).unwrap_or(usize::MAX);
    if lo <= hi {
        if step == 1 {
            // hi - lo < 63: a run of set bits.
            return Ok((u64::MAX >> (63 - (hi - lo))) << lo);
        }
        return Ok((lo..=hi).step_by(step).fold(0, |bits, v| bits | 1 << v));
    }
    // Wrapped: count on past the field's end, then fold the values beyond `max` back by a cycle
    // (below `max` a value is itself, so 7 stays 7 in day-of-week).
    let (cycle, min) = (field.cycle(), field.min);
    Ok((lo..=hi + cycle).step_by(step).fold(0, |bits, v| {
        let v = if v > field.max {
            min + (v - min) % cycle
        } else {
            v
        };
        bits | 1 << v
    }))
}

/// The `S` of `.../S`: any positive number (saturating: a step past the field is as good as any).
fn parse_step(field: &Field, item: &str, step: &str) -> Result<u64, CronError> {
    match number(step) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(field.syntax(item, format!("invalid step {step:?}"))),
    }
}

/// A non-empty run of ASCII digits, saturating instead of overflowing.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// A number or a name in this field's range.
fn value(field: &Field, item: &str, token: &str) -> Result<u32, CronError> {
    if let Some(n) = number(token) {
        if n < u64::from(field.min) || n > u64::from(field.max) {
            return Err(field.out_of_range(item, token, field.min, field.max));
        }
        return Ok(n as u32);
    }
    let lookup = |names: &[&str]| {
        names
            .iter()
            .position(|name| name.eq_ignore_ascii_case(token))
    };
    if let Some(i) = lookup(&MONTH_NAMES) {
        return match field.kind {
            Kind::Month => Ok(i as u32 + 1),
            _ => Err(field.syntax(
                item,
                format!("month name {token:?} is only allowed in the month field"),
            )),
        };
    }
    if let Some(i) = lookup(&DAY_NAMES) {
        return match field.kind {
            Kind::DayOfWeek => Ok(i as u32),
            _ => Err(field.syntax(
                item,
                format!("day name {token:?} is only allowed in the day-of-week field"),
            )),
        };
    }
    let message = match token {
        "" => "missing value".to_string(),
        t if t.starts_with('-') => format!("negative value {t:?}"),
        t => format!("invalid value {t:?}"),
    };
    Err(field.syntax(item, message))
}

/// Day-of-month extensions: `L`, `L-n`, `LW`, `nW`. Returns whether `item` was one. `nW` must be
/// the whole field (`text`), as croniter requires (cronsim has no `nW`).
fn dom_special(item: &str, in_list: bool, text: &str, dom: &mut DomSet) -> Result<bool, CronError> {
    let field = &DAY_OF_MONTH;
    if item.eq_ignore_ascii_case("l") {
        dom.last |= 1;
    } else if item.eq_ignore_ascii_case("lw") {
        dom.last_weekday = true;
    } else if let Some(offset) = item
        .strip_prefix(['l', 'L'])
        .and_then(|rest| rest.strip_prefix('-'))
    {
        match number(offset) {
            Some(n @ 1..=30) => dom.last |= 1 << n,
            Some(_) => return Err(field.out_of_range(item, offset, 1, 30)),
            None => {
                return Err(field.syntax(item, format!("invalid offset {offset:?} after \"L-\"")))
            }
        }
    } else if let Some(day) = item.strip_suffix(['w', 'W']).filter(|day| !day.is_empty()) {
        match number(day) {
            Some(n @ 1..=31) if !in_list => dom.nearest_weekday |= 1 << n,
            Some(1..=31) => {
                return Err(field.syntax(
                    text,
                    format!("nearest weekday {item:?} must be the whole field"),
                ))
            }
            Some(_) => return Err(field.out_of_range(item, day, 1, 31)),
            None => return Err(field.syntax(item, format!("invalid day {day:?} before \"W\""))),
        }
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// Day-of-week extensions: `wL` (last weekday `w` of the month), `w#k` (k-th weekday `w`).
fn dow_special(item: &str, dow: &mut DowSet) -> Result<bool, CronError> {
    let field = &DAY_OF_WEEK;
    if let Some((day, k)) = item.split_once('#') {
        let w = value(field, item, day)? % 7;
        match number(k) {
            Some(k @ 1..=5) => dow.nth[k as usize - 1] |= 1 << w,
            Some(_) => return Err(field.out_of_range(item, k, 1, 5)),
            None => return Err(field.syntax(item, format!("invalid occurrence {k:?} after \"#\""))),
        }
        return Ok(true);
    }
    let Some(day) = item.strip_suffix(['l', 'L']) else {
        return Ok(false);
    };
    // Only a number before the `L`, as in cronsim and Quartz: croniter and cronsim both refuse
    // `friL`. Anything else (`jul`, a misplaced month name) is left to the caller's errors.
    if DAY_NAMES.iter().any(|name| name.eq_ignore_ascii_case(day)) {
        return Err(field.syntax(
            item,
            "day name before \"L\" (write the day's number, as in \"5L\")".to_string(),
        ));
    }
    if number(day).is_none() {
        return Ok(false);
    }
    dow.last |= 1 << (value(field, item, day)? % 7);
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::Expression;

    fn err(text: &str) -> String {
        match Expression::parse(text) {
            Ok(e) => panic!("{text:?} parsed as {e}"),
            Err(err) => err.to_string(),
        }
    }

    fn bits(field: &Field, text: &str) -> Vec<u32> {
        match parse_field(field, text) {
            Ok((bits, _)) => (0..64).filter(|v| bits & (1 << v) != 0).collect(),
            Err(err) => panic!("{text:?}: {err}"),
        }
    }

    #[test]
    fn item_forms() {
        assert_eq!(bits(&MINUTE, "*").len(), 60);
        assert_eq!(bits(&MINUTE, "7"), [7]);
        assert_eq!(bits(&MINUTE, "5-8"), [5, 6, 7, 8]);
        assert_eq!(bits(&MINUTE, "5-5"), [5]);
        assert_eq!(bits(&MINUTE, "*/15"), [0, 15, 30, 45]);
        assert_eq!(bits(&MINUTE, "10-30/10"), [10, 20, 30]);
        assert_eq!(bits(&MINUTE, "50/3"), [50, 53, 56, 59]);
        assert_eq!(bits(&MINUTE, "*/60"), [0]);
        assert_eq!(bits(&MINUTE, "1,2,59"), [1, 2, 59]);
        assert_eq!(bits(&MINUTE, "1-2,*/20,007"), [0, 1, 2, 7, 20, 40]);
        assert_eq!(bits(&HOUR, "*/24"), [0]);
        assert_eq!(bits(&DAY_OF_MONTH, "*/10"), [1, 11, 21, 31]);
        assert_eq!(bits(&DAY_OF_MONTH, "?"), (1..=31).collect::<Vec<_>>());
        assert_eq!(bits(&MONTH, "jan-jun/2"), [1, 3, 5]);
        assert_eq!(bits(&MONTH, "DEC,Feb"), [2, 12]);
        assert_eq!(bits(&DAY_OF_WEEK, "mon-FRI"), [1, 2, 3, 4, 5]);
        assert_eq!(bits(&DAY_OF_WEEK, "5-7"), [5, 6, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "fri-sun"), [5, 6, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "sun-sat/2"), [0, 2, 4, 6]);
        assert_eq!(bits(&DAY_OF_WEEK, "*/2"), [0, 2, 4, 6]);
        assert_eq!(bits(&DAY_OF_WEEK, "?"), [0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn steps_longer_than_the_range_keep_its_start() {
        assert_eq!(bits(&MINUTE, "*/61"), [0]);
        assert_eq!(bits(&MINUTE, "*/90"), [0]);
        assert_eq!(bits(&MINUTE, "*/99999999999999999999"), [0]);
        assert_eq!(bits(&MINUTE, "50/90"), [50]);
        assert_eq!(bits(&MINUTE, "10-20/15"), [10]);
        assert_eq!(bits(&HOUR, "*/25"), [0]);
        assert_eq!(bits(&HOUR, "*/30"), [0]);
        assert_eq!(bits(&DAY_OF_MONTH, "*/40"), [1]);
        assert_eq!(bits(&MONTH, "*/13"), [1]);
        assert_eq!(bits(&DAY_OF_WEEK, "*/7"), [0]);
        assert_eq!(bits(&DAY_OF_WEEK, "*/8"), [0]);
        assert_eq!(bits(&DAY_OF_WEEK, "1-wed/8"), [1]);
    }

    #[test]
    fn reversed_ranges_wrap_around() {
        assert_eq!(bits(&HOUR, "22-2"), [0, 1, 2, 22, 23]);
        assert_eq!(bits(&MONTH, "nov-mar"), [1, 2, 3, 11, 12]);
        assert_eq!(bits(&MONTH, "Dec-Jan"), [1, 12]);
        assert_eq!(bits(&MONTH, "dec-nov"), (1..=12).collect::<Vec<_>>());
        assert_eq!(bits(&DAY_OF_MONTH, "30-2"), [1, 2, 30, 31]);
        let all_but_2_to_4: Vec<u32> = (0..60).filter(|v| !(2..=4).contains(v)).collect();
        assert_eq!(bits(&MINUTE, "5-1"), all_but_2_to_4);
        // Day-of-week wraps on its 7 days; 7 is Sunday, kept as bit 7 until the fold into 0.
        assert_eq!(bits(&DAY_OF_WEEK, "sat-mon"), [1, 6, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "6-1"), [1, 6, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "7-mon"), [1, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "fri-sun"), [5, 6, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "fri-0"), [5, 6, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "7-0"), [7]);
        // The step counts from the range's start on through the wrap.
        assert_eq!(bits(&MONTH, "apr-mar/3"), [1, 4, 7, 10]);
        assert_eq!(bits(&HOUR, "22-2/3"), [1, 22]);
        assert_eq!(bits(&MINUTE, "50-10/15"), [5, 50]);
        assert_eq!(bits(&DAY_OF_MONTH, "25-5/10"), [4, 25]);
        assert_eq!(bits(&DAY_OF_WEEK, "sat-mon/2"), [1, 6]);
        assert_eq!(bits(&DAY_OF_WEEK, "fri-sun/2"), [5, 7]);
        assert_eq!(bits(&DAY_OF_WEEK, "7-mon/2"), [7]);
    }

    #[test]
    fn l_ends_a_day_of_month_range() {
        assert_eq!(bits(&DAY_OF_MONTH, "1-L/8"), [1, 9, 17, 25]);
        assert_eq!(bits(&DAY_OF_MONTH, "25-l"), [25, 26, 27, 28, 29, 30, 31]);
        assert_eq!(bits(&DAY_OF_MONTH, "L"), Vec::<u32>::new()); // `L` alone is a DomSet rule
    }

    /// One case a line: `expression => error message`.
    const ERRORS: &str = r##"
0 0 32 * *          => day-of-month field: value 32 out of range 1-31 in "32"
*/0 * * * *         => minute field: invalid step "0" in "*/0"
*/x * * * *         => minute field: invalid step "x" in "*/x"
*/ * * * *          => minute field: invalid step "" in "*/"
*/-1 * * * *        => minute field: invalid step "-1" in "*/-1"
*/5/2 * * * *       => minute field: invalid step "5/2" in "*/5/2"
1,,2 * * * *        => minute field: empty list item in "1,,2"
1, * * * *          => minute field: empty list item in "1,"
,1 * * * *          => minute field: empty list item in ",1"
-5 * * * *          => minute field: negative value "-5" in "-5"
1--5 * * * *        => minute field: negative value "-5" in "1--5"
1- * * * *          => minute field: missing value in "1-"
60 * * * *          => minute field: value 60 out of range 0-59 in "60"
0 24 * * *          => hour field: value 24 out of range 0-23 in "24"
0 0 0 * *           => day-of-month field: value 0 out of range 1-31 in "0"
0 0 * 13 *          => month field: value 13 out of range 1-12 in "13"
0 0 * * 8           => day-of-week field: value 8 out of range 0-7 in "8"
60 * * * * *        => second field: value 60 out of range 0-59 in "60"
99999999999999999999 * * * * => minute field: value 99999999999999999999 out of range 0-59 in "99999999999999999999"
٣ * * * *           => minute field: invalid value "٣" in "٣"
５ * * * *           => minute field: invalid value "５" in "５"
0 0 * mon *         => month field: day name "mon" is only allowed in the day-of-week field in "mon"
0 0 * * jan         => day-of-week field: month name "jan" is only allowed in the month field in "jan"
0 0 * * jul         => day-of-week field: month name "jul" is only allowed in the month field in "jul"
0 0 jan * *         => day-of-month field: month name "jan" is only allowed in the month field in "jan"
mon 0 * * *         => minute field: day name "mon" is only allowed in the day-of-week field in "mon"
0 0 * * monday      => day-of-week field: invalid value "monday" in "monday"
? * * * *           => minute field: invalid value "?" in "?"
0 L * * *           => hour field: invalid value "L" in "L"
0 0 * * L           => day-of-week field: invalid value "L" in "L"
0 0 32W * *         => day-of-month field: value 32 out of range 1-31 in "32W"
0 0 xW * *          => day-of-month field: invalid day "x" before "W" in "xW"
0 0 L-31 * *        => day-of-month field: value 31 out of range 1-30 in "L-31"
0 0 L- * *          => day-of-month field: invalid offset "" after "L-" in "L-"
0 0 W * *           => day-of-month field: invalid value "W" in "W"
60 0 32 * *         => minute field: value 60 out of range 0-59 in "60"
0 0 L-x * *         => day-of-month field: invalid offset "x" after "L-" in "L-x"
0 0 * * 1#6         => day-of-week field: value 6 out of range 1-5 in "1#6"
0 0 * * 1#          => day-of-week field: invalid occurrence "" after "#" in "1#"
0 0 * * 9#1         => day-of-week field: value 9 out of range 0-7 in "9#1"
0 0 * * 9L          => day-of-week field: value 9 out of range 0-7 in "9L"
0 0 ?,* * *         => day-of-month field: "?" must be the whole field in "?,*"
0 0 * * ?,*         => day-of-week field: "?" must be the whole field in "?,*"
0 0 * * 1,?         => day-of-week field: "?" must be the whole field in "1,?"
0 0 ?/2 * *         => day-of-month field: "?" must be the whole field in "?/2"
0 0 15W,16 * *      => day-of-month field: nearest weekday "15W" must be the whole field in "15W,16"
0 0 1,15W * *       => day-of-month field: nearest weekday "15W" must be the whole field in "1,15W"
0 0 L,1w * *        => day-of-month field: nearest weekday "1w" must be the whole field in "L,1w"
0 0 * * MONL        => day-of-week field: day name before "L" (write the day's number, as in "5L") in "MONL"
0 0 * * friL        => day-of-week field: day name before "L" (write the day's number, as in "5L") in "friL"
0 0 * * 1,satl      => day-of-week field: day name before "L" (write the day's number, as in "5L") in "satl"
0 0 L/2 * *         => day-of-month field: invalid value "L" in "L/2"
0 0 L-L * *         => day-of-month field: invalid offset "L" after "L-" in "L-L"
0 0 * L-3 *         => month field: invalid value "L" in "L-3"
0 0 * 1-L *         => month field: invalid value "L" in "1-L"
0 0 * * 1-L         => day-of-week field: invalid value "L" in "1-L"
0 0 30 2 *          => day-of-month field: "30" never falls in month field "2" (day-of-week "*"), so expression "0 0 30 2 *" can never fire
0  0 31 4,6,9,11  * => day-of-month field: "31" never falls in month field "4,6,9,11" (day-of-week "*"), so expression "0 0 31 4,6,9,11 *" can never fire
"##;

    #[test]
    fn error_messages() {
        for line in ERRORS.lines().filter(|line| !line.is_empty()) {
            let (text, message) = line.split_once(" => ").unwrap_or((line, ""));
            assert_eq!(err(text), message, "{text:?}");
        }
        assert_eq!(err(""), "empty cron expression");
        assert_eq!(err(" \t\n"), "empty cron expression");
        assert!(err("* * * *").ends_with("found 4 fields"));
        assert!(err("* * * * * * *").ends_with("found 7 fields"));
        assert!(err("@daily 5").ends_with("found 2 fields"));
        assert!(err("@reboot").starts_with(r#"unknown macro "@reboot""#));
    }

    #[test]
    fn error_variants() {
        let parse = |text: &str| Expression::parse(text).err();
        assert_eq!(parse(""), Some(CronError::Empty));
        assert_eq!(parse("* *"), Some(CronError::FieldCount { found: 2 }));
        assert_eq!(
            parse("@often"),
            Some(CronError::UnknownMacro {
                text: "@often".into()
            })
        );
        assert_eq!(
            parse("0 0 30 2 *"),
            Some(CronError::Unsatisfiable {
                text: "0 0 30 2 *".into(),
                day_of_month: "30".into(),
                month: "2".into(),
                day_of_week: "*".into(),
            })
        );
        assert_eq!(
            parse("0 0 * 0 *"),
            Some(CronError::OutOfRange {
                field: "month",
                value: "0".into(),
                min: 1,
                max: 12,
                text: "0".into()
            })
        );
        assert!(matches!(
            parse("0 0 * * x"),
            Some(CronError::Syntax {
                field: "day-of-week",
                ..
            })
        ));
    }

    #[test]
    fn restriction_follows_the_field_text() {
        assert!(is_restricted("*/1") && is_restricted("1-31") && is_restricted("*,1"));
        assert!(!is_restricted("*") && !is_restricted("?"));
    }
}
