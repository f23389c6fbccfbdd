"""The public API of ``tm.cron.Expression``, with answers worked out by hand.

Calendar anchors used below (all Gregorian):
2024-01-01 is a Monday; 2024 is a leap year, so 2024-02-01 is a Thursday, 2024-03-01 a Friday,
2024-04-01 a Monday and 2024-06-01 a Saturday. 2000 is a leap year (divisible by 400); 1900 and
2100 are not (divisible by 100 but not 400).
"""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

from tm.cron import CronError, Expression
from tm.exceptions import TmError


def iso(text: str) -> datetime:
    """A naive datetime from ISO-8601 text such as ``2024-01-01 09:30``."""
    return datetime.fromisoformat(text)


def nexts(expr: str, start: datetime, count: int) -> list[datetime]:
    """The first ``count`` fire times after ``start``, chaining ``next``."""
    e = Expression(expr)
    out = []
    t = start
    for _ in range(count):
        t = e.next(t)
        out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# The seed example and the day-of-month / day-of-week OR rule
# ---------------------------------------------------------------------------------------------


def test_seed_example() -> None:
    # Minutes {0, 1, 2, 15, 30, 45}, hour 0, month March, and (both day fields restricted) a day
    # matches if it is the 1st OR a Tuesday. 2024-03-01 is a Friday but it is the 1st, so the
    # first fire after 2024-01-31 20:00 is March 1st at 00:00.
    e = Expression("1-2,*/15 0 1 3 2")
    assert e.next(datetime(2024, 1, 31, 20)) == datetime(2024, 3, 1, 0, 0)


def test_seed_example_sequence() -> None:
    # After the six minutes of March 1st come the Tuesdays of March 2024 (5, 12, 19, 26), then
    # 2025-03-01 (a Saturday, matching by day-of-month).
    got = nexts("1-2,*/15 0 1 3 2", datetime(2024, 1, 31, 20), 13)
    minutes = [0, 1, 2, 15, 30, 45]
    expected = [datetime(2024, 3, 1, 0, m) for m in minutes]
    expected += [datetime(2024, 3, 5, 0, m) for m in minutes]
    expected += [datetime(2024, 3, 12, 0, 0)]
    assert got == expected
    last_tuesday = datetime(2024, 3, 26, 0, 45)
    assert Expression("1-2,*/15 0 1 3 2").next(last_tuesday) == datetime(2025, 3, 1, 0, 0)


def test_or_rule_friday_the_13th() -> None:
    # "13 or Friday": Fridays 2024-01-05 and 12, Saturday the 13th, Friday the 19th.
    got = nexts("0 0 13 * fri", datetime(2024, 1, 1), 4)
    assert got == [datetime(2024, 1, d) for d in (5, 12, 13, 19)]


def test_and_when_day_of_month_is_star() -> None:
    # dom is `*`, so only the day-of-week restricts: Fridays only.
    got = nexts("0 0 * * fri", datetime(2024, 1, 1), 3)
    assert got == [datetime(2024, 1, d) for d in (5, 12, 19)]


def test_and_when_day_of_week_is_star() -> None:
    got = nexts("0 0 13 * *", datetime(2024, 1, 1), 3)
    assert got == [datetime(2024, m, 13) for m in (1, 2, 3)]


def test_question_mark_is_star_in_day_fields() -> None:
    # `?` in dom leaves only the dow restriction (Mondays), not "any day OR Monday".
    assert nexts("0 0 ? * mon", datetime(2024, 1, 1), 2) == [
        datetime(2024, 1, 8),
        datetime(2024, 1, 15),
    ]
    assert nexts("0 0 13 * ?", datetime(2024, 1, 1), 2) == [
        datetime(2024, 1, 13),
        datetime(2024, 2, 13),
    ]


def test_or_rule_with_stepped_day_of_month() -> None:
    # `*/10` is restricted (its text is not exactly `*`): days 1, 11, 21, 31 OR Sundays.
    # January 2024: Sundays are 7, 14, 21, 28.
    got = nexts("0 0 */10 * sun", datetime(2024, 1, 1), 6)
    assert got == [datetime(2024, 1, d) for d in (7, 11, 14, 21, 28, 31)]


def test_or_rule_rescues_an_impossible_day_of_month() -> None:
    # Feb 30 never exists, but "30th OR Monday" in February fires on February's Mondays.
    got = nexts("0 0 30 2 mon", datetime(2024, 1, 1), 4)
    assert got == [datetime(2024, 2, d) for d in (5, 12, 19, 26)]


