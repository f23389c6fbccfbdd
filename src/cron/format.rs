//! The normalised text of a compiled schedule: numeric values, canonical lists, single spaces.
//! It is a function of the schedule alone, so equal expressions print alike.

use std::fmt;

use super::days::{DayRule, DomSet, DowSet};
use super::parse::{Field, DAY_OF_MONTH, DAY_OF_WEEK, HOUR, MINUTE, MONTH, SECOND};
use super::schedule::Schedule;

/// Writes the normalised text of `schedule`: numeric values, canonical lists, single spaces.
pub(crate) fn write_schedule(
    out: &mut fmt::Formatter<'_>,
    schedule: &Schedule,
    has_seconds: bool,
) -> fmt::Result {
    if has_seconds {
        write!(out, "{} ", set_text(&SECOND, schedule.seconds))?;
    }
    let (dom, dow) = match &schedule.days {
        DayRule::All => ("*".to_string(), "*".to_string()),
        DayRule::Dom(dom) => (dom_text(dom), "*".to_string()),
        DayRule::Dow(dow) => ("*".to_string(), dow_text(dow)),
        DayRule::Either(dom, dow) => (dom_text(dom), dow_text(dow)),
    };
    write!(
        out,
        "{} {} {dom} {} {dow}",
        set_text(&MINUTE, schedule.minutes),
        set_text(&HOUR, u64::from(schedule.hours)),
        set_text(&MONTH, u64::from(schedule.months)),
    )
}

fn dom_text(dom: &DomSet) -> String {
    let mut items = Vec::new();
    if dom.days != 0 {
        items.push(set_text(&DAY_OF_MONTH, u64::from(dom.days)));
    }
    for n in (0..31).filter(|n| dom.last & (1 << n) != 0) {
        items.push(if n == 0 {
            "L".to_string()
        } else {
            format!("L-{n}")
        });
    }
    if dom.last_weekday {
        items.push("LW".to_string());
    }
    items.extend(
        (1..=31)
            .filter(|n| dom.nearest_weekday & (1 << n) != 0)
            .map(|n| format!("{n}W")),
    );
    items.join(",")
}

fn dow_text(dow: &DowSet) -> String {
    let mut items = Vec::new();
    if dow.days != 0 {
        items.push(set_text(&DAY_OF_WEEK, u64::from(dow.days)));
    }
    items.extend(
        (0..7)
            .filter(|w| dow.last & (1 << w) != 0)
            .map(|w| format!("{w}L")),
    );
    for (k, set) in (1..).zip(dow.nth) {
        items.extend(
            (0..7)
                .filter(|w| set & (1 << w) != 0)
                .map(|w| format!("{w}#{k}")),
        );
    }
    items.join(",")
}

/// The text of a non-empty value set: `*`, a progression (`*/S`, `N/S`, `A-B/S`) when it is one,
/// or else a list of ranges and single values; always text that parses back to the same set.
fn set_text(field: &Field, bits: u64) -> String {
    let star = (field.min..=field.star_max).fold(0u64, |m, v| m | 1 << v);
    if bits & star == star {
        return "*".to_string();
    }
    let values: Vec<u32> = (field.min..=field.max)
        .filter(|v| bits & (1 << v) != 0)
        .collect();
    if let (&[first, second, ..], Some(&last)) = (&values[..], values.last()) {
        let step = second - first;
        let progression = (first..=last)
            .step_by(step as usize)
            .fold(0u64, |m, v| m | 1 << v);
        if step > 1 && progression == bits {
            // `*` and `N/S` run to the end of their range: use them only when the next value
            // would fall beyond it, so that the text cannot stand for more values than the set.
            if first == field.min && last + step > field.star_max {
                return format!("*/{step}");
            }
            if values.len() >= 3 && last + step > field.max {
                return format!("{first}/{step}");
            }
            if values.len() >= 3 {
                return format!("{first}-{last}/{step}");
            }
        }
    }
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for v in values {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => runs.push((v, v)),
        }
    }
    let items: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                format!("{a}")
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    items.join(",")
}

#[cfg(test)]
mod tests {
    use crate::cron::Expression;

    fn norm(text: &str) -> String {
        match Expression::parse(text) {
            Ok(e) => e.to_string(),
            Err(err) => panic!("{text:?}: {err}"),
        }
    }

    #[test]
    fn normalised_text() {
        assert_eq!(norm("  */5   *  * * *  "), "*/5 * * * *");
        assert_eq!(norm("0 9 * * MON-FRI"), "0 9 * * 1-5");
        assert_eq!(norm("0 0 * * 7"), "0 0 * * 0");
        assert_eq!(norm("0 0 * * fri-sun"), "0 0 * * 0,5-6");
        assert_eq!(norm("1-2,*/15 0 1 3 2"), "0-2,15,30,45 0 1 3 2");
        assert_eq!(norm("0 0 1 jan-jun/2 *"), "0 0 1 1-5/2 *");
        assert_eq!(norm("0 0 1 */3 *"), "0 0 1 */3 *");
        assert_eq!(norm("0 0 1 2/3 *"), "0 0 1 2/3 *");
        assert_eq!(norm("0 10,20 ? * ?"), "0 10,20 * * *");
        assert_eq!(norm("0,30 * * * * *"), "*/30 * * * * *");
        assert_eq!(norm("0 0 l,lw,L-3 * *"), "0 0 L,L-3,LW * *");
        assert_eq!(norm("0 0 15w * *"), "0 0 15W * *");
        assert_eq!(norm("0 0 * * 5l,MON#2,1#3"), "0 0 * * 5L,1#2,1#3");
        assert_eq!(
            norm("0 22-2 * nov-mar sat-mon"),
            "0 0-2,22-23 * 1-3,11-12 0-1,6"
        );
        assert_eq!(norm("*/90 */30 1-L/8 apr-mar/3 */8"), "0 0 */8 */3 0");
        assert_eq!(norm("0 0 1-31 * *"), "0 0 * * *");
        assert_eq!(norm("0 0 13 * 0-7"), "0 0 * * *");
        assert_eq!(norm("0 0 */2 * mon"), "0 0 */2 * 1");
        assert_eq!(norm("0 0 * * 1,4"), "0 0 * * 1,4");
        assert_eq!(norm("0 0 * * 2/2"), "0 0 * * 2/2");
        assert_eq!(norm("@yearly"), "0 0 1 1 *");
        assert_eq!(norm("@Annually"), "0 0 1 1 *");
        assert_eq!(norm("@MONTHLY"), "0 0 1 * *");
        assert_eq!(norm("@weekly"), "0 0 * * 0");
        assert_eq!(norm("@daily"), "0 0 * * *");
        assert_eq!(norm("@midnight"), "0 0 * * *");
        assert_eq!(norm("\t@hourly\n"), "0 * * * *");
    }
}
