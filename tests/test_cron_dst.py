"""The daylight-saving policy for aware datetimes.

Policy (DESIGN.md, "Cron"): a candidate wall time inside a spring-forward gap fires at the first
instant after the gap (several candidates in one gap collapse into that one fire); in a fall-back
fold a fixed-time schedule (hour field not `*`) fires once, at the first occurrence, while a
schedule whose hour field is `*` fires in both passes.

Every expected value is an instant written in UTC, and results are compared as instants via
``astimezone(timezone.utc)`` (two aware datetimes with the same tzinfo compare by wall time and
ignore ``fold``, so ``==`` on them would hide exactly the bugs this file looks for).

Transitions used (checked with zoneinfo):
- America/New_York 2024: 03-10 02:00 EST -> 03:00 EDT at 07:00Z; 11-03 02:00 EDT -> 01:00 EST at
  06:00Z (01:00-01:59 is 05:00-05:59Z, then 06:00-06:59Z).
- Europe/London and Europe/Dublin 2024: 03-31 01:00 -> 02:00 at 01:00Z; 10-27 02:00 -> 01:00 at
  01:00Z (01:00-01:59 is 00:00-00:59Z, then 01:00-01:59Z). Dublin's winter time is a negative DST
  in tzdata; the wall clock is the same as London's.
- Australia/Lord_Howe 2024 (30-minute shifts): 04-07 02:00 +11 -> 01:30 +10:30 at 04-06 15:00Z
  (01:30-01:59 is 14:30-14:59Z, then 15:00-15:29Z); 10-06 02:00 +10:30 -> 02:30 +11 at
  10-05 15:30Z.
- America/Sao_Paulo 2018 (midnight transitions): 02-18 00:00 -02 -> 02-17 23:00 -03 at 02:00Z;
  11-04 00:00 -03 -> 01:00 -02 at 03:00Z.
- Pacific/Apia 2011: 12-29 24:00 -10 -> 12-31 00:00 +14 at 12-30 10:00Z (December 30th skipped).
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tm.cron import Expression

UTC = timezone.utc


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(zone: str, text: str, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone), fold=fold)


def assert_is_local_form_of(got: datetime, instant: datetime, tz: ZoneInfo) -> None:
    """``got`` is ``instant`` as that zone's wall clock, with the right fold and tzinfo."""
    assert got.tzinfo is tz
    assert got.astimezone(UTC) == instant
    want = instant.astimezone(tz)
    assert (got.replace(tzinfo=None), got.fold) == (want.replace(tzinfo=None), want.fold)
    assert got.utcoffset() == want.utcoffset()