# ---------------------------------------------------------------------------------------------
# Syntax forms
# ---------------------------------------------------------------------------------------------

# (expression, start, expected fire times after it); times are ISO-8601 wall clock.
SYNTAX_CASES = [
    ("* * * * *", "2024-01-01 00:00", ["2024-01-01 00:01", "2024-01-01 00:02"]),
    ("* * * * *", "2024-01-01 00:00:30", ["2024-01-01 00:01"]),
    ("* * * * *", "2024-12-31 23:59", ["2025-01-01 00:00"]),
    ("7 * * * *", "2024-01-01 00:07", ["2024-01-01 01:07", "2024-01-01 02:07"]),
    ("10-12 * * * *", "2024-01-01 00:11", ["2024-01-01 00:12", "2024-01-01 01:10"]),
    ("5-5 * * * *", "2024-01-01 00:00", ["2024-01-01 00:05", "2024-01-01 01:05"]),
    ("*/5 * * * *", "2024-01-01 00:03", ["2024-01-01 00:05", "2024-01-01 00:10"]),
    ("*/25 * * * *", "2024-01-01 00:26", ["2024-01-01 00:50", "2024-01-01 01:00"]),
    ("10-30/10 * * * *", "2024-01-01 00:25", ["2024-01-01 00:30", "2024-01-01 01:10"]),
    ("10-35/10 * * * *", "2024-01-01 00:30", ["2024-01-01 01:10"]),
    ("5/20 * * * *", "2024-01-01 00:45", ["2024-01-01 01:05", "2024-01-01 01:25"]),
    ("50/20 * * * *", "2024-01-01 00:51", ["2024-01-01 01:50"]),
    ("0,30 * * * *", "2024-01-01 00:00", ["2024-01-01 00:30", "2024-01-01 01:00"]),
    (
        "58,1-2,*/30 * * * *",
        "2024-01-01 00:00",
        ["2024-01-01 00:01", "2024-01-01 00:02", "2024-01-01 00:30", "2024-01-01 00:58",
         "2024-01-01 01:00"],
    ),
    ("0 */6 * * *", "2024-01-01 13:00", ["2024-01-01 18:00", "2024-01-02 00:00"]),
    ("0 22-23,1 * * *", "2024-01-01 22:00", ["2024-01-01 23:00", "2024-01-02 01:00"]),
    ("0 0 31 * *", "2024-01-31", ["2024-03-31", "2024-05-31", "2024-07-31"]),
    ("0 0 1 jan,jul *", "2024-01-01", ["2024-07-01", "2025-01-01"]),
    ("0 0 1 JAN-Mar *", "2024-03-01", ["2025-01-01", "2025-02-01"]),
    ("0 0 1 */5 *", "2024-01-01", ["2024-06-01", "2024-11-01", "2025-01-01"]),
    ("0 0 1 feb/4 *", "2024-01-01", ["2024-02-01", "2024-06-01", "2024-10-01"]),
    ("0 9 * * mon-fri", "2024-01-05 10:00", ["2024-01-08 09:00", "2024-01-09 09:00"]),
    ("0 9 * * MON-fri", "2024-01-05 10:00", ["2024-01-08 09:00"]),
    ("0 9 * * Sat,sun", "2024-01-01", ["2024-01-06 09:00", "2024-01-07 09:00", "2024-01-13 09:00"]),
    ("0 0 * * 0", "2024-01-01", ["2024-01-07", "2024-01-14"]),
    ("0 0 * * 7", "2024-01-01", ["2024-01-07", "2024-01-14"]),
    ("0 0 * * 5-7", "2024-01-01", ["2024-01-05", "2024-01-06", "2024-01-07", "2024-01-12"]),
    ("0 0 * * 0-7", "2024-01-01", ["2024-01-02", "2024-01-03"]),
    ("0 0 * * */3", "2024-01-01", ["2024-01-03", "2024-01-06", "2024-01-07"]),
    # A step longer than its range keeps the range's start (issue 23).
    ("*/90 * * * *", "2024-01-01 00:00", ["2024-01-01 01:00", "2024-01-01 02:00"]),
    ("0 */30 * * *", "2024-01-01 00:00", ["2024-01-02 00:00", "2024-01-03 00:00"]),
    ("0 0 * * */8", "2024-01-01", ["2024-01-07", "2024-01-14"]),
    ("0 0 * * 1-wed/8", "2024-01-01", ["2024-01-08", "2024-01-15"]),
    ("0 0 1 */13 *", "2024-01-01", ["2025-01-01", "2026-01-01"]),
    ("10-20/15 * * * *", "2024-01-01 00:10", ["2024-01-01 01:10"]),
    # A reversed range wraps around the field's end, its step counting on through the wrap.
    ("0 0 1 Nov-Mar *", "2024-03-01", ["2024-11-01", "2024-12-01", "2025-01-01", "2025-02-01",
                                       "2025-03-01", "2025-11-01"]),
    ("0 22-2 * * *", "2024-01-01 02:00", ["2024-01-01 22:00", "2024-01-01 23:00",
                                          "2024-01-02 00:00", "2024-01-02 01:00",
                                          "2024-01-02 02:00", "2024-01-02 22:00"]),
    ("0 0 * * sat-mon", "2024-01-02", ["2024-01-06", "2024-01-07", "2024-01-08", "2024-01-13"]),
    ("0 0 * * 7-mon", "2024-01-02", ["2024-01-07", "2024-01-08", "2024-01-14"]),
    ("0 0 1 Apr-Mar/3 *", "2024-01-01", ["2024-04-01", "2024-07-01", "2024-10-01", "2025-01-01",
                                         "2025-04-01"]),
    ("0 22-2/3 * * *", "2024-01-01 00:00", ["2024-01-01 01:00", "2024-01-01 22:00",
                                            "2024-01-02 01:00"]),
    # `L` ends a day-of-month range: 1-L/8 is 1, 9, 17, 25 in every month.
    ("0 0 1-L/8 * *", "2024-01-25", ["2024-02-01", "2024-02-09", "2024-02-17", "2024-02-25",
                                     "2024-03-01"]),
    ("0 0 27-L 2 *", "2023-03-01", ["2024-02-27", "2024-02-28", "2024-02-29", "2025-02-27"]),
]  # fmt: skip

