"""``tm ui`` response times on a large store: the runs page (first and a deep page) with 100,000
runs, and the run page of a 10,000-task run (graph SVG, timeline and task table), through
Starlette's TestClient (in-process: the figures are the app's, without network).

    .venv/bin/python benches/bench_ui.py [--runs 100000] [--tasks 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import _results
from starlette.testclient import TestClient

import tm
from tm.ui import create_app


def fill(url: str, runs: int, tasks: int) -> tuple[str, str]:
    """``runs`` finished runs over 10 graphs, and one run of ``tasks`` tasks (a layered graph:
    each task after one of the previous layer), all recorded through the store's own verbs."""
    store = tm.Store(url)
    core = store.core
    t0 = 1_700_000_000_000_000
    for i in range(runs):
        rid = f"run{i:07d}"
        state = "failed" if i % 50 == 0 else "completed"
        core.begin_run(
            rid,
            f"graph{i % 10}",
            "running",
            "schedule" if i % 3 else "manual",
            t0 + i * 1000,
            [(0, "t", None, None, None, None)],
            started_us=t0 + i * 1000,
        )
        core.finish_run(rid, state, t0 + i * 1000 + 500)
    core.flush()
    big = "big-run"
    width = 100
    edges = [[n - width + (n % 7), n] for n in range(width, tasks)]
    start = t0 + runs * 1000
    core.begin_run(
        big,
        "big",
        "running",
        "manual",
        start,
        [(n, f"task_{n}", None, None, None, None) for n in range(tasks)],
        started_us=start,
        meta_json=json.dumps({"edges": edges}),
    )
    for n in range(tasks):
        at = start + (n // width) * 1000
        core.task_started(big, n, 1, at)
        core.task_ended(big, n, 1, at + 800, "completed")
    core.finish_run(big, "completed", start + (tasks // width + 1) * 1000)
    core.flush()
    store.close()
    return big, f"{t0 + (runs // 2) * 1000}.run{runs // 2:07d}"


def timed(client: TestClient, path: str, repeat: int) -> tuple[float, int]:
    times = []
    size = 0
    for _ in range(repeat):
        t = time.perf_counter()
        r = client.get(path)
        times.append(time.perf_counter() - t)
        assert r.status_code == 200, (path, r.status_code)
        size = len(r.content)
    return statistics.median(times) * 1000, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100_000)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'ui.db'}"
        t = time.perf_counter()
        big, deep = fill(url, a.runs, a.tasks)
        print(f"filled {a.runs} runs + a {a.tasks}-task run in {time.perf_counter() - t:.1f}s")
        client = TestClient(create_app(url))
        rows = [
            ("runs page (newest 50)", "/"),
            ("runs page, filtered (graph3, failed)", "/?graph=graph3&state=failed"),
            (f"runs page {a.runs // 100} pages deep", f"/?before={deep}"),
            ("GET /api/runs", "/api/runs"),
            (f"run page, {a.tasks} tasks", f"/runs/{big}"),
            (f"GET /api/runs/{{id}}, {a.tasks} tasks", f"/api/runs/{big}"),
            ("graphs page", "/graphs"),
        ]
        lines = [f"{'request':<44} {'median ms':>10} {'bytes':>10}"]
        print(lines[0])
        for label, path in rows:
            ms, size = timed(client, path, a.repeat)
            lines.append(f"{label:<44} {ms:>10.1f} {size:>10}")
            print(lines[-1])
    # Smaller stores than the default are trials, not the measurement (nothing written).
    quick = a.runs < 100_000 or a.tasks < 10_000
    body = f"{a.runs:,} runs and a {a.tasks:,}-task run\n\n```text\n" + "\n".join(lines) + "\n```"
    _results.write_section("ui", "Dashboard: tm ui on a large store", body, quick)


if __name__ == "__main__":
    main()
