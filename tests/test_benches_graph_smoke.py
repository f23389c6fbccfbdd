"""The graph benchmark runs end to end (no timing assertions: ``--quick`` is not a measurement)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benches" / "bench_graph.py"

HEADER = (
    "| shape | tasks | engine | build us/task | first run us/task | run us/task "
    "| graph RSS B/task | run peak RSS B/task | kept after runs B/task |"
)


def test_bench_graph_quick(tmp_path: Path) -> None:
    pytest.importorskip("dask")
    out = tmp_path / "graph.md"
    r = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--markdown", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert HEADER in r.stdout
    lines = r.stdout.splitlines()
    for shape in ("wide", "chain", "random"):
        for engine in ("tm", "stdlib", "dask"):
            prefix = f"| {shape} | 200 | {engine} | "
            rows = [line for line in lines if line.startswith(prefix)]
            assert len(rows) == 1, f"no row for {engine} on {shape}:\n{r.stdout}"
            assert "error" not in rows[0] and "skipped" not in rows[0], rows[0]
    for engine in ("tm", "stdlib"):
        assert any(line.startswith(f"| {engine} | 200 x sleep") for line in lines), engine
    assert "| target (from the product issue) | measured | met |" in r.stdout
    assert out.read_text(encoding="utf-8") == r.stdout