SYNTAX_IDS = [f"{expr} @{start}" for expr, start, _ in SYNTAX_CASES]


@pytest.mark.parametrize(("expr", "start", "expected"), SYNTAX_CASES, ids=SYNTAX_IDS)
def test_syntax_next(expr: str, start: str, expected: list[str]) -> None:
    assert nexts(expr, iso(start), len(expected)) == [iso(x) for x in expected]


@pytest.mark.parametrize(("expr", "start", "expected"), SYNTAX_CASES, ids=SYNTAX_IDS)
def test_syntax_prev_inverts_next(expr: str, start: str, expected: list[str]) -> None:
    # Walking back from each expected fire lands on the one before it; before the first one
    # there is no fire after `start`.
    e = Expression(expr)
    fires = [iso(x) for x in expected]
    for earlier, later in itertools.pairwise(fires):
        assert e.prev(later) == earlier
    assert e.prev(fires[0]) <= iso(start)


def test_names_do_not_depend_on_case() -> None:
    assert Expression("0 0 1 JAN *") == Expression("0 0 1 jan *") == Expression("0 0 1 Jan *")
    assert Expression("0 0 * * SUN") == Expression("0 0 * * sun") == Expression("0 0 * * 0")


# ---------------------------------------------------------------------------------------------
# Seconds field
# ---------------------------------------------------------------------------------------------


def test_six_fields_lead_with_seconds() -> None:
    e = Expression("*/15 * * * * *")
    assert e.has_seconds is True
    assert nexts("*/15 * * * * *", datetime(2024, 1, 1), 5) == [
        datetime(2024, 1, 1, 0, 0, 15),
        datetime(2024, 1, 1, 0, 0, 30),
        datetime(2024, 1, 1, 0, 0, 45),
        datetime(2024, 1, 1, 0, 1, 0),
        datetime(2024, 1, 1, 0, 1, 15),
    ]


def test_seconds_field_fixed_time() -> None:
    # second 30, minute 0, hour 12: daily at 12:00:30.
    assert nexts("30 0 12 * * *", datetime(2024, 1, 1, 12, 0, 30), 2) == [
        datetime(2024, 1, 2, 12, 0, 30),
        datetime(2024, 1, 3, 12, 0, 30),
    ]
    assert Expression("30 0 12 * * *").prev(datetime(2024, 1, 1, 12, 0, 31)) == datetime(
        2024, 1, 1, 12, 0, 30
    )


