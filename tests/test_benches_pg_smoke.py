"""The PostgreSQL benchmark runs end to end (no timing assertions: ``--quick`` is not a
measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_pg.py"


@pytest.mark.timeout(300)
def test_bench_pg_quick(pg_server) -> None:  # the fixture: the server package is installed
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=280
    )
    assert r.returncode == 0, r.stderr
    assert "| processes | tm sqlite (tasks/s) | tm postgresql (tasks/s) |" in r.stdout
    assert (
        "| executor processes | sqlite store (tasks/s) | postgresql store (tasks/s) |" in r.stdout
    )
    assert "| executor processes | distributed run (tasks/s) | vs 1 process |" in r.stdout
    assert r.stdout.count("\n| 1 | ") == 3 and r.stdout.count("\n| 2 | ") == 3
