"""Cached calls: ``@store.task`` against ``joblib.Memory.cache``, in one process run.

Hit latency for a 1 KB dict, a 1 MiB bytes value and a 10,000-row DataFrame, and the overhead of a
miss beyond the function's own time (for the dict), against the baseline of pickling the result
into a new file by hand (the three measured in interleaved batches of one run). "tm" is a store as configured by default (the
result bytes of recent hits stay in memory, the database is asked on every call); "tm, file read"
keeps nothing in memory (``cache_bytes=0``), so every hit reads and verifies its file, as joblib
reads its pickle.

Run as ``python benches/bench_cache.py [--quick]``. Prints a markdown table of microseconds per call
(the median of several timed batches) and joblib / tm ratios.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _results
import joblib
import numpy as np
import pandas as pd

import tm


def payload_dict(_: int) -> dict[str, Any]:
    return {f"key{i:03d}": [i, i * 0.5, f"v{i}"] for i in range(40)}  # about 1 KB as JSON


def payload_bytes(_: int) -> bytes:
    return bytes(range(256)) * 4096  # 1 MiB


def payload_frame(_: int) -> pd.DataFrame:
    n = 10_000
    return pd.DataFrame(
        {
            "id": np.arange(n),
            "x": np.linspace(0.0, 1.0, n),
            "y": np.arange(n) % 7 * 1.5,
            "label": [f"row{i % 100}" for i in range(n)],
        }
    )


def per_call_us(fn: Callable[[], Any], batch: int, batches: int) -> float:
    """The median over ``batches`` of the mean time of ``batch`` calls, in microseconds."""
    fn()  # warm up
    times = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(batch):
            fn()
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times) * 1e6


def bare_write(folder: Path) -> Callable[[int], Any]:
    """The baseline of a miss: the function, then its result pickled into a new file by hand
    (``open``, ``write``, ``close``; no rename, no database)."""
    folder.mkdir()

    def write(i: int) -> Any:
        value = payload_dict(i)
        with open(folder / f"{i}.pkl", "wb") as fh:
            fh.write(pickle.dumps(value, protocol=5))
        return value

    return write


def miss_overheads_us(
    contenders: dict[str, Callable[[int], Any]], bare: Callable[[int], Any], n: int, rounds: int
) -> dict[str, float]:
    """Per-call time of misses (new arguments each) minus the bare function's time, for each
    contender: the median over ``rounds`` interleaved batches of ``n`` (so a busy moment of the
    machine weighs on every contender alike)."""
    start = 1_000_000
    for fn in contenders.values():
        for i in range(20):  # warm up imports and directories
            fn(start - i - 1)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    own: list[float] = []
    for r in range(rounds):
        base = start + r * n
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            for i in range(n):
                fn(base + i)
            times[name].append((time.perf_counter() - t0) / n)
        t0 = time.perf_counter()
        for i in range(n):
            bare(base + i)
        own.append((time.perf_counter() - t0) / n)
    mine = statistics.median(own)
    return {name: (statistics.median(t) - mine) * 1e6 for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    args = parser.parse_args()
    batches = 3 if args.quick else 7
    misses = 20 if args.quick else 100

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hot = tm.Store(f"sqlite:///{root / 'tm.db'}", result_dir=root / "results")
        cold = tm.Store(hot.url, result_dir=hot.result_dir, cache_bytes=0)
        memory = joblib.Memory(root / "joblib", verbose=0)
        rows: list[tuple[str, float, float, float]] = []
        for label, body, batch in (
            ("hit: 1 KB dict", payload_dict, 20 if args.quick else 500),
            ("hit: 1 MiB bytes", payload_bytes, 5 if args.quick else 100),
            ("hit: 10k-row DataFrame", payload_frame, 3 if args.quick else 30),
        ):
            ours, ours_cold, theirs = hot.task(body), cold.task(body), memory.cache(body)
            ours(1)
            theirs(1)
            rows.append(
                (
                    label,
                    per_call_us(lambda o=ours: o(1), batch, batches),
                    per_call_us(lambda o=ours_cold: o(1), batch, batches),
                    per_call_us(lambda t=theirs: t(1), batch, batches),
                )
            )
        miss = miss_overheads_us(
            {
                "tm": hot.task(payload_dict),
                "joblib": memory.cache(payload_dict),
                "bare": bare_write(root / "bare"),
            },
            payload_dict,
            misses,
            batches,
        )
        miss_ours, miss_theirs, miss_bare = miss["tm"], miss["joblib"], miss["bare"]
        hot.close()
        cold.close()

    with _results.recorded("cache", "Cached calls: tm vs joblib.Memory", args.quick):
        print(
            "| benchmark (us per call) | tm | tm, file read | joblib | joblib / tm | joblib / tm, file read |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for label, ours_us, cold_us, theirs_us in rows:
            print(
                f"| {label} | {ours_us:.1f} | {cold_us:.1f} | {theirs_us:.1f} | "
                f"{theirs_us / ours_us:.1f}x | {theirs_us / cold_us:.1f}x |"
            )
        print(
            f"| miss overhead: 1 KB dict | {miss_ours:.1f} | - | {miss_theirs:.1f} | "
            f"{miss_theirs / miss_ours:.1f}x | - |"
        )
        print(f"| pickle file written by hand: 1 KB dict | {miss_bare:.1f} | - | - | - | - |")
        print(
            f"\nmiss overhead against the hand-written file, same run: tm {miss_ours / miss_bare:.1f}x, "
            f"joblib {miss_theirs / miss_bare:.1f}x"
        )


if __name__ == "__main__":
    main()
