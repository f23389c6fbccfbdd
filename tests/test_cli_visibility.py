"""Without any logging configuration, the CLI commands show a failed run, a retry and a missed
fire on stderr, one line each (real subprocesses); library users' ``tm`` logger is unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import tm

WAIT = 60  # seconds: a bound for a hung test, never a synchronisation

FLOW = """
import tm

flow = tm.Graph("flow", schedule="* * * * *")
state = {"n": 0}

@tm.task(retries=1, retry_delay=0)
def fetch():
    state["n"] += 1
    raise ConnectionError(f"refused {state['n']}")

flow.add(fetch)
"""


def write_flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.py"
    path.write_text(textwrap.dedent(FLOW))
    return path


def tm_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_tm_run_shows_the_retry_and_the_failure_on_stderr_one_line_each(tmp_path: Path) -> None:
    flow = write_flow(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "tm", "run", str(flow), "--db", f"sqlite:///{tmp_path}/tm.db"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 1
    lines = tm_lines(proc.stderr)
    assert "Traceback" not in proc.stderr
    retry = [ln for ln in lines if "retrying" in ln]
    failed = [ln for ln in lines if "failed after" in ln]
    run_failed = [ln for ln in lines if ln.startswith("tm: run ")]
    assert len(retry) == 1 and "flow.fetch attempt" in retry[0] and "refused 1" in retry[0]
    assert len(failed) == 1 and "flow.fetch failed after 2 attempt(s)" in failed[0]
    assert "refused 2" in failed[0]
    assert len(run_failed) == 1
    assert run_failed[0].endswith("failed: task fetch: ConnectionError: refused 2")
    assert len(lines) == 3, lines


def test_tm_start_shows_missed_fires_retries_and_failures(tmp_path: Path) -> None:
    write_flow(tmp_path)
    db = f"sqlite:///{tmp_path}/tm.db"
    # The store says the graph last fired ten minutes ago: the minutes since were missed
    # (catchup="latest" runs only the newest of them).
    store = tm.Store(db)
    ten_ago = (int(time.time()) // 60 - 10) * 60 * 1_000_000
    store.core.upsert_graph("flow", ten_ago, ten_ago, schedule="* * * * *", last_fire_us=ten_ago)
    store.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tm", "start", "flow.py", "--db", db, "-q"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line.rstrip("\n"))
            if "failed after" in line:
                break
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=WAIT)[1]
    text = "\n".join(seen)
    assert "Traceback" not in text + rest
    missed = [ln for ln in seen if "missed the fire" in ln]
    assert len(missed) == 1 and "later fire(s)" in missed[0]
    assert len([ln for ln in seen if "attempt" in ln and "retrying" in ln]) == 1
    assert len([ln for ln in seen if "flow.fetch failed after 2 attempt(s)" in ln]) == 1


def test_tm_backfill_names_failed_runs_on_stderr(tmp_path: Path) -> None:
    flow = write_flow(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tm",
            "backfill",
            str(flow),
            "--from",
            "2026-01-01T00:00:00+00:00",
            "--to",
            "2026-01-01T00:01:00+00:00",
            "--db",
            f"sqlite:///{tmp_path}/tm.db",
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = tm_lines(proc.stderr)
    named = [ln for ln in lines if ln.startswith("tm: backfill of flow at ")]
    assert [ln.split(" at ")[1].split(":", 3)[:2] for ln in named] == [
        ["2026-01-01T00", "00"],
        ["2026-01-01T00", "01"],
    ]
    assert all(ln.endswith(" failed") for ln in named)
    assert len([ln for ln in lines if "retrying" in ln]) == 2


def test_library_users_keep_the_tm_logger_silent_by_default() -> None:
    code = textwrap.dedent(
        """
        import json, logging, tm
        g = tm.Graph("lib")
        @tm.task
        def boom():
            raise ValueError("x")
        g.add(boom)
        with tm.Executor() as ex:
            run = ex.run(g)
        print(json.dumps([run.state, logging.getLogger().handlers == []]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert json.loads(proc.stdout) == ["failed", True]
    assert proc.stderr == ""


def test_tm_work_shows_the_retry_and_the_failure_of_a_distributed_task(
    tmp_path: Path, pg_url: str
) -> None:
    from tm.cli import load_object

    flow = write_flow(tmp_path)
    graph = load_object(f"{flow}:flow")
    with tm.Executor(store=pg_url) as ex:
        drun = ex.submit(graph, distributed=True)
        proc = subprocess.run(
            [sys.executable, "-m", "tm", "work", str(flow), "--db", pg_url, "--run", drun.run_id],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert drun.state == "failed"
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = tm_lines(proc.stderr)
    retry = [ln for ln in lines if "ConnectionError: refused 1 (retrying)" in ln]
    failed = [ln for ln in lines if "ConnectionError: refused 2 (failed)" in ln]
    assert len(retry) == 1 and len(failed) == 1, lines
