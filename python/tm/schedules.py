"""What a graph's ``schedule`` may be: a cron expression, or an interval of elapsed time
(``tm.every(minutes=5)`` or ``"@every 5m"``).

An interval counts real elapsed time from an anchor, a Unix time (the epoch unless ``start`` is
given), so daylight saving changes nothing and every process sharing a store computes the same fire
times: ``every(hours=1)`` fires 23 times on a spring-forward day in London, where ``"0 * * * *"``
fires at each wall-clock hour.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from .cron import Expression

__all__ = ["Interval", "Schedule", "every", "parse_every", "parse_schedule"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = {"d": 86_400_000_000, "h": 3_600_000_000, "m": 60_000_000, "s": 1_000_000, "ms": 1_000}
_PART = re.compile(r"(\d+)(ms|d|h|m|s)", re.IGNORECASE)
_EVERY = re.compile(r"@every\s+(\S+)(?:\s+from\s+(\S+))?\s*", re.IGNORECASE)
MIN_PERIOD = timedelta(seconds=1)


def _us(t: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is read as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return (t - _EPOCH) // timedelta(microseconds=1)


def _at(us: int, like: datetime) -> datetime:
    """The instant ``us`` in ``like``'s zone (naive UTC for a naive ``like``)."""
    t = _EPOCH + timedelta(microseconds=us)
    return t.replace(tzinfo=None) if like.tzinfo is None else t.astimezone(like.tzinfo)


class Interval:
    """Fires every ``period`` of elapsed time, at ``start + k * period`` for every integer k.

    Args:
        period: the interval, at least one second.
        start: an aware datetime: one of the fire times (the others are whole periods before and
            after it). By default the Unix epoch, so ``every(minutes=5)`` fires at :00, :05, ...
            UTC, the same in every process.
    """

    __slots__ = ("anchor_us", "period_us")

    def __init__(self, period: timedelta, start: datetime | None = None) -> None:
        if not isinstance(period, timedelta):
            raise TypeError(f"period must be a timedelta, got {period!r}")
        if period < MIN_PERIOD:
            raise ValueError(f"an interval must be at least 1 second, got {period}")
        if start is not None and (not isinstance(start, datetime) or start.tzinfo is None):
            raise ValueError(f"start must be an aware datetime, got {start!r}")
        self.period_us = period // timedelta(microseconds=1)
        self.anchor_us = 0 if start is None else _us(start)

    @property
    def period(self) -> timedelta:
        return timedelta(microseconds=self.period_us)

    @property
    def start(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.anchor_us)

    def next(self, t: datetime) -> datetime:
        """The first fire time strictly after ``t``, in ``t``'s zone (naive means UTC)."""
        k = (_us(t) - self.anchor_us) // self.period_us + 1
        return _at(self.anchor_us + k * self.period_us, t)

    def prev(self, t: datetime) -> datetime:
        """The last fire time strictly before ``t``, in ``t``'s zone (naive means UTC)."""
        k = -((self.anchor_us - _us(t)) // self.period_us) - 1
        return _at(self.anchor_us + k * self.period_us, t)

    def iter(self, t: datetime, reverse: bool = False) -> Iterator[datetime]:
        """Successive fire times after ``t`` (before it with ``reverse``)."""
        step = self.prev if reverse else self.next
        while True:
            t = step(t)
            yield t

    def __str__(self) -> str:
        rest, parts = self.period_us, []
        for unit, size in _US.items():
            n, rest = divmod(rest, size)
            if n:
                parts.append(f"{n}{unit}")
        text = "@every " + "".join(parts)
        if self.anchor_us % self.period_us:
            text += " from " + self.start.isoformat()
        return text

    def __repr__(self) -> str:
        return f"tm.Interval({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Interval)
            and self.period_us == other.period_us
            and (self.anchor_us - other.anchor_us) % self.period_us == 0
        )

    def __hash__(self) -> int:
        return hash((self.period_us, self.anchor_us % self.period_us))


def every(
    *,
    days: float = 0,
    hours: float = 0,
    minutes: float = 0,
    seconds: float = 0,
    start: datetime | None = None,
) -> Interval:
    """An interval schedule: ``Graph("poll", schedule=tm.every(minutes=5))``."""
    return Interval(timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds), start)


def parse_every(text: str) -> Interval:
    """``"@every 1h30m"`` (units d, h, m, s, ms), optionally ``"... from 2026-01-01T00:02:30Z"``."""
    m = _EVERY.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            f"invalid interval {text!r}: expected '@every DURATION [from ISO-DATETIME]', "
            "e.g. '@every 5m' or '@every 1h30m'"
        )
    duration, start_text = m.groups()
    pos, us = 0, 0
    for part in _PART.finditer(duration):
        if part.start() != pos:
            break
        us += int(part.group(1)) * _US[part.group(2).lower()]
        pos = part.end()
    if pos != len(duration) or pos == 0:
        raise ValueError(
            f"invalid duration {duration!r} in {text!r}: use whole numbers with units d, h, m, s "
            "or ms, e.g. '90s' or '1h30m'"
        )
    start = None
    if start_text is not None:
        try:
            start = datetime.fromisoformat(start_text.replace("Z", "+00:00"))
        except ValueError as e:
            raise ValueError(f"invalid start {start_text!r} in {text!r}: {e}") from e
        if start.tzinfo is None:
            raise ValueError(f"the start in {text!r} needs a UTC offset, e.g. {start_text}+00:00")
    return Interval(timedelta(microseconds=us), start)


#: A graph's schedule: cron or interval.
Schedule = Expression | Interval


def parse_schedule(value: Any) -> Schedule | None:
    """``"manual"``/None (no schedule), an ``Expression`` or ``Interval``, or their text."""
    if value is None or value == "manual":
        return None
    if isinstance(value, (Expression, Interval)):
        return value
    if isinstance(value, str) and value.lstrip()[:6].lower() == "@every":
        return parse_every(value)
    if isinstance(value, str):
        return Expression(value)
    raise TypeError(
        "schedule must be 'manual', a cron string, an Expression, an '@every ...' string "
        f"or a tm.every(...) interval, got {value!r}"
    )
