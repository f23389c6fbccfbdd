"""The Dask and Ray pools benchmark runs end to end (no timing assertions: ``--quick`` is not a
measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_pools.py"


def test_bench_pools_quick() -> None:
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "| cluster | direct us/task | tm us/task | tm overhead |" in r.stdout
    assert r.stdout.count("| dask |") == 1 and r.stdout.count("| ray |") == 1
