"""Task logs kept with recorded runs (``tm logs``) and retention (``keep_runs``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tm import Executor, Graph, task


def logging_graph() -> Graph:
    @task
    def hello(context):
        context.logger.info("hello from %s", context.task)
        context.logger.warning("careful")
        context.logger.debug("not kept")
        return 1

    g = Graph("logs")
    g.add(hello)
    return g


def test_task_logger_records_are_kept_with_the_run_and_printed_by_tm_logs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/logs.db"
    with Executor(store=url) as ex:
        run = ex.run(logging_graph())
    ex.store.flush()
    rows = ex.store.core.logs(run.run_id, "hello")
    assert [(r["level"], r["message"]) for r in rows] == [
        ("INFO", "hello from hello"),
        ("WARNING", "careful"),
    ]
    ex.store.close()
    res = subprocess.run(
        [sys.executable, "-m", "tm", "logs", run.run_id, "hello", "--db", url, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert [r["message"] for r in json.loads(res.stdout)] == ["hello from hello", "careful"]
    missing = subprocess.run(
        [sys.executable, "-m", "tm", "logs", "nope", "--db", url],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr


def test_without_a_store_the_task_logger_is_a_plain_logger(caplog) -> None:
    with caplog.at_level("INFO", logger="tm.task"), Executor() as ex:
        assert ex.run(logging_graph()).state == "completed"
    assert [r.getMessage() for r in caplog.records if r.name == "tm.task.hello"] == [
        "hello from hello",
        "careful",
    ]


def test_keep_runs_prunes_old_runs_as_runs_end(tmp_path: Path) -> None:
    with Executor(store=f"sqlite:///{tmp_path}/keep.db", keep_runs=2) as ex:
        ids = [ex.run(logging_graph()).run_id for _ in range(5)]
    ex.store.flush()
    assert [r["run_id"] for r in ex.store.runs()] == ids[:-3:-1]
    assert ex.store.core.logs(ids[0]) == []
    ex.store.close()
    with pytest.raises(ValueError):
        Executor(keep_runs=-1)
