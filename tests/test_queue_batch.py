"""Batches: ``get_next_tasks`` claims several tasks and ``complete_tasks`` finishes several, each
in one step, on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from tm.queue import TaskManager, TaskStatus


@pytest.fixture(params=["json", "sqlite"])
def tm(tmp_path: Path, request: pytest.FixtureRequest) -> TaskManager:
    return TaskManager(tmp_path / ("q.json" if request.param == "json" else "q.db"))


def test_get_next_tasks_claims_in_get_next_task_order(tm: TaskManager) -> None:
    low = tm.create_task("t", {"n": 0})
    high = tm.create_task("t", {"n": 1}, priority=2)
    other = tm.create_task("u", {"n": 2})
    last = tm.create_task("t", {"n": 3})
    got = tm.get_next_tasks("w", ["t"], max_tasks=2)
    assert [t["id"] for t in got] == [high, low]
    assert [(t["status"], t["locked_by"], t["attempt"]) for t in got] == [
        ("in_progress", "w", 1),
        ("in_progress", "w", 1),
    ]
    assert got[0]["data"] == {"n": 1}
    assert [t["id"] for t in tm.get_next_tasks("v")] == [other, last]
    assert tm.get_next_tasks("v") == []
    assert tm.get_status_summary()["status_counts"] == {"in_progress": 4}


def test_get_next_tasks_refuses_a_bad_count(tm: TaskManager) -> None:
    tm.create_task("t", {})
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_tasks"):
            tm.get_next_tasks("w", max_tasks=bad)  # type: ignore[arg-type]
    assert tm.get_status_summary()["status_counts"] == {"pending": 1}


def test_complete_tasks_takes_ids_claimed_dicts_and_results(tm: TaskManager) -> None:
    ids = [tm.create_task("t", {"n": i}) for i in range(4)]
    claimed = tm.get_next_tasks("w", max_tasks=3)
    flags = tm.complete_tasks(
        [ids[0], (claimed[1], {"rows": 2}), claimed[2], ids[3]],
        "w",
    )
    assert flags == [True, True, True, False]  # ids[3] was never claimed
    assert [tm.get_task(i)["status"] for i in ids] == ["completed"] * 3 + ["pending"]
    assert tm.get_task(ids[1])["data"] == {"n": 1, "result": {"rows": 2}}
    assert tm.get_task(ids[0])["data"] == {"n": 0}
    assert tm.complete_tasks([ids[0]], "w") == [False]  # already done
    assert tm.complete_tasks([], "w") == []


def test_a_claimed_dict_fences_its_completion(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    patient = TaskManager(path)
    reaper = TaskManager(path, task_timeout_hours=0)
    task_id = patient.create_task("t", {})
    first = patient.get_next_tasks("w")[0]
    second = reaper.get_next_task("w")  # the lease expired; the same agent id claims again
    assert second["attempt"] == 2
    assert patient.complete_tasks([first], "w") == [False]
    assert patient.complete_tasks([second], "w") == [True]
    assert patient.get_task(task_id)["status"] == "completed"


def test_failed_batches_settle_waiting_children(tm: TaskManager) -> None:
    parent = tm.create_task("p", {})
    child = tm.create_task("c", {}, parent_id=parent, wait_for_parent=True)
    ok = tm.create_task("p", {})
    ok_child = tm.create_task("c", {}, parent_id=ok, wait_for_parent=True)
    assert len(tm.get_next_tasks("w", ["p"])) == 2
    assert tm.complete_tasks([parent], "w", TaskStatus.FAILED) == [True]
    assert tm.get_task(child)["status"] == "cancelled"
    assert tm.complete_tasks([ok], "w") == [True]
    assert [t["id"] for t in tm.get_next_tasks("w", ["c"])] == [ok_child]


def test_a_bad_item_finishes_nothing(tm: TaskManager) -> None:
    a = tm.create_task("t", {})
    b = tm.create_task("t", {})
    tm.get_next_tasks("w")
    with pytest.raises(TypeError, match="not JSON serializable"):
        tm.complete_tasks([a, (b, {"x": object()})], "w")
    with pytest.raises(ValueError, match="completed, failed or cancelled"):
        tm.complete_tasks([a], "w", status="pending")
    with pytest.raises(TypeError, match="task must be"):
        tm.complete_tasks([a, 7], "w")  # type: ignore[list-item]
    assert [tm.get_task(i)["status"] for i in (a, b)] == ["in_progress", "in_progress"]
    # NaN is not JSON: refused before anything is finished, like complete_task does.
    with pytest.raises(ValueError, match="NaN or Infinity"):
        tm.complete_tasks([a, (b, {"x": float("nan")})], "w")
    assert [tm.get_task(i)["status"] for i in (a, b)] == ["in_progress", "in_progress"]
    assert tm.complete_tasks([a, (b, {"x": None})], "w") == [True, True]
    assert tm.get_task(b)["data"]["result"] == {"x": None}
