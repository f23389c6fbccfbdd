"""The agent queue on a real disk that fills up under it (a small tmpfs; needs root).

The promise: a clear ``tm.StoreError`` naming the file, no committed task lost or changed (an
SQLite database that passes ``PRAGMA integrity_check``; a JSON state file that is still the last
complete version), and the same TaskManager working again once the disk has room.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _disk import fill, integrity, tmpfs

from tm.exceptions import StoreError
from tm.queue import TaskManager


def test_a_full_disk_fails_the_write_clearly_and_loses_no_commit(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        db = disk / "q.db"
        tm = TaskManager(str(db))
        ids = [tm.create_task("job", {"n": i}) for i in range(40)]
        done = []
        for _ in range(10):
            task = tm.get_next_task("a")
            assert task is not None
            assert tm.complete_task(task["id"], "a", result_data={"ok": task["data"]["n"]})
            done.append(task["id"])
        fill(disk, leave=48 * 1024)
        # Tasks with large payloads until the disk refuses one.
        created = []
        with pytest.raises(StoreError) as info:
            for i in range(1000):
                created.append(tm.create_task("big", {"i": i, "blob": "x" * 8000}))
        assert "full" in str(info.value)
        assert str(db) in str(info.value)
        # Everything committed before the failure is there and unchanged; the failed one is not.
        assert integrity(db) == "ok"
        summary = tm.get_status_summary()
        assert summary["total_tasks"] == 40 + len(created)
        assert summary["status_counts"].get("completed") == 10
        assert summary["type_counts"].get("big", 0) == len(created)
        for tid in done:
            got = tm.get_task(tid)
            assert got is not None and got["status"] == "completed"
        for tid in created:
            got = tm.get_task(tid)
            assert (
                got is not None and got["status"] == "pending" and len(got["data"]["blob"]) == 8000
            )
        # Room again: the same TaskManager drains the queue.
        (disk / "filler").unlink()
        left = set(ids) - set(done) | set(created)
        while (task := tm.get_next_task("a")) is not None:
            assert task["id"] in left
            left.discard(task["id"])
            assert tm.complete_task(task["id"], "a")
        assert left == set()
        assert tm.get_status_summary()["status_counts"] == {"completed": 40 + len(created)}
        del tm
        assert integrity(db) == "ok"


def test_a_full_disk_leaves_the_json_state_file_as_it_was(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        state = disk / "q.json"
        tm = TaskManager(str(state))
        ids = [tm.create_task("job", {"n": i}) for i in range(40)]
        task = tm.get_next_task("a")
        assert task is not None and tm.complete_task(task["id"], "a")
        before = state.read_bytes()
        # Room for the state file but not for a second copy of it with one more large task.
        fill(disk, leave=len(before) + 4096)
        with pytest.raises(StoreError) as info:
            tm.create_task("big", {"blob": "x" * 64 * 1024})
        assert "full" in str(info.value)
        assert str(state) in str(info.value)
        # The state file is the last complete version, and no partial copy is left behind.
        assert state.read_bytes() == before
        assert json.loads(before)["tasks"][task["id"]]["status"] == "completed"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "q.json", "q.json.lock"]
        # Room again: the same TaskManager goes on where the file left off.
        (disk / "filler").unlink()
        big = tm.create_task("big", {"blob": "x" * 64 * 1024})
        left = set(ids) - {task["id"]} | {big}
        while (t := tm.get_next_task("a")) is not None:
            left.discard(t["id"])
            assert tm.complete_task(t["id"], "a")
        assert left == set()
        assert json.loads(state.read_bytes())["tasks"][big]["status"] == "completed"
