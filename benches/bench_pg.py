"""Benchmark tm's PostgreSQL state against its embedded SQLite default, in one run.

Usage:
    python benches/bench_pg.py            # full run, about a minute
    python benches/bench_pg.py --quick    # tiny runs: a smoke test only

Starts its own PostgreSQL server (tests/pg.py: the Debian package, installed if missing, a
throwaway cluster on a free loopback port; fsync off, so commits cost no disk flush, and the
SQLite side uses synchronous=NORMAL, which does not flush per commit either).

Workloads:
- queue: a store holding N pending tasks; P worker processes loop "claim the next task, complete
  it" until it is drained. Figure: tasks claimed and completed per second, all processes together.
  Processes open their store before a common start signal, so start-up is not timed.
- graphs: P executor processes each run R graphs of T trivial tasks with the store on one
  database (each process its own runs: the store is shared, the work is not). Figure: tasks per
  second, all processes together, including every state transition committed to the store.
- distributed: ONE distributed run of a layered graph (W wide, L layers, each task taking two
  parents) worked on by P executor processes (4 threads each) on PostgreSQL: every task claimed,
  its inputs read and its result written through the database. Figure: tasks per second from
  the common start to the run's end; the same graph on one local executor for scale.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import _results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pg


def queue_worker(url: str, agent: str, ready, go) -> None:  # type: ignore[no-untyped-def]
    from tm.queue import TaskManager

    tm = TaskManager(url, lock_timeout=60)
    ready.put(agent)
    go.wait()
    while True:
        task = tm.get_next_task(agent)
        if task is None:
            break
        tm.complete_task(task["id"], agent, attempt=task["attempt"])


def graph_worker(url: str, runs: int, tasks: int, ready, go) -> None:  # type: ignore[no-untyped-def]
    import tm

    g = tm.Graph("bench")
    for i in range(tasks):
        g.add(tm.task(lambda: 1, name=f"t{i}"))
    ex = tm.Executor(store=url, workers=4)
    ex.store.runs(limit=1)  # open the store before the clock starts
    ready.put(1)
    go.wait()
    with ex:
        for _ in range(runs):
            assert ex.run(g).state == "completed"
    ex.store.close()


def fleet_worker(url: str, run_id: str, width: int, layers: int, ready, go) -> None:  # type: ignore[no-untyped-def]
    import _fleet_graph

    import tm

    g = _fleet_graph.build(width, layers)
    ex = tm.Executor(store=url, workers=4)
    ex._get_fleet()  # connect before the clock starts
    ready.put(1)
    go.wait()
    with ex:
        ex.work([g], run_id=run_id)


def timed(target, args_for, procs: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds from the common start until every process ended."""
    ctx = mp.get_context("spawn")
    ready, go = ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=target, args=(*args_for(i), ready, go)) for i in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        ready.get(timeout=120)
    t0 = time.perf_counter()
    go.set()
    for p in ps:
        p.join(timeout=600)
        if p.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {p.exitcode})")
    return time.perf_counter() - t0


def bench_queue(server: pg.Server, tmp: Path, n: int, procs: list[int]) -> list[str]:
    from tm.queue import TaskManager

    rows = ["| processes | tm sqlite (tasks/s) | tm postgresql (tasks/s) | postgresql / sqlite |"]
    rows.append("|---|---|---|---|")
    for p in procs:
        rates = []
        for kind in ("sqlite", "postgresql"):
            url = str(tmp / f"q{p}.db") if kind == "sqlite" else server.create_db()
            TaskManager(url).create_tasks([("job", {"n": i}) for i in range(n)])
            secs = timed(queue_worker, lambda i, url=url: (url, f"w{i}"), p)
            done = TaskManager(url).get_status_summary()["status_counts"].get("completed", 0)
            assert done == n, (kind, done)
            rates.append(n / secs)
        rows.append(f"| {p} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[1] / rates[0]:.2f} |")
    return rows


def bench_graphs(
    server: pg.Server, tmp: Path, runs: int, tasks: int, procs: list[int]
) -> list[str]:
    rows = ["| executor processes | sqlite store (tasks/s) | postgresql store (tasks/s) |"]
    rows.append("|---|---|---|")
    for p in procs:
        rates = []
        for kind in ("sqlite", "postgresql"):
            url = f"sqlite:///{tmp}/g{p}.db" if kind == "sqlite" else server.create_db()
            secs = timed(graph_worker, lambda i, url=url: (url, runs, tasks), p)
            rates.append(p * runs * tasks / secs)
        rows.append(f"| {p} | {rates[0]:,.0f} | {rates[1]:,.0f} |")
    return rows


def bench_fleet(server: pg.Server, width: int, layers: int, procs: list[int]) -> list[str]:
    import _fleet_graph

    import tm

    g = _fleet_graph.build(width, layers)
    n = width * layers
    with tm.Executor(workers=4) as ex:
        t0 = time.perf_counter()
        assert ex.run(g).state == "completed"
        local = n / (time.perf_counter() - t0)
    rows = ["| executor processes | distributed run (tasks/s) | vs 1 process |"]
    rows.append("|---|---|---|")
    base = None
    for p in procs:
        url = server.create_db()
        with tm.Executor(store=url) as submitter:
            run = submitter.submit(g, distributed=True)
            secs = timed(fleet_worker, lambda i, url=url, r=run.run_id: (url, r, width, layers), p)
            assert run.state == "completed", run.state
        rate = n / secs
        base = base or rate
        rows.append(f"| {p} | {rate:,.0f} | {rate / base:.2f}x |")
    rows.append(f"| (one local executor, no store) | {local:,.0f} | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny runs (smoke test)")
    args = ap.parse_args(argv)
    n, runs, tasks = (200, 2, 20) if args.quick else (5_000, 20, 200)
    procs = [1, 2] if args.quick else [1, 2, 4, 8]
    with pg.server() as server, tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with _results.recorded(
            "pg",
            "PostgreSQL against SQLite: queue, graphs with history, distributed runs",
            args.quick,
        ):
            print(
                f"# tm: PostgreSQL vs SQLite state ({platform.machine()}, {os.cpu_count()} cores)"
            )
            print()
            print(f"## Queue: {n} tasks claimed and completed by P processes")
            print()
            print("\n".join(bench_queue(server, tmp, n, procs)))
            print()
            print(
                f"## Graphs: each process runs {runs} graphs of {tasks} tasks, history in the store"
            )
            print()
            print("\n".join(bench_graphs(server, tmp, runs, tasks, procs[:3])))
            width, layers = (10, 5) if args.quick else (100, 20)
            print()
            print(
                f"## Distributed: one run of {width * layers} tasks shared by P executor processes"
            )
            print()
            print(
                "\n".join(bench_fleet(server, width, layers, [1, 2] if args.quick else [1, 2, 4]))
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
