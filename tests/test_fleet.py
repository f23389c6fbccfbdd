"""Distributed runs on a real PostgreSQL server: tasks claimed by any executor process, leases
renewed by a Rust thread, taken over after a SIGKILL, and fenced against late completions.

Worker processes are real subprocesses (tests/_fleet_worker.py); the test waits on the database's
state, never for a fixed time.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import tm
from tm._fleet import graph_key

TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import _fleet_graph  # noqa: E402


def worker(
    url: str,
    run_id: str,
    *,
    log: Path,
    work: float,
    lease: float,
    workers: int = 4,
    graph: tuple[int, int] = (100, 20),
    extra: list[str] = (),
) -> subprocess.Popen[str]:  # type: ignore[assignment]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
        "TM_FLEET_LOG": str(log),
        "TM_FLEET_WORK": str(work),
    }
    return subprocess.Popen(
        [
            sys.executable,
            os.path.join(TESTS, "_fleet_worker.py"),
            url,
            run_id,
            str(workers),
            str(lease),
            str(graph[0]),
            str(graph[1]),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(cond: Any, what: str, procs: list[subprocess.Popen[str]] = ()) -> None:  # type: ignore[assignment]
    """Polls ``cond`` (the pytest timeout bounds it); fails early if a worker died."""
    while not cond():
        for p in procs:
            if p.poll() not in (None, 0):
                raise AssertionError(f"worker failed while waiting for {what}: {p.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(0.01)


def test_a_distributed_run_gives_the_plain_python_results(pg_url: str) -> None:
    g = _fleet_graph.build(10, 6)
    with tm.Executor(store=pg_url, workers=4) as ex:
        run = ex.run(g, distributed=True)
        assert run.state == "completed"
        expected = _fleet_graph.expected(10, 6)
        assert {n: run.result(n) for n in expected} == expected
        assert run.states() == dict.fromkeys(expected, "completed")
        # Any process reads it back like a local run.
        other = tm.Store(pg_url)
        detail = other.core.get_run(run.run_id)
        assert detail["state"] == "completed" and detail["graph"] == g.name
        assert other.result(run.run_id, "n5_3") == expected["n5_3"]
        other.close()


def test_root_arguments_config_and_context_reach_every_task(pg_url: str) -> None:
    seen: dict[str, Any] = {}

    @tm.task
    def root(x: int, config: Any, context: Any) -> int:
        seen["root"] = (config, context.run_id, context.attempt, context.graph)
        return x * 10

    @tm.task
    def child(root: int) -> int:
        print("child got", root)
        return root + 1

    g = tm.Graph("args")
    g.add_edges([root], [child])
    with tm.Executor(store=pg_url, workers=2) as ex:
        run = ex.submit(g, {"k": 1}, kwargs={"x": 4}, distributed=True)
        assert ex.work([g], run_id=run.run_id) == 2
        assert run.result() == 41
        assert seen["root"] == ({"k": 1}, run.run_id, 0, "args")
        # The config is recorded with the run, for tm show.
        assert json.loads(ex.store.run(run.run_id)["config_json"]) == {"k": 1}
        # What a task printed is its log.
        ex.store.flush()
        logs = ex.store.core.logs(run.run_id, "child")
        assert [(r["level"], r["message"]) for r in logs] == [("INFO", "child got 40")]


def test_retries_failures_skips_and_unpicklable_results(pg_url: str) -> None:
    @tm.task(retries=2)
    def flaky(context: Any) -> str:
        if context.attempt < 2:
            raise ConnectionError(f"attempt {context.attempt}")
        return "ok"

    @tm.task
    def bad() -> None:
        raise ValueError("no such thing")

    @tm.task
    def below(bad: Any) -> int:
        return 1

    @tm.task
    def lam() -> Any:
        return lambda: 1

    g = tm.Graph("failing")
    g.add(flaky)
    g.add_edges([bad], [below])
    g.add(lam)
    with tm.Executor(store=pg_url, workers=2) as ex:
        run = ex.run(g, distributed=True)
        assert run.state == "failed"
        assert run.states() == {
            "flaky": "completed",
            "bad": "failed",
            "below": "skipped",
            "lam": "failed",
        }
        assert run.result("flaky") == "ok"
        attempts = ex.store.attempts(run.run_id, "flaky")
        assert [a["status"] for a in attempts] == ["failed", "failed", "completed"]
        assert attempts[0]["error_type"] == "ConnectionError"
        lam_row = ex.store.attempts(run.run_id, "lam")[0]
        assert "cannot be pickled" in lam_row["error_message"]
        with pytest.raises(tm.TaskFailed) as failed:
            run.raise_for_state()
        assert failed.value.task in ("bad", "lam") and "failed" in str(failed.value)


def test_cancel_before_any_task_runs(pg_url: str) -> None:
    g = _fleet_graph.build(5, 3)
    with tm.Executor(store=pg_url) as ex:
        run = ex.submit(g, distributed=True)
        assert run.cancel() is True
        assert run.state == "cancelled" and run.done()
        assert set(run.states().values()) == {"cancelled"}
        assert ex.work([g], run_id=run.run_id) == 0
        assert run.cancel() is False
        with pytest.raises(tm.TaskCancelled):
            run.raise_for_state()


def test_executors_take_only_their_tags_and_their_graph(pg_url: str) -> None:
    @tm.task(tag="gpu")
    def train() -> int:
        return 1

    @tm.task
    def prep() -> int:
        return 2

    g = tm.Graph("tagged")
    g.add(train)
    g.add(prep)
    # Same name, different shape: must not take this graph's tasks.
    other = tm.Graph("tagged")
    other.add(tm.task(lambda: 0, name="prep"))
    assert graph_key(g) != graph_key(other)
    with tm.Executor(store=pg_url) as ex:
        run = ex.submit(g, distributed=True)
        assert ex.work([g], tags=["gpu"], max_tasks=1) == 1
        assert run.states() == {"train": "completed", "prep": "pending"}
        assert ex.work([g], tags=[""], run_id=run.run_id) == 1
        assert run.state == "completed"


def test_a_sqlite_store_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    g = _fleet_graph.build(2, 2)
    with (
        tm.Executor(store=str(tmp_path / "s.db")) as ex,
        pytest.raises(tm.ExecutorError, match="PostgreSQL"),
    ):
        ex.submit(g, distributed=True)
    with tm.Executor() as ex, pytest.raises(tm.ExecutorError, match="PostgreSQL store"):
        ex.work([g])


def test_four_executors_run_2000_tasks_once_and_survive_a_sigkill(
    pg_url: str, tmp_path: Path
) -> None:
    width, layers = 100, 20
    g = _fleet_graph.build(width, layers)
    log = tmp_path / "executions.log"
    with tm.Executor(store=pg_url) as submitter:
        run = submitter.submit(g, distributed=True)
        # The victim's tasks take longer, so that when it is killed its threads are inside tasks
        # (not sending completions that the server would still apply after the kill).
        procs = [
            worker(pg_url, run.run_id, log=log, work=w, lease=1.5, graph=(width, layers))
            for w in (0.2, 0.004, 0.004, 0.004)
        ]
        victim = procs[0]
        fleet = submitter._get_fleet()

        def victim_mid_run() -> bool:
            rows = fleet.progress(run.run_id)
            done = sum(1 for r in rows if r[1] == "done")
            held = [r for r in rows if r[1] == "claimed" and r[3] and f":{victim.pid}:" in r[3]]
            return done >= 300 and len(held) > 0

        wait_for(victim_mid_run, "the victim to hold tasks mid-run", procs)
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        lost = {
            n
            for n, state, _, owner in fleet.progress(run.run_id)
            if state == "claimed" and owner and f":{victim.pid}:" in owner
        }
        for p in procs[1:]:
            _out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err
        assert run.state == "completed"
        names = g._core.names()
        expected = _fleet_graph.expected(width, layers)
        assert {n: run.result(n) for n in names} == expected
        assert run.states() == dict.fromkeys(names, "completed")
        rows = fleet.progress(run.run_id)
        assert len(rows) == 2000 and {r[1] for r in rows} == {"done"}
    # Every task ran, and no task ran twice on the surviving executors; a task ran twice only
    # when the killed executor had started it.
    by_task: dict[str, list[int]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        name, pid = line.split()
        by_task[name].append(int(pid))
    assert set(by_task) == set(names)
    for name, pids in by_task.items():
        survivors = [p for p in pids if p != victim.pid]
        assert len(survivors) <= 1, (name, pids)
        assert len(pids) == 1 or victim.pid in pids, (name, pids)
    # The tasks the victim held came back after its lease ran out: a lost attempt, then another
    # (unless the victim's completion was already on its way to the server when it died).
    assert lost
    store = tm.Store(pg_url)
    came_back = 0
    for n in lost:
        attempts = store.attempts(run.run_id, n)
        assert attempts[-1]["status"] == "completed"
        if len(attempts) > 1:
            assert attempts[0]["error_type"] == "LeaseExpired", attempts
            came_back += 1
    assert came_back > 0
    store.close()


def test_a_completion_after_the_lease_was_lost_is_refused(pg_url: str, tmp_path: Path) -> None:
    """A stopped executor (SIGSTOP: its lease renewals stop too) loses its task to another; when
    it resumes and finishes, its completion is refused and the other's result stands."""
    g = _fleet_graph.build(1, 1)
    log = tmp_path / "executions.log"
    with tm.Executor(store=pg_url, lease=1.0) as ex:
        run = ex.submit(g, distributed=True)
        frozen = worker(pg_url, run.run_id, log=log, work=2.0, lease=1.0, graph=(1, 1), workers=1)
        fleet = ex._get_fleet()
        wait_for(lambda: log.exists() and log.read_text().strip(), "the task to start", [frozen])
        frozen.send_signal(signal.SIGSTOP)
        try:
            taker = worker(
                pg_url, run.run_id, log=log, work=0.0, lease=1.0, graph=(1, 1), workers=1
            )
            _out, err = taker.communicate(timeout=120)
            assert taker.returncode == 0, err
            assert run.state == "completed"
        finally:
            frozen.send_signal(signal.SIGCONT)
        _out, err = frozen.communicate(timeout=120)
        assert frozen.returncode == 0, err
        assert "lease was lost" in err
        attempts = ex.store.attempts(run.run_id, "n0_0")
        assert [a["status"] for a in attempts] == ["failed", "completed"]
        assert attempts[0]["error_type"] == "LeaseExpired"
        assert [r[2] for r in fleet.progress(run.run_id)] == [2]
        assert run.result("n0_0") == 0


