"""Benchmark ``tm.cron`` against croniter and cronsim, in one process run.

Usage:
    python benches/bench_cron.py                   # full run, about 15 seconds
    python benches/bench_cron.py --per-expression  # also chained next for each expression
    python benches/bench_cron.py --quick           # a handful of iterations: a smoke test only

Three workloads over the same fixed mix of expressions (only expressions all three libraries
accept, and on which they agree; the script checks that before timing):

1. chained next: successive fire times from one iterator (croniter ``get_next(datetime)`` on one
   croniter object, cronsim ``next(it)``, tm ``next(it)`` on ``Expression.iter(t)``);
2. next from arbitrary starts: a fixed list of random start times. croniter and cronsim can only
   do this by building a new object per start (``croniter(expr, t).get_next(datetime)`` and
   ``next(CronSim(expr, t))``); tm calls ``e.next(t)`` on a prebuilt Expression, and a second line
   times tm's ``Expression(expr).next(t)`` for a like-for-like comparison;
3. construction: ``Expression(expr)``, ``croniter(expr, start)``, ``CronSim(expr, start)``.

Times are microseconds per call, the best of several repeats (each repeat runs the whole mix)
measured with ``time.perf_counter_ns`` with the garbage collector paused, as ``timeit`` does.
The last column is ``best peer / tm``: above 1 means tm is faster.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.metadata import version

import _results
from croniter import croniter
from cronsim import CronSim

from tm.cron import Expression

# Typical schedules, plus a few with the day-of-month/day-of-week OR rule, names, steps and leap
# days. Quartz forms and `?` are left out: croniter and cronsim do not accept all of them.
EXPRESSIONS = [
    "* * * * *",
    "*/5 * * * *",
    "*/15 * * * *",
    "0 * * * *",
    "0 */6 * * *",
    "0 0 * * *",
    "0 9 * * mon-fri",
    "0 22 * * 1-5",
    "15,45 8-18 * * 1-5",
    "*/10 9-17 * * mon-fri",
    "30 2 * * 0",
    "0 12 * * sun",
    "5 4 * * sat",
    "45 23 * * 6",
    "23 0-20/2 * * *",
    "0 8-17/3 * 6-8 *",
    "0 0 1 * *",
    "0 4 8-14 * *",
    "0 0,12 1 */2 *",
    "0 0 1,15 * 3",
    "0 0 13 * fri",
    "1-2,*/15 0 1 3 2",
    "0 0 1 jan *",
    "0 0 1 1 *",
    "0 0 29 2 *",
]

START = datetime(2024, 1, 31, 20, 0)


@dataclass(frozen=True)
class Config:
    """How much work one run does."""

    chain: int  # successive next() calls per expression
    starts: int  # random start times per expression
    constructions: int  # constructions per expression
    repeats: int  # best of this many repeats


FULL = Config(chain=200, starts=100, constructions=100, repeats=5)
QUICK = Config(chain=3, starts=3, constructions=3, repeats=1)


def best_of(repeats: int, run: Callable[[], int]) -> int:
    """The smallest of ``repeats`` results of ``run`` (each returns elapsed nanoseconds)."""
    best = None
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            elapsed = run()
            best = elapsed if best is None else min(best, elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    assert best is not None
    return best


# --- chained next ------------------------------------------------------------------------------


def chain_tm(n: int, expressions: list[str] = EXPRESSIONS) -> int:
    total = 0
    for expr in expressions:
        it = Expression(expr).iter(START)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            next(it)
        total += time.perf_counter_ns() - t0
    return total


def chain_croniter(n: int, expressions: list[str] = EXPRESSIONS) -> int:
    total = 0
    for expr in expressions:
        get_next = croniter(expr, START).get_next
        t0 = time.perf_counter_ns()
        for _ in range(n):
            get_next(datetime)
        total += time.perf_counter_ns() - t0
    return total


def chain_cronsim(n: int, expressions: list[str] = EXPRESSIONS) -> int:
    total = 0
    for expr in expressions:
        it = CronSim(expr, START)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            next(it)
        total += time.perf_counter_ns() - t0
    return total


# --- next from arbitrary starts --------------------------------------------------------------


def random_starts(n: int) -> list[datetime]:
    rng = random.Random(4)
    base, span = datetime(2000, 1, 1), 30 * 365 * 24 * 3600
    return [base + timedelta(seconds=rng.randrange(span)) for _ in range(n)]


def starts_tm(starts: list[datetime]) -> int:
    total = 0
    for expr in EXPRESSIONS:
        e = Expression(expr)
        t0 = time.perf_counter_ns()
        for t in starts:
            e.next(t)
        total += time.perf_counter_ns() - t0
    return total


def starts_tm_construct(starts: list[datetime]) -> int:
    t0 = time.perf_counter_ns()
    for expr in EXPRESSIONS:
        for t in starts:
            Expression(expr).next(t)
    return time.perf_counter_ns() - t0


def starts_croniter(starts: list[datetime]) -> int:
    t0 = time.perf_counter_ns()
    for expr in EXPRESSIONS:
        for t in starts:
            croniter(expr, t).get_next(datetime)
    return time.perf_counter_ns() - t0


def starts_cronsim(starts: list[datetime]) -> int:
    t0 = time.perf_counter_ns()
    for expr in EXPRESSIONS:
        for t in starts:
            next(CronSim(expr, t))
    return time.perf_counter_ns() - t0


# --- construction ------------------------------------------------------------------------------


def construct_tm(n: int) -> int:
    t0 = time.perf_counter_ns()
    for expr in EXPRESSIONS:
        for _ in range(n):
            Expression(expr)
    return time.perf_counter_ns() - t0


def construct_croniter(n: int) -> int:
    t0 = time.perf_counter_ns()
    for expr in EXPRESSIONS:
        for _ in range(n):
            croniter(expr, START)
    return time.perf_counter_ns() - t0


def construct_cronsim(n: int) -> int:
    t0 = time.perf_counter_ns()
    for expr in EXPRESSIONS:
        for _ in range(n):
            CronSim(expr, START)
    return time.perf_counter_ns() - t0


# --- the run -----------------------------------------------------------------------------------


def check_agreement(starts: list[datetime], chain: int) -> None:
    """Fails if the libraries disagree on the mix: the benchmark must time the same answers."""
    for expr in EXPRESSIONS:
        e = Expression(expr)
        for t in starts:
            want = e.next(t)
            got = (croniter(expr, t).get_next(datetime), next(CronSim(expr, t)))
            if got != (want, want):
                raise SystemExit(f"disagreement on {expr!r} from {t}: tm {want}, peers {got}")
        it_c, it_s = croniter(expr, START), CronSim(expr, START)
        for a in itertools.islice(e.iter(START), chain):
            if (it_c.get_next(datetime), next(it_s)) != (a, a):
                raise SystemExit(f"chained disagreement on {expr!r}: tm {a}")


def us_per_call(total_ns: int, calls: int) -> float:
    return total_ns / calls / 1000


def row(name: str, tm_us: float, croniter_us: float, cronsim_us: float) -> str:
    ratio = min(croniter_us, cronsim_us) / tm_us
    return f"| {name} | {tm_us:.2f} | {croniter_us:.2f} | {cronsim_us:.2f} | {ratio:.1f}x |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny iteration counts (smoke test)")
    parser.add_argument(
        "--per-expression", action="store_true", help="also time chained next per expression"
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    starts = random_starts(cfg.starts)
    check_agreement(starts, cfg.chain)

    n_expr = len(EXPRESSIONS)
    chained = n_expr * cfg.chain
    from_starts = n_expr * cfg.starts
    built = n_expr * cfg.constructions
    r = cfg.repeats
    results = {
        "chain": [
            us_per_call(best_of(r, lambda f=f: f(cfg.chain)), chained)
            for f in (chain_tm, chain_croniter, chain_cronsim)
        ],
        "starts": [
            us_per_call(best_of(r, lambda f=f: f(starts)), from_starts)
            for f in (starts_tm, starts_croniter, starts_cronsim)
        ],
        "construct_next": [
            us_per_call(best_of(r, lambda f=f: f(starts)), from_starts)
            for f in (starts_tm_construct, starts_croniter, starts_cronsim)
        ],
        "construct": [
            us_per_call(best_of(r, lambda f=f: f(cfg.constructions)), built)
            for f in (construct_tm, construct_croniter, construct_cronsim)
        ],
    }

    with _results.recorded("cron", "Cron: tm vs croniter vs cronsim", args.quick):
        print(
            f"cron: {n_expr} expressions, best of {r}; Python {platform.python_version()}, "
            f"croniter {version('croniter')}, cronsim {version('cronsim')}"
            + (" (--quick: not a measurement)" if args.quick else "")
        )
        print()
        print("| benchmark (us per call) | tm | croniter | cronsim | best peer / tm |")
        print("|---|---:|---:|---:|---:|")
        print(row("chained next (iterator)", *results["chain"]))
        print(row("next from arbitrary start (tm: prebuilt Expression) [1]", *results["starts"]))
        print(row("construct + next from arbitrary start", *results["construct_next"]))
        print(row("construction", *results["construct"]))
        print()
        print(
            "[1] croniter and cronsim have no way to ask for the next fire time after an arbitrary "
            "start without building a new object: their columns are `croniter(expr, t).get_next` "
            "and `next(CronSim(expr, t))`, the same as in the construct + next line."
        )
        if args.per_expression:
            print()
            print(
                "| chained next, per expression (us/call) | tm | croniter | cronsim | best peer / tm |"
            )
            print("|---|---:|---:|---:|---:|")
            for expr in EXPRESSIONS:
                times = [
                    us_per_call(best_of(r, lambda f=f, x=expr: f(cfg.chain, [x])), cfg.chain)
                    for f in (chain_tm, chain_croniter, chain_cronsim)
                ]
                print(row(f"`{expr}`", *times))
    return 0


if __name__ == "__main__":
    sys.exit(main())
