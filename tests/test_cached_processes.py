"""Cached calls across real processes: identical calls compute once, ``skip_if_in_progress``
raises instead of waiting, and a runner killed with SIGKILL mid-call is taken over.

Processes synchronise through files in a gate directory (``_cached_tasks.gated`` runs until the
test creates ``release``); the test waits for files, never for a fixed time.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pg
import pytest

import tm

TESTS = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(TESTS, "_cached_tasks.py")


def tasks() -> Any:
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    return importlib.import_module("_cached_tasks")


def wait_for(cond: Any, what: str, procs: list[subprocess.Popen[str]] = ()) -> None:  # type: ignore[assignment]
    """Waits until ``cond()`` holds (the pytest timeout bounds it); fails early if a worker died."""
    while not cond():
        for p in procs:
            if p.poll() not in (None, 0):
                raise AssertionError(f"worker failed while waiting for {what}: {p.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(0.002)


def start(db: str, results: Path, gate: Path, x: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, WORKER, db, str(results), str(gate), str(x), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def setup(tmp_path: Path, db_url: str) -> tuple[str, Path, Path]:
    """An SQLite file, then a PostgreSQL database (``db_url``), with a results and a gate dir."""
    gate = tmp_path / "gate"
    gate.mkdir()
    return db_url, tmp_path / "results", gate


def runs(gate: Path) -> list[str]:
    f = gate / "runs"
    return f.read_text().split() if f.exists() else []


def test_identical_calls_from_four_processes_compute_once(setup: tuple[str, Path, Path]) -> None:
    db, results, gate = setup
    procs = [start(db, results, gate, 7) for _ in range(4)]
    # Every worker has called, and one of them is inside the function.
    wait_for(lambda: len(list(gate.glob("calling-*"))) == 4, "4 callers", procs)
    wait_for(lambda: list(gate.glob("started-*")), "the first run", procs)
    if db.startswith("postgresql"):
        # The three waiters sleep on LISTEN (woken when the call ends), not on a polling loop.
        wait_for(lambda: pg.listening(db, "tm_cache") == 3, "3 listening waiters", procs)
    (gate / "release").touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert len(runs(gate)) == 1
    runner = int(runs(gate)[0])
    assert outs == [{"x": 7, "pid": runner}] * 4
    store = tm.Store(db, result_dir=results)
    (state,) = store.cache_index.states()
    assert state["status"] == "COMPLETED" and state["owner_pid"] == runner
    assert len(store.cache_entries()) == 1
    store.close()


def test_skip_if_in_progress_across_processes(setup: tuple[str, Path, Path]) -> None:
    db, results, gate = setup
    holder = start(db, results, gate, 1)
    wait_for(lambda: list(gate.glob("started-*")), "the holder's run", [holder])
    skipper = start(db, results, gate, 1, "skip")
    out, err = skipper.communicate(timeout=60)
    assert skipper.returncode == 0, err
    assert out.strip() == "in-progress"
    store = tm.Store(db, result_dir=results)
    fn = store.task(tasks().gated, skip_if_in_progress=True)
    with pytest.raises(tm.TaskInProgress) as info:
        fn(1, str(gate))
    assert info.value.owner == f"{holder.pid}@{os.uname().nodename}"
    (gate / "release").touch()
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert fn(1, str(gate)) == json.loads(out)  # now a hit
    assert len(runs(gate)) == 1
    store.close()


def test_runner_killed_mid_call_is_taken_over(setup: tuple[str, Path, Path]) -> None:
    db, results, gate = setup
    victim = start(db, results, gate, 3)
    wait_for(lambda: list(gate.glob("started-*")), "the victim's run", [victim])
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    store = tm.Store(db, result_dir=results)
    (state,) = store.cache_index.states()
    assert state["status"] == "RUNNING" and state["owner_pid"] == victim.pid
    (gate / "release").touch()  # the next run may finish
    fn = store.task(tasks().gated)
    assert fn(3, str(gate)) == {"x": 3, "pid": os.getpid()}
    (state,) = store.cache_index.states()
    assert state["status"] == "COMPLETED" and state["owner_pid"] == os.getpid()
    assert runs(gate) == [str(victim.pid), str(os.getpid())]
    store.close()
