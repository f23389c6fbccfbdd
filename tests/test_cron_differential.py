"""``tm.cron`` against croniter on thousands of random valid expressions.

Each expression is generated together with the set of values every field denotes, so each case is
checked twice:

1. tm on the generated text must equal croniter on a *canonical* text: the same schedule spelled
   as plain value lists, the one form croniter reads without quirks. This is the correctness
   check, and it runs on every generated expression.
2. tm on the generated text is also compared with croniter on the *same* text. Every difference
   there must be one of the croniter quirks below, which were found by this test and checked by
   hand against croniter's source (croniter 7.0, ``croniter/croniter.py``, ``_expand``):

   CRONITER QUIRK 1 (equal ranges). croniter widens an explicitly written range whose bounds are
   equal to the whole field: "5-5" is every minute, "5-5/20" is "*/20", "jan-jan" every month
   ("if low == high and not start_with_step: low, high = cls.RANGES[field_index]"). tm reads
   "5-5" as {5} and "5-5/20" as {5}.

   CRONITER QUIRK 2 (a full day field collapses to "*"). After expansion croniter replaces a
   day-of-month list holding all 31 days (or a day-of-week list holding all 7) by "*" when the
   *other* day field's text contains the character "*" anywhere, e.g. "*/2" (the test is
   ``"*" not in expressions[DOW_FIELD]``, a substring test). The collapsed field then counts as
   unrestricted, so the OR rule is lost: "0 0 1-31 * */2" fires only on Sun/Tue/Thu/Sat in
   croniter but every day in tm (both fields are restricted, a day matches if either matches,
   and every day matches "1-31").

   CRONITER QUIRK 3 (day-of-week "N/S" ends at 6). croniter rewrites "N/S" as "N-6/S" in the
   day-of-week field, and "7/S" as "0-6/S" after aliasing 7 to 0. tm reads "N/S" as running to
   the end of the field, 7 (DESIGN.md: "N/S (from N to the field's end)", "day-of-week 0-7"), so
   "1/2" is {1, 3, 5, 7} = Mon, Wed, Fri, Sun in tm and Mon, Wed, Fri in croniter, and "7/2" is
   Sunday alone in tm but Sun/Tue/Thu/Sat in croniter.

   Two kinds of text are not generated, because tm rejects them while croniter accepts them:
   reversed ranges ("50-10", which croniter wraps; see
   ``test_reversed_ranges_rejected_where_croniter_wraps``) and steps longer than the field has
   values ("*/30" in the hour field, "*/8" in day-of-week; see
   ``test_steps_longer_than_the_field``).
"""

from __future__ import annotations

import calendar
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from croniter import croniter

from tm.cron import CronError, Expression

SEED = 20240131
N_FIVE_FIELD = 3000
N_SIX_FIELD = 500
STARTS_PER_EXPRESSION = 2

MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


@dataclass(frozen=True)
class Spec:
    """One field's grammar: name, bounds and value names."""

    name: str
    lo: int
    hi: int
    names: tuple[str, ...] = ()  # names[i] is value lo + i

    @property
    def croniter_hi(self) -> int:
        """The top of the field as croniter expands it (day-of-week stops at 6)."""
        return 6 if self.name == "day-of-week" else self.hi

    @property
    def max_step(self) -> int:
        """The largest step tm accepts: the number of distinct values in the field."""
        return 7 if self.name == "day-of-week" else self.hi - self.lo + 1

    def all(self) -> frozenset[int]:
        return frozenset(range(self.lo, self.hi + 1))


SECOND = Spec("second", 0, 59)
MINUTE = Spec("minute", 0, 59)
HOUR = Spec("hour", 0, 23)
DOM = Spec("day-of-month", 1, 31)
MONTH = Spec("month", 1, 12, tuple(MONTH_NAMES))
# Day-of-week takes 0-7 (7 = Sunday again); names stop at sat = 6.
DOW = Spec("day-of-week", 0, 7, tuple(DOW_NAMES))

