"""Benchmark ``tm`` graph execution against a stdlib baseline and dask, in one process run.

Usage:
    python benches/bench_graph.py                       # full run (sizes 1k, 10k, 100k), minutes
    python benches/bench_graph.py --sizes 1000,10000    # chosen sizes
    python benches/bench_graph.py --markdown out.md     # also write the report to a file
    python benches/bench_graph.py --quick               # 200 tasks, one repeat: a smoke test only

Engines, all on 8 worker threads and given the same graphs:

* ``tm``: ``tm.Executor(workers=8).run(graph)`` on a prebuilt ``tm.Graph`` of no-op tasks
  (``def t(**parents): return 1``, each wrapped with ``tm.task(t, name=f"t{i}")`` and wired with
  ``graph.add(task, depends_on=[...])``). Three figures: graph build, first run (includes compiling
  the graph for the executor) and run (a second run of the same graph: the compile is cached).
* ``stdlib``: ``graphlib.TopologicalSorter`` and ``concurrent.futures.ThreadPoolExecutor(8)``.
  Each node is submitted as soon as it is ready, its parents' results passed as keyword arguments.
  The scheduling is done on the worker that finished a node (under a lock: mark it done, submit
  what became ready), which measured faster here than either ``wait(FIRST_COMPLETED)`` on the main
  thread (its cost grows with the number of pending futures) or done-callbacks feeding a queue
  that the main thread drains (one thread hand-off per node on a chain).
* ``dask``: ``dask.threaded.get(dsk, sinks, num_workers=8)`` on ``{key: (fn, *parent_keys)}``
  with ``def fn(*parents): return 1``. Every run includes dask's own ordering of the graph.

Shapes: ``wide`` (independent tasks), ``chain`` (each task after the previous one) and ``random``
(each task after about 4 distinct random earlier tasks, fixed seed).

Method: each (engine, shape, size) is measured in a fresh interpreter
(``bench_graph.py --worker ENGINE SHAPE SIZE``) that prints one JSON line, so its memory figures
are its own. A worker warms its engine up on a small graph, then, per repeat: builds the graph,
runs it, and runs it again; times are the best over repeats (3 up to 10k tasks, 1 above) in
microseconds per task, with the garbage collector enabled (it is part of what users pay) and
collected before each timed step. ``stdlib`` and ``dask`` cache nothing between runs, so their
first run and run are two samples of the same work; above 10k tasks they run once and that one
run fills both columns. Memory is resident-set growth over the warmed-up interpreter, per task:
"graph" after building, "run peak" the peak during the runs above the built graph
(``/proc/self/clear_refs`` resets the peak), "kept" what is still resident above the built
graph after the runs, their outputs dropped and a garbage collection. Results are the small int
1, shared, so the figures are all engine overhead. Above 10k tasks a configuration whose figures
at the next smaller size project (linearly) past the budget (60 s) is skipped, and one that runs
past a generous timeout is stopped and reported as such.

Parallel efficiency: 200 tasks of ``time.sleep(0.01)``, all independent, on 8 workers;
efficiency = ideal (200 * 0.01 / 8 s) / measured wall time (best of 3; tm on a compiled graph).
"""

from __future__ import annotations

import argparse
import gc
import graphlib
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import Any

import _results

ENGINES = ("tm", "stdlib", "dask")
SHAPES = ("wide", "chain", "random")
WORKERS = 8
FAN_IN = 4
SEED = 20240531
BUDGET_S = 60.0
ONE_RUN_ABOVE = 10_000
DEFAULT_SIZES = (1_000, 10_000, 100_000)
SLEEP_TASKS = 200
SLEEP_S = 0.01

# Targets from the product issue: reported, never asserted.
TARGET_VS_STDLIB = 3.0
TARGET_VS_DASK = 20.0
TARGET_BYTES_PER_TASK = 1024
TARGET_EFFICIENCY = 0.95


# --- workloads ---------------------------------------------------------------------------------


def make_parents(shape: str, n: int) -> list[list[int]]:
    """The parents of each of ``n`` nodes, as indices of earlier nodes."""
    if shape == "wide":
        return [[] for _ in range(n)]
    if shape == "chain":
        return [[i - 1] if i else [] for i in range(n)]
    if shape == "random":
        rng = random.Random(SEED)
        return [rng.sample(range(i), min(i, FAN_IN)) for i in range(n)]
    raise ValueError(f"unknown shape {shape!r}")


