"""Dask and Ray pools: the per-task cost of a tm task sent to a cluster against submitting the same
function to the same cluster directly, in one process run.

A chain of N tasks runs one task at a time (each waits for its parent), so the time per task is one
round trip through the cluster plus, for tm, the engine's scheduling, the task's cloudpickle
envelope and the wait on a worker thread. The baselines are the same chain of round trips with
``client.submit(f, x).result()`` (Dask) and ``ray.get(f.remote(x))`` (Ray). Both clusters are local:
a ``distributed.LocalCluster`` with 2 worker processes and ``ray.init(num_cpus=2)``. The two ways
are timed in interleaved batches; the medians are reported.

Run as ``python benches/bench_pools.py [--quick]``. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import _results

import tm


def step(**parents: int) -> int:
    return sum(parents.values()) + 1


def chain(n: int, tag: str) -> tm.Graph:
    g = tm.Graph(f"chain-{tag}")
    prev = None
    for i in range(n):
        t = tm.task(step, name=f"t{i}", tag=tag)
        g.add(t, depends_on=[prev] if prev is not None else [])
        prev = t
    return g


def timed(fn: Callable[[], Any], n: int) -> float:
    """Microseconds per task of one batch."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    a = parser.parse_args()
    n, batches = (20, 2) if a.quick else (200, 7)

    import dask
    import ray
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    client = Client(cluster, set_as_default=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray_step = ray.remote(step).options(max_retries=0)  # as tm's tasks: tm retries, not Ray

    def dask_direct() -> None:
        x = 0
        for _ in range(n):
            x = client.submit(step, t=x, pure=False).result()
        assert x == n

    def ray_direct() -> None:
        x = 0
        for _ in range(n):
            x = ray.get(ray_step.remote(t=x))
        assert x == n

    rows = []
    with tm.Executor(pools={"dask": tm.DaskPool(client), "ray": tm.RayPool()}) as ex:
        for tag, direct in (("dask", dask_direct), ("ray", ray_direct)):
            g = chain(n, tag)

            def via_tm(g: tm.Graph = g) -> None:
                run = ex.run(g)
                assert run.state == "completed", run.error
                assert run.result() == n

            via_tm()  # warm: the cluster connection, worker imports, the compiled graph
            direct()
            mine: list[float] = []
            theirs: list[float] = []
            for _ in range(batches):
                theirs.append(timed(direct, n))
                mine.append(timed(via_tm, n))
            d, m = statistics.median(theirs), statistics.median(mine)
            rows.append((tag, d, m))
        # The engine's own cost per task of the same chain on a thread pool: the floor of tm's
        # share above (scheduling, the hand-off between worker threads, recording nothing).
        local = chain(n, "local")

        def on_threads() -> None:
            assert ex.run(local).result() == n

        on_threads()
        engine = statistics.median(timed(on_threads, n) for _ in range(batches))
    client.close()
    cluster.close()
    ray.shutdown()

    with _results.recorded("pools", "Dask and Ray pools: tm task vs direct submit", a.quick):
        print(f"chain of {n} tasks, {batches} interleaved batches, median us per task")
        print()
        print("| cluster | direct us/task | tm us/task | tm overhead |")
        print("| --- | --- | --- | --- |")
        for tag, d, m in rows:
            print(f"| {tag} | {d:.0f} | {m:.0f} | {(m / d - 1) * 100:+.1f}% |")
        print()
        print(f"the same chain on a thread tag (the engine alone): {engine:.0f} us per task")


if __name__ == "__main__":
    main()