QUIRK_EQUAL_RANGE = "quirk 1: equal range widened to the whole field"
QUIRK_DAY_COLLAPSE = "quirk 2: full day field collapsed to *"
QUIRK_DOW_N_OVER_S = "quirk 3: day-of-week N/S ends at 6"


@dataclass
class Field:
    """A generated field: its text, the values it denotes in tm and the values croniter reads."""

    text: str
    values: frozenset[int]
    croniter_values: frozenset[int]
    quirks: set[str] = field(default_factory=set)


def _spell(spec: Spec, value: int, rng: random.Random) -> str:
    if spec.names and value - spec.lo < len(spec.names) and rng.random() < 0.3:
        name = spec.names[value - spec.lo]
        return rng.choice([name, name.upper(), name.capitalize()])
    return str(value)


def _range_item(spec: Spec, a: int, b: int, step: int | None, rng: random.Random) -> Field:
    text = f"{_spell(spec, a, rng)}-{_spell(spec, b, rng)}" + (f"/{step}" if step else "")
    values = frozenset(range(a, b + 1, step or 1))
    if a == b:  # quirk 1: croniter reads "A-A/S" as "*/S"
        widened = frozenset(range(spec.lo, spec.croniter_hi + 1, step or 1))
        return Field(text, values, widened, {QUIRK_EQUAL_RANGE})
    # Otherwise croniter agrees, including day-of-week ranges ending at 7, which it unwraps
    # from "A-0" with the same result modulo 7 (checked by the canonical comparison).
    return Field(text, values, values)


def _item(spec: Spec, rng: random.Random) -> Field:
    """One list item: N, A-B, */S, A-B/S or N/S."""
    kinds = ["value", "range", "star_step", "range_step", "start_step"]
    kind = rng.choices(kinds, [4, 3, 2, 2, 1])[0]
    if kind == "value":
        v = rng.randint(spec.lo, spec.hi)
        return Field(_spell(spec, v, rng), frozenset({v}), frozenset({v}))
    if kind == "range":
        a = rng.randint(spec.lo, spec.hi)
        b = a if rng.random() < 0.03 else rng.randint(min(a + 1, spec.hi), spec.hi)
        return _range_item(spec, a, b, None, rng)
    # tm caps a step at the number of values in the field (7 for day-of-week); croniter and
    # cronsim take any step. See test_steps_longer_than_the_field.
    steps = [1, 2, 3, 4, 5, 6, 7, 10, 12, 15, 20, 30, rng.randint(1, spec.max_step)]
    step = rng.choice([s for s in steps if s <= spec.max_step])
    if kind == "star_step":
        # In day-of-week, `*` reaches 7 from 0 only when the step divides 7, and then 0 (the
        # same day) is in the set already: 0-6 and 0-7 give the same days.
        values = frozenset(range(spec.lo, spec.hi + 1, step))
        return Field(f"*/{step}", values, values)
    if kind == "range_step":
        a = rng.randint(spec.lo, spec.hi)
        b = a if rng.random() < 0.03 else rng.randint(min(a + 1, spec.hi), spec.hi)
        return _range_item(spec, a, b, step, rng)
    n = rng.randint(spec.lo, spec.hi)
    text = f"{_spell(spec, n, rng)}/{step}"
    values = frozenset(range(n, spec.hi + 1, step))  # "N/S" runs to the end of the field
    if spec is not DOW:
        return Field(text, values, values)
    # Quirk 3: croniter rewrites "N/S" as "N-6/S" ("6/S" stays {6}), and "7/S" as "0-6/S".
    if n == 7:
        cvalues = frozenset(range(0, 7, step))
    elif n == 6:
        cvalues = frozenset({6})
    else:
        cvalues = frozenset(range(n, 7, step))
    quirks = {QUIRK_DOW_N_OVER_S} if mod7(cvalues) != mod7(values) else set()
    return Field(text, values, cvalues, quirks)


def mod7(values: frozenset[int]) -> frozenset[int]:
    return frozenset(v % 7 for v in values)