def noop_kw(**parents: Any) -> int:
    return 1


def noop_pos(*parents: Any) -> int:
    return 1


def sleep_kw(**parents: Any) -> int:
    time.sleep(SLEEP_S)
    return 1


def sleep_pos(*parents: Any) -> int:
    time.sleep(SLEEP_S)
    return 1


# --- engines -----------------------------------------------------------------------------------


class TmEngine:
    name = "tm"
    cached = True

    def __init__(self, fn: Callable[..., Any] = noop_kw) -> None:
        import tm

        self.tm = tm
        self.fn = fn
        self.executor = tm.Executor(workers=WORKERS)

    def build(self, parents: list[list[int]]) -> Any:
        tm = self.tm
        graph = tm.Graph("bench")
        tasks: list[Any] = []
        for i, ps in enumerate(parents):
            t = tm.task(self.fn, name=f"t{i}")
            graph.add(t, depends_on=[tasks[p] for p in ps])
            tasks.append(t)
        return graph

    def run(self, graph: Any) -> Any:
        return self.executor.run(graph)

    def check(self, graph: Any, out: Any) -> None:
        if out.state != "completed" or out.result(graph.tasks[-1]) != 1:
            raise RuntimeError(f"tm run ended {out.state}")

    def close(self) -> None:
        self.executor.shutdown()


class StdlibEngine:
    name = "stdlib"
    cached = False

    def __init__(self, fn: Callable[..., Any] = noop_kw) -> None:
        self.fn = fn
        self.pool = ThreadPoolExecutor(WORKERS)

    def build(self, parents: list[list[int]]) -> dict[str, list[str]]:
        return {f"t{i}": [f"t{p}" for p in ps] for i, ps in enumerate(parents)}

    def run(self, deps: dict[str, list[str]]) -> dict[str, Any]:
        fn, submit = self.fn, self.pool.submit
        sorter = graphlib.TopologicalSorter(deps)
        sorter.prepare()
        results: dict[str, Any] = {}
        lock = threading.Lock()
        finished = threading.Event()
        remaining = len(deps)
        errors: list[BaseException] = []

        def call(node: str) -> None:
            nonlocal remaining
            try:
                value = fn(**{p: results[p] for p in deps[node]})
            except BaseException as e:
                errors.append(e)
                finished.set()
                return
            with lock:
                results[node] = value
                sorter.done(node)
                remaining -= 1
                if not remaining:
                    finished.set()
                    return
                for ready in sorter.get_ready():
                    submit(call, ready)

        with lock:
            for ready in sorter.get_ready():
                submit(call, ready)
        if deps:
            finished.wait()
        if errors:
            raise errors[0]
        return results

    def check(self, deps: dict[str, list[str]], out: dict[str, Any]) -> None:
        if len(out) != len(deps):
            raise RuntimeError(f"stdlib run completed {len(out)} of {len(deps)} tasks")

    def close(self) -> None:
        self.pool.shutdown()


class DaskEngine:
    name = "dask"
    cached = False

    def __init__(self, fn: Callable[..., Any] = noop_pos) -> None:
        import dask.threaded

        self.get = dask.threaded.get
        self.fn = fn

    def build(self, parents: list[list[int]]) -> tuple[dict[str, Any], list[str]]:
        fn = self.fn
        dsk = {f"t{i}": (fn, *[f"t{p}" for p in ps]) for i, ps in enumerate(parents)}
        has_child = {p for ps in parents for p in ps}
        sinks = [f"t{i}" for i in range(len(parents)) if i not in has_child]
        return dsk, sinks

    def run(self, graph: tuple[dict[str, Any], list[str]]) -> Any:
        dsk, sinks = graph
        return self.get(dsk, sinks, num_workers=WORKERS)

    def check(self, graph: tuple[dict[str, Any], list[str]], out: Any) -> None:
        if len(out) != len(graph[1]) or any(v != 1 for v in out):
            raise RuntimeError("dask run returned wrong results")

    def close(self) -> None:
        pass


ENGINE_CLASSES: dict[str, Any] = {"tm": TmEngine, "stdlib": StdlibEngine, "dask": DaskEngine}


# --- memory ------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * 1024


