"""Invalid cron expressions: each raises ``CronError`` naming the field and the offending text."""

from __future__ import annotations

import re

import pytest

from tm.cron import CronError, Expression
from tm.exceptions import TmError

# A field name must appear as a word of its own: "month" inside "day-of-month" does not count.
FIELD_PATTERNS = {
    "second": r"\bsecond\b",
    "minute": r"\bminute\b",
    "hour": r"\bhour\b",
    "day-of-month": r"\bday-of-month\b",
    "month": r"(?<!day-of-)\bmonth\b",
    "day-of-week": r"\bday-of-week\b",
}

# (expression, field at fault, the offending text the message must quote; when a tuple, any one
# of its items will do, e.g. the whole item "*/0" or just the step "0" of it)
FIELD_ERRORS: list[tuple[str, str, str | tuple[str, ...]]] = [
    # out of range, per field
    ("60 * * * *", "minute", "60"),
    ("* 24 * * *", "hour", "24"),
    ("* * 0 * *", "day-of-month", "0"),
    ("* * 32 * *", "day-of-month", "32"),
    ("* * * 0 *", "month", "0"),
    ("* * * 13 *", "month", "13"),
    ("* * * * 8", "day-of-week", "8"),
    ("60 * * * * *", "second", "60"),
    ("0 60 * * * *", "minute", "60"),
    ("0 0 25 * * *", "hour", "25"),
    ("1-60 * * * *", "minute", ("1-60", "60")),
    ("* 0-24 * * *", "hour", ("0-24", "24")),
    ("* * 0-5 * *", "day-of-month", ("0-5", "0")),
    ("* * * 1-13 *", "month", ("1-13", "13")),
    ("* * * * 1-8", "day-of-week", ("1-8", "8")),
    ("* * * * 8/2", "day-of-week", ("8/2", "8")),
    ("1,2,99 * * * *", "minute", "99"),
    # a reversed range wraps, but its ends must still be in range
    ("* * * 13-2 *", "month", ("13-2", "13")),
    ("* 25-2 * * *", "hour", ("25-2", "25")),
    # zero, junk and missing steps
    ("*/0 * * * *", "minute", ("*/0", "0")),
    ("* 1-5/0 * * *", "hour", ("1-5/0", "0")),
    ("0/0 * * * * *", "second", ("0/0", "0")),
    ("*/x * * * *", "minute", ("*/x", "x")),
    ("*/ * * * *", "minute", "*/"),
    ("* */-2 * * *", "hour", ("*/-2", "-2")),
    ("* * */1.5 * *", "day-of-month", ("*/1.5", "1.5")),
    ("1/2/3 * * * *", "minute", "1/2/3"),
    # empty items, trailing and leading commas
    ("1,,2 * * * *", "minute", "1,,2"),
    ("1, * * * *", "minute", "1,"),
    (",1 * * * *", "minute", ",1"),
    ("* * * * mon,", "day-of-week", "mon,"),
    # junk
    ("a * * * *", "minute", "a"),
    ("* 1.5 * * *", "hour", "1.5"),
    ("* * 1-2-3 * *", "day-of-month", "1-2-3"),
    ("* * * jan-foo *", "month", ("jan-foo", "foo")),
    ("* * * * monday", "day-of-week", "monday"),
    ("* * * * 1-", "day-of-week", "1-"),
    ("* -5 * * *", "hour", "-5"),
    ("+5 * * * *", "minute", "+5"),
    ("0x10 * * * *", "minute", "0x10"),
    ("*/5 * * * * extra", "day-of-week", "extra"),
    ("** * * * *", "minute", "**"),
    # names in the wrong field
    ("* * * * jan", "day-of-week", "jan"),
    ("* * * mon *", "month", "mon"),
    ("jan * * * *", "minute", "jan"),
    ("* sun * * *", "hour", "sun"),
    ("* * mon * *", "day-of-month", "mon"),
    # `?` outside the day fields
    ("? * * * *", "minute", "?"),
    ("* * * ? *", "month", "?"),
    # negative and huge numbers
    ("-1 * * * *", "minute", "-1"),
    ("* * * * -0", "day-of-week", "-0"),
    ("99999999999999999999 * * * *", "minute", "99999999999999999999"),
    ("* 1-99999999999999999999 * * *", "hour", "99999999999999999999"),
    ("4294967296 * * * *", "minute", "4294967296"),
    ("* * 4294967297 * *", "day-of-month", "4294967297"),
    # digits that are not ASCII digits
    ("\u0663 * * * *", "minute", "\u0663"),  # ARABIC-INDIC DIGIT THREE
    ("* \uff15 * * *", "hour", "\uff15"),  # FULLWIDTH DIGIT FIVE
    ("1\u0663 * * * *", "minute", "1\u0663"),
    ("* * * * \u0661", "day-of-week", "\u0661"),
    # Quartz forms out of place or out of range
    ("L * * * *", "minute", "L"),
    ("* * * L *", "month", "L"),
    ("0 0 0W * *", "day-of-month", "0W"),
    ("0 0 32W * *", "day-of-month", "32W"),
    ("0 0 W * *", "day-of-month", "W"),
    ("0 0 * * 8L", "day-of-week", "8L"),
    ("0 0 * * 1#0", "day-of-week", "1#0"),
    ("0 0 * * 1#6", "day-of-week", "1#6"),
    ("0 0 * * 1#", "day-of-week", "1#"),
    ("0 0 * * #2", "day-of-week", "#2"),
    ("0 0 5L * *", "day-of-month", "5L"),
    ("0 0 * * 15W", "day-of-week", "15W"),
    ("0 0 1#2 * *", "day-of-month", "1#2"),
    ("0 0 L/2 * *", "day-of-month", "L/2"),
    ("0 0 * L-3 *", "month", "L-3"),
    ("0 0 * * 1-L", "day-of-week", "1-L"),
    # `?` is a whole day field or nothing; `nW` is a whole field; `L` follows a day number
    ("0 0 ?,* * *", "day-of-month", "?,*"),
    ("0 0 * * ?,*", "day-of-week", "?,*"),
    ("0 0 * * 1,?", "day-of-week", "1,?"),
    ("0 0 ?/2 * *", "day-of-month", "?/2"),
    ("0 0 15W,16 * *", "day-of-month", "15W,16"),
    ("0 0 1,15W * *", "day-of-month", "1,15W"),
    ("0 0 LW,1w * *", "day-of-month", "LW,1w"),
    ("0 0 * * MONL", "day-of-week", "MONL"),
    ("0 0 * * friL", "day-of-week", "friL"),
]

