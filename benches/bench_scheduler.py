"""The scheduler: lateness in real time, a soak under a virtual clock, and idle CPU.

Run as ``python benches/bench_scheduler.py [--quick] [--store]``. Prints markdown tables:

- lateness: 10 graphs on ``* * * * * *`` fire together every second; lateness is the start of each
  run's root task minus its scheduled time, over 500 real fires (50 s; ``--quick``: 30 fires)
  after a first second of warm-up.
  ``--store`` repeats it with every run recorded in a SQLite store (each fire commits its run row
  before the run starts).
- soak: 100,000 runs (10 graphs x 10,000 virtual seconds; ``--quick``: 5,000) under a
  ``tm.VirtualClock``: RSS growth after a warm-up, and microseconds per fire in the first and the
  last tenth (constant time means the two match).
- idle: the CPU used by a started executor with 100 scheduled graphs that do not fire, over 10 s of
  wall time (``--quick``: 2 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import _results

import tm


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def lateness(fires: int, store: tm.Store | None) -> dict[str, float]:
    graphs = 10
    late: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    ex = tm.Executor(workers=graphs, store=store)
    for i in range(graphs):
        g = tm.Graph(f"tick{i}", schedule="* * * * * *")

        def root(context) -> None:
            started = time.time()
            with lock:
                late.append(started - context.scheduled_at.timestamp())
                if len(late) >= fires + graphs:
                    done.set()

        g.add(tm.task(root, name=f"root{i}"))
        ex.add(g)
    t = threading.Thread(target=ex.start)
    t.start()
    done.wait()
    ex.stop()
    t.join()
    ex.shutdown()
    # The first second is a warm-up (graphs compile, worker threads start) and is not counted.
    ms = sorted(x * 1e3 for x in late[graphs : graphs + fires])
    return {
        "fires": len(ms),
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max": ms[-1],
    }


def soak(steps: int) -> dict[str, float]:
    graphs = 10
    clock = tm.VirtualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    ended = threading.Semaphore(0)
    ex = tm.Executor(workers=4, clock=clock, on_run_end=lambda run: ended.release())
    for i in range(graphs):
        g = tm.Graph(f"soak{i}", schedule="* * * * * *")
        g.add(tm.task(lambda: None, name=f"noop{i}"))
        ex.add(g)
    t = threading.Thread(target=ex.start)
    t.start()
    assert ex.settle(30)
    t0 = clock.now().timestamp()

    def run(n: int, offset: int) -> float:
        start = time.perf_counter()
        for s in range(n):
            clock.set(t0 + offset + s + 1)
            assert ex.settle(30)
            for _ in range(graphs):
                assert ended.acquire(timeout=30)
        return (time.perf_counter() - start) / (n * graphs) * 1e6

    warm = max(1, steps // 10)
    run(warm, 0)  # warm-up: compiled graphs, thread pools, allocator
    before = rss_mb()
    tenth = max(1, steps // 10)
    first = run(tenth, warm)
    middle = steps - 2 * tenth
    run(middle, warm + tenth)
    last = run(tenth, warm + tenth + middle)
    after = rss_mb()
    ex.stop()
    t.join()
    ex.shutdown()
    return {
        "runs": (warm + steps) * graphs,
        "rss_before_mb": before,
        "rss_growth_mb": after - before,
        "first_us": first,
        "last_us": last,
    }


def idle(seconds: float) -> float:
    ex = tm.Executor()
    for i in range(100):
        g = tm.Graph(f"idle{i}", schedule=f"{i % 60} {i % 24} 1 1 *")
        g.add(tm.task(lambda: None, name=f"idle_task{i}"))
        ex.add(g)
    t = threading.Thread(target=ex.start)
    t.start()
    assert ex.settle(30)
    c0, w0 = time.process_time(), time.perf_counter()
    # Measured from the main thread, which only sleeps: the CPU is the executor's.
    time.sleep(seconds)
    c1, w1 = time.process_time(), time.perf_counter()
    ex.stop()
    t.join()
    ex.shutdown()
    return (c1 - c0) / (w1 - w0) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    parser.add_argument("--store", action="store_true", help="also measure lateness with a store")
    args = parser.parse_args()
    fires = 30 if args.quick else 500
    rows = [("no store", lateness(fires, None))]
    if args.store:
        with tempfile.TemporaryDirectory() as tmp:
            store = tm.Store(f"sqlite:///{Path(tmp) / 'bench.db'}")
            rows.append(("SQLite store", lateness(fires, store)))
            store.close()
    with _results.recorded("scheduler", "Scheduler: lateness, soak, idle CPU", args.quick):
        print("| lateness (ms), 10 graphs on * * * * * * | fires | p50 | p99 | max |")
        print("|---|---|---|---|---|")
        for name, r in rows:
            print(f"| {name} | {r['fires']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |")
        s = soak(500 if args.quick else 10_000)
        print()
        print(
            "| soak (virtual clock) | runs | RSS after warm-up MB | RSS growth MB "
            "| us/fire, first tenth | us/fire, last tenth |"
        )
        print("|---|---|---|---|---|---|")
        print(
            f"| 10 graphs on * * * * * * | {s['runs']} | {s['rss_before_mb']:.1f} "
            f"| {s['rss_growth_mb']:.1f} | {s['first_us']:.0f} | {s['last_us']:.0f} |"
        )
        cpu = idle(2.0 if args.quick else 10.0)
        print()
        print("| idle executor | graphs | CPU % |")
        print("|---|---|---|")
        print(f"| started, nothing due | 100 | {cpu:.3f} |")


if __name__ == "__main__":
    main()
