"""Sharp edges of the ``tm`` command line: a graph file whose functions live next to it, a reader
that stops reading, and option values outside their set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tm.cli import main
from tm.queue import TaskManager

# The installed console script: unlike `python -m tm`, it does not put the working directory on
# sys.path by itself.
CONSOLE_SCRIPT = Path(sys.executable).parent / "tm"


def test_tm_graph_imports_a_module_of_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / "steps_mod.py").write_text(
        textwrap.dedent(
            """
            def fetch():
                return 1

            def report(fetch):
                return fetch
            """
        )
    )
    (tmp_path / "flow.json").write_text(
        json.dumps(
            {
                "tasks": [
                    {"name": "fetch", "function": "steps_mod.fetch"},
                    {"name": "report", "function": "steps_mod:report", "depends_on": ["fetch"]},
                ]
            }
        )
    )
    assert CONSOLE_SCRIPT.exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [str(CONSOLE_SCRIPT), "graph", "flow.json", "--format", "text"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["fetch", "report <- fetch"]


@pytest.mark.parametrize("suffix", ["json", "db"])
def test_tm_queue_list_into_a_pipe_closed_early_ends_quietly(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"q.{suffix}"
    TaskManager(path).create_tasks([("job", {"n": i}) for i in range(3000)])
    # Far more output than a pipe buffer holds: the writer is still writing when the reader
    # goes, as with `tm queue PATH list | head -1`.
    for args in (["list"], ["list", "--json"], ["export"]):
        p = subprocess.Popen(
            [sys.executable, "-m", "tm", "queue", str(path), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert p.stdout is not None and p.stderr is not None
        assert p.stdout.readline()
        p.stdout.close()
        err = p.stderr.read().decode()
        p.stderr.close()
        p.wait(timeout=60)
        assert err == "", err
        assert p.returncode != 0  # the listing did not complete


def test_any_command_into_a_pipe_closed_early_ends_quietly(tmp_path: Path) -> None:
    # The pipe guard in main() covers every command, not only tm queue.
    p = subprocess.Popen(
        [sys.executable, "-m", "tm", "cron", "* * * * * *", "-n", "200000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stderr is not None
    assert p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    p.stderr.close()
    p.wait(timeout=60)
    assert err == ""


def test_tm_runs_state_must_be_a_run_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "--state", "bogus", "--db", "sqlite://:memory:"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err
    for state in ("running", "completed", "failed", "cancelled"):
        assert state in err
