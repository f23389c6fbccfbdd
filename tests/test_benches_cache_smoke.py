"""The cache benchmark runs end to end (no timing assertions: ``--quick`` is not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_cache.py"


def test_bench_cache_quick() -> None:
    for module in ("joblib", "numpy", "pandas", "pyarrow"):
        pytest.importorskip(module)
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "| benchmark (us per call) | tm | tm, file read | joblib |" in r.stdout
    for row in (
        "hit: 1 KB dict",
        "hit: 1 MiB bytes",
        "hit: 10k-row DataFrame",
        "miss overhead",
        "pickle file written by hand",
    ):
        assert r.stdout.count(f"| {row}") == 1, r.stdout
    assert "miss overhead against the hand-written file, same run: tm " in r.stdout