def test_five_fields_fire_on_whole_minutes() -> None:
    assert Expression("* * * * *").has_seconds is False
    assert Expression("@hourly").has_seconds is False
    # 5-field results always have second 0 even from a start with seconds.
    assert Expression("* * * * *").next(datetime(2024, 1, 1, 0, 0, 59)) == datetime(
        2024, 1, 1, 0, 1
    )


def test_results_have_no_microseconds() -> None:
    start = datetime(2024, 1, 1, 0, 0, 0, 999_999)
    assert Expression("* * * * * *").next(start) == datetime(2024, 1, 1, 0, 0, 1)
    assert Expression("* * * * * *").prev(start) == datetime(2024, 1, 1, 0, 0, 0)
    assert Expression("* * * * *").prev(start) == datetime(2024, 1, 1, 0, 0)
    assert next(Expression("*/7 * * * * *").iter(start)) == datetime(2024, 1, 1, 0, 0, 7)


# ---------------------------------------------------------------------------------------------
# Nicknames
# ---------------------------------------------------------------------------------------------

JUNE_1 = datetime(2024, 6, 1, 10, 30)  # a Saturday


@pytest.mark.parametrize(
    ("nickname", "expected"),
    [
        ("@yearly", datetime(2025, 1, 1)),
        ("@annually", datetime(2025, 1, 1)),
        ("@monthly", datetime(2024, 7, 1)),
        ("@weekly", datetime(2024, 6, 2)),
        ("@daily", datetime(2024, 6, 2)),
        ("@midnight", datetime(2024, 6, 2)),
        ("@hourly", datetime(2024, 6, 1, 11, 0)),
    ],
)
def test_nicknames(nickname: str, expected: datetime) -> None:
    assert Expression(nickname).next(JUNE_1) == expected


@pytest.mark.parametrize(
    ("nickname", "spelled_out"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_nicknames_equal_their_expansion(nickname: str, spelled_out: str) -> None:
    assert Expression(nickname) == Expression(spelled_out)
    assert hash(Expression(nickname)) == hash(Expression(spelled_out))


# ---------------------------------------------------------------------------------------------
# Quartz extensions: L, LW, nW, nL, n#k
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        # L: last day of the month (the 29th in a leap February).
        ("0 0 L * *", "2024-01-31", ["2024-02-29", "2024-03-31", "2024-04-30"]),
        ("0 0 L 2 *", "2023-01-01", ["2023-02-28", "2024-02-29"]),
        # LW: last weekday. 2024-03-31 is a Sunday -> Friday 29th; 2024-04-30 is a Tuesday;
        # 2024-08-31 is a Saturday -> Friday 30th.
        ("0 0 LW * *", "2024-03-01", ["2024-03-29", "2024-04-30"]),
        ("0 0 LW 8 *", "2024-01-01", ["2024-08-30"]),
        # nW: nearest weekday. 2024-06-15 is a Saturday -> Friday 14th; 2024-09-15 is a Sunday ->
        # Monday 16th; 2024-07-15 is a Monday.
        ("0 0 15W 6 *", "2024-01-01", ["2024-06-14"]),
        ("0 0 15W 9 *", "2024-01-01", ["2024-09-16"]),
        ("0 0 15W 7 *", "2024-01-01", ["2024-07-15"]),
        # Never crossing the month: 2024-06-01 is a Saturday -> Monday 3rd (not Friday May 31st);
        # 2024-03-31 is a Sunday -> Friday 29th (not Monday April 1st).
        ("0 0 1W 6 *", "2024-01-01", ["2024-06-03"]),
        ("0 0 31W 3 *", "2024-01-01", ["2024-03-29"]),
        # Past the month's end, the weekday nearest the last day: April 30th 2024 is a
        # Tuesday; April 30th 2028 is a Sunday -> Friday 28th; February 29th 2024 a Thursday.
        ("0 0 31W 4 *", "2024-01-01", ["2024-04-30", "2025-04-30"]),
        ("0 0 31W 4 *", "2028-01-01", ["2028-04-28"]),
        ("0 0 30W 2 *", "2024-01-01", ["2024-02-29", "2025-02-28", "2026-02-27"]),
        # nL: last weekday n of the month. The last Friday of January 2024 is the 26th; of
        # February the 23rd (February 29th is a Thursday).
        ("0 0 * * 5L", "2024-01-01", ["2024-01-26", "2024-02-23"]),
        # n#k: the k-th weekday n. Second Fridays: January 12th, February 9th.
        ("0 0 * * 5#2", "2024-01-01", ["2024-01-12", "2024-02-09"]),
        # First Mondays: 2024-01-01 itself is excluded (strictly after), then Feb 5th, Mar 4th.
        ("0 0 * * 1#1", "2024-01-01", ["2024-02-05", "2024-03-04"]),
        # Fifth Mondays: January 29th; none in February or March; April 29th.
        ("0 0 * * 1#5", "2024-01-01", ["2024-01-29", "2024-04-29"]),
        ("0 0 * * mon#5", "2024-01-01", ["2024-01-29", "2024-04-29"]),
    ],
)
def test_quartz_forms(expr: str, start: str, expected: list[str]) -> None:
    assert nexts(expr, iso(start), len(expected)) == [iso(x) for x in expected]