def _field(spec: Spec, rng: random.Random, star_weight: float) -> Field:
    r = rng.random()
    if r < star_weight:
        return Field("*", spec.all(), spec.all())
    if spec in (DOM, DOW) and r < star_weight + 0.05:
        return Field("?", spec.all(), spec.all())
    items = [_item(spec, rng) for _ in range(rng.choice([1, 1, 1, 2, 2, 3]))]
    return Field(
        ",".join(i.text for i in items),
        frozenset().union(*(i.values for i in items)),
        frozenset().union(*(i.croniter_values for i in items)),
        set().union(*(i.quirks for i in items)),
    )


def _listed(spec: Spec, values: frozenset[int]) -> str:
    if spec is DOW:
        values = mod7(values)
        return "*" if len(values) == 7 else ",".join(str(v) for v in sorted(values))
    return "*" if values >= spec.all() else ",".join(str(v) for v in sorted(values))


@dataclass
class Case:
    """A generated expression with its field-by-field meaning."""

    text: str
    fields: dict[str, Field]
    has_seconds: bool

    def _days(self, croniter_reading: bool) -> tuple[str, str]:
        """The day fields as plain lists, resolving the OR rule (when both are restricted a day
        matches if either matches) the way tm does, or the way croniter does."""
        dom, dow = self.fields["day-of-month"], self.fields["day-of-week"]
        dom_values = dom.croniter_values if croniter_reading else dom.values
        dow_values = mod7(dow.croniter_values if croniter_reading else dow.values)
        dom_restricted = dom.text not in ("*", "?")
        dow_restricted = dow.text not in ("*", "?")
        if croniter_reading:
            # Quirk 2: a list holding the whole field becomes "*" (unrestricted) when the other
            # day field's text contains a "*" anywhere.
            if dom_values >= DOM.all() and "*" in dow.text:
                dom_restricted = False
            if len(dow_values) == 7 and "*" in dom.text:
                dow_restricted = False
        if dom_restricted and dow_restricted:
            if dom_values >= DOM.all() or len(dow_values) == 7:
                return "*", "*"  # "any day OR ..." is every day
            return _listed(DOM, dom_values), _listed(DOW, dow_values)
        return (
            _listed(DOM, dom_values) if dom_restricted else "*",
            _listed(DOW, dow_values) if dow_restricted else "*",
        )

    def canonical(self, croniter_reading: bool = False) -> str:
        """The schedule as plain value lists, which croniter reads without quirks.

        Args:
            croniter_reading: Spell croniter's (quirky) reading of the text instead of tm's.
        """

        def listed(spec: Spec) -> str:
            f = self.fields[spec.name]
            return _listed(spec, f.croniter_values if croniter_reading else f.values)

        dom_text, dow_text = self._days(croniter_reading)
        parts = [listed(MINUTE), listed(HOUR), dom_text, listed(MONTH), dow_text]
        if self.has_seconds:
            parts.insert(0, listed(SECOND))
        return " ".join(parts)

    def quirks(self) -> set[str]:
        """The croniter quirks that change this expression's schedule."""
        found: set[str] = set().union(*(f.quirks for f in self.fields.values()))
        dom, dow = self.fields["day-of-month"], self.fields["day-of-week"]
        if (
            dom.text not in ("*", "?") and dom.croniter_values >= DOM.all() and "*" in dow.text
        ) or (
            dow.text not in ("*", "?") and len(mod7(dow.croniter_values)) == 7 and "*" in dom.text
        ):
            found.add(QUIRK_DAY_COLLAPSE)
        return found

    def fires(self) -> bool:
        """Whether some date matches (tm rejects expressions that never fire)."""
        dom, dow = self.fields["day-of-month"], self.fields["day-of-week"]
        if dow.text not in ("*", "?") or dom.text in ("*", "?"):
            return True  # every month holds every weekday and the days 1..28
        return any(
            d <= (29 if m == 2 else calendar.monthrange(2001, m)[1])
            for m in self.fields["month"].values
            for d in dom.values
        )


