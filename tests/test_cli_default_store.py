"""Every ``tm`` command uses one default store: ``--db``, else ``$TM_DB_URL``, else
``.tm/tm.db`` in the working directory (as ``tm.Store()``). ``tm start`` without ``--db`` records
there, so ``tm runs`` and ``tm status`` see its runs; the commands that only read refuse a
directory without a store instead of creating an empty database. Real subprocesses throughout,
synchronised on the service's own output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SCHEDULED = textwrap.dedent(
    """
    import tm

    tick = tm.Graph("tick", schedule="* * * * * *")


    @tm.task
    def work(context):
        print("RUN", context.meta["trigger"], flush=True)


    tick.add(work)
    """
)

# The same graph under an executor the file makes itself, without a store.
WITH_EXECUTOR = SCHEDULED + textwrap.dedent(
    """
    executor = tm.Executor()
    executor.add(tick)
    """
)


# As seed 004's examples are written: the file starts its executor itself, at import.
STARTS_ITSELF = WITH_EXECUTOR + "executor.start()\n"


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TM_DB_URL", "TM_RESULT_DIR")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tm_cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args],
        cwd=cwd,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def serve_one_run(cwd: Path, script: Path, env: dict[str, str]) -> None:
    """``tm start SCRIPT`` (no --db) until its first run printed, then SIGINT."""
    p = subprocess.Popen(
        [sys.executable, "-m", "tm", "start", str(script)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    lines = []
    for _ in range(50):
        line = p.stdout.readline()
        assert line, f"tm start exited early: {lines} {p.communicate(timeout=20)[1]}"
        lines.append(line)
        if line.startswith("RUN"):
            break
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err


@pytest.mark.parametrize(
    "source", [SCHEDULED, WITH_EXECUTOR, STARTS_ITSELF], ids=["graphs", "executor", "seed-style"]
)
def test_tm_start_without_db_records_in_the_default_store(tmp_path: Path, source: str) -> None:
    script = tmp_path / "service.py"
    script.write_text(source)
    serve_one_run(tmp_path, script, clean_env())
    assert (tmp_path / ".tm" / "tm.db").is_file()

    r = tm_cli(tmp_path, "runs", "--json")
    assert r.returncode == 0, r.stderr
    runs = json.loads(r.stdout)
    assert runs and {run["graph"] for run in runs} == {"tick"}

    r = tm_cli(tmp_path, "status", "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)
    assert row["graph"] == "tick" and row["last_run_id"] in {run["run_id"] for run in runs}

    r = tm_cli(tmp_path, "show", runs[0]["run_id"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["graph"] == "tick"


BLOCKING = textwrap.dedent(
    """
    import os
    import time

    import tm

    tick = tm.Graph("tick", schedule="* * * * * *")


    @tm.task
    def work(context):
        trigger = context.meta["trigger"]
        print("RUN", trigger, flush=True)
        if os.environ.get("BLOCK"):
            while True:
                time.sleep(0.05)


    tick.add(work)
    """
)


def test_a_restarted_tm_start_without_db_resumes_the_killed_run(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(BLOCKING)
    first = subprocess.Popen(
        [sys.executable, "-m", "tm", "start", str(script)],
        cwd=tmp_path,
        env=clean_env(BLOCK="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert first.stdout is not None
    assert first.stdout.readline().startswith("RUN schedule")
    first.kill()  # mid-run: the run stays `running` in .tm/tm.db
    first.wait(timeout=60)
    first.stdout.close()
    [killed] = json.loads(tm_cli(tmp_path, "runs", "--json").stdout)
    assert killed["state"] == "running"

    second = subprocess.Popen(
        [sys.executable, "-m", "tm", "start", str(script)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert second.stdout is not None
    seen = []
    for _ in range(50):
        line = second.stdout.readline()
        assert line, seen
        seen.append(line.strip())
        if line.startswith("RUN resume"):
            break
    second.send_signal(signal.SIGINT)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "RUN resume" in seen
    r = tm_cli(tmp_path, "show", killed["run_id"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "completed"


def test_tm_start_and_tm_runs_follow_tm_db_url(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(SCHEDULED)
    env = clean_env(TM_DB_URL=f"sqlite:///{tmp_path}/elsewhere.db")
    serve_one_run(tmp_path, script, env)
    assert (tmp_path / "elsewhere.db").is_file()
    assert not (tmp_path / ".tm").exists()
    r = tm_cli(tmp_path, "runs", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert {run["graph"] for run in json.loads(r.stdout)} == {"tick"}


@pytest.mark.parametrize(
    "args",
    [("runs",), ("show", "abc"), ("status",), ("logs", "abc"), ("runs", "--json")],
    ids=["runs", "show", "status", "logs", "runs-json"],
)
def test_reading_commands_refuse_a_directory_without_a_store(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    r = tm_cli(tmp_path, *args)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "no tm database" in r.stderr and str(tmp_path / ".tm" / "tm.db") in r.stderr
    assert "--db" in r.stderr and "TM_DB_URL" in r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_reading_commands_refuse_a_missing_db_file(tmp_path: Path) -> None:
    missing = tmp_path / "sub" / "missing.db"
    for url in (f"sqlite:///{missing}", str(missing)):
        r = tm_cli(tmp_path, "status", "--db", url)
        assert r.returncode == 1
        assert "no tm database" in r.stderr and str(missing) in r.stderr
        r = tm_cli(tmp_path, "runs", env=clean_env(TM_DB_URL=url))
        assert r.returncode == 1 and str(missing) in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_tm_resume_in_a_directory_without_a_store(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text("import tm\n\ngraph = tm.Graph('g')\n")
    r = tm_cli(tmp_path, "resume", "abc", "--graph", "flow.py:graph")
    assert r.returncode == 1
    assert "no tm database" in r.stderr
    assert not (tmp_path / ".tm").exists()
