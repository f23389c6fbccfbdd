"""The graph of the distributed-run tests, importable by every worker process."""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import tm

# Each execution of a task appends "task pid" here (set by the test), so the test can count them.
LOG = os.environ.get("TM_FLEET_LOG")
# Seconds of work per task, so that a worker can be killed in the middle of the run.
WORK = float(os.environ.get("TM_FLEET_WORK", "0"))


def _note(name: str) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(f"{name} {os.getpid()}\n")
    if WORK:
        time.sleep(WORK)


def _root(j: int, context: Any) -> int:
    _note(context.task)
    return j


def _step(context: Any, **up: int) -> int:
    _note(context.task)
    return sum(up.values()) + 1


def build(width: int, layers: int) -> tm.Graph:
    """``layers`` layers of ``width`` tasks; task j of a layer takes tasks j and j+1 (mod width)
    of the layer above."""
    g = tm.Graph(f"fleet{width}x{layers}")
    for j in range(width):
        g.add(tm.task(functools.partial(_root, j), name=f"n0_{j}"))
    for layer in range(1, layers):
        for j in range(width):
            up = [f"n{layer - 1}_{j}", f"n{layer - 1}_{(j + 1) % width}"]
            g.add(tm.task(_step, name=f"n{layer}_{j}"), depends_on=sorted(set(up)))
    return g


def expected(width: int, layers: int) -> dict[str, int]:
    """Every task's result, computed in plain Python."""
    vals = {f"n0_{j}": j for j in range(width)}
    for layer in range(1, layers):
        for j in range(width):
            ups = sorted({f"n{layer - 1}_{j}", f"n{layer - 1}_{(j + 1) % width}"})
            vals[f"n{layer}_{j}"] = sum(vals[u] for u in ups) + 1
    return vals