# The exact messages of the forms croniter and cronsim both refuse (issue 23).
EXACT_MESSAGES = [
    ("0 0 ?,* * *", 'day-of-month field: "?" must be the whole field in "?,*"'),
    ("0 0 * * ?,*", 'day-of-week field: "?" must be the whole field in "?,*"'),
    ("0 0 ?/2 * *", 'day-of-month field: "?" must be the whole field in "?/2"'),
    (
        "0 0 15W,16 * *",
        'day-of-month field: nearest weekday "15W" must be the whole field in "15W,16"',
    ),
    (
        "0 0 1,15W * *",
        'day-of-month field: nearest weekday "15W" must be the whole field in "1,15W"',
    ),
    (
        "0 0 * * MONL",
        'day-of-week field: day name before "L" (write the day\'s number, as in "5L") in "MONL"',
    ),
    (
        "0 0 * * friL",
        'day-of-week field: day name before "L" (write the day\'s number, as in "5L") in "friL"',
    ),
]


@pytest.mark.parametrize(("expr", "message"), EXACT_MESSAGES)
def test_exact_messages(expr: str, message: str) -> None:
    with pytest.raises(CronError) as info:
        Expression(expr)
    assert str(info.value) == message


def _ids(cases: list[tuple[str, str, object]]) -> list[str]:
    return [f"{field}:{expr.encode('unicode_escape').decode()}" for expr, field, _ in cases]


@pytest.mark.parametrize(("expr", "field", "token"), FIELD_ERRORS, ids=_ids(FIELD_ERRORS))
def test_invalid_field(expr: str, field: str, token: str | tuple[str, ...]) -> None:
    with pytest.raises(CronError) as info:
        Expression(expr)
    err = info.value
    assert isinstance(err, ValueError)
    assert isinstance(err, TmError)
    message = str(err)
    assert re.search(FIELD_PATTERNS[field], message), f"field {field!r} not named in {message!r}"
    tokens = (token,) if isinstance(token, str) else token
    assert any(t in message for t in tokens), f"none of {tokens!r} quoted in {message!r}"


def test_error_names_only_the_field_at_fault() -> None:
    # The bad value is in the hour field; the message must not blame the others.
    with pytest.raises(CronError) as info:
        Expression("0 24 1 1 *")
    message = str(info.value)
    assert re.search(FIELD_PATTERNS["hour"], message)
    for other in ("minute", "day-of-month", "month", "day-of-week"):
        assert not re.search(FIELD_PATTERNS[other], message), message


# Wrong number of fields and unknown nicknames: there is no single field to blame, but the
# message still quotes what it got.
SHAPE_ERRORS: list[tuple[str, tuple[str, ...]]] = [
    ("", ("0", "empty")),
    ("   ", ("0", "empty")),
    ("* * * *", ("4",)),
    ("*", ("1",)),
    ("* * * * * * *", ("7",)),
    ("0 0 1 1 * 2024 extra", ("7",)),
    ("@every", ("@every",)),
    ("@daily2", ("@daily2",)),
    ("@reboot", ("@reboot",)),
    ("@", ("@",)),
]


@pytest.mark.parametrize(("expr", "tokens"), SHAPE_ERRORS)
def test_invalid_shape(expr: str, tokens: tuple[str, ...]) -> None:
    with pytest.raises(CronError) as info:
        Expression(expr)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert any(t in message for t in tokens), f"none of {tokens!r} in {message!r}"


# Syntactically fine, but no day ever matches: rejected at construction. (With the OR rule,
# "0 0 30 2 mon" does fire, on February's Mondays; see test_cron_api.)
NEVER_FIRES = [
    "0 0 30 2 *",
    "0 0 31 2 *",
    "0 0 30,31 2 ?",
    "0 0 31 4 *",
    "0 0 31 apr,jun,sep,nov *",
    "0 0 31 2,4,6 *",
    "0 0 0 30-31 feb *",
]


@pytest.mark.parametrize("expr", NEVER_FIRES)
def test_never_firing_expression_is_rejected(expr: str) -> None:
    with pytest.raises(CronError) as info:
        Expression(expr)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    # The culprit is the day-of-month/month combination: the message must point at one of them.
    assert re.search(FIELD_PATTERNS["day-of-month"], message) or re.search(
        FIELD_PATTERNS["month"], message
    ), message


@pytest.mark.parametrize(
    "expr",
    ["0 0 29 2 *", "0 0 30 2 mon", "0 0 31 1-2 *", "0 0 L 2 *", "0 0 * 2 5#5", "0 0 30 */2 *"],
)
def test_rare_but_possible_expressions_are_accepted(expr: str) -> None:
    # Feb 29th (leap years), the OR rule, a 31st in January, the last day of February, a fifth
    # Friday in February (when Feb 1st is a Friday of a leap year, e.g. 2008), and the 30th in
    # odd months (January has one).
    Expression(expr)
