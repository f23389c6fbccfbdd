"""The queue benchmark runs end to end (no timing assertions: ``--quick`` is not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_queue.py"


def test_bench_queue_quick() -> None:
    pytest.importorskip("huey")
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    header = "| tasks in store | processes | tm sqlite | tm json | seed json | huey | sqlite3 |"
    assert header in r.stdout
    assert r.stdout.count("\n| 100 | ") == 3 and r.stdout.count("\n| 400 | ") == 3
    for ratio in ("tm sqlite / huey", "tm sqlite / sqlite3", "tm json / seed json"):
        assert f"| {ratio} |" in r.stdout