def generate(rng: random.Random, has_seconds: bool) -> Case:
    specs = [MINUTE, HOUR, DOM, MONTH, DOW]
    # Weights of `*`: mostly-star day and month fields keep most schedules from being so sparse
    # that croniter has to walk years, while the time fields get restricted often.
    star = {"second": 0.3, "minute": 0.25, "hour": 0.35}
    star |= {"day-of-month": 0.55, "month": 0.6, "day-of-week": 0.55}
    if has_seconds:
        specs.insert(0, SECOND)
    fields = {s.name: _field(s, rng, star[s.name]) for s in specs}
    return Case(" ".join(f.text for f in fields.values()), fields, has_seconds)


def random_start(rng: random.Random) -> datetime:
    base = datetime(1990, 1, 1)
    span = (datetime(2090, 1, 1) - base).total_seconds()
    t = base + timedelta(seconds=rng.randrange(int(span)))
    roll = rng.random()
    if roll < 0.3:
        return t.replace(second=0)
    if roll < 0.4:
        return t.replace(microsecond=rng.randrange(1, 1_000_000))
    return t


def croniter_walk(text: str, start: datetime, has_seconds: bool) -> tuple[list, list]:
    """Two fire times after and two before ``start`` according to croniter."""
    fwd = croniter(text, start, second_at_beginning=has_seconds)
    bwd = croniter(text, start, second_at_beginning=has_seconds)
    return (
        [fwd.get_next(datetime), fwd.get_next(datetime)],
        [bwd.get_prev(datetime), bwd.get_prev(datetime)],
    )


def tm_walk(e: Expression, start: datetime) -> tuple[list, list]:
    n1 = e.next(start)
    p1 = e.prev(start)
    return [n1, e.next(n1)], [p1, e.prev(p1)]


def _run(n: int, has_seconds: bool, seed: int) -> dict[str, int]:
    """Compares tm with croniter on ``n`` generated expressions; returns the quirk counts."""
    rng = random.Random(seed)
    mismatches: list[str] = []
    rejected_valid: list[str] = []
    unexplained: list[str] = []
    quirk_counts: dict[str, int] = {}
    compared = 0
    for _ in range(n):
        case = generate(rng, has_seconds)
        try:
            e = Expression(case.text)
        except CronError as exc:
            if case.fires():
                rejected_valid.append(f"{case.text!r}: {exc}")
            continue
        assert case.fires(), f"{case.text!r} never fires but was accepted"
        assert e.has_seconds is has_seconds
        canonical = case.canonical()
        croniter_reading = case.canonical(croniter_reading=True)
        for i in range(STARTS_PER_EXPRESSION):
            start = random_start(rng)
            got = tm_walk(e, start)
            want = croniter_walk(canonical, start, has_seconds)
            compared += 1
            if got != want:
                mismatches.append(
                    f"{case.text!r} (as {canonical!r}) from {start.isoformat()}: "
                    f"tm next/prev {got}, croniter {want}"
                )
            # croniter on the original text (from the first start) must read it exactly as
            # modelled: its documented quirks and nothing else.
            if canonical == case.text or i > 0:
                continue
            on_text = croniter_walk(case.text, start, has_seconds)
            if on_text != croniter_walk(croniter_reading, start, has_seconds):
                unexplained.append(f"{case.text!r} from {start.isoformat()}: {on_text}")
            elif on_text != want:
                for q in case.quirks():
                    quirk_counts[q] = quirk_counts.get(q, 0) + 1
    assert not rejected_valid, "tm rejected valid expressions:\n" + "\n".join(rejected_valid[:20])
    assert not mismatches, f"{len(mismatches)} mismatches:\n" + "\n".join(mismatches[:20])
    assert not unexplained, "croniter differs for no known reason:\n" + "\n".join(unexplained[:20])
    assert compared >= n  # most expressions fire, each compared from several starts
    return quirk_counts


def test_five_field_expressions_match_croniter() -> None:
    _run(N_FIVE_FIELD, has_seconds=False, seed=SEED)


def test_six_field_expressions_match_croniter() -> None:
    _run(N_SIX_FIELD, has_seconds=True, seed=SEED + 1)


def test_generator_exercises_every_quirk() -> None:
    # The quirk classification above must not be dead code: the seeded generator produces
    # expressions of each kind.
    rng = random.Random(SEED)
    seen: set[str] = set()
    for _ in range(N_FIVE_FIELD):
        seen.update(generate(rng, False).quirks())
    assert seen == {QUIRK_EQUAL_RANGE, QUIRK_DAY_COLLAPSE, QUIRK_DOW_N_OVER_S}


