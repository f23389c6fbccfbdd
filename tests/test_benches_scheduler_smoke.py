"""The scheduler benchmark runs end to end (no timing assertions: ``--quick`` is not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_scheduler.py"


def test_bench_scheduler_quick() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--store"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "| lateness (ms), 10 graphs on * * * * * * | fires | p50 | p99 | max |" in out
    assert "| no store | 30 |" in out and "| SQLite store | 30 |" in out
    assert "| 10 graphs on * * * * * * | 5500 |" in out
    assert "| soak (virtual clock) | runs | RSS after warm-up MB | RSS growth MB |" in out
    assert "| started, nothing due | 100 |" in out
