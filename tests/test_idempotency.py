"""Idempotency keys: ``Executor.submit(graph, key=...)`` starts at most one run per key and graph
across every process sharing the store (8 racing processes, SQLite and PostgreSQL), and
``on_conflict`` decides what a second submission gets."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tm
from tm import Executor, ExecutorError, Graph, task

WAIT = 120


def counting_graph(calls: list[int], fail: list[bool]) -> Graph:
    g = Graph("keyed")

    @task(persist=True)
    def work():
        calls.append(1)
        if fail and fail[0]:
            raise RuntimeError("not today")
        return len(calls)

    g.add(work)
    return g


def test_a_second_submission_with_the_key_gets_the_first_run(db_url: str) -> None:
    calls: list[int] = []
    g = counting_graph(calls, [])
    with Executor(store=db_url) as ex:
        first = ex.run(g, key="daily-2026-12-07")
        again = ex.run(g, key="daily-2026-12-07")
        assert again is first and first.state == "completed" and calls == [1]
        with pytest.raises(ExecutorError, match=f"key 'daily-2026-12-07': {first.run_id}"):
            ex.submit(g, key="daily-2026-12-07", on_conflict="error")
        other = ex.run(g, key="daily-2026-12-08")
        assert other.run_id != first.run_id and calls == [1, 1]
    # Another executor with a store of its own finds the run (live in this process: itself).
    with Executor(store=tm.Store(db_url)) as ex2:
        assert ex2.submit(g, key="daily-2026-12-07") is first
    assert calls == [1, 1]
    # What a process where the run is not live gets: the run read from the store.
    stored = tm.StoredRun(tm.Store(db_url), first.run_id, "keyed")
    assert stored.wait(WAIT) and stored.done() and stored.state == "completed"
    assert stored.states() == {"work": "completed"} and stored.result("work") == 1


def test_rerun_failed_resumes_a_failed_keyed_run(db_url: str) -> None:
    calls: list[int] = []
    fail = [True]
    g = counting_graph(calls, fail)
    with Executor(store=db_url) as ex:
        first = ex.run(g, key="k")
        assert first.state == "failed"
        assert ex.run(g, key="k") is first  # "return": the failed run, not a new one
        fail[0] = False
        again = ex.run(g, key="k", on_conflict="rerun_failed")
        assert again.state == "completed" and again.run_id == first.run_id
        assert ex.run(g, key="k", on_conflict="rerun_failed").run_id == first.run_id
    assert calls == [1, 1]


def test_bad_keys_and_policies_are_refused() -> None:
    g = counting_graph([], [])
    with Executor() as ex:
        with pytest.raises(TypeError, match="non-empty str"):
            ex.submit(g, key="")
        with pytest.raises(ValueError, match="on_conflict must be one of"):
            ex.submit(g, key="k", on_conflict="ignore")
        # Without a store the key holds within this executor.
        first = ex.run(g, key="k")
        assert ex.run(g, key="k") is first
        with pytest.raises(ExecutorError, match="needs an executor with a store"):
            bad = counting_graph([], [True])
            ex.run(bad, key="b")
            ex.run(bad, key="b", on_conflict="rerun_failed")


RACER = """
import sys
import tm

g = tm.Graph("raced")

@tm.task
def work():
    with open(sys.argv[2], "a") as f:
        f.write("ran\\n")
    return 1

g.add(work)
with tm.Executor(store=sys.argv[1]) as ex:
    sys.stdin.readline()  # all eight go at once
    run = ex.submit(g, key="once")
    run.wait()
    print(run.run_id, run.state, type(run).__name__, flush=True)
"""


def test_eight_racing_processes_start_one_run(db_url: str, tmp_path: Path) -> None:
    script = tmp_path / "racer.py"
    script.write_text(textwrap.dedent(RACER))
    log = tmp_path / "ran.log"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), db_url, str(log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=WAIT)
        assert p.returncode == 0, err
        outs.append(out.split())
    assert len({run_id for run_id, _, _ in outs}) == 1
    assert {state for _, state, _ in outs} == {"completed"}
    assert sorted(kind for _, _, kind in outs).count("Run") == 1
    assert log.read_text() == "ran\n"
