"""``tm.cron`` against croniter **and** cronsim on thousands of seeded random expressions.

The generator writes expressions with names, lists, steps (many longer than their field),
ranges in both orders (a reversed one wraps), equal ranges, ``?``, and the Quartz items ``L``,
``A-L``, ``LW``, ``nW``, ``L-n``, ``nL`` and ``w#k``, some of them misplaced on purpose (``?,*``,
``15W,16``, ``friL``). For each one it records what tm reads (the values of each plain field)
and the *features* below that make the references read it differently. Each expression is then
put to croniter 7.0, cronsim 2.8 and tm alike: refused, or the next two and previous two fire
times from random starts. The verdict:

1. The references agree (both refuse it, or both answer alike): tm must give that answer,
   unless the expression has one of the two DELIBERATE features (each says why), or their
   agreement is a coincidence: an item both misread (a feature siding with neither), or one item
   each misreads that the other reads as tm does (features siding with each of them).
2. The references disagree: the expression must have one of the DISAGREEMENTS features, or the
   disagreement is unexplained and the test fails. A feature names the reference tm sides with;
   when all of an expression's features side with the same reference, tm must equal it.
3. Whatever the references make of the text, tm on it must equal both references on a canonical
   spelling of tm's reading (plain value lists, which they read alike), for every expression
   without Quartz items.

``test_listed_disagreements`` pins examples of every feature with all three answers.
"""

from __future__ import annotations

import calendar
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
from croniter import croniter
from cronsim import CronSim

from tm.cron import CronError, Expression

SEED = 20240131
N_FIVE_FIELD = 2500
N_SIX_FIELD = 400
STARTS_PER_EXPRESSION = 2
# A reference that takes longer than this on one expression has no answer (cronsim walks day by
# day, forever, when its AND of the day fields can never hold).
REFERENCE_TIMEOUT = 0.5

MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DOW_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

# Where croniter and cronsim disagree: feature -> (the reference tm sides with, or None, why).
DISAGREEMENTS: dict[str, tuple[str | None, str]] = {
    "equal range": (
        "cronsim",
        "croniter widens a range written with equal ends (5-5, jan-jan, 7-7) to the whole "
        "field; cronsim and tm read 5-5 as 5",
    ),
    "equal range with a step": (
        None,
        "croniter reads 5-5/20 as */20 and cronsim as 5/20 (5 to the field's end); tm reads the "
        "range 5-5 as 5, whatever its step",
    ),
    "day-of-week N/S": (
        "cronsim",
        "croniter ends day-of-week N/S at 6 (and reads 7/S as 0-6/S); cronsim and tm run it to "
        "the field's end, 7, which is Sunday again: 1/2 is Mon, Wed, Fri, Sun",
    ),
    "wrapped range": (
        "croniter",
        "cronsim refuses a reversed range; croniter and tm wrap it around the field's end "
        "(nov-mar is Nov, Dec, Jan, Feb, Mar)",
    ),
    "wrapped range, late restart": (
        None,
        "cronsim refuses it; after the wrap croniter restarts a step one value late unless the "
        "step lands exactly on the field's start (22-2/3 is 22, 2, four hours apart); tm counts "
        "on through the wrap as Quartz does (22, 1)",
    ),
    "?": ("croniter", "cronsim refuses ?; croniter and tm read a whole day field of ? as *"),
    "A-L": ("croniter", "cronsim refuses L as a range end; croniter and tm read 1-L as 1-31"),
    "nW": (
        "croniter",
        "cronsim has no nW; croniter and tm fire on the weekday nearest day n within the month "
        "(nearest the last day when the month is shorter)",
    ),
    "LW": ("cronsim", "croniter has no LW; cronsim and tm fire on the month's last weekday"),
    "nL": ("cronsim", "croniter has no nL; cronsim, Quartz and tm: the month's last weekday n"),
    "# with other items": (
        "cronsim",
        "croniter refuses w#k next to plain day-of-week items (sun#1,sat) or reads it as #k "
        "alone (1#2,1); cronsim and tm take the union",
    ),
    "w#k beside a day-of-month": (
        "cronsim",
        "croniter finds no date, or ignores the day-of-month, when w#k meets a restricted "
        "day-of-month (0 0 8 * wed#4); cronsim and tm OR the two as for any other day fields",
    ),
    "nW beside a day-of-week": (
        None,
        "cronsim has no nW and croniter finds no date, or ignores the day-of-week (0 0 15W * "
        "mon); tm ORs the two as for any other day fields",
    ),
    "day field starting with *": (
        "croniter",
        "cronsim, like Vixie cron, ANDs the day fields when one starts with * (*/2); croniter "
        "and tm OR them whenever neither is exactly * or ? (the documented OR rule)",
    ),
}
# Where tm answers differently from both references even when they agree.
DELIBERATE: dict[str, str] = {
    "L-n": (
        "Quartz L-n (n days before the last day): both references refuse it; tm keeps the "
        "documented extension, which changes the meaning of nothing either reference accepts"
    ),
    "full day field": (
        "both day fields restricted and one of them covers every day: the OR rule makes every "
        "day match; croniter (when the other field's text holds a *) and cronsim (when either "
        "starts with *) drop the full field and use the other one alone, so in them "
        "`0 0 1-31 * */2` and `0 0 1-31 * 0,2,4,6` differ; in tm only the values and a literal "
        "* or ? count"
    ),
}


