"""Interval schedules (``tm.every``, ``"@every 5m"``): parsing, fire-time arithmetic, and the
scheduler firing them on a virtual clock, across daylight saving and through ``tm status``."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import queue
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_scheduler import WAIT, reporting_graph, running, sequence, step

import tm
from tm import Executor, Graph, VirtualClock
from tm.cli import main
from tm.schedules import Interval, parse_every

UTC = timezone.utc
LONDON = ZoneInfo("Europe/London")


@pytest.mark.parametrize(
    ("text", "period", "canonical"),
    [
        ("@every 5m", timedelta(minutes=5), "@every 5m"),
        ("@every 1h30m", timedelta(hours=1, minutes=30), "@every 1h30m"),
        ("@every 90s", timedelta(seconds=90), "@every 1m30s"),
        ("@EVERY 2D", timedelta(days=2), "@every 2d"),
        ("  @every 1500ms ", timedelta(seconds=1.5), "@every 1s500ms"),
    ],
)
def test_interval_text(text: str, period: timedelta, canonical: str) -> None:
    iv = parse_every(text)
    assert iv.period == period and iv.start == datetime(1970, 1, 1, tzinfo=UTC)
    assert str(iv) == canonical and parse_every(str(iv)) == iv
    assert Graph("g", schedule=text).schedule == iv


def test_an_anchor_other_than_the_epoch_is_kept_in_the_text() -> None:
    iv = tm.every(minutes=5, start=datetime(2026, 1, 1, 0, 2, 30, tzinfo=UTC))
    assert str(iv) == "@every 5m from 2026-01-01T00:02:30+00:00"
    assert parse_every(str(iv)) == iv
    assert parse_every("@every 5m from 2026-01-01T00:02:30Z") == iv
    # An anchor a whole number of periods from the epoch is the epoch's schedule.
    assert tm.every(minutes=5, start=datetime(2026, 1, 1, tzinfo=UTC)) == tm.every(minutes=5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("@every", "expected '@every DURATION"),
        ("@every 5x", "invalid duration '5x'"),
        ("@every m5", "invalid duration 'm5'"),
        ("@every 5m 3s", "expected '@every DURATION"),
        ("@every 0s", "at least 1 second"),
        ("@every 999ms", "at least 1 second"),
        ("@every 5m from yesterday", "invalid start 'yesterday'"),
        ("@every 5m from 2026-01-01T00:00", "needs a UTC offset"),
    ],
)
def test_bad_intervals_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Graph("g", schedule=text)


def test_every_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="at least 1 second"):
        tm.every(seconds=-5)
    with pytest.raises(ValueError, match="aware datetime"):
        tm.every(minutes=1, start=datetime(2026, 1, 1))
    with pytest.raises(TypeError, match="timedelta"):
        Interval(60)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tm\.every"):
        Graph("g", schedule=60)  # type: ignore[arg-type]


_TIMES = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(
    st.integers(1, 10 * 86_400),
    _TIMES,
    _TIMES,
    st.sampled_from([UTC, LONDON, ZoneInfo("Asia/Kolkata")]),
)
def test_next_and_prev_are_the_neighbouring_fire_times(
    period_s: int, anchor: datetime, t: datetime, zone: ZoneInfo
) -> None:
    iv = Interval(timedelta(seconds=period_s), anchor)
    period = timedelta(seconds=period_s)
    t = t.astimezone(zone)
    nxt, prv = iv.next(t), iv.prev(t)
    assert nxt.tzinfo is zone and prv.tzinfo is zone
    # Arithmetic on instants (aware datetimes of one zone add and subtract wall-clock time).
    nxt, prv, t = (x.astimezone(UTC) for x in (nxt, prv, t))
    assert nxt - period <= t < nxt  # the first fire strictly after t
    assert prv < t <= prv + period  # the last fire strictly before t
    for fire in (nxt, prv):
        assert (fire - anchor) % period == timedelta(0)
    naive = t.astimezone(UTC).replace(tzinfo=None)
    assert iv.next(naive) == nxt.astimezone(UTC).replace(tzinfo=None)


def test_iter_yields_successive_fires() -> None:
    iv = tm.every(hours=6)
    t = datetime(2026, 3, 29, 1, tzinfo=LONDON)
    assert [x.isoformat() for x in _take(iv.iter(t), 3)] == [
        "2026-03-29T07:00:00+01:00",  # 06:00 UTC, after the clocks went forward
        "2026-03-29T13:00:00+01:00",
        "2026-03-29T19:00:00+01:00",
    ]
    assert _take(iv.iter(t, reverse=True), 1) == [datetime(2026, 3, 29, 0, tzinfo=UTC)]


def _take(it, n):  # type: ignore[no-untyped-def]
    return [next(it) for _ in range(n)]


def test_a_daily_interval_counts_elapsed_days_across_a_dst_change() -> None:
    # Anchored at 09:00 London winter time: every 24 elapsed hours, so 10:00 once the clocks
    # went forward, where the cron schedule '0 9 * * *' stays at 09:00 on the wall.
    start = datetime(2026, 3, 28, 9, tzinfo=LONDON)
    text = f"@every 1d from {start.isoformat()}"
    got = sequence(text, "Europe/London", datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert got == [
        ("2026-03-28T09:00", "2026-03-28T09:00:00+00:00"),
        ("2026-03-29T09:00", "2026-03-29T10:00:00+01:00"),
        ("2026-03-30T09:00", "2026-03-30T10:00:00+01:00"),
    ]
    cron = sequence("0 9 * * *", "Europe/London", datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert [wall for _, wall in cron][1:] == [
        "2026-03-29T09:00:00+01:00",
        "2026-03-30T09:00:00+01:00",
    ]


def test_hourly_fires_through_the_fall_back_night() -> None:
    # The repeated 01:00-02:00 hour in London: an interval fires in both passes, 25 fires a day.
    got = sequence("@every 1h", "Europe/London", datetime(2026, 10, 24, 22, 30, tzinfo=UTC), 26)
    times = [datetime.fromisoformat(wall) for _, wall in got]
    assert len({t.astimezone(UTC) for t in times}) == 26
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(times))
    assert sum(t.date().isoformat() == "2026-10-25" for t in times) == 25


def test_the_store_and_status_show_an_interval(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    store = tm.Store(url)
    clock = VirtualClock(datetime(2026, 1, 1, 0, 1, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, store=store)
    ex.add(reporting_graph("poll", "@every 5m", out))
    with running(ex):
        assert ex.next_fire("poll") == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
        fired = step(ex, clock, "poll")
        assert out.get(timeout=WAIT)[1] == fired == datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
        assert ex.next_fire("poll") == datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert store.core.graph("poll")["schedule"] == "@every 5m"
    store.close()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", "--db", url, "--json"]) == 0
    (status,) = json.loads(buf.getvalue())
    nxt = datetime.fromisoformat(status["next_fire"])
    assert nxt > datetime.now(UTC) - timedelta(minutes=5)
    assert nxt.timestamp() % 300 == 0
