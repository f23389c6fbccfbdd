"""Per-task cost of recording runs in the store: the same graphs with ``store`` off and on.

"store on" is the run as the caller sees it (transitions are queued to the writer thread); "incl.
commit" adds the time until the writer has committed every transition of the run.

Run as ``python benches/bench_store.py [--quick]``. Prints a markdown table: microseconds per task for
wide and chain graphs of no-op tasks, store off vs on (recording every transition), the ratio, and
the transitions committed per second while recording.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import _results

import tm


def noop(**parents: object) -> int:
    return 1


def build(shape: str, n: int) -> tm.Graph:
    g = tm.Graph(f"{shape}-{n}")
    prev = None
    for i in range(n):
        t = tm.task(noop, name=f"t{i}")
        g.add(t, depends_on=[prev] if (shape == "chain" and prev is not None) else [])
        prev = t
    return g


def timed_run(ex: tm.Executor, g: tm.Graph, store: tm.Store) -> float:
    store.flush()  # start from an idle writer: measure the run, not the previous run's backlog
    t0 = time.perf_counter()
    run = ex.run(g)
    elapsed = time.perf_counter() - t0
    assert run.state == "completed"
    return elapsed


def best_runs(off: tm.Executor, on: tm.Executor, g: tm.Graph, repeats: int) -> tuple[float, float]:
    """Best times with the store off and on, the runs interleaved (off, on, off, on, ...) so that
    both see the same moments of a shared machine's background load."""
    assert on.store is not None
    for ex in (off, on):
        assert ex.run(g).state == "completed"  # compile once, warm up
    best_off = best_on = float("inf")
    for _ in range(repeats):
        best_off = min(best_off, timed_run(off, g, on.store))
        best_on = min(best_on, timed_run(on, g, on.store))
    return best_off, best_on


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small graphs, one repeat")
    args = parser.parse_args()
    n = 500 if args.quick else 10_000
    repeats = 1 if args.quick else 7
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in ("wide", "chain"):
            g = build(shape, n)
            store = tm.Store(f"sqlite:///{Path(tmp) / f'{shape}.db'}")
            with tm.Executor(workers=8) as ex_off, tm.Executor(workers=8, store=store) as ex_on:
                off, on = best_runs(ex_off, ex_on, g, repeats)
                store.flush()
                t0 = time.perf_counter()
                ex_on.run(g)
                store.flush()  # include the time to commit everything the run queued
                on_committed = time.perf_counter() - t0
            store.close()
            transitions = 2 * n + 1  # started + completed per task, and the run's end
            rows.append((shape, n, off, on, on_committed, transitions / on_committed))
    with _results.recorded("store", "Recording runs in the store", args.quick):
        print(
            "| shape | tasks | store off us/task | store on us/task | on / off | on incl. commit us/task | transitions committed/s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for shape, n, off, on, committed, rate in rows:
            print(
                f"| {shape} | {n} | {off / n * 1e6:.2f} | {on / n * 1e6:.2f} | {on / off:.2f}x "
                f"| {committed / n * 1e6:.2f} | {rate:,.0f} |"
            )


if __name__ == "__main__":
    main()
