"""``benches/_results.py`` writes ``RESULTS.md``: a dated section per bench, with the machine,
replaced (not repeated) when a bench runs again; smoke runs leave the committed file alone."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

BENCHES = Path(__file__).resolve().parent.parent / "benches"


def load_results():
    spec = importlib.util.spec_from_file_location("_results", BENCHES / "_results.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sections_are_dated_with_the_machine_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = load_results()
    out = tmp_path / "RESULTS.md"
    monkeypatch.setenv("TM_BENCH_RESULTS", str(out))
    assert results.new() == out
    results.write_section("a", "First", "| x |\n|---|\n| 1 |")
    results.write_section("b", "Second", "# its own heading\n\n| y |\n|---|\n| 2 |")
    results.write_section("a", "First", "| x |\n|---|\n| 3 |")  # a re-run replaces its section
    text = out.read_text()
    assert text.startswith("# Benchmark results\n")
    assert text.count("## First") == 1 and "| 1 |" not in text and "| 3 |" in text
    assert text.index("## First") < text.index("## Second")  # kept in place
    assert "### its own heading" in text  # a bench's headings go below the section's
    assert text.count(f"{os.cpu_count()} cores") == 2
    assert platform.python_version() in text and platform.system() in text
    assert results.new() == out and "## First" not in out.read_text()  # --new starts afresh


def test_quick_runs_write_nothing_without_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    results = load_results()
    monkeypatch.delenv("TM_BENCH_RESULTS", raising=False)
    assert results.target(quick=True) is None
    assert results.target(quick=False) == BENCHES / "RESULTS.md"


def test_a_bench_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = {**os.environ, "TM_BENCH_RESULTS": str(out)}
    for _ in range(2):
        r = subprocess.run(
            [sys.executable, str(BENCHES / "bench_store.py"), "--quick"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text.count("## Recording runs in the store") == 1
    assert "(--quick: not a measurement)" in text
    # What the bench printed is what the section holds.
    table = [line for line in r.stdout.splitlines() if line.startswith("|")]
    assert table and all(line in text for line in table)


def test_stdin_sections(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    r = subprocess.run(
        [sys.executable, str(BENCHES / "_results.py"), "--stdin", "rust", "Rust timings"],
        input="expr  next_after 30 ns\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TM_BENCH_RESULTS": str(out)},
    )
    assert r.returncode == 0, r.stderr
    assert "## Rust timings" in out.read_text()
    assert "```text\nexpr  next_after 30 ns\n```" in out.read_text()
