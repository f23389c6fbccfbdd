"""Cron expressions, usable on their own.

>>> from datetime import datetime
>>> from tm.cron import Expression
>>> Expression("*/15 9-17 * * mon-fri").next(datetime(2024, 1, 5, 17, 50))
datetime.datetime(2024, 1, 8, 9, 0)

``next(t)`` returns the first fire time strictly after ``t``, ``prev(t)`` the last one strictly
before it, ``iter(t)`` successive fire times. A naive datetime is read as wall-clock time and a
naive result comes back; an aware one (``zoneinfo.ZoneInfo`` or ``datetime.timezone``) gives an
aware result in the same zone. Daylight-saving policy: a fire time that falls in a spring-forward
gap fires at the first instant after the gap; in a fall-back repeat, a fixed-time schedule fires
once (the first occurrence) while a schedule whose hour field is ``*`` fires in both.
"""

from __future__ import annotations

from ._tm import Expression
from .exceptions import CronError

__all__ = ["CronError", "Expression"]
