"""Properties of ``tm.cron.Expression`` that hold for every valid expression and start time."""

from __future__ import annotations

import itertools
import re
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tm.cron import CronError, Expression

MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

# (low, high, names) per field
SECOND = (0, 59, None)
MINUTE = (0, 59, None)
HOUR = (0, 23, None)
DOM = (1, 31, None)
MONTH = (1, 12, MONTH_NAMES)
DOW = (0, 7, DOW_NAMES)

SETTINGS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def value(draw: st.DrawFn, spec: tuple, lo: int | None = None) -> tuple[int, str]:
    low, high, names = spec
    v = draw(st.integers(low if lo is None else lo, high))
    if names is not None and v - low < len(names) and draw(st.booleans()):
        return v, draw(st.sampled_from([names[v - low], names[v - low].upper()]))
    return v, str(v)


@st.composite
def item(draw: st.DrawFn, spec: tuple) -> str:
    low, high, _ = spec
    kind = draw(st.sampled_from(["value", "range", "star_step", "range_step", "start_step"]))
    if kind == "value":
        return draw(value(spec))[1]
    # Any positive step is valid; draw up to three times the field's span so that steps longer
    # than the field (which keep the range's start only) come up often.
    step = draw(st.integers(1, 3 * (7 if spec is DOW else high - low + 1)))
    if kind == "star_step":
        return f"*/{step}"
    _, a_text = draw(value(spec))
    if kind == "start_step":
        return f"{a_text}/{step}"
    _, b_text = draw(value(spec))  # either order: a reversed range wraps around
    return f"{a_text}-{b_text}" + (f"/{step}" if kind == "range_step" else "")


def field(spec: tuple, star: float = 0.4) -> st.SearchStrategy[str]:
    lists = st.lists(item(spec), min_size=1, max_size=3).map(",".join)
    star_weight = round(star * 10)
    return st.one_of(*([st.just("*")] * star_weight), *([lists] * (10 - star_weight)))


QUARTZ_DOM = st.one_of(st.just("L"), st.just("LW"), st.integers(1, 31).map(lambda d: f"{d}W"))
QUARTZ_DOW = st.one_of(
    st.integers(0, 7).map(lambda d: f"{d}L"),
    st.tuples(st.integers(0, 7), st.integers(1, 5)).map(lambda p: f"{p[0]}#{p[1]}"),
)


@st.composite
def five_field(draw: st.DrawFn) -> str:
    minute = draw(field(MINUTE, 0.3))
    hour = draw(field(HOUR, 0.5))
    dom = draw(st.one_of(field(DOM, 0.6), QUARTZ_DOM, st.just("?")))
    month = draw(field(MONTH, 0.6))
    dow = draw(st.one_of(field(DOW, 0.6), QUARTZ_DOW, st.just("?")))
    return f"{minute} {hour} {dom} {month} {dow}"


@st.composite
def six_field(draw: st.DrawFn) -> str:
    return f"{draw(field(SECOND, 0.3))} {draw(five_field())}"


@st.composite
def dense_six_field(draw: st.DrawFn) -> str:
    """Six fields that fire at least once an hour, so seconds can be brute-forced in between."""
    second = draw(field(SECOND, 0.2))
    minute = draw(field(MINUTE, 0.2))
    return f"{second} {minute} * * * *"


@st.composite
def dense_five_field(draw: st.DrawFn) -> str:
    """Five fields that fire at least once a day, so minutes can be brute-forced in between."""
    minute = draw(field(MINUTE, 0.2))
    hour = draw(field(HOUR, 0.3))
    return f"{minute} {hour} * * *"


def compile_or_reject(text: str) -> Expression:
    """The expression, or reject the example if it can never fire (an error by design)."""
    try:
        return Expression(text)
    except CronError as exc:
        # The strategies produce valid syntax, so the only acceptable error is a day-of-month
        # that no month in the month field has (e.g. "30 2", "31W 4"). (Its wording is
        # test_cron_errors' business.)
        assert re.search(r"\bnever\b|\bday-of-month\b", str(exc)), (text, str(exc))
        assume(False)
        raise


any_expression = st.one_of(five_field(), six_field(), st.sampled_from(
    ["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]
))  # fmt: skip
starts = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 1, 1))


def assert_fire_time(e: Expression, t: datetime) -> None:
    assert t.microsecond == 0
    if not e.has_seconds:
        assert t.second == 0
    assert e.matches(t), t