def test_quartz_forms_prev() -> None:
    assert Expression("0 0 L * *").prev(datetime(2024, 3, 1)) == datetime(2024, 2, 29)
    assert Expression("0 0 * * 5L").prev(datetime(2024, 2, 1)) == datetime(2024, 1, 26)
    assert Expression("0 0 * * 1#5").prev(datetime(2024, 4, 1)) == datetime(2024, 1, 29)
    assert Expression("0 0 LW * *").prev(datetime(2024, 4, 1)) == datetime(2024, 3, 29)


def test_quartz_matches() -> None:
    assert Expression("0 0 L * *").matches(datetime(2024, 2, 29))
    assert not Expression("0 0 L * *").matches(datetime(2024, 2, 28))
    assert Expression("0 0 15W * *").matches(datetime(2024, 6, 14))
    assert not Expression("0 0 15W * *").matches(datetime(2024, 6, 15))


# ---------------------------------------------------------------------------------------------
# Leap years
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        (datetime(2024, 3, 1), datetime(2028, 2, 29)),
        (datetime(1999, 1, 1), datetime(2000, 2, 29)),  # 2000: divisible by 400, leap
        (datetime(1896, 3, 1), datetime(1904, 2, 29)),  # 1900: not leap
        (datetime(2096, 3, 1), datetime(2104, 2, 29)),  # 2100: not leap
    ],
)
def test_february_29th(start: datetime, expected: datetime) -> None:
    assert Expression("0 0 29 2 *").next(start) == expected


def test_february_29th_prev_skips_2100() -> None:
    assert Expression("0 0 29 2 *").prev(datetime(2104, 1, 1)) == datetime(2096, 2, 29)
    assert Expression("0 0 29 2 *").prev(datetime(1904, 1, 1)) == datetime(1896, 2, 29)


@pytest.mark.parametrize(
    ("year", "last_day"), [(2000, 29), (1900, 28), (2100, 28), (2023, 28), (2024, 29)]
)
def test_last_day_of_february(year: int, last_day: int) -> None:
    assert Expression("0 0 L 2 *").next(datetime(year, 1, 1)) == datetime(year, 2, last_day)


def test_day_after_february_28th() -> None:
    e = Expression("0 12 * * *")
    assert e.next(datetime(2000, 2, 28, 12)) == datetime(2000, 2, 29, 12)
    assert e.next(datetime(1900, 2, 28, 12)) == datetime(1900, 3, 1, 12)
    assert e.next(datetime(2100, 2, 28, 12)) == datetime(2100, 3, 1, 12)


# ---------------------------------------------------------------------------------------------
# Ends of the calendar: years 1..9999
# ---------------------------------------------------------------------------------------------


def test_last_representable_fire() -> None:
    assert Expression("* * * * *").next(datetime(9999, 12, 31, 23, 58)) == datetime(
        9999, 12, 31, 23, 59
    )
    assert Expression("* * * * *").prev(datetime(1, 1, 1, 0, 1)) == datetime(1, 1, 1, 0, 0)


@pytest.mark.parametrize(
    ("expr", "start"),
    [
        ("* * * * *", datetime(9999, 12, 31, 23, 59)),
        ("* * * * * *", datetime(9999, 12, 31, 23, 59, 59)),
        ("0 0 1 1 *", datetime(9999, 6, 1)),
        ("0 0 29 2 *", datetime(9996, 3, 1)),  # 9996 is the last leap year before 10000
        # 9999-12-01 is a Wednesday: December's Mondays are 6, 13, 20, 27, so there is no fifth
        # Monday, and no later month exists.
        ("0 0 * * 1#5", datetime(9999, 12, 1)),
    ],
)
def test_next_past_year_9999_overflows(expr: str, start: datetime) -> None:
    with pytest.raises(OverflowError):
        Expression(expr).next(start)