# (zone, expression, local start, fold of the start, expected next fires as UTC instants)
FORWARD = [
    # --- spring forward: candidates in the gap fire at the first instant after it -------------
    ("America/New_York", "30 2 * * *", "2024-03-09 12:00", 0,
     ["2024-03-10 07:00", "2024-03-11 06:30"]),
    ("America/New_York", "0 2 * * *", "2024-03-10 00:00", 0, ["2024-03-10 07:00"]),
    # Four candidates (02:00, 02:15, 02:30, 02:45) collapse into one fire at 03:00 EDT.
    ("America/New_York", "*/15 2 * * *", "2024-03-10 00:00", 0,
     ["2024-03-10 07:00", "2024-03-11 06:00", "2024-03-11 06:15"]),
    # Gap candidates and the regular 03:00 candidate coincide: one fire, not two.
    ("America/New_York", "*/30 * * * *", "2024-03-10 01:00", 0,
     ["2024-03-10 06:30", "2024-03-10 07:00", "2024-03-10 07:30"]),
    ("America/New_York", "0 3 * * *", "2024-03-10 00:00", 0,
     ["2024-03-10 07:00", "2024-03-11 07:00"]),
    ("Europe/London", "30 1 * * *", "2024-03-30 12:00", 0,
     ["2024-03-31 01:00", "2024-04-01 00:30"]),
    ("Europe/Dublin", "30 1 * * *", "2024-03-30 12:00", 0,
     ["2024-03-31 01:00", "2024-04-01 00:30"]),
    ("Australia/Lord_Howe", "15 2 * * *", "2024-10-05 12:00", 0,
     ["2024-10-05 15:30", "2024-10-06 15:15"]),
    # 02:00 and 02:15 are in the half-hour gap; they collapse with the regular 02:30.
    ("Australia/Lord_Howe", "*/15 * * * *", "2024-10-06 01:30", 0,
     ["2024-10-05 15:15", "2024-10-05 15:30", "2024-10-05 15:45"]),
    ("America/Sao_Paulo", "0 0 * * *", "2018-11-03 12:00", 0,
     ["2018-11-04 03:00", "2018-11-05 02:00"]),
    # A whole skipped day: its 12:00 fires at the first instant after the gap, 12-31 00:00 +14.
    ("Pacific/Apia", "0 12 * * *", "2011-12-29 00:00", 0,
     ["2011-12-29 22:00", "2011-12-30 10:00", "2011-12-30 22:00"]),
    # ...and its midnight collapses with December 31st's.
    ("Pacific/Apia", "0 0 * * *", "2011-12-29 12:00", 0,
     ["2011-12-30 10:00", "2011-12-31 10:00"]),
    # --- fall back: fixed hours fire once, at the first occurrence ----------------------------
    ("America/New_York", "30 1 * * *", "2024-11-03 00:00", 0,
     ["2024-11-03 05:30", "2024-11-04 06:30"]),
    ("America/New_York", "*/20 1 * * *", "2024-11-03 00:00", 0,
     ["2024-11-03 05:00", "2024-11-03 05:20", "2024-11-03 05:40", "2024-11-04 06:00"]),
    # Started inside the first pass after 01:30: the second pass's 01:30 is not a fire.
    ("America/New_York", "30 1 * * *", "2024-11-03 01:45", 0, ["2024-11-04 06:30"]),
    # Started in the second pass (01:10 EST = 06:10Z): 01:30 EDT is already past.
    ("America/New_York", "30 1 * * *", "2024-11-03 01:10", 1, ["2024-11-04 06:30"]),
    ("Europe/London", "30 1 * * *", "2024-10-27 00:00", 0,
     ["2024-10-27 00:30", "2024-10-28 01:30"]),
    ("Europe/Dublin", "30 1 * * *", "2024-10-27 00:00", 0,
     ["2024-10-27 00:30", "2024-10-28 01:30"]),
    ("Australia/Lord_Howe", "45 1 * * *", "2024-04-07 00:00", 0,
     ["2024-04-06 14:45", "2024-04-07 15:15"]),
    # Only 01:30-01:59 repeats: 01:00 and the first 01:30 fire, the second 01:30 does not.
    ("Australia/Lord_Howe", "0,30 1 * * *", "2024-04-07 00:00", 0,
     ["2024-04-06 14:00", "2024-04-06 14:30", "2024-04-07 14:30"]),
    ("America/Sao_Paulo", "30 23 * * *", "2018-02-17 12:00", 0,
     ["2018-02-18 01:30", "2018-02-19 02:30"]),
    # --- fall back: hour `*` fires in both passes ------------------------------------------------
    ("America/New_York", "30 * * * *", "2024-11-03 00:00", 0,
     ["2024-11-03 04:30", "2024-11-03 05:30", "2024-11-03 06:30", "2024-11-03 07:30"]),
    ("America/New_York", "0 * * * *", "2024-11-03 00:30", 0,
     ["2024-11-03 05:00", "2024-11-03 06:00", "2024-11-03 07:00"]),
    ("America/New_York", "30 * * * *", "2024-11-03 01:45", 0, ["2024-11-03 06:30"]),
    ("America/New_York", "30 * * * *", "2024-11-03 01:10", 1, ["2024-11-03 06:30"]),
    ("Europe/London", "*/30 * * * *", "2024-10-27 00:45", 0,
     ["2024-10-27 00:00", "2024-10-27 00:30", "2024-10-27 01:00", "2024-10-27 01:30",
      "2024-10-27 02:00"]),
    ("Europe/Dublin", "0 * * * *", "2024-10-27 00:30", 0,
     ["2024-10-27 00:00", "2024-10-27 01:00", "2024-10-27 02:00"]),
    ("Australia/Lord_Howe", "*/15 * * * *", "2024-04-07 01:00", 0,
     ["2024-04-06 14:15", "2024-04-06 14:30", "2024-04-06 14:45", "2024-04-06 15:00",
      "2024-04-06 15:15", "2024-04-06 15:30"]),
    ("America/Sao_Paulo", "30 * * * *", "2018-02-17 22:45", 0,
     ["2018-02-18 01:30", "2018-02-18 02:30", "2018-02-18 03:30"]),
    # Seconds field, hour `*`: both passes, second by second.
    ("Europe/London", "0 59 * * * *", "2024-10-27 01:30", 0,
     ["2024-10-27 00:59", "2024-10-27 01:59", "2024-10-27 02:59"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("zone", "expr", "start", "fold", "expected"),
    FORWARD,
    ids=[f"{z}:{e}@{s}{'/fold' if f else ''}" for z, e, s, f, _ in FORWARD],
)
def test_next_across_transitions(
    zone: str, expr: str, start: str, fold: int, expected: list[str]
) -> None:
    e = Expression(expr)
    t = local(zone, start, fold)
    tz = t.tzinfo
    assert isinstance(tz, ZoneInfo)
    got = []
    for _ in expected:
        t = e.next(t)
        got.append(t)
    assert [g.astimezone(UTC) for g in got] == [utc(x) for x in expected]
    for g, x in zip(got, expected, strict=True):
        assert_is_local_form_of(g, utc(x), tz)


@pytest.mark.parametrize(
    ("zone", "expr", "start", "fold", "expected"),
    FORWARD,
    ids=[f"{z}:{e}@{s}{'/fold' if f else ''}" for z, e, s, f, _ in FORWARD],
)
def test_prev_walks_the_same_fires_back(
    zone: str, expr: str, start: str, fold: int, expected: list[str]
) -> None:
    # prev from each expected fire gives the fire before it, and nothing lies between the
    # start and the first fire.
    e = Expression(expr)
    tz = ZoneInfo(zone)
    fires = [utc(x).astimezone(tz) for x in expected]
    for earlier, later in itertools.pairwise(fires):
        assert e.prev(later).astimezone(UTC) == earlier.astimezone(UTC)
    start_instant = local(zone, start, fold).astimezone(UTC)
    assert e.prev(fires[0]).astimezone(UTC) <= start_instant


def test_prev_across_a_gap() -> None:
    ny = ZoneInfo("America/New_York")
    e = Expression("30 2 * * *")
    got = e.prev(local("America/New_York", "2024-03-10 12:00"))
    assert_is_local_form_of(got, utc("2024-03-10 07:00"), ny)  # the gap's fire, 03:00 EDT
    got = e.prev(got)
    assert_is_local_form_of(got, utc("2024-03-09 07:30"), ny)  # 02:30 EST the day before


def test_prev_across_a_fold() -> None:
    ny = ZoneInfo("America/New_York")
    fixed, every_hour = Expression("30 1 * * *"), Expression("30 * * * *")
    # From the second pass, the fixed schedule's only fire that day is the first 01:30.
    got = fixed.prev(local("America/New_York", "2024-11-03 01:45", fold=1))
    assert_is_local_form_of(got, utc("2024-11-03 05:30"), ny)
    got = every_hour.prev(local("America/New_York", "2024-11-03 01:45", fold=1))
    assert_is_local_form_of(got, utc("2024-11-03 06:30"), ny)
    assert got.fold == 1
    back = list(itertools.islice(every_hour.iter(got, reverse=True), 2))
    assert [b.astimezone(UTC) for b in back] == [utc("2024-11-03 05:30"), utc("2024-11-03 04:30")]


def test_seed_dst_examples_london() -> None:
    # From the brief: `30 1 * * *` fires once at 01:30 BST on 2024-10-27, and at 02:00 BST (the
    # first instant after the gap) on 2024-03-31.
    london = ZoneInfo("Europe/London")
    e = Expression("30 1 * * *")
    spring = e.next(datetime(2024, 3, 31, 0, 0, tzinfo=london))
    assert (spring.hour, spring.minute, spring.utcoffset()) == (2, 0, timedelta(hours=1))
    autumn = e.next(datetime(2024, 10, 27, 0, 0, tzinfo=london))
    assert (autumn.hour, autumn.minute, autumn.fold, autumn.utcoffset()) == (
        1,
        30,
        0,
        timedelta(hours=1),
    )
    assert e.next(autumn).date() == datetime(2024, 10, 28).date()


def test_matches_in_the_second_pass() -> None:
    # Hour `*`: the second 01:30 is a fire. A fixed 01:30 fires only in the first pass.
    second_pass = local("America/New_York", "2024-11-03 01:30", fold=1)
    first_pass = local("America/New_York", "2024-11-03 01:30", fold=0)
    assert Expression("30 * * * *").matches(second_pass)
    assert Expression("30 * * * *").matches(first_pass)
    assert Expression("30 1 * * *").matches(first_pass)
    assert not Expression("30 1 * * *").matches(second_pass)


def test_matches_the_fire_after_a_gap() -> None:
    # `30 2 * * *` fires at 03:00 EDT on 2024-03-10 (its 02:30 does not exist), so that instant
    # is one of its fire times; 03:00 EDT the next day is not.
    assert Expression("30 2 * * *").matches(local("America/New_York", "2024-03-10 03:00"))
    assert not Expression("30 2 * * *").matches(local("America/New_York", "2024-03-11 03:00"))


# ----------------------------------------------------------------------------------------------
# Whole-year sweeps
# ----------------------------------------------------------------------------------------------

WHOLE_HOUR_ZONES = ["America/New_York", "Europe/London", "Europe/Dublin", "America/Sao_Paulo"]


def fires_between(e: Expression, start: datetime, end: datetime) -> list[datetime]:
    out = []
    for fire in e.iter(start):
        if fire.astimezone(UTC) >= end.astimezone(UTC):
            return out
        out.append(fire)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("zone", WHOLE_HOUR_ZONES)
def test_hour_star_fires_at_every_real_half_hour(zone: str) -> None:
    # With whole-hour offsets every UTC half hour is a local :00 or :30, and an hour-`*`
    # schedule fires in both passes of a fold and once at the end of a gap: so the fire times
    # are exactly the UTC half hours, each once.
    tz = ZoneInfo(zone)
    year = 2018 if zone == "America/Sao_Paulo" else 2024
    start = datetime(year, 1, 1, tzinfo=UTC).astimezone(tz)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    got = [f.astimezone(UTC) for f in fires_between(Expression("*/30 * * * *"), start, end)]
    begin, half = datetime(year, 1, 1, tzinfo=UTC), timedelta(minutes=30)
    expected = [begin + half * i for i in range(1, (end - begin) // half)]
    assert got == expected


def test_hour_star_fires_at_every_real_quarter_hour_on_lord_howe() -> None:
    tz = ZoneInfo("Australia/Lord_Howe")
    begin = datetime(2024, 1, 1, tzinfo=UTC)
    end = datetime(2025, 1, 1, tzinfo=UTC)
    fires = fires_between(Expression("*/15 * * * *"), begin.astimezone(tz), end)
    got = [f.astimezone(UTC) for f in fires]
    quarter = timedelta(minutes=15)
    expected = [begin + quarter * i for i in range(1, (end - begin) // quarter)]
    assert got == expected


@pytest.mark.parametrize(
    ("zone", "expr"),
    [
        ("America/New_York", "30 1 * * *"),
        ("America/New_York", "30 2 * * *"),
        ("Europe/London", "30 1 * * *"),
        ("Europe/Dublin", "15 1 * * *"),
        ("Australia/Lord_Howe", "45 1 * * *"),
        ("Australia/Lord_Howe", "15 2 * * *"),
        ("America/Sao_Paulo", "0 0 * * *"),
        ("America/Sao_Paulo", "30 23 * * *"),
    ],
)
def test_fixed_time_fires_once_a_day(zone: str, expr: str) -> None:
    # Whatever the transitions, a daily fixed-time schedule fires exactly once on each local
    # calendar day, strictly increasing in real time.
    tz = ZoneInfo(zone)
    year = 2018 if zone == "America/Sao_Paulo" else 2024
    start = datetime(year - 1, 12, 31, 23, 59, 59, tzinfo=tz)  # first fire: on January 1st
    fires = fires_between(Expression(expr), start, datetime(year + 1, 1, 1, tzinfo=tz))
    days = [f.date() for f in fires]
    first = days[0]
    assert days == [first + timedelta(days=i) for i in range(len(days))]
    assert len(days) == (366 if year % 4 == 0 else 365)
    instants = [f.astimezone(UTC) for f in fires]
    assert all(a < b for a, b in itertools.pairwise(instants))
    assert all(f.tzinfo is tz for f in fires)


@pytest.mark.parametrize("zone", [*WHOLE_HOUR_ZONES, "Australia/Lord_Howe", "Pacific/Apia"])
@pytest.mark.parametrize("expr", ["*/20 * * * *", "0 1,2 * * *", "30 0-3 * * *", "15 23,0 * * *"])
def test_reverse_iteration_visits_the_same_instants(zone: str, expr: str) -> None:
    tz = ZoneInfo(zone)
    year = {"America/Sao_Paulo": 2018, "Pacific/Apia": 2011}.get(zone, 2024)
    begin = datetime(year, 1, 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz)
    e = Expression(expr)
    forward = [f.astimezone(UTC) for f in fires_between(e, begin, end)]
    backward = []
    for fire in e.iter(end, reverse=True):
        if fire.astimezone(UTC) <= begin.astimezone(UTC):
            break
        backward.append(fire.astimezone(UTC))
    assert backward[::-1] == forward
    assert all(a < b for a, b in itertools.pairwise(forward))


# ----------------------------------------------------------------------------------------------
# Properties near transitions (hypothesis)
# ----------------------------------------------------------------------------------------------

# (zone, a transition instant in UTC), from the module docstring.
TRANSITIONS = [
    ("America/New_York", "2024-03-10 07:00"),
    ("America/New_York", "2024-11-03 06:00"),
    ("Europe/London", "2024-03-31 01:00"),
    ("Europe/London", "2024-10-27 01:00"),
    ("Europe/Dublin", "2024-03-31 01:00"),
    ("Europe/Dublin", "2024-10-27 01:00"),
    ("Australia/Lord_Howe", "2024-04-06 15:00"),
    ("Australia/Lord_Howe", "2024-10-05 15:30"),
    ("America/Sao_Paulo", "2018-02-18 02:00"),
    ("America/Sao_Paulo", "2018-11-04 03:00"),
    ("Pacific/Apia", "2011-12-30 10:00"),
]

near_transitions = st.tuples(
    st.sampled_from(TRANSITIONS), st.integers(-4 * 3600, 4 * 3600), st.integers(0, 999_999)
).map(
    lambda p: (utc(p[0][1]) + timedelta(seconds=p[1], microseconds=p[2])).astimezone(
        ZoneInfo(p[0][0])
    )
)
near_expressions = st.sampled_from(
    [
        "* * * * *",
        "*/7 * * * *",
        "30 * * * *",
        "0 * * * *",
        "*/15 * * * *",
        "30 1 * * *",
        "30 2 * * *",
        "*/20 1,2 * * *",
        "45 1 * * *",
        "15 2 * * *",
        "0 0 * * *",
        "30 23 * * *",
        "0 12 * * *",
        "*/10 * * * * *",
        "0 30 1 * * *",
    ]
)


@settings(deadline=None, max_examples=300)
@given(near_expressions, near_transitions)
def test_near_transitions_next_and_prev_move_in_real_time(expr: str, t: datetime) -> None:
    # Starts include the second pass of folds (fold=1, from astimezone).
    e = Expression(expr)
    instant = t.astimezone(UTC)
    n, p = e.next(t), e.prev(t)
    assert n.astimezone(UTC) > instant, (t, t.fold, n, n.fold)
    assert p.astimezone(UTC) < instant, (t, t.fold, p, p.fold)
    assert n.tzinfo is t.tzinfo and p.tzinfo is t.tzinfo
    # Neighbours: nothing fires between p and n except (possibly) t itself.
    assert e.prev(n).astimezone(UTC) <= instant
    assert e.next(p).astimezone(UTC) >= instant
    # Chaining next (each result fed back in) keeps moving forward.
    chained = [n]
    for _ in range(3):
        chained.append(e.next(chained[-1]))
    instants = [c.astimezone(UTC) for c in chained]
    assert all(a < b for a, b in itertools.pairwise(instants)), chained
    assert list(itertools.islice(e.iter(t), 4)) == chained
