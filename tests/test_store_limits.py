"""A persisted result too big for the database fails its task at once (issue 24, item 10).

SQLite stores at most 1,000,000,000 bytes in one value; the hidden ``TM_SQLITE_MAX_LENGTH``
lowers that limit on the store's write connection so a test need not make a gigabyte.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import tm
from tm._tm import StoreCore
from tm.exceptions import StoreError


def test_a_result_too_big_fails_its_task_not_a_later_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_SQLITE_MAX_LENGTH", "10000")
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")

    @tm.task(persist=True)
    def small() -> bytes:
        return b"s" * 100

    @tm.task(persist=True)
    def big(small: bytes) -> bytes:
        return b"b" * 20_000

    graph = tm.Graph(name="sizes")
    graph.add_edges([small], [big])
    with tm.Executor(workers=1, store=store) as ex:
        run = ex.run(graph)
        assert run.state == "failed"
        assert run.tasks["small"].state == "completed"
        assert run.tasks["big"].state == "failed"
        error = str(run.tasks["big"].error)
        assert "big" in error, error
        assert "bytes" in error and "10000" in error, error
        # Nothing is left to be reported later: the store took every write it was given.
        store.flush()
        row = store.run(run.run_id)
        assert row is not None
        states = {t["name"]: t["status"] for t in row["tasks"]}
        assert states == {"small": "completed", "big": "failed"}
        assert store.result(run.run_id, "small") == b"s" * 100
    store.close()


def test_save_result_refuses_a_value_over_the_limit_when_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_SQLITE_MAX_LENGTH", "4096")
    with StoreCore(f"sqlite:///{tmp_path}/tm.db") as store:
        store.begin_run("r1", "g", "running", "manual", 1, [(0, "a", None, None, None, None)])
        with pytest.raises(StoreError, match="more than") as info:
            store.save_result("r1", 0, "pickle", b"x" * 5000)
        assert str(tmp_path / "tm.db") in str(info.value)
        store.save_result("r1", 0, "pickle", b"x" * 1000)
        store.flush()
        assert store.result("r1", 0) == ("pickle", b"x" * 1000)


def test_a_bad_limit_setting_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TM_SQLITE_MAX_LENGTH", "lots")
    with pytest.raises(StoreError, match="TM_SQLITE_MAX_LENGTH"):
        StoreCore(f"sqlite:///{tmp_path}/tm.db")