@pytest.mark.parametrize(
    ("expr", "start"),
    [
        ("* * * * *", datetime(1, 1, 1, 0, 0)),
        ("0 0 1 1 *", datetime(1, 1, 1, 0, 0)),
        ("0 12 31 12 *", datetime(1, 6, 1)),
    ],
)
def test_prev_before_year_1_overflows(expr: str, start: datetime) -> None:
    with pytest.raises(OverflowError):
        Expression(expr).prev(start)


def test_iter_stops_or_overflows_at_year_9999() -> None:
    got: list[datetime] = []
    it = Expression("0 0 1 1 *").iter(datetime(9997, 6, 1))
    with pytest.raises((StopIteration, OverflowError)):
        for _ in range(5):
            got.append(next(it))
    assert got == [datetime(9998, 1, 1), datetime(9999, 1, 1)]


# ---------------------------------------------------------------------------------------------
# prev, matches, iter
# ---------------------------------------------------------------------------------------------


def test_prev_is_strictly_before() -> None:
    e = Expression("*/5 * * * *")
    assert e.prev(datetime(2024, 1, 1, 0, 5)) == datetime(2024, 1, 1, 0, 0)
    assert e.prev(datetime(2024, 1, 1, 0, 5, 0, 1)) == datetime(2024, 1, 1, 0, 5)
    assert e.prev(datetime(2024, 1, 1, 0, 0)) == datetime(2023, 12, 31, 23, 55)


def test_next_is_strictly_after() -> None:
    e = Expression("*/5 * * * *")
    assert e.next(datetime(2024, 1, 1, 0, 5)) == datetime(2024, 1, 1, 0, 10)
    assert e.next(datetime(2024, 1, 1, 0, 4, 59, 999_999)) == datetime(2024, 1, 1, 0, 5)


def test_matches() -> None:
    e = Expression("*/5 9-17 * * mon-fri")
    assert e.matches(datetime(2024, 1, 5, 9, 5))  # Friday
    assert not e.matches(datetime(2024, 1, 6, 9, 5))  # Saturday
    assert not e.matches(datetime(2024, 1, 5, 9, 6))
    assert not e.matches(datetime(2024, 1, 5, 18, 0))
    assert not e.matches(datetime(2024, 1, 5, 9, 5, 1))  # 5 fields: second must be 0
    assert not e.matches(datetime(2024, 1, 5, 9, 5, 0, 1))  # any microsecond: never a fire


def test_matches_with_seconds() -> None:
    e = Expression("*/15 * * * * *")
    assert e.matches(datetime(2024, 1, 1, 0, 0, 15))
    assert not e.matches(datetime(2024, 1, 1, 0, 0, 16))
    assert not e.matches(datetime(2024, 1, 1, 0, 0, 15, 500_000))


def test_matches_or_rule() -> None:
    e = Expression("0 0 13 * fri")
    assert e.matches(datetime(2024, 1, 13))  # Saturday the 13th
    assert e.matches(datetime(2024, 1, 5))  # Friday the 5th
    assert not e.matches(datetime(2024, 1, 6))


def test_matches_aware_uses_wall_time_of_its_zone() -> None:
    ny = ZoneInfo("America/New_York")
    e = Expression("0 9 * * *")
    assert e.matches(datetime(2024, 1, 2, 9, 0, tzinfo=ny))
    assert not e.matches(datetime(2024, 1, 2, 9, 0, tzinfo=timezone.utc).astimezone(ny))


def test_iter_forward() -> None:
    e = Expression("0 */8 * * *")
    got = list(itertools.islice(e.iter(datetime(2024, 1, 1, 1)), 4))
    assert got == [
        datetime(2024, 1, 1, 8),
        datetime(2024, 1, 1, 16),
        datetime(2024, 1, 2, 0),
        datetime(2024, 1, 2, 8),
    ]


