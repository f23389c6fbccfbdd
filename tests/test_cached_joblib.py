"""Differential test: ``@store.task`` hits and misses exactly where ``joblib.Memory.cache`` does,
over random call sequences (positional and keyword forms, defaults, dict and set order, 1 vs 1.0,
tuples vs lists, arrays by content)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

import tm

joblib = pytest.importorskip("joblib")
np = pytest.importorskip("numpy")

ATOMS: list[Any] = [0, 1, 1.0, -2, "a", "b", None, True, (1, 2), [1, 2], (), [], 2.5]


def value(rng: random.Random) -> Any:
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice(ATOMS)
    if kind == 1:
        keys = rng.sample(["x", "y", "z"], rng.randrange(3))
        return {k: rng.choice(ATOMS[:6]) for k in keys}  # insertion order varies
    if kind == 2:
        return set(rng.sample([1, 2, 3, 4], rng.randrange(4)))
    if kind == 3:
        return np.arange(rng.randrange(3), dtype=rng.choice([np.int64, np.float64]))
    if kind == 4:
        return (rng.choice(ATOMS), rng.choice(ATOMS))
    return [rng.choice(ATOMS)]


def call(rng: random.Random, fn: Any) -> Any:
    a = value(rng)
    form = rng.randrange(4)
    if form == 0:
        return fn(a)
    if form == 1:
        b = rng.choice([2, 3])
        return fn(a, b)
    if form == 2:
        return fn(b=rng.choice([2, 3]), a=a)
    return fn(a=a)


@pytest.mark.parametrize("seed", range(5))
def test_hits_and_misses_match_joblib(tmp_path: Path, seed: int) -> None:
    ran: list[str] = []

    def body(a: Any, b: int = 2) -> str:
        ran.append("x")
        return repr((a, b))

    store = tm.Store(f"sqlite:///{tmp_path / 'tm.db'}", result_dir=tmp_path / "results")
    ours = store.task(body)
    theirs = joblib.Memory(tmp_path / "joblib", verbose=0).cache(body)
    for fn, log in ((ours, []), (theirs, [])):
        rng = random.Random(seed)
        ran.clear()
        for _ in range(60):
            before = len(ran)
            call(rng, fn)
            log.append(len(ran) > before)
        if fn is ours:
            ours_log = log
        else:
            theirs_log = log
    store.close()
    assert ours_log == theirs_log
    assert 0 < sum(ours_log) < 60  # the sequence has both hits and misses
