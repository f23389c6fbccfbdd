"""``tm queue``: summary, list, show, release, cancel, export and migrate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tm._queue_cli import queue_main
from tm.queue import TaskManager


@pytest.fixture(params=["q.json", "q.db"])
def queue(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, TaskManager, list[str]]:
    path = tmp_path / request.param
    tm = TaskManager(path)
    ids = [tm.create_task("analyze", {"n": 1}), tm.create_task("validate", {"n": 2})]
    tm.get_next_task("worker-001", ["analyze"])
    tm.update_workflow_metadata({"version": "2.0"})
    return path, tm, ids


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = queue_main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_summary(queue, capsys) -> None:
    path, _, _ = queue
    code, out, _ = run([str(path), "summary"], capsys)
    assert code == 0
    assert "total tasks: 2" in out and "in_progress" in out and "version: 2.0" in out
    code, out, _ = run([str(path), "summary", "--json"], capsys)
    s = json.loads(out)
    assert s["status_counts"] == {"pending": 1, "in_progress": 1}


def test_list_and_show(queue, capsys) -> None:
    path, _, ids = queue
    code, out, _ = run([str(path), "list"], capsys)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == [
        "ID",
        "TYPE",
        "STATUS",
        "LOCKED_BY",
        "ATTEMPT",
        "CREATED_AT",
    ]
    assert [ln.split()[0] for ln in lines[1:]] == ids
    code, out, _ = run([str(path), "list", "--status", "pending", "--json"], capsys)
    assert [json.loads(ln)["id"] for ln in out.splitlines()] == [ids[1]]
    code, out, _ = run([str(path), "list", "--type", "analyze", "--limit", "1"], capsys)
    assert len(out.splitlines()) == 2
    code, out, _ = run([str(path), "show", ids[0]], capsys)
    assert code == 0 and json.loads(out)["locked_by"] == "worker-001"
    code, _, err = run([str(path), "show", "nope_00000000"], capsys)
    assert code == 1 and "no task nope_00000000" in err


def test_release_and_cancel(queue, capsys) -> None:
    path, tm, ids = queue
    code, _, err = run([str(path), "release", ids[0], "--agent", "someone-else"], capsys)
    assert code == 1 and "not in progress by someone-else" in err
    code, out, _ = run([str(path), "release", ids[0]], capsys)
    assert code == 0 and out.strip() == f"released {ids[0]}"
    assert tm.get_task(ids[0])["status"] == "pending"
    code, _, err = run([str(path), "release", ids[0]], capsys)
    assert code == 1 and "not in progress" in err
    code, out, _ = run([str(path), "cancel", ids[1]], capsys)
    assert code == 0 and tm.get_task(ids[1])["status"] == "cancelled"


def test_export_is_the_seed_format(queue, capsys, tmp_path: Path) -> None:
    path, _, ids = queue
    code, out, _ = run([str(path), "export"], capsys)
    state = json.loads(out)
    assert code == 0 and list(state) == ["workflow_type", "metadata", "tasks"]
    assert list(state["tasks"]) == ids
    assert out.rstrip("\n") == json.dumps(state, indent=2)
    target = tmp_path / "exported.json"
    assert run([str(path), "export", "-o", str(target)], capsys)[0] == 0
    assert json.loads(target.read_text()) == state


def test_migrate(tmp_path: Path, capsys) -> None:
    src = tmp_path / "a.json"
    tm = TaskManager(src)
    ids = [tm.create_task("t", {"i": i}) for i in range(3)]
    code, out, _ = run(["migrate", str(src), str(tmp_path / "b.db")], capsys)
    assert code == 0 and "migrated 3 tasks" in out
    assert [t["id"] for t in TaskManager(tmp_path / "b.db").list_tasks()] == ids
    code, _, err = run(["migrate", str(src), str(tmp_path / "b.db")], capsys)
    assert code == 1 and "already holds 3 tasks" in err
    code, _, err = run(["migrate", str(tmp_path / "missing.json"), str(tmp_path / "c.db")], capsys)
    assert code == 1 and "no such queue" in err


def test_usage_errors(tmp_path: Path, capsys) -> None:
    assert run([], capsys)[0] == 2
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "tm queue PATH summary" in out
    code, _, err = run([str(tmp_path / "missing.db"), "summary"], capsys)
    assert code == 1 and "no such queue" in err
    assert not (tmp_path / "missing.db").exists()
    TaskManager(tmp_path / "q.db")
    assert run([str(tmp_path / "q.db")], capsys)[0] == 2
    assert run([str(tmp_path / "q.db"), "frobnicate"], capsys)[0] == 2
    assert run([str(tmp_path / "q.db"), "list", "--limit", "x"], capsys)[0] == 2
    assert run(["migrate", "only-one"], capsys)[0] == 2


def test_a_corrupt_file_is_a_failure_not_a_crash(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    code, _, err = run([str(bad), "summary"], capsys)
    assert code == 1 and "corrupt state file" in err
    assert bad.read_text() == "{nope"
