"""The cron benchmark runs end to end (no timing assertions: ``--quick`` is not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_cron.py"


def test_bench_cron_quick() -> None:
    pytest.importorskip("croniter")
    pytest.importorskip("cronsim")
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "| benchmark (us per call) | tm | croniter | cronsim | best peer / tm |" in r.stdout
    for line in ("chained next", "next from arbitrary start", "construction"):
        assert line in r.stdout


def test_bench_store_quick() -> None:
    bench = BENCH.parent / "bench_store.py"
    r = subprocess.run(
        [sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "| shape | tasks | store off us/task | store on us/task |" in r.stdout
    assert r.stdout.count("| wide |") == 1 and r.stdout.count("| chain |") == 1