def peak_bytes() -> int | None:
    kb = _status_kb("VmHWM")
    if kb is None:
        try:
            import resource

            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        except (ImportError, OSError):
            return None
    return kb * 1024


def reset_peak() -> bool:
    """Resets the peak resident set size to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


# --- one measurement ---------------------------------------------------------------------------


def timed(f: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    out = f()
    return time.perf_counter() - t0, out


def measure(engine_name: str, shape: str, n: int, repeats: int) -> dict[str, Any]:
    """Build and run one configuration; times in us per task, memory in bytes per task."""
    parents = make_parents(shape, n)
    engine = ENGINE_CLASSES[engine_name]()
    try:
        warm = engine.build(make_parents(shape, 16))
        for _ in range(2):
            engine.check(warm, engine.run(warm))
        del warm
        gc.collect()
        base = rss_bytes()
        build_s, first_s, run_s = [], [], []
        # A peer caches nothing between runs: above ONE_RUN_ABOVE tasks one run stands for both.
        rerun = engine.cached or n <= ONE_RUN_ABOVE
        graph_b = run_b = total_b = kept_b = None
        started = time.perf_counter()
        for rep in range(repeats):
            dt, graph = timed(lambda: engine.build(parents))
            build_s.append(dt)
            built = rss_bytes()
            can_reset = rep == 0 and reset_peak()
            dt, out = timed(lambda graph=graph: engine.run(graph))
            first_s.append(dt)
            engine.check(graph, out)
            del out
            if rerun:
                dt, out = timed(lambda graph=graph: engine.run(graph))
                engine.check(graph, out)
                del out
            run_s.append(dt)
            if rep == 0 and base is not None and built is not None:
                peak = peak_bytes()
                graph_b = (built - base) / n
                gc.collect()
                after = rss_bytes()
                kept_b = None if after is None else (after - built) / n
                if peak is not None:
                    total_b = (max(peak, built) - base) / n
                    if can_reset:
                        run_b = (max(peak, built) - built) / n
            del graph
        wall = time.perf_counter() - started
    finally:
        engine.close()
    return {
        "engine": engine_name,
        "shape": shape,
        "n": n,
        "repeats": repeats,
        "runs": 2 if rerun else 1,
        "build_us": min(build_s) / n * 1e6,
        "first_us": min(first_s) / n * 1e6,
        "run_us": min(run_s) / n * 1e6,
        "graph_b": graph_b,
        "run_b": run_b,
        "total_b": total_b,
        "kept_b": kept_b,
        "wall_s": wall,
    }


def measure_in_subprocess(
    engine: str, shape: str, n: int, repeats: int, timeout: float
) -> dict[str, Any] | str:
    """``measure`` in a fresh interpreter: its result, or a short reason it has none."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, shape, str(n)]
    cmd += ["--repeats", str(repeats)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timeout (> {timeout:.0f} s)"
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    if r.returncode != 0 or not lines:
        sys.stderr.write(r.stderr)
        return f"error (exit {r.returncode})"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def efficiency(engine_name: str, repeats: int) -> dict[str, Any]:
    """Parallel efficiency on SLEEP_TASKS independent sleeps."""
    fn = sleep_pos if engine_name == "dask" else sleep_kw
    engine = ENGINE_CLASSES[engine_name](fn)
    try:
        graph = engine.build(make_parents("wide", SLEEP_TASKS))
        engine.check(graph, engine.run(graph))  # tm: compiles; all: starts the threads
        best = min(timed(lambda: engine.check(graph, engine.run(graph)))[0] for _ in range(repeats))
    finally:
        engine.close()
    ideal = SLEEP_TASKS * SLEEP_S / WORKERS
    return {"engine": engine_name, "ideal_s": ideal, "wall_s": best, "efficiency": ideal / best}


# --- the report --------------------------------------------------------------------------------


def fmt_us(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def fmt_b(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.1f}x"


def report(
    sizes: list[int],
    results: dict[tuple[str, int, str], dict[str, Any] | str],
    eff: list[dict[str, Any]],
    quick: bool,
    repeats_of: Callable[[int], int],
) -> tuple[str, list[str]]:
    """The markdown report and the list of targets missed."""
    out: list[str] = []
    w = out.append
    reps = ", ".join(f"{n}: best of {repeats_of(n)}" for n in sizes)
    w(
        f"graphs: {WORKERS} workers; {reps}; Python {platform.python_version()}, "
        f"tm {version('tm-orchestrate')}, dask {version('dask')}, {os.cpu_count()} CPUs"
        + (" (--quick: not a measurement)" if quick else "")
    )
    w("")
    w(
        "| shape | tasks | engine | build us/task | first run us/task | run us/task "
        "| graph RSS B/task | run peak RSS B/task | kept after runs B/task |"
    )
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in sizes:
        for shape in SHAPES:
            for engine in ENGINES:
                r = results.get((shape, n, engine))
                if isinstance(r, dict):
                    cells = [fmt_us(r["build_us"]), fmt_us(r["first_us"]), fmt_us(r["run_us"])]
                    # --quick measures in one process: memory figures are not attributable.
                    mem = [fmt_b(r["graph_b"]), fmt_b(r["run_b"]), fmt_b(r["kept_b"])]
                    cells += ["-"] * len(mem) if quick else mem
                else:
                    cells = [r or "not run", "", "", "", "", ""]
                w(f"| {shape} | {n} | {engine} | " + " | ".join(cells) + " |")
    w("")
    views: dict[str, Callable[[dict[str, Any]], float]] = {
        "run": lambda r: r["run_us"],
        "first run": lambda r: r["first_us"],
        "build + first run": lambda r: r["build_us"] + r["first_us"],
    }
    header = [f"{peer} / tm ({view})" for view in views for peer in ("stdlib", "dask")]
    w("| shape | tasks | " + " | ".join(header) + " |")
    w("|---|---:|" + "---:|" * len(header))
    worst: dict[tuple[str, str], tuple[float, str]] = {}
    for n in sizes:
        for shape in SHAPES:
            t = results.get((shape, n, "tm"))
            cells = []
            for view, cost in views.items():
                for peer in ("stdlib", "dask"):
                    p = results.get((shape, n, peer))
                    if not isinstance(t, dict) or not isinstance(p, dict):
                        cells.append("-")
                        continue
                    ratio = cost(p) / cost(t)
                    key = (peer, view)
                    worst[key] = min(worst.get(key, (float("inf"), "")), (ratio, f"{shape} {n}"))
                    cells.append(f"{ratio:.1f}x")
            w(f"| {shape} | {n} | " + " | ".join(cells) + " |")
    w("")
    w("| parallel efficiency | tasks | workers | ideal s | wall s | efficiency |")
    w("|---|---:|---:|---:|---:|---:|")
    for e in eff:
        w(
            f"| {e['engine']} | {SLEEP_TASKS} x sleep({SLEEP_S}) | {WORKERS} "
            f"| {e['ideal_s']:.3f} | {e['wall_s']:.3f} | {e['efficiency']:.3f} |"
        )
    w("")

    missed: list[str] = []
    rows: list[tuple[str, str, bool | None]] = []

    def target(name: str, measured: str, met: bool | None) -> None:
        rows.append((name, measured, met))
        if met is False:
            missed.append(name)

    for peer, goal in (("stdlib", TARGET_VS_STDLIB), ("dask", TARGET_VS_DASK)):
        for view in views:
            name = f"tm per-task time <= 1/{goal:.0f} of {peer} on every shape ({view})"
            if (peer, view) in worst:
                ratio, where = worst[(peer, view)]
                target(name, f"worst {peer} / tm = {ratio:.1f}x ({where})", ratio >= goal)
            else:
                target(name, "not measured", None)
    big = [n for n in sizes if n >= 100_000]
    if big:
        done = [isinstance(results.get((s, n, "tm")), dict) for n in big for s in SHAPES]
        target(f"{max(big)}-task graphs complete (tm)", f"{sum(done)} of {len(done)}", all(done))
    else:
        target("100000-task graphs complete (tm)", "not run", None)
    mem = [
        (r["total_b"], f"{s} {n}")
        for (s, n, e), r in results.items()
        if e == "tm" and isinstance(r, dict) and r["total_b"] is not None and not quick
    ]
    if mem:
        worst_mem, where = max(mem)
        target(
            f"tm memory < {TARGET_BYTES_PER_TASK} B/task (graph + run peak)",
            f"worst {worst_mem:.0f} B/task ({where})",
            worst_mem < TARGET_BYTES_PER_TASK,
        )
    else:
        target(f"tm memory < {TARGET_BYTES_PER_TASK} B/task", "not measured", None)
    tm_eff = next((e["efficiency"] for e in eff if e["engine"] == "tm"), None)
    target(
        f"tm parallel efficiency >= {TARGET_EFFICIENCY}",
        "not measured" if tm_eff is None else f"{tm_eff:.3f}",
        None if tm_eff is None else tm_eff >= TARGET_EFFICIENCY,
    )
    w("| target (from the product issue) | measured | met |")
    w("|---|---|---|")
    for name, measured, met in rows:
        w(f"| {name} | {measured} | {'n/a' if met is None else 'yes' if met else 'NO'} |")
    w("")
    w(
        "RSS columns: growth of the resident set per task over the warmed-up worker process; "
        "run peak is above the built graph and includes tm's cached compile; kept after runs is "
        "what is still resident, above the built graph, once the runs' results are dropped and "
        "the garbage collector has run (allocator caching shows here too, a leak shows as a "
        "large figure). "
        f"stdlib and dask above {ONE_RUN_ABOVE} tasks: one run fills both run columns. "
        "Skipped configurations were projected from the next smaller size to exceed "
        f"{BUDGET_S:.0f} s."
    )
    return "\n".join(out) + "\n", missed


# --- main --------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(s.replace("_", "")) for s in text.split(",") if s.strip()})
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"sizes must be integers: {text!r}") from e
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive: {text!r}")
    return sizes


def worker_main(engine: str, shape: str, size: str, repeats: int) -> int:
    if engine not in ENGINES or shape not in SHAPES:
        print(f"unknown engine or shape: {engine} {shape}", file=sys.stderr)
        return 2
    result = measure(engine, shape, int(size), repeats)
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 tasks, one repeat, in-process")
    parser.add_argument("--sizes", type=parse_sizes, help="comma-separated task counts")
    parser.add_argument("--markdown", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=argparse.SUPPRESS)
    parser.add_argument(
        "--worker", nargs=3, metavar=("ENGINE", "SHAPE", "SIZE"), help=argparse.SUPPRESS
    )
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main(*args.worker, args.repeats)

    sizes = args.sizes or ([200] if args.quick else list(DEFAULT_SIZES))

    def repeats_of(n: int) -> int:
        return 1 if args.quick or n > 10_000 else 3

    results: dict[tuple[str, int, str], dict[str, Any] | str] = {}
    failed = False
    for n in sizes:
        for shape in SHAPES:
            for engine in ENGINES:
                smaller = [results.get((shape, m, engine)) for m in sizes if m < n]
                measured = [r for r in smaller if isinstance(r, dict)]
                projected = None
                if measured:
                    r = measured[-1]
                    projected = (r["build_us"] + r["first_us"] + r["run_us"]) * n / 1e6
                    if n > 10_000 and projected > args.budget:
                        results[(shape, n, engine)] = "skipped (budget)"
                        print(f"{shape} {n} {engine}: skipped (budget)", file=sys.stderr)
                        continue
                if args.quick:
                    try:
                        res: dict[str, Any] | str = measure(engine, shape, n, repeats_of(n))
                    except Exception:
                        traceback.print_exc()
                        res = "error"
                else:
                    timeout = max(180.0, 4 * projected) if projected else 600.0
                    res = measure_in_subprocess(engine, shape, n, repeats_of(n), timeout)
                if isinstance(res, str):
                    failed = failed or res.startswith("error")
                    print(f"{shape} {n} {engine}: {res}", file=sys.stderr)
                else:
                    print(
                        f"{shape} {n} {engine}: run {res['run_us']:.2f} us/task "
                        f"({res['wall_s']:.1f} s)",
                        file=sys.stderr,
                    )
                results[(shape, n, engine)] = res

    eff = []
    for engine in ENGINES:
        try:
            eff.append(efficiency(engine, 1 if args.quick else 3))
        except Exception:
            traceback.print_exc()
            failed = True
    text, missed = report(sizes, results, eff, args.quick, repeats_of)
    print(text, end="")
    _results.write_section(
        "graph", "Graphs: tm vs graphlib + ThreadPoolExecutor vs dask", text, args.quick
    )
    if missed:
        print(f"targets missed: {len(missed)}", file=sys.stderr)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