def test_iter_reverse() -> None:
    e = Expression("0 */8 * * *")
    got = list(itertools.islice(e.iter(datetime(2024, 1, 2, 1), reverse=True), 4))
    assert got == [
        datetime(2024, 1, 2, 0),
        datetime(2024, 1, 1, 16),
        datetime(2024, 1, 1, 8),
        datetime(2024, 1, 1, 0),
    ]
    kw = list(itertools.islice(e.iter(datetime(2024, 1, 2, 1), True), 4))
    assert kw == got


def test_iter_is_lazy_and_an_iterator() -> None:
    # A schedule that fires every second for ~8000 years: only laziness makes this instant.
    it = Expression("* * * * * *").iter(datetime(2000, 1, 1))
    assert iter(it) is it
    assert next(it) == datetime(2000, 1, 1, 0, 0, 1)
    assert next(it) == datetime(2000, 1, 1, 0, 0, 2)


def test_iter_agrees_with_chained_next_and_prev() -> None:
    e = Expression("15,45 8-18 * * 1-5")
    start = datetime(2024, 2, 28, 17, 50)
    assert list(itertools.islice(e.iter(start), 30)) == nexts("15,45 8-18 * * 1-5", start, 30)
    back = list(itertools.islice(e.iter(start, reverse=True), 30))
    t = start
    for fire in back:
        t = e.prev(t)
        assert fire == t


# ---------------------------------------------------------------------------------------------
# str, repr, ==, hash
# ---------------------------------------------------------------------------------------------

ROUND_TRIP = [
    "* * * * *",
    "*/5 * * * *",
    "1-2,*/15 0 1 3 2",
    "0 9 * * mon-fri",
    "0 0 1 jan,jul *",
    "0 0 ? * MON",
    "*/15 * * * * *",
    "@daily",
    "@yearly",
    "0 0 L * *",
    "0 0 LW * *",
    "0 0 15W * *",
    "0 0 * * 5L",
    "0 0 * * 5#2",
    "5/20 * 1-31/2 */3 *",
    "0 0 * * 7",
]


@pytest.mark.parametrize("expr", ROUND_TRIP)
def test_str_round_trips(expr: str) -> None:
    e = Expression(expr)
    again = Expression(str(e))
    assert again == e
    assert hash(again) == hash(e)
    assert str(again) == str(e)
    assert again.has_seconds == e.has_seconds
    start = datetime(2024, 1, 31, 20)
    assert nexts(str(e), start, 5) == nexts(expr, start, 5)


@pytest.mark.parametrize("expr", ROUND_TRIP)
def test_repr(expr: str) -> None:
    e = Expression(expr)
    assert repr(e) == f"Expression({str(e)!r})"


def test_str_is_normalised_text() -> None:
    s = str(Expression("0 9 * * mon-fri"))
    assert isinstance(s, str)
    assert len(s.split()) == 5
    assert len(str(Expression("*/15 * * * * *")).split()) == 6


def test_equality_compares_the_schedule() -> None:
    sunday = [Expression(x) for x in ("0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN")]
    for a in sunday:
        for b in sunday:
            assert a == b
            assert not a != b  # noqa: SIM202 (__ne__ is its own method)
            assert hash(a) == hash(b)
    assert Expression("*/15 * * * *") == Expression("0,15,30,45 * * * *")
    assert Expression("0-59 * * * *") == Expression("* * * * *")
    assert Expression("0 0 * * 1-5") == Expression("0 0 * * mon-fri")


def test_inequality() -> None:
    assert Expression("*/5 * * * *") != Expression("*/10 * * * *")
    assert Expression("0 0 * * 0") != Expression("0 0 * * 1")
    # Six fields shift the meaning: "0 0 * * * *" is second 0 of minute 0, i.e. hourly.
    assert Expression("0 0 * * *") != Expression("0 0 * * * *")


def test_equality_with_other_types_is_false() -> None:
    e = Expression("0 0 * * 0")
    assert e != "0 0 * * 0"
    assert (e == 5) is False
    assert e is not None


def test_hashable_in_sets_and_dicts() -> None:
    s = {Expression("0 0 * * 0"), Expression("0 0 * * 7"), Expression("@hourly")}
    assert len(s) == 2
    d = {Expression("@daily"): "daily"}
    assert d[Expression("0 0 * * *")] == "daily"


# ---------------------------------------------------------------------------------------------
# Naive and aware datetimes
# ---------------------------------------------------------------------------------------------


def test_naive_in_naive_out() -> None:
    got = Expression("30 2 * * *").next(datetime(2024, 3, 10))
    assert got == datetime(2024, 3, 10, 2, 30)  # wall clock: no time zone, no DST gap
    assert got.tzinfo is None