@dataclass(frozen=True)
class Spec:
    """One field's grammar: name, bounds and value names."""

    name: str
    lo: int
    hi: int
    names: tuple[str, ...] = ()  # names[i] is value lo + i

    @property
    def span(self) -> int:
        """The number of distinct values (day-of-week 0-7 has 7)."""
        return 7 if self.name == "day-of-week" else self.hi - self.lo + 1

    def all(self) -> frozenset[int]:
        return frozenset(range(self.lo, self.hi + 1))


SECOND = Spec("second", 0, 59)
MINUTE = Spec("minute", 0, 59)
HOUR = Spec("hour", 0, 23)
DOM = Spec("day-of-month", 1, 31)
MONTH = Spec("month", 1, 12, tuple(MONTH_NAMES))
DOW = Spec("day-of-week", 0, 7, tuple(DOW_NAMES))


@dataclass
class Field:
    """Generated text, the plain values tm reads in it, whether it holds Quartz items (whose days
    are not in ``values``), and the features of DISAGREEMENTS/DELIBERATE it carries."""

    text: str
    values: frozenset[int] = frozenset()
    quartz: bool = False
    features: set[str] = field(default_factory=set)


def mod7(values: frozenset[int]) -> frozenset[int]:
    return frozenset(v % 7 for v in values)


def _spell(spec: Spec, value: int, rng: random.Random) -> str:
    if spec.names and value - spec.lo < len(spec.names) and rng.random() < 0.3:
        name = spec.names[value - spec.lo]
        return rng.choice([name, name.upper(), name.capitalize()])
    return str(value)


