"""Edges of the cron binding: text that is not valid Unicode, the end of year 9999 in a zone, and
tzinfo objects that only claim to be an IANA zone."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

import tm
from tm.cron import CronError, Expression


@pytest.mark.parametrize("text", ["\ud800 * * * *", "0 0 * * \udfff", "@dai\ud83dly"])
def test_lone_surrogate_is_a_cron_error(text: str) -> None:
    with pytest.raises(CronError, match="not valid Unicode"):
        Expression(text)
    with pytest.raises(CronError):
        tm.Graph("g", schedule=text)


@pytest.mark.parametrize(
    "start",
    [
        datetime(9999, 12, 31, 12, tzinfo=timezone.utc),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=ZoneInfo("UTC")),
        datetime(9999, 12, 31, 12, tzinfo=ZoneInfo("Pacific/Kiritimati")),  # UTC+14
        datetime(9999, 12, 31, 12, tzinfo=ZoneInfo("America/New_York")),
        datetime(9999, 12, 31, 12, tzinfo=timezone(timedelta(hours=-12))),
        datetime(9999, 12, 30, 23, tzinfo=timezone.utc),
    ],
)
def test_aware_times_at_the_end_of_year_9999_are_a_clear_overflow(start: datetime) -> None:
    # The daily fire after these would be 10000-01-01, or lies in the last hours of 9999 that
    # aware times cannot reach: an OverflowError that says so, not an internal message.
    for call in (
        lambda e: e.next(start),
        lambda e: list(e.iter(start)) or e.next(start),
    ):
        with pytest.raises(OverflowError, match="year 9999") as info:
            call(Expression("0 0 * * *"))
        assert "Unix timestamp" not in str(info.value) and "parameter" not in str(info.value)


def test_naive_fire_past_year_9999_says_so_too() -> None:
    with pytest.raises(OverflowError, match="past year 9999"):
        Expression("0 0 * * *").next(datetime(9999, 12, 31, 12))


def test_aware_fire_times_up_to_the_end_are_returned() -> None:
    utc_start = datetime(9999, 12, 30, 12, tzinfo=timezone.utc)
    assert Expression("0 21 * * *").next(utc_start) == datetime(
        9999, 12, 30, 21, tzinfo=timezone.utc
    )
    # Iteration ends (instead of raising) where aware times end.
    assert list(Expression("0 21 * * *").iter(utc_start)) == [
        datetime(9999, 12, 30, 21, tzinfo=timezone.utc)
    ]
    kiritimati = ZoneInfo("Pacific/Kiritimati")
    fire = Expression("0 11 * * *").next(datetime(9999, 12, 31, 8, tzinfo=kiritimati))
    assert fire == datetime(9999, 12, 31, 11, tzinfo=kiritimati) and fire.tzinfo is kiritimati


class Impostor(tzinfo):
    """A fixed UTC+5 zone that happens to have a ``key`` attribute naming another zone."""

    key = "Europe/London"

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=5)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "PLUS5"


def test_a_tzinfo_with_a_key_attribute_is_not_taken_for_that_zone() -> None:
    start = datetime(2024, 1, 1, 8, tzinfo=Impostor())
    for call in (
        lambda e: e.next(start),
        lambda e: e.prev(start),
        lambda e: e.matches(start),
        lambda e: e.iter(start),
    ):
        with pytest.raises(TypeError, match="unsupported tzinfo Impostor"):
            call(Expression("0 9 * * *"))


def test_zoneinfo_instances_and_subclasses_still_work() -> None:
    class MyZone(ZoneInfo):
        pass

    for tz in (ZoneInfo("Europe/London"), MyZone("Europe/London")):
        fire = Expression("0 9 * * *").next(datetime(2024, 7, 1, 8, tzinfo=tz))
        assert fire == datetime(2024, 7, 1, 9, tzinfo=tz)
        assert fire.utcoffset() == timedelta(hours=1)