def test_tm_work_serves_runs_until_sigterm(pg_url: str, tmp_path: Path) -> None:
    """``tm work FILE.py --db URL``: serves every run of the file's graphs; SIGTERM stops it
    cleanly (exit 0) after recording what it ran."""
    target = tmp_path / "graphs.py"
    target.write_text("import _fleet_graph\n\ngraph = _fleet_graph.build(6, 4)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen(
        [sys.executable, "-m", "tm", "work", str(target), "--db", pg_url, "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    g = _fleet_graph.build(6, 4)
    with tm.Executor(store=pg_url) as ex:
        runs = [ex.submit(g, distributed=True) for _ in range(2)]
        for run in runs:
            while not run.wait(timeout=1.0):
                assert p.poll() is None, p.communicate()[1]
        expected = _fleet_graph.expected(6, 4)
        for run in runs:
            assert run.state == "completed"
            assert run.result("n3_5") == expected["n3_5"]
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "ran 48 task(s) here" in err


@pytest.mark.timeout(300)
def test_an_executor_rides_out_a_database_restart(tmp_path: Path) -> None:
    """The server stops (sessions ended) in the middle of a run and starts again: the executor
    keeps its tasks, reconnects, and the run completes with every result right."""
    import pg

    log = tmp_path / "executions.log"
    with pg.server() as server:
        url = server.create_db()
        g = _fleet_graph.build(20, 10)
        with tm.Executor(store=url) as ex:
            run = ex.submit(g, distributed=True)
            fleet = ex._get_fleet()
            w = worker(url, run.run_id, log=log, work=0.01, lease=30.0, graph=(20, 10))

            def some_done() -> bool:
                return sum(1 for r in fleet.progress(run.run_id) if r[1] == "done") >= 40

            wait_for(some_done, "some tasks done", [w])
            server.stop()
            server.start()
            _out, err = w.communicate(timeout=240)
            assert w.returncode == 0, err
            assert "unreachable" in err or "cannot claim" in err
            assert run.state == "completed"
            expected = _fleet_graph.expected(20, 10)
            assert {n: run.result(n) for n in expected} == expected


def _submit_poison(url: str, what: str) -> str:
    """Submits a run from a subprocess whose ``__main__`` defines the class of its values."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, os.path.join(TESTS, "_fleet_poison.py"), url, what],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.split()[-1]


@pytest.mark.timeout(120)
def test_a_run_whose_arguments_cannot_be_unpickled_fails_instead_of_hanging(
    pg_url: str,
) -> None:
    """The root argument's class lives in the submitter's ``__main__``: no other executor can
    load it. Each attempt fails (counted), the task fails once its retries are spent, the run
    ends, and nothing is claimed again."""
    import _fleet_poison

    run_id = _submit_poison(pg_url, "args")
    g = _fleet_poison.build()
    with tm.Executor(store=pg_url, workers=2) as ex:
        # Returns: the run ended (before the fix, the task stayed claimed and this never did).
        assert ex.work([g], run_id=run_id) == 2
        detail = ex.store.core.get_run(run_id)
        assert detail["state"] == "failed"
        states = {t["name"]: t["status"] for t in detail["tasks"]}
        assert states == {"root": "failed", "child": "skipped"}
        attempts = ex.store.attempts(run_id, "root")
        assert [a["status"] for a in attempts] == ["failed", "failed"]
        for a in attempts:
            assert a["error_type"] == "AttributeError"
            assert "cannot load the inputs" in a["error_message"]
            assert "Point" in a["error_message"]
            assert "Traceback" in (a["traceback"] or "")
        # Spent: no executor takes it again.
        assert ex._get_fleet().claim(4, None) == []
        assert ex.work([g], max_tasks=1, run_id=run_id) == 0
        assert [r[1] for r in ex._get_fleet().progress(run_id)] == ["failed", "skipped"]


@pytest.mark.timeout(120)
def test_a_parent_result_that_cannot_be_unpickled_fails_the_child(pg_url: str) -> None:
    import _fleet_poison

    run_id = _submit_poison(pg_url, "result")
    g = _fleet_poison.build()
    with tm.Executor(store=pg_url, workers=2) as ex:
        assert ex.work([g], run_id=run_id) == 1
        detail = ex.store.core.get_run(run_id)
        assert detail["state"] == "failed"
        states = {t["name"]: t["status"] for t in detail["tasks"]}
        assert states == {"root": "completed", "child": "failed"}
        (attempt,) = ex.store.attempts(run_id, "child")
        assert attempt["status"] == "failed"
        assert "cannot load the inputs" in attempt["error_message"]
        assert ex._get_fleet().claim(4, None) == []
