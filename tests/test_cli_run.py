"""``tm run``: a graph run from the shell in a real subprocess: exit status, transition lines on a
pipe, a redrawn progress bar on a terminal, run parameters, the summary, the recorded run, Ctrl-C."""

from __future__ import annotations

import errno
import json
import os
import pty
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tm

WAIT = 60  # seconds: a bound for a hung test, never a synchronisation

FLOW = """
import os
import tm

flow = tm.Graph("flow")

@tm.task
def extract(ds, limit=10):
    return {"ds": ds, "rows": list(range(limit))}

@tm.task
def count(extract):
    return len(extract["rows"])

@tm.task
def report(extract, count, config):
    if config and config.get("fail"):
        raise ValueError("report refused: " + extract["ds"])
    return f"{extract['ds']}: {count}"

flow.add(extract)
flow.add(count, depends_on=[extract])
flow.add(report, depends_on=[extract, count])
"""


@pytest.fixture
def flow(tmp_path: Path) -> Path:
    path = tmp_path / "flow.py"
    path.write_text(textwrap.dedent(FLOW))
    return path


def tm_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", "run", *args, "--db", f"sqlite:///{tmp_path}/tm.db"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=tmp_path,
    )


def test_a_completed_run_exits_0_with_a_line_per_transition_and_a_summary(
    tmp_path: Path, flow: Path
) -> None:
    p = tm_run(tmp_path, str(flow), "-p", "ds=2026-12-07", "-p", "limit=3")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for task in ("extract", "count", "report"):
        assert any(line.endswith(f"{task}: started (attempt 1)") for line in lines)
        assert any(line.endswith(f"{task}: completed") for line in lines)
    assert [line.split()[:2] for line in lines if line.startswith(("extract ", "count "))] == [
        ["extract", "completed"],
        ["count", "completed"],
    ]
    last = lines[-1].split()
    assert last[0] == "run" and last[3:5] == ["flow:", "completed"]
    # The run is in the store, with what the tasks returned.
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db", read_only=True)
    (run,) = store.runs()
    assert run["run_id"] == last[1] and run["state"] == "completed"
    store.close()


def test_parameters_are_json_when_they_parse_and_text_otherwise() -> None:
    from tm._run_cli import parse_params
    from tm.cli import CommandError

    assert parse_params(["ds=2026-12-07", "limit=100", "on=true", "ids=[1, 2]", "s="]) == {
        "ds": "2026-12-07",
        "limit": 100,
        "on": True,
        "ids": [1, 2],
        "s": "",
    }
    for bad in ("novalue", "=1", "two words=1"):
        with pytest.raises(CommandError, match="expected NAME=VALUE"):
            parse_params([bad])


def test_a_failed_run_exits_1_and_the_summary_names_the_error(tmp_path: Path, flow: Path) -> None:
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"fail": True}))
    p = tm_run(tmp_path, f"{flow}:flow", "-p", "ds=x", "--config", str(config))
    assert p.returncode == 1, p.stderr
    assert "report: failed: ValueError: report refused: x" in p.stdout
    row = next(line for line in p.stdout.splitlines() if line.startswith("report "))
    assert row.split()[1:3] == ["failed", "1"] and "ValueError: report refused: x" in row
    assert p.stdout.splitlines()[-1].split()[4] == "failed"


def test_bad_input_is_a_usage_error(tmp_path: Path, flow: Path) -> None:
    p = tm_run(tmp_path, str(flow), "-p", "ds=x", "-p", "bogus=1")
    assert p.returncode == 2 and "bogus" in p.stderr and "Traceback" not in p.stderr
    p = tm_run(tmp_path, str(flow))  # a required argument missing
    assert p.returncode == 2 and "'ds'" in p.stderr and "Traceback" not in p.stderr
    two = tmp_path / "two.py"
    two.write_text("import tm\na = tm.Graph('a')\nb = tm.Graph('b')\n")
    p = tm_run(tmp_path, str(two))
    assert p.returncode == 2 and "2 graphs (a, b)" in p.stderr


def test_a_terminal_gets_a_progress_bar(tmp_path: Path, flow: Path) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tm", "run", str(flow), "-p", "ds=tty"],
        stdout=secondary,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env={**os.environ, "TM_DB_URL": f"sqlite:///{tmp_path}/tm.db"},
    )
    os.close(secondary)
    out = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError as e:  # EIO: the child closed the terminal
            assert e.errno == errno.EIO
            break
        if not chunk:
            break
        out += chunk
    os.close(primary)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    text = out.decode()
    assert "\r\x1b[2Kflow [########################] 3/3 3 completed" in text
    assert "started (attempt" not in text  # no transition lines on a terminal
    assert text.rstrip().splitlines()[-1].split()[4] == "completed"


SLOW = """
import os
import time
import tm

slow_flow = tm.Graph("slow")

@tm.task
def slow(release):
    while not os.path.exists(release):
        time.sleep(0.005)
    return 1

@tm.task
def after(slow):
    return slow + 1

slow_flow.add(slow)
slow_flow.add(after, depends_on=[slow])
"""


def test_ctrl_c_lets_running_tasks_finish_and_exits_130(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(textwrap.dedent(SLOW))
    release = tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tm", "run", "slow.py", "-p", f"release={release}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "TM_DB_URL": f"sqlite:///{tmp_path}/tm.db"},
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().rstrip().endswith("slow: started (attempt 1)")
        proc.send_signal(signal.SIGINT)
        # The first Ctrl-C starts nothing new: the waiting child is cancelled at once...
        assert proc.stdout.readline().rstrip().endswith("after: cancelled")
        release.write_text("")  # ...and the running task is let finish.
        rest, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "slow: completed" in rest
    assert rest.splitlines()[-1].split()[4] == "cancelled"


def test_rerun_repeats_a_recorded_run_with_its_arguments(tmp_path: Path, flow: Path) -> None:
    first = tm_run(tmp_path, str(flow), "-p", "ds=2026-12-07", "-p", "limit=3")
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.splitlines()[-1].split()[1]
    again = tm_run(tmp_path, "--rerun", first_id[:10], "-p", "limit=5")
    assert again.returncode == 0, again.stderr
    again_id = again.stdout.splitlines()[-1].split()[1]
    assert again_id != first_id
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db", read_only=True)
    params = {
        r["run_id"]: json.loads(store.core.get_run(r["run_id"])["meta_json"])["params"]
        for r in store.runs()
    }
    assert params == {
        first_id: {"ds": "2026-12-07", "limit": 3},
        again_id: {"ds": "2026-12-07", "limit": 5},
    }
    store.close()
    p = tm_run(tmp_path, "--rerun", "zzzz")
    assert p.returncode == 1 and "no run 'zzzz'" in p.stderr
    p = tm_run(tmp_path)
    assert p.returncode == 2 and "--rerun RUN_ID" in p.stderr