def test_utc_in_utc_out_same_object() -> None:
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    got = Expression("0 9 * * *").next(t)
    assert got == datetime(2024, 1, 1, 9, tzinfo=timezone.utc)
    assert got.tzinfo is timezone.utc
    prev = Expression("0 9 * * *").prev(t)
    assert prev.tzinfo is timezone.utc
    assert prev == datetime(2023, 12, 31, 9, tzinfo=timezone.utc)


def test_fixed_offset_in_same_offset_out() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    t = datetime(2024, 1, 1, 10, 0, tzinfo=ist)
    got = Expression("0 9 * * *").next(t)
    assert got.tzinfo is ist
    assert got.replace(tzinfo=None) == datetime(2024, 1, 2, 9, 0)
    assert got.astimezone(timezone.utc) == datetime(2024, 1, 2, 3, 30, tzinfo=timezone.utc)


def test_negative_fixed_offset() -> None:
    tz = timezone(timedelta(hours=-3))
    got = Expression("0 0 1 * *").next(datetime(2024, 1, 31, 23, 0, tzinfo=tz))
    assert got.tzinfo is tz
    assert got.astimezone(timezone.utc) == datetime(2024, 2, 1, 3, 0, tzinfo=timezone.utc)


def test_zoneinfo_in_same_object_out() -> None:
    tz = ZoneInfo("Europe/Paris")
    t = datetime(2024, 7, 1, 8, 0, tzinfo=tz)
    got = Expression("0 9 * * *").next(t)
    assert got.tzinfo is tz
    assert got.replace(tzinfo=None) == datetime(2024, 7, 1, 9, 0)
    assert got.astimezone(timezone.utc) == datetime(2024, 7, 1, 7, 0, tzinfo=timezone.utc)


def test_aware_start_in_another_zone_is_an_instant() -> None:
    # The schedule is evaluated in the start's own zone: 09:00 UTC is 10:00 in Paris (winter).
    utc_start = datetime(2024, 1, 1, 8, 30, tzinfo=timezone.utc)
    paris = ZoneInfo("Europe/Paris")
    got_utc = Expression("0 * * * *").next(utc_start)
    got_paris = Expression("0 * * * *").next(utc_start.astimezone(paris))
    assert got_utc.astimezone(timezone.utc) == datetime(2024, 1, 1, 9, tzinfo=timezone.utc)
    assert got_paris.astimezone(timezone.utc) == datetime(2024, 1, 1, 9, tzinfo=timezone.utc)
    assert got_paris.tzinfo is paris


def test_aware_iter_keeps_tzinfo() -> None:
    tz = ZoneInfo("Asia/Tokyo")
    for fire in itertools.islice(
        Expression("0 */6 * * *").iter(datetime(2024, 1, 1, tzinfo=tz)), 4
    ):
        assert fire.tzinfo is tz
        assert fire.hour % 6 == 0


# ---------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------


class _HomemadeTz(tzinfo):
    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "HOME"


@pytest.mark.parametrize("bad", ["2024-01-01", None, 1704067200, 1704067200.0, date(2024, 1, 1)])
@pytest.mark.parametrize("method", ["next", "prev", "matches"])
def test_bad_argument_types(method: str, bad: object) -> None:
    e = Expression("* * * * *")
    with pytest.raises(TypeError):
        getattr(e, method)(bad)


@pytest.mark.parametrize("bad", ["2024-01-01", None, date(2024, 1, 1)])
def test_iter_bad_argument_type(bad: object) -> None:
    with pytest.raises(TypeError):
        next(Expression("* * * * *").iter(bad))  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["next", "prev", "matches"])
def test_unsupported_tzinfo(method: str) -> None:
    t = datetime(2024, 1, 1, tzinfo=_HomemadeTz())
    with pytest.raises(TypeError):
        getattr(Expression("* * * * *"), method)(t)


@pytest.mark.parametrize("bad", [None, 5, b"* * * * *", ["*"] * 5])
def test_constructor_rejects_non_strings(bad: object) -> None:
    with pytest.raises(TypeError):
        Expression(bad)  # type: ignore[arg-type]


def test_cron_error_hierarchy() -> None:
    assert issubclass(CronError, TmError)
    assert issubclass(CronError, ValueError)
    with pytest.raises(ValueError):
        Expression("61 * * * *")