@SETTINGS
@given(any_expression, starts)
def test_next_is_a_later_fire_time(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    n = e.next(t)
    assert n > t
    assert_fire_time(e, n)


@SETTINGS
@given(any_expression, starts)
def test_prev_is_an_earlier_fire_time(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    p = e.prev(t)
    assert p < t
    assert_fire_time(e, p)


@SETTINGS
@given(any_expression, starts)
def test_prev_and_next_bracket_the_start(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    assert e.prev(e.next(t)) <= t
    assert e.next(e.prev(t)) >= t
    # From a fire time, prev/next step to the neighbouring fire times and back.
    n = e.next(t)
    assert e.prev(e.next(n)) == n
    assert e.next(e.prev(n)) == n


@SETTINGS
@given(any_expression, starts.map(lambda t: t.replace(microsecond=0)))
def test_matches_agrees_with_next(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    assert e.matches(t) == (e.next(t - timedelta(seconds=1)) == t)
    assert e.matches(t) == (e.prev(t + timedelta(seconds=1)) == t)
    assert not e.matches(t.replace(microsecond=1))


@SETTINGS
@given(dense_six_field(), starts)
def test_no_fire_skipped_seconds(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    n = e.next(t)
    assert n - t <= timedelta(hours=1)
    probe = t.replace(microsecond=0) + timedelta(seconds=1)
    while probe < n:
        assert not e.matches(probe), (text, t, n, probe)
        probe += timedelta(seconds=1)
    p = e.prev(t)
    probe = p + timedelta(seconds=1)
    while probe < t:
        assert not e.matches(probe), (text, t, p, probe)
        probe += timedelta(seconds=1)


@SETTINGS
@given(dense_five_field(), starts)
def test_no_fire_skipped_minutes(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    n = e.next(t)
    assert n - t <= timedelta(days=1)
    probe = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while probe < n:
        assert not e.matches(probe), (text, t, n, probe)
        probe += timedelta(minutes=1)


@SETTINGS
@given(any_expression, starts)
def test_no_fire_skipped_in_a_bounded_window(text: str, t: datetime) -> None:
    # For sparse schedules brute-force only the first 2 days after t (minute or second steps).
    e = compile_or_reject(text)
    n = e.next(t)
    step = timedelta(seconds=1) if e.has_seconds else timedelta(minutes=1)
    limit = min(n, t + (timedelta(hours=2) if e.has_seconds else timedelta(days=2)))
    probe = t.replace(microsecond=0) if e.has_seconds else t.replace(second=0, microsecond=0)
    probe += step
    while probe < limit:
        assert not e.matches(probe), (text, t, n, probe)
        probe += step


@SETTINGS
@given(any_expression, starts)
def test_iter_equals_chained_calls(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    forward = list(itertools.islice(e.iter(t), 5))
    backward = list(itertools.islice(e.iter(t, reverse=True), 5))
    chained, c = [], t
    for _ in range(5):
        c = e.next(c)
        chained.append(c)
    assert forward == chained
    chained, c = [], t
    for _ in range(5):
        c = e.prev(c)
        chained.append(c)
    assert backward == chained
    assert all(a < b for a, b in itertools.pairwise(forward))
    assert all(a > b for a, b in itertools.pairwise(backward))


@SETTINGS
@given(any_expression, starts)
def test_str_round_trips(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    again = Expression(str(e))
    assert again == e
    assert hash(again) == hash(e)
    assert str(again) == str(e)
    assert repr(e) == f"Expression({str(e)!r})"
    assert again.next(t) == e.next(t)
    assert again.prev(t) == e.prev(t)


@SETTINGS
@given(
    any_expression,
    starts,
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)
def test_fixed_offsets_are_wall_clock(text: str, t: datetime, tz: timezone) -> None:
    # A fixed offset has no DST: the aware answer is the naive answer with the offset attached.
    e = compile_or_reject(text)
    got = e.next(t.replace(tzinfo=tz))
    assert got.tzinfo is tz
    assert got.replace(tzinfo=None) == e.next(t)
    got = e.prev(t.replace(tzinfo=tz))
    assert got.tzinfo is tz
    assert got.replace(tzinfo=None) == e.prev(t)


DST_ZONES = [
    "America/New_York",
    "Europe/London",
    "Europe/Dublin",
    "Australia/Lord_Howe",
    "America/Sao_Paulo",
    "Asia/Kolkata",
    "Pacific/Chatham",
]
UTC = timezone.utc


@SETTINGS
@given(
    any_expression,
    st.sampled_from(DST_ZONES).flatmap(
        lambda z: st.datetimes(
            min_value=datetime(1971, 1, 1),
            max_value=datetime(2099, 1, 1),
            timezones=st.just(ZoneInfo(z)),
            allow_imaginary=False,
        )
    ),
)
def test_aware_results_move_forward_in_real_time(text: str, t: datetime) -> None:
    e = compile_or_reject(text)
    fires = list(itertools.islice(e.iter(t), 4))
    assert fires[0].astimezone(UTC) > t.astimezone(UTC)
    for a, b in itertools.pairwise(fires):
        assert a.astimezone(UTC) < b.astimezone(UTC)
    for fire in fires:
        assert fire.tzinfo is t.tzinfo
        assert fire.microsecond == 0
    back = list(itertools.islice(e.iter(t, reverse=True), 4))
    assert back[0].astimezone(UTC) < t.astimezone(UTC)
    for a, b in itertools.pairwise(back):
        assert a.astimezone(UTC) > b.astimezone(UTC)
    # Going back from the first fire after t lands at or before t (no fire in between).
    assert e.prev(fires[0]).astimezone(UTC) <= t.astimezone(UTC)
    assert e.next(back[0]).astimezone(UTC) >= t.astimezone(UTC)
