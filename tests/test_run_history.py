"""What ``tm show`` and ``tm logs`` tell about a recorded run: every attempt (earlier failures
with their errors and tracebacks), the config the run used, what its tasks printed, timings that
leave out the time between a failure and a resume, and ``tm logs --follow`` on a live run.

The CLI runs as a real subprocess on a real SQLite file (and PostgreSQL where marked).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import tm
from tm import Executor, Graph, task


def tm_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def flaky_graph() -> Graph:
    tries = {"n": 0}

    @task(retries=2)
    def flaky() -> int:
        tries["n"] += 1
        if tries["n"] < 3:
            raise ValueError(f"try {tries['n']}")
        return 1

    @task
    def after(flaky: int) -> int:
        return flaky + 1

    g = Graph("history")
    g.add_edges(flaky, after)
    return g


def test_show_and_logs_list_the_earlier_failed_attempts(db_url: str) -> None:
    with Executor(store=db_url) as ex:
        run = ex.run(flaky_graph())
    assert run.state == "completed"
    ex.store.close()
    shown = tm_cli("show", run.run_id, "--db", db_url)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "flaky attempt 1 failed" in out and "ValueError: try 1" in out
    assert "flaky attempt 2 failed" in out and "ValueError: try 2" in out
    as_json = json.loads(tm_cli("show", run.run_id, "--db", db_url, "--json").stdout)
    flaky = next(t for t in as_json["tasks"] if t["name"] == "flaky")
    assert [a["status"] for a in flaky["attempts"]] == ["failed", "failed", "completed"]
    assert flaky["attempts"][0]["error_message"] == "try 1"
    logs = tm_cli("logs", run.run_id, "--db", db_url)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    failed = [i for i, line in enumerate(lines) if "attempt" in line and "ValueError" in line]
    assert len(failed) == 2
    assert "WARNING" in lines[failed[0]] and "ValueError: try 1" in lines[failed[0]]
    # The traceback of each retried attempt follows it.
    assert "Traceback (most recent call last)" in lines[failed[0] + 1]
    assert any('raise ValueError(f"try' in line for line in lines[failed[0] : failed[1]])
    only = json.loads(tm_cli("logs", run.run_id, "flaky", "--db", db_url, "--json").stdout)
    assert [r["message"] for r in only] == [
        "attempt 1 failed: ValueError: try 1",
        "attempt 2 failed: ValueError: try 2",
    ]
    assert all("Traceback" in r["traceback"] for r in only)
    assert json.loads(tm_cli("logs", run.run_id, "after", "--db", db_url, "--json").stdout) == []


def test_the_config_a_run_used_is_recorded_and_shown(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    g = Graph("configured")
    g.add(task(lambda config: config["alpha"], name="use"))
    with Executor(store=url) as ex:
        run = ex.run(g, {"alpha": 1, "when": tmp_path})
        plain = ex.run(g, {"alpha": 2})
    ex.store.flush()
    recorded = json.loads(ex.store.run(plain.run_id)["config_json"])
    assert recorded == {"alpha": 2}
    # Values JSON cannot hold are recorded by their repr.
    assert json.loads(ex.store.run(run.run_id)["config_json"]) == {
        "alpha": 1,
        "when": repr(tmp_path),
    }
    ex.store.close()
    shown = tm_cli("show", plain.run_id, "--db", url)
    assert shown.returncode == 0, shown.stderr
    assert 'config: {"alpha": 2}' in shown.stdout
    as_json = json.loads(tm_cli("show", plain.run_id, "--db", url, "--json").stdout)
    assert json.loads(as_json["config_json"]) == {"alpha": 2}


def printing_graph() -> Graph:
    @task
    def talk(context: Any) -> int:
        print("hello from", context.task)
        print("two\nlines", end="")
        return 1

    g = Graph("printing")
    g.add(talk)
    return g


def test_print_in_a_task_is_kept_as_its_log_at_info(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    with Executor(store=url) as ex:
        run = ex.run(printing_graph())
        assert run.state == "completed"
        print("not a task's")
    ex.store.flush()
    rows = ex.store.core.logs(run.run_id, "talk")
    assert [(r["level"], r["message"]) for r in rows] == [
        ("INFO", "hello from talk"),
        ("INFO", "two"),
        ("INFO", "lines"),
    ]
    # Still printed as usual too.
    assert capsys.readouterr().out == "hello from talk\ntwo\nlinesnot a task's\n"
    ex.store.close()
    logs = tm_cli("logs", run.run_id, "--db", url)
    assert "INFO     talk: hello from talk" in logs.stdout


def test_capture_print_false_keeps_print_out_of_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    with Executor(store=url, capture_print=False) as ex:
        run = ex.run(printing_graph())
    ex.store.flush()
    assert ex.store.core.logs(run.run_id) == []
    assert capsys.readouterr().out == "hello from talk\ntwo\nlines"
    ex.store.close()


LIVE = textwrap.dedent(
    """
    import os, sys, time
    import tm

    flag = sys.argv[2]

    @tm.task
    def first(context):
        context.logger.info("first line")
        return 1

    @tm.task
    def second(first, context):
        # Waits for the test to have seen the first line (bounded: a broken test ends it).
        deadline = time.monotonic() + 60
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        print("second line")
        return first + 1

    graph = tm.Graph("live")
    graph.add_edges(first, second)

    with tm.Executor(store=sys.argv[1]) as ex:
        run = ex.submit(graph)
        print(run.run_id, flush=True)
        run.wait()
    """
)


@pytest.mark.timeout(120)
def test_logs_follow_prints_a_live_run_until_it_ends(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    flag = tmp_path / "go"
    script = tmp_path / "live.py"
    script.write_text(LIVE)
    proc = subprocess.Popen(
        [sys.executable, str(script), url, str(flag)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    assert run_id, proc.communicate()[1]
    follow = subprocess.Popen(
        [sys.executable, "-m", "tm", "logs", run_id, "--db", url, "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert follow.stdout is not None
    try:
        # The first line arrives while the run is still going (the second task waits for us).
        line = follow.stdout.readline()
        assert "first: first line" in line, (line, follow.stderr.read() if follow.stderr else "")
        assert follow.poll() is None
        flag.write_text("go")
        rest, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 0, err
    assert "second: second line" in rest
    assert "run ended: completed" in rest
    proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_timings_after_a_resume_leave_out_the_downtime(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    fail = [True]

    @task(persist=True)
    def a() -> int:
        return 1

    @task
    def b(a: int) -> int:
        if fail[0]:
            raise RuntimeError("not yet")
        return a + 1

    g = Graph("downtime")
    g.add_edges(a, b)
    with Executor(store=url) as ex:
        first = ex.run(g)
        assert first.state == "failed"
        ex.store.flush()
        down_from = max(t["ended_us"] for t in ex.store.run(first.run_id)["tasks"])
        fail[0] = False
        assert ex.resume(first.run_id, g).state == "completed"
    ex.store.flush()
    detail = ex.store.run(first.run_id)
    attempts = ex.store.attempts(first.run_id, "b")
    ex.store.close()
    assert [a["status"] for a in attempts] == ["failed", "completed"]
    down_to = attempts[1]["started_us"]
    assert down_to > down_from
    shown = json.loads(tm_cli("show", first.run_id, "--db", url, "--json").stdout)
    # A task's duration: the sum of its attempts'.
    b_row = next(t for t in shown["tasks"] if t["name"] == "b")
    assert b_row["duration_us"] == sum(a["ended_us"] - a["started_us"] for a in attempts)
    # The run's: its wall time without the stretch in which nothing ran.
    wall = detail["ended_us"] - detail["started_us"]
    assert shown["duration_us"] <= wall - (down_to - down_from)
    assert shown["duration_us"] > 0
    text = tm_cli("show", first.run_id, "--db", url).stdout
    assert f"took {shown['duration_us'] / 1e6:.3f}s" in text


def test_print_capture_leaves_no_wrapper_effects_without_a_store(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Executor() as ex:
        assert ex.run(printing_graph()).state == "completed"
    assert capsys.readouterr().out == "hello from talk\ntwo\nlines"


def test_print_capture_survives_a_failing_task(tmp_path: Path) -> None:
    @task
    def noisy() -> None:
        print("before the error")
        raise OSError("disk")

    g = Graph("noisy")
    g.add(noisy)
    url = f"sqlite:///{tmp_path}/tm.db"
    with Executor(store=url) as ex:
        run = ex.run(g)
    ex.store.flush()
    assert run.state == "failed"
    assert [r["message"] for r in ex.store.core.logs(run.run_id)] == ["before the error"]
    ex.store.close()


def test_a_task_log_record_written_to_stdout_is_kept_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A logging handler that writes to stdout (made after the capture is in place) prints the
    task's log record; that print is not kept a second time."""
    import logging

    url = f"sqlite:///{tmp_path}/tm.db"
    with Executor(store=url) as ex:
        ex.run(printing_graph())  # puts the capture in place
        handler = logging.StreamHandler(sys.stdout)
        logger = logging.getLogger("tm.task.said")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:

            @task
            def said(context: Any) -> None:
                context.logger.info("once")

            g = Graph("said")
            g.add(said)
            run = ex.run(g)
        finally:
            logger.removeHandler(handler)
    ex.store.flush()
    assert [r["message"] for r in ex.store.core.logs(run.run_id)] == ["once"]
    assert "once\n" in capsys.readouterr().out
    ex.store.close()


def test_a_scheduled_run_records_its_config(tmp_path: Path) -> None:
    import queue
    import threading
    from datetime import datetime, timezone

    url = f"sqlite:///{tmp_path}/tm.db"
    out: queue.Queue[Any] = queue.Queue()
    g = Graph("nightly", schedule="0 3 * * *", config={"depth": 3})

    @task
    def work(config: Any) -> None:
        out.put(config)

    g.add(work)
    clock = tm.VirtualClock(datetime(2026, 1, 1, tzinfo=timezone.utc))
    ex = Executor(clock=clock, store=url)
    ex.add(g)
    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    try:
        assert ex.settle(10)
        clock.set(datetime(2026, 1, 1, 3, tzinfo=timezone.utc).timestamp())
        assert ex.settle(10)
        assert out.get(timeout=10) == {"depth": 3}
    finally:
        ex.stop()
        t.join(10)
        ex.shutdown()
    ex.store.flush()
    [row] = ex.store.runs()
    assert row["trigger"] == "schedule"
    assert json.loads(ex.store.run(row["run_id"])["config_json"]) == {"depth": 3}
    ex.store.close()