def _step(spec: Spec, rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.2:  # longer than the field: keeps the range's start
        return rng.randint(spec.span + 1, 3 * spec.span)
    if roll < 0.25:
        return rng.choice([100, 1000, 10**6, 10**20])
    steps = [1, 2, 3, 4, 5, 6, 7, 10, 12, 15, 20, 30, rng.randint(1, spec.span)]
    return rng.choice([s for s in steps if s <= spec.span])


def tm_range(spec: Spec, a: int, b: int, step: int) -> frozenset[int]:
    """tm's reading of A-B/S: a reversed range wraps, its step counting on through the wrap."""
    if a <= b:
        return frozenset(range(a, b + 1, step))
    return frozenset(
        v if v <= spec.hi else spec.lo + (v - spec.lo) % spec.span
        for v in range(a, b + spec.span + 1, step)
    )


def croniter_range(spec: Spec, a: int, b: int, step: int) -> frozenset[int]:
    """croniter 7.0's reading of a range that is not equal-ended (``_expand``): day-of-week runs
    0-6 with 7 aliased to 0, and a reversed range restarts its step after the wrap by the rule
    ``to_skip = step - (max - last)`` when ``last + step`` overshoots ``max + 1``."""
    lo, hi = spec.lo, (6 if spec is DOW else spec.hi)
    if spec is DOW:
        a, b = a % 7, b % 7
    if a <= b:
        return frozenset(range(a, b + 1, step))
    values = list(range(a, hi + 1, step))
    skip = 0
    if values and values[-1] - lo + step > hi - lo + 1 and hi - values[-1] < step:
        skip = step - (hi - values[-1])
    return frozenset(values + list(range(lo + skip, b + 1, step)))


def _range(spec: Spec, rng: random.Random, step: int | None) -> Field:
    a = rng.randint(spec.lo, spec.hi)
    roll = rng.random()
    if roll < 0.04:
        b = a
    elif roll < 0.3 and a > spec.lo:
        b = rng.randint(spec.lo, a - 1)  # reversed: wraps
    else:
        b = rng.randint(min(a + 1, spec.hi), spec.hi)
    if spec is DOW and (a, b) == (7, 0):
        b = 1  # 7-0 is Sunday to Sunday: croniter reads it as the equal range 0-0
    text = f"{_spell(spec, a, rng)}-{_spell(spec, b, rng)}" + (f"/{step}" if step else "")
    values = tm_range(spec, a, b, step or 1)
    if a == b:
        return Field(text, values, features={"equal range with a step" if step else "equal range"})
    if a < b:
        return Field(text, values)
    same = _norm(spec, croniter_range(spec, a, b, step or 1)) == _norm(spec, values)
    return Field(
        text, values, features={"wrapped range" if same else "wrapped range, late restart"}
    )


def _norm(spec: Spec, values: frozenset[int]) -> frozenset[int]:
    return mod7(values) if spec is DOW else values


def _plain_item(spec: Spec, rng: random.Random) -> Field:
    """One list item: N, A-B, */S, A-B/S or N/S."""
    kind = rng.choices(["value", "range", "star_step", "range_step", "start_step"], [4, 3, 2, 2, 1])
    if kind[0] == "value":
        v = rng.randint(spec.lo, spec.hi)
        return Field(_spell(spec, v, rng), frozenset({v}))
    if kind[0] == "range":
        return _range(spec, rng, None)
    step = _step(spec, rng)
    if kind[0] == "star_step":
        top = 6 if spec is DOW else spec.hi
        return Field(f"*/{step}", frozenset(range(spec.lo, top + 1, step)))
    if kind[0] == "range_step":
        return _range(spec, rng, step)
    n = rng.randint(spec.lo, spec.hi)
    values = frozenset(range(n, spec.hi + 1, step))  # "N/S" runs to the end of the field
    item = Field(f"{_spell(spec, n, rng)}/{step}", values)
    if spec is DOW:
        # croniter reads "N/S" as "N-6/S" ("6/S" as {6}) and "7/S" as "0-6/S".
        theirs = frozenset({6}) if n == 6 else frozenset(range(n % 7, 7, step))
        if theirs != mod7(values):
            item.features.add("day-of-week N/S")
    return item


def _dom_item(rng: random.Random, alone: bool) -> Field:
    roll = rng.random()
    if roll < 0.85:
        return _plain_item(DOM, rng)
    kind = rng.choice(["L", "LW", "nW", "L-n", "A-L", "A-L/S"])
    if kind == "L":
        return Field(rng.choice(["L", "l"]), quartz=True)
    if kind == "LW":
        return Field(rng.choice(["LW", "lw"]), quartz=True, features={"LW"})
    if kind == "nW":  # in a list, both references refuse it
        n = rng.choice([1, 15, 28, 29, 30, 31, rng.randint(1, 31)])
        return Field(f"{n}{rng.choice('Ww')}", quartz=True, features={"nW"} if alone else set())
    if kind == "L-n":
        return Field(f"L-{rng.randint(1, 30)}", quartz=True, features={"L-n"})
    a = rng.randint(1, 31)
    step = _step(DOM, rng) if kind == "A-L/S" else 1
    text = f"{a}-{rng.choice('Ll')}" + (f"/{step}" if kind == "A-L/S" else "")
    features = {"A-L"}
    if a == 31:  # croniter reads L as 31 first: 31-L is an equal range there
        features.add("equal range with a step" if kind == "A-L/S" else "equal range")
    return Field(text, frozenset(range(a, 32, step)), features=features)


def _dow_item(rng: random.Random) -> Field:
    roll = rng.random()
    if roll < 0.8:
        return _plain_item(DOW, rng)
    kind = rng.choice(["nL", "nameL", "#", "#"])
    w = rng.randint(0, 7)
    if kind == "nL":
        return Field(f"{w}{rng.choice('Ll')}", quartz=True, features={"nL"})
    if kind == "nameL":  # both references refuse a day name before L
        return Field(f"{rng.choice([str.lower, str.upper])(DOW_NAMES[w % 7])}L", quartz=True)
    return Field(f"{_spell(DOW, w % 7, rng) if w < 7 else w}#{rng.randint(1, 5)}", quartz=True)


def _field(spec: Spec, rng: random.Random, star_weight: float) -> Field:
    r = rng.random()
    if r < star_weight:
        return Field("*", spec.all())
    if spec in (DOM, DOW) and r < star_weight + 0.04:
        return Field("?", spec.all(), features={"?"})
    if spec in (DOM, DOW) and r < star_weight + 0.06:  # both references refuse these
        return Field(rng.choice(["?,*", "?/2", "1,?", "?-3"]), quartz=True)
    count = rng.choice([1, 1, 1, 2, 2, 3])
    if spec is DOM:
        items = [_dom_item(rng, count == 1) for _ in range(count)]
    elif spec is DOW:
        items = [_dow_item(rng) for _ in range(count)]
    else:
        items = [_plain_item(spec, rng) for _ in range(count)]
    merged = Field(
        ",".join(i.text for i in items),
        frozenset().union(*(i.values for i in items)),
        any(i.quartz for i in items),
        set().union(*(i.features for i in items)),
    )
    hashes = [i for i in items if "#" in i.text]
    if spec is DOW and hashes and len(hashes) < len(items):
        merged.features.add("# with other items")
    return merged


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

    def restricted(self, name: str) -> bool:
        return self.fields[name].text not in ("*", "?")

    def features(self) -> set[str]:
        found: set[str] = set().union(*(f.features for f in self.fields.values()))
        dom, dow = self.fields["day-of-month"], self.fields["day-of-week"]
        if self.restricted("day-of-month") and self.restricted("day-of-week"):
            if dom.text.startswith("*") or dow.text.startswith("*"):
                found.add("day field starting with *")
            if (dom.values >= DOM.all()) != (len(mod7(dow.values)) == 7):
                found.add("full day field")
            if "#" in dow.text:
                found.add("w#k beside a day-of-month")
            if "nW" in dom.features:
                found.add("nW beside a day-of-week")
        return found

    def quartz(self) -> bool:
        return any(f.quartz for f in self.fields.values())

    def canonical(self) -> str:
        """tm's reading as plain value lists, which both references read alike."""
        dom, dow = self.fields["day-of-month"], self.fields["day-of-week"]
        dom_text = _listed(DOM, dom.values) if self.restricted("day-of-month") else "*"
        dow_text = _listed(DOW, dow.values) if self.restricted("day-of-week") else "*"
        both = self.restricted("day-of-month") and self.restricted("day-of-week")
        if both and "*" in (dom_text, dow_text):
            dom_text = dow_text = "*"  # a day of a full field OR any other day: every day
        parts = [_listed(s, self.fields[s.name].values) for s in (MINUTE, HOUR)]
        parts += [dom_text, _listed(MONTH, self.fields["month"].values), dow_text]
        if self.has_seconds:
            parts.insert(0, _listed(SECOND, self.fields["second"].values))
        return " ".join(parts)

    def fires(self) -> bool:
        """Whether tm's plain reading fires at all (tm refuses an expression that never does)."""
        dom = self.fields["day-of-month"]
        if self.restricted("day-of-week") or not self.restricted("day-of-month"):
            return True  # every month holds every weekday and the days 1..28
        return any(
            d <= (29 if m == 2 else calendar.monthrange(2001, m)[1])
            for m in self.fields["month"].values
            for d in dom.values
        )


def generate(rng: random.Random, has_seconds: bool) -> Case:
    specs = [MINUTE, HOUR, DOM, MONTH, DOW]
    # Mostly-star day and month fields keep schedules from being so sparse that the references
    # walk for years; the time fields are restricted often.
    star = {"second": 0.3, "minute": 0.25, "hour": 0.35}
    star |= {"day-of-month": 0.5, "month": 0.6, "day-of-week": 0.5}
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


class _Timeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# An answer: "refused", "no answer" (timed out), or per start (next, next, prev, prev).
Answer = str | tuple[tuple[datetime, ...], ...]


def _ask(walk: Callable[[datetime], tuple[datetime, ...]], starts: list[datetime]) -> Answer:
    try:
        with _deadline(REFERENCE_TIMEOUT):
            return tuple(walk(start) for start in starts)
    except _Timeout:
        return "no answer"
    except Exception:  # any refusal, at construction or when asked
        return "refused"


def ask_croniter(text: str, starts: list[datetime]) -> Answer:
    six = len(text.split()) == 6

    def walk(start: datetime) -> tuple[datetime, ...]:
        fwd = croniter(text, start, second_at_beginning=six)
        bwd = croniter(text, start, second_at_beginning=six)
        return (
            fwd.get_next(datetime),
            fwd.get_next(datetime),
            bwd.get_prev(datetime),
            bwd.get_prev(datetime),
        )

    return _ask(walk, starts)


def ask_cronsim(text: str, starts: list[datetime]) -> Answer:
    def walk(start: datetime) -> tuple[datetime, ...]:
        fwd, bwd = CronSim(text, start), CronSim(text, start, reverse=True)
        return next(fwd), next(fwd), next(bwd), next(bwd)

    return _ask(walk, starts)


def ask_tm(text: str, starts: list[datetime]) -> Answer:
    try:
        e = Expression(text)
    except CronError:
        return "refused"

    def walk(start: datetime) -> tuple[datetime, ...]:
        n1, p1 = e.next(start), e.prev(start)
        return n1, e.next(n1), p1, e.prev(p1)

    return tuple(walk(start) for start in starts)


@dataclass
class Tally:
    agreed: int = 0
    canonical: int = 0
    features: dict[str, int] = field(default_factory=dict)
    deliberate: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def judge(case: Case, starts: list[datetime], tally: Tally) -> None:
    """Applies the three rules of the module docstring to one case."""
    tm = ask_tm(case.text, starts)
    ours = ask_croniter(case.text, starts)
    theirs = ask_cronsim(case.text, starts)
    features = case.features()
    where = f"{case.text!r} from {[s.isoformat() for s in starts]}"
    if ours == theirs == "no answer":
        pass
    elif ours == theirs:
        tally.agreed += 1
        if tm != ours:
            # A deliberate difference, an item that both references misread (side None), or a
            # coincidence: each reference refuses or misreads a different item, one that the
            # other reads as tm does.
            excuse = features & DELIBERATE.keys()
            sides = {DISAGREEMENTS[f][0] for f in features & DISAGREEMENTS.keys()}
            if not excuse and None not in sides and not sides >= {"croniter", "cronsim"}:
                tally.failures.append(f"{where}: tm {tm}, both references {ours}")
            for f in excuse:
                tally.deliberate[f] = tally.deliberate.get(f, 0) + 1
    else:
        explained = features & (DISAGREEMENTS.keys() | DELIBERATE.keys())
        if not explained:
            tally.failures.append(
                f"{where}: unexplained disagreement: croniter {ours}, cronsim {theirs}, tm {tm}"
            )
        for f in explained:
            tally.features[f] = tally.features.get(f, 0) + 1
        sides = {DISAGREEMENTS[f][0] if f in DISAGREEMENTS else None for f in explained}
        if len(sides) == 1 and None not in sides:
            side = sides.pop()
            want = ours if side == "croniter" else theirs
            if tm != want:
                tally.failures.append(f"{where}: tm {tm}, {side} (sided with) {want}")
    if not case.quartz() and case.fires() and isinstance(tm, tuple):
        canonical = case.canonical()
        want_c, want_s = ask_croniter(canonical, starts), ask_cronsim(canonical, starts)
        tally.canonical += 1
        if not want_c == want_s == tm:
            tally.failures.append(
                f"{where} as {canonical!r}: tm {tm}, croniter {want_c}, cronsim {want_s}"
            )
    elif not case.quartz() and not case.fires() and tm != "refused":
        tally.failures.append(f"{where}: never fires, but tm accepted it")


def _run(n: int, has_seconds: bool, seed: int) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    for _ in range(n):
        case = generate(rng, has_seconds)
        judge(case, [random_start(rng) for _ in range(STARTS_PER_EXPRESSION)], tally)
    assert not tally.failures, f"{len(tally.failures)} failures:\n" + "\n".join(tally.failures[:20])
    assert tally.agreed > n // 3 and tally.canonical > n // 3
    return tally


def test_five_field_expressions_match_both_references() -> None:
    tally = _run(N_FIVE_FIELD, has_seconds=False, seed=SEED)
    # Every listed disagreement and deliberate difference is met, so none of them is dead text.
    assert tally.features.keys() >= DISAGREEMENTS.keys(), tally.features
    assert tally.deliberate.keys() == DELIBERATE.keys(), tally.deliberate


def test_six_field_expressions_match_both_references() -> None:
    _run(N_SIX_FIELD, has_seconds=True, seed=SEED + 1)


REFUSED = "refused"


# (feature, expression, start, croniter's next, cronsim's next, tm's next); 2024-01-01 is a Monday.
LISTED = [
    ("equal range", "5-5 * * * *", "2024-01-01 00:00", "2024-01-01 00:01", "2024-01-01 00:05",
     "2024-01-01 00:05"),
    ("equal range", "0 0 1 feb-feb *", "2024-01-01 00:00", "2024-02-01 00:00", "2024-02-01 00:00",
     "2024-02-01 00:00"),
    ("equal range", "0 0 * * 7-7", "2024-01-01 00:00", "2024-01-02 00:00", "2024-01-07 00:00",
     "2024-01-07 00:00"),
    ("equal range with a step", "5-5/20 * * * *", "2024-01-01 00:06", "2024-01-01 00:20",
     "2024-01-01 00:25", "2024-01-01 01:05"),
    ("day-of-week N/S", "0 0 * * 1/2", "2024-01-06 00:00", "2024-01-08 00:00",
     "2024-01-07 00:00", "2024-01-07 00:00"),
    ("day-of-week N/S", "0 0 * * 7/2", "2024-01-01 00:00", "2024-01-02 00:00",
     "2024-01-07 00:00", "2024-01-07 00:00"),
    ("wrapped range", "0 0 1 nov-mar *", "2024-03-02 00:00", "2024-11-01 00:00", REFUSED,
     "2024-11-01 00:00"),
    ("wrapped range", "0 22-2 * * *", "2024-01-01 02:30", "2024-01-01 22:00", REFUSED,
     "2024-01-01 22:00"),
    ("wrapped range", "0 0 * * sat-mon", "2024-01-02 00:00", "2024-01-06 00:00", REFUSED,
     "2024-01-06 00:00"),
    ("wrapped range", "0 0 * * 7-mon", "2024-01-01 00:00", "2024-01-07 00:00", REFUSED,
     "2024-01-07 00:00"),
    ("wrapped range", "0 0 1 apr-mar/3 *", "2024-10-02 00:00", "2025-01-01 00:00", REFUSED,
     "2025-01-01 00:00"),
    ("wrapped range, late restart", "0 22-2/3 * * *", "2024-01-01 00:00", "2024-01-01 02:00",
     REFUSED, "2024-01-01 01:00"),
    ("wrapped range, late restart", "50-10/15 * * * *", "2024-01-01 00:00", "2024-01-01 00:06",
     REFUSED, "2024-01-01 00:05"),
    ("wrapped range, late restart", "0 0 25-5/10 * *", "2024-01-01 00:00", "2024-01-05 00:00",
     REFUSED, "2024-01-04 00:00"),
    ("wrapped range, late restart", "0 0 * * sat-mon/2", "2024-01-06 00:00",
     "2024-01-13 00:00", REFUSED, "2024-01-08 00:00"),
    ("?", "0 0 ? * mon", "2024-01-01 00:00", "2024-01-08 00:00", REFUSED, "2024-01-08 00:00"),
    ("A-L", "0 0 1-L/8 * *", "2024-01-01 00:00", "2024-01-09 00:00", REFUSED,
     "2024-01-09 00:00"),
    ("A-L", "0 0 28-L 2 *", "2024-01-01 00:00", "2024-02-28 00:00", REFUSED,
     "2024-02-28 00:00"),
    ("nW", "0 0 15W * *", "2024-06-01 00:00", "2024-06-14 00:00", REFUSED, "2024-06-14 00:00"),
    # Past the month's end: the weekday nearest April 30th (a Sunday in 2028).
    ("nW", "0 0 31W 4 *", "2024-01-01 00:00", "2024-04-30 00:00", REFUSED, "2024-04-30 00:00"),
    ("nW", "0 0 31W 4 *", "2028-01-01 00:00", "2028-04-28 00:00", REFUSED, "2028-04-28 00:00"),
    ("nW", "0 0 30W 2 *", "2024-01-01 00:00", "2024-02-29 00:00", REFUSED, "2024-02-29 00:00"),
    ("LW", "0 0 LW 3 *", "2024-01-01 00:00", REFUSED, "2024-03-29 00:00", "2024-03-29 00:00"),
    ("nL", "0 0 * * 5L", "2024-01-01 00:00", REFUSED, "2024-01-26 00:00", "2024-01-26 00:00"),
    ("nL", "0 0 * * 7l", "2024-01-01 00:00", REFUSED, "2024-01-28 00:00", "2024-01-28 00:00"),
    ("# with other items", "0 0 * * sun#1,sat", "2024-01-01 00:00", REFUSED,
     "2024-01-06 00:00", "2024-01-06 00:00"),
    ("# with other items", "0 0 * * 1#2,3", "2024-01-04 00:00", REFUSED, "2024-01-08 00:00",
     "2024-01-08 00:00"),
    ("w#k beside a day-of-month", "0 0 8 * wed#4", "2024-01-01 00:00", REFUSED,
     "2024-01-08 00:00", "2024-01-08 00:00"),
    # croniter ignores the Mondays: after the 15th (a Monday) it fires on February 15th.
    ("nW beside a day-of-week", "0 0 15W * mon", "2024-01-15 00:00", "2024-02-15 00:00",
     REFUSED, "2024-01-22 00:00"),
    ("day field starting with *", "0 0 */2 * mon", "2024-01-01 00:00", "2024-01-03 00:00",
     "2024-01-15 00:00", "2024-01-03 00:00"),
    ("L-n", "0 0 L-2 * *", "2024-01-01 00:00", REFUSED, REFUSED, "2024-01-29 00:00"),
    ("full day field", "0 0 1-31 * */2", "2024-01-02 00:00", "2024-01-04 00:00",
     "2024-01-04 00:00", "2024-01-03 00:00"),
    ("full day field", "0 0 */2 * 0-6", "2024-01-01 00:00", "2024-01-03 00:00",
     "2024-01-03 00:00", "2024-01-02 00:00"),
    ("full day field", "0 0 1-31 * 1,*/2", "2024-01-02 00:00", "2024-01-04 00:00",
     "2024-01-03 00:00", "2024-01-03 00:00"),
]  # fmt: skip


def test_every_feature_is_listed() -> None:
    assert {row[0] for row in LISTED} == DISAGREEMENTS.keys() | DELIBERATE.keys()


@pytest.mark.parametrize(
    ("feature", "text", "start", "croniter_next", "cronsim_next", "tm_next"), LISTED
)
def test_listed_disagreements(
    feature: str, text: str, start: str, croniter_next: str, cronsim_next: str, tm_next: str
) -> None:
    t = datetime.fromisoformat(start)

    def answer(ask: Callable[[], datetime]) -> str:
        try:
            return ask().strftime("%Y-%m-%d %H:%M")
        except Exception:  # each library's own refusal
            return REFUSED

    assert answer(lambda: croniter(text, t).get_next(datetime)) == croniter_next
    assert answer(lambda: next(CronSim(text, t))) == cronsim_next
    assert answer(lambda: Expression(text).next(t)) == tm_next


@pytest.mark.parametrize(
    "text",
    [
        "*/90 * * * *",
        "*/61 * * * *",
        "*/99999999999999999999 * * * *",
        "0 */30 * * *",
        "0 0 */40 * *",
        "0 0 1 */13 *",
        "0 0 * * */8",
        "0 0 * * 1-wed/8",
        "0 0 * * 1-3/8",
        "10-20/15 * * * *",
        "0 0 1,15 * 3",
        "0 0 L * *",
        "0 0 1,L * *",
        "0 0 * * 5#3",
        "0 0 * * mon#2,fri#1",
    ],
)
def test_both_references_accept(text: str) -> None:
    starts = [datetime(2024, 1, 1), datetime(2024, 2, 29, 12, 30), datetime(1999, 12, 31, 23, 59)]
    want = ask_croniter(text, starts)
    assert isinstance(want, tuple) and want == ask_cronsim(text, starts)
    assert ask_tm(text, starts) == want


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("0 0 ?,* * *", "day-of-month"),
        ("0 0 * * ?,*", "day-of-week"),
        ("0 0 ?/2 * *", "day-of-month"),
        ("0 0 15W,16 * *", "day-of-month"),
        ("0 0 1,15W * *", "day-of-month"),
        ("0 0 * * MONL", "day-of-week"),
        ("0 0 * * friL", "day-of-week"),
        ("0 0 */0 * *", "day-of-month"),
        ("0 0 5L * *", "day-of-month"),
        ("0 0 1-5L * *", "day-of-month"),
        ("0 0 L-L * *", "day-of-month"),
        ("0 0 30 2 *", "day-of-month"),
    ],
)
def test_both_references_refuse(text: str, field: str) -> None:
    start = [datetime(2024, 1, 1)]
    assert ask_croniter(text, start) == ask_cronsim(text, start) == "refused"
    with pytest.raises(CronError, match=field):
        Expression(text)


def test_aware_utc_matches_both_references() -> None:
    rng = random.Random(SEED + 3)
    compared = 0
    while compared < 200:
        case = generate(rng, False)
        if case.quartz() or not case.fires():
            continue
        start = random_start(rng).replace(tzinfo=timezone.utc)
        e = Expression(case.text)
        got = e.next(start)
        assert got.tzinfo is timezone.utc
        assert got == croniter(case.canonical(), start).get_next(datetime)
        assert got == next(CronSim(case.canonical(), start))
        assert e.prev(start) == croniter(case.canonical(), start).get_prev(datetime)
        compared += 1
