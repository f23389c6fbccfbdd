"""Every program in ``examples/`` runs in a subprocess, exits 0 and prints what it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=cwd,
    )
    assert r.returncode == 0, f"{name} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_every_example_is_tested() -> None:
    tested = {
        "seed004_dag.py",
        "seed004_config.py",
        "seed003_files.py",
        "demo.py",
        "retry.py",
        "seed000_cached.py",
    }  # retry.py: tests/test_resilience.py; seed000_cached.py: tests/test_cached_example.py
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_seed004_dag_prints_7_and_true(tmp_path: Path) -> None:
    r = run_example("seed004_dag.py", tmp_path)
    assert r.stdout.splitlines() == ["7", "True"]
    assert "Traceback" not in r.stderr


def test_seed004_dag_keeps_the_seed_graph_and_schedule() -> None:
    # Import the example as a module: its graph is the seed's, with a parsed cron schedule.
    import runpy

    from tm.cron import Expression

    ns = runpy.run_path(str(EXAMPLES / "seed004_dag.py"), run_name="seed004_dag")
    graph = ns["graph"]
    assert graph.name == "test workflow"
    assert graph.schedule == Expression("* * * * *")
    assert sorted(graph.tasks) == ["add_3", "leaf", "pass_2", "print_return_none"]
    assert sorted(graph.parents_of("print_return_none")) == ["add_3", "pass_2"]
    assert graph.parents_of("add_3") == ["pass_2"]
    assert graph.parents_of("leaf") == ["print_return_none"]
    assert graph.roots() == ["pass_2"]
    assert graph.leaves() == ["leaf"]


def test_seed004_config_from_another_directory(tmp_path: Path) -> None:
    # A config.json in the working directory must NOT be the one used.
    (tmp_path / "config.json").write_text(json.dumps({"initial_value": 100}))
    r = run_example("seed004_config.py", tmp_path)
    # print_add and print_sub are independent and run in parallel: either order is right.
    assert sorted(r.stdout.splitlines()) == ["0", "4"]
    assert "Traceback" not in r.stderr


def test_seed004_config_file_content() -> None:
    assert json.loads((EXAMPLES / "config.json").read_text()) == {"initial_value": 2}


def test_seed004_config_from_the_examples_directory() -> None:
    r = run_example("seed004_config.py", EXAMPLES)
    assert sorted(r.stdout.splitlines()) == ["0", "4"]


def test_seed003_files(tmp_path: Path) -> None:
    r = run_example("seed003_files.py", tmp_path)
    lines = r.stdout.splitlines()
    files = [f"file{i}.txt" for i in range(1, 6)]
    assert lines[:4] == [
        "results: " + ", ".join(f"{f}.gz" for f in files),
        "each file read -> processed -> compressed in order: True",
        "io tasks running at once: at most 2: True",
        "cpu tasks running at once: at most 2: True",
    ]
    m = re.fullmatch(r"peak concurrency: io=(\d+), cpu=(\d+)", lines[4])
    assert m is not None, lines[4]
    assert 1 <= int(m.group(1)) <= 2
    assert 1 <= int(m.group(2)) <= 2
    assert len(lines) == 5
    # The seed's log lines go to stderr: every stage of every file was logged once.
    for f in files:
        for verb in ("Reading", "Processing", "Compressing"):
            assert r.stderr.count(f"{verb} file {f}\n") == 1, (verb, f, r.stderr)


def test_demo(tmp_path: Path) -> None:
    r = run_example("demo.py", tmp_path)
    lines = r.stdout.splitlines()
    assert lines[:9] == [
        "graph 'word-count demo': 6 tasks",
        "roots: fetch | leaves: report",
        "run state: completed",
        "sources: alpha, beta, gamma",
        "  tm        5",
        "  rust      4",
        "  python    4",
        "parse_beta: first attempt failed with ConnectionError, succeeded on attempt 2",
        "task         state      attempts  duration",
    ]
    table = lines[9:15]
    expected = [
        ("fetch", 1),
        ("parse_alpha", 1),
        ("parse_beta", 2),
        ("parse_gamma", 1),
        ("aggregate", 1),
        ("report", 1),
    ]
    assert len(table) == len(expected)
    for row, (name, attempts) in zip(table, expected, strict=True):
        m = re.fullmatch(r"(\S+) +completed +(\d+) +(\d+\.\d\d) ms", row)
        assert m is not None, row
        assert (m.group(1), int(m.group(2))) == (name, attempts)
    assert lines[15:] == [
        "cron '30 6 * * mon-fri' after Fri 2024-03-08 12:00: "
        "Mon 2024-03-11 06:30, Tue 2024-03-12 06:30, Wed 2024-03-13 06:30"
    ]


@pytest.mark.parametrize("name", ["seed004_dag.py", "seed004_config.py", "demo.py"])
def test_examples_are_repeatable(name: str, tmp_path: Path) -> None:
    # Two runs print the same thing (ignoring durations and the order of parallel prints).
    def normalised(r: subprocess.CompletedProcess[str]) -> list[str]:
        return sorted(re.sub(r"\d+\.\d\d ms", "<t>", line) for line in r.stdout.splitlines())

    assert normalised(run_example(name, tmp_path)) == normalised(run_example(name, tmp_path))