@pytest.mark.parametrize(
    ("text", "start", "croniter_next", "tm_next"),
    [
        # Quirk 1: croniter fires every minute (every 20 minutes, every month); tm does not.
        ("5-5 * * * *", "2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:05"),
        ("5-5/20 * * * *", "2024-01-01 00:00", "2024-01-01 00:20", "2024-01-01 00:05"),
        ("0 0 1 feb-feb *", "2024-02-02 00:00", "2024-03-01 00:00", "2025-02-01 00:00"),
        # Quirk 2: 2024-01-01 is a Monday; "1-31 OR Sun/Tue/Thu/Sat" is every day in tm, and so
        # is "odd days OR any weekday".
        ("0 0 1-31 * */2", "2024-01-01 00:00", "2024-01-02 00:00", "2024-01-02 00:00"),
        ("0 0 1-31 * */2", "2024-01-02 00:00", "2024-01-04 00:00", "2024-01-03 00:00"),
        ("0 0 */2 * 0-6", "2024-01-01 00:00", "2024-01-03 00:00", "2024-01-02 00:00"),
        # Quirk 3: "1/2" in tm includes 7 (Sunday); 2024-01-06 is a Saturday.
        ("0 0 * * 1/2", "2024-01-06 00:00", "2024-01-08 00:00", "2024-01-07 00:00"),
        ("0 0 * * 7/2", "2024-01-01 00:00", "2024-01-02 00:00", "2024-01-07 00:00"),
    ],
)
def test_documented_croniter_quirks(
    text: str, start: str, croniter_next: str, tm_next: str
) -> None:
    t = datetime.fromisoformat(start)
    assert croniter(text, t).get_next(datetime) == datetime.fromisoformat(croniter_next)
    assert Expression(text).next(t) == datetime.fromisoformat(tm_next)


def test_reversed_ranges_rejected_where_croniter_wraps() -> None:
    rng = random.Random(SEED + 2)
    for _ in range(200):
        spec = rng.choice([MINUTE, HOUR, DOM, MONTH, DOW])
        b = rng.randint(spec.lo, spec.hi - 1)
        a = rng.randint(b + 1, spec.hi)
        if spec is DOW and (a, b) == (7, 0):
            continue  # 7-0 is Sunday-Sunday in disguise; not a clear-cut reversed range
        fields = ["0", "0", "*", "*", "*"]
        fields[[MINUTE, HOUR, DOM, MONTH, DOW].index(spec)] = f"{a}-{b}"
        text = " ".join(fields)
        croniter(text, datetime(2024, 1, 1)).get_next(datetime)  # croniter accepts: it wraps
        with pytest.raises(CronError, match=spec.name):
            Expression(text)


def test_aware_utc_matches_croniter() -> None:
    rng = random.Random(SEED + 3)
    for _ in range(300):
        case = generate(rng, False)
        if not case.fires():
            continue
        e = Expression(case.text)
        start = random_start(rng).replace(tzinfo=timezone.utc)
        got = e.next(start)
        assert got.tzinfo is timezone.utc
        assert got == croniter(case.canonical(), start).get_next(datetime)
        assert e.prev(start) == croniter(case.canonical(), start).get_prev(datetime)


@pytest.mark.parametrize(
    ("text", "field"),
    [("0 */30 * * *", "hour"), ("*/61 * * * *", "minute"), ("0 0 * * */8", "day-of-week")],
)
def test_steps_longer_than_the_field(text: str, field: str) -> None:
    # A tm choice, not a quirk of croniter: croniter (and cronsim) accept a step longer than the
    # field and fire at the range start only ("0 */30 * * *" is daily at midnight); tm rejects it
    # with the field named. The spec does not decide this case; the test pins tm's choice.
    start = datetime(2024, 1, 1, 12)
    assert croniter(text, start).get_next(datetime) > start
    with pytest.raises(CronError, match=field):
        Expression(text)
