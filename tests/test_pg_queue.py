"""The agent queue on a real PostgreSQL server.

The seed API tests (test_queue_api.py) and the many-process tests (test_queue_concurrency.py:
eight processes claim every task once; SIGKILLed workers lose nothing) are parametrised over
PostgreSQL too; this file runs the Rust queue tests against the server and checks what only
PostgreSQL has.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pg
import pytest

from tm.queue import TaskManager, migrate

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs the Rust toolchain")
def test_rust_queue_tests_pass_on_postgresql(pg_url: str) -> None:
    res = subprocess.run(
        ["cargo", "test", "--no-default-features", "-q", "--lib", "queue::tests"],
        cwd=ROOT,
        env={**os.environ, "TM_TEST_PG_URL": pg_url},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = subprocess.run(
        [
            "psql",
            pg_url,
            "-Atc",
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tm_queue_%'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # Each shared test made a schema of its own on the server: they really ran there.
    assert int(out.stdout) >= 10, out.stdout


def test_a_queue_migrates_from_sqlite_to_postgresql_and_back(tmp_path: Path, pg_url: str) -> None:
    src = TaskManager(tmp_path / "q.db")
    parent = src.create_task("p", {"k": "v"}, priority=2)
    src.create_task("c", {"x": [1, 2]}, parent_id=parent, wait_for_parent=True, max_attempts=3)
    assert migrate(str(tmp_path / "q.db"), pg_url) == 2
    pg = TaskManager(pg_url)
    assert pg.backend == "postgresql"
    assert pg.get_next_task("w")["id"] == parent  # the child waits for its parent
    assert pg.get_next_task("w") is None
    assert pg.complete_task(parent, "w")
    child = pg.get_next_task("w")
    assert child["data"] == {"x": [1, 2]} and child["max_attempts"] == 3
    assert migrate(pg_url, str(tmp_path / "back.json")) == 2
    back = TaskManager(tmp_path / "back.json")
    assert {t["status"] for t in back.list_tasks()} == {"completed", "in_progress"}


def test_a_blocked_claim_sleeps_on_listen_and_another_process_wakes_it(pg_url: str) -> None:
    """A claim with ``wait=`` listens for the queue's notifications instead of polling the
    server; a task created by another process wakes it."""
    TaskManager(pg_url)  # the schema exists before the waiter starts
    code = (
        "import json, sys\n"
        "from tm.queue import TaskManager\n"
        f"tm = TaskManager({pg_url!r})\n"
        "print('waiting', flush=True)\n"
        "t = tm.get_next_task('w', wait=600)\n"
        "print(json.dumps(t['data']), flush=True)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "waiting"

    while (
        pg.listening(pg_url, "tm_queue") < 1
    ):  # the waiter's first version check precedes its LISTEN session
        assert p.poll() is None
        time.sleep(0.01)
    TaskManager(pg_url).create_task("job", {"from": "another process"})
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0 and '{"from": "another process"}' in out
