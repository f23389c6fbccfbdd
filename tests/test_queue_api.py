"""tm.queue.TaskManager: the seed 001 API and tm's additions, on every backend."""

from __future__ import annotations

import gc
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _forking import SteppedChild, in_forked_child

from tm.exceptions import TmError
from tm.queue import CorruptStateError, QueueLockTimeout, TaskManager, TaskStatus, migrate

BACKENDS = ["json", "sqlite", "sqlite-url", "postgresql"]

# PostgreSQL databases made for (test dir, name); the server is the session's (tests/pg.py).
_PG: dict[tuple[Path, str], str] = {}
_PG_SERVER: list = []


def store(tmp_path: Path, kind: str, name: str = "q") -> str | Path:
    if kind == "postgresql":
        if (tmp_path, name) not in _PG:
            _PG[(tmp_path, name)] = _PG_SERVER[0].create_db()
        return _PG[(tmp_path, name)]
    if kind == "json":
        return tmp_path / f"{name}.json"
    if kind == "sqlite":
        return tmp_path / f"{name}.db"
    return f"sqlite:///{tmp_path / name}.sqlite3"


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and not _PG_SERVER:
        _PG_SERVER.append(request.getfixturevalue("pg_server"))
    return request.param


@pytest.fixture
def tm(tmp_path: Path, kind: str) -> TaskManager:
    return TaskManager(store(tmp_path, kind))


SEED_KEYS = [
    "id",
    "type",
    "status",
    "parent_id",
    "locked_by",
    "locked_at",
    "created_at",
    "completed_at",
    "data",
]
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?$")


def test_backend_follows_the_path(tmp_path: Path, kind: str) -> None:
    tm = TaskManager(store(tmp_path, kind))
    assert tm.backend == {"json": "json", "postgresql": "postgresql"}.get(kind, "sqlite")
    if kind == "sqlite-url":
        assert (tmp_path / "q.sqlite3").exists()


def test_task_dicts_have_the_seed_shape(tm: TaskManager) -> None:
    task_id = tm.create_task("analyze", {"file": "data.csv", "params": {"threshold": 0.8}})
    assert re.fullmatch(r"analyze_[0-9a-f]{8}", task_id)
    t = tm.get_task(task_id)
    assert t is not None
    assert list(t)[: len(SEED_KEYS)] == SEED_KEYS
    assert t["id"] == task_id and t["type"] == "analyze"
    assert t["status"] == "pending" == TaskStatus.PENDING
    assert (t["parent_id"], t["locked_by"], t["locked_at"], t["completed_at"]) == (None,) * 4
    assert ISO.match(t["created_at"])
    assert t["data"] == {"file": "data.csv", "params": {"threshold": 0.8}}
    assert (t["priority"], t["attempt"], t["max_attempts"], t["wait_for_parent"]) == (
        0,
        0,
        None,
        False,
    )
    assert tm.get_task("analyze_00000000") is None


def test_task_status_is_a_string_enum() -> None:
    assert [s.value for s in TaskStatus] == [
        "pending",
        "in_progress",
        "completed",
        "failed",
        "cancelled",
    ]
    assert TaskStatus.COMPLETED == "completed" and str(TaskStatus.FAILED) == "failed"
    assert isinstance(TaskStatus.PENDING, str)


def test_claims_are_oldest_first_and_filtered_by_type(tm: TaskManager) -> None:
    a1 = tm.create_task("a", {"i": 1})
    b1 = tm.create_task("b", {"i": 2})
    a2 = tm.create_task("a", {"i": 3})
    t = tm.get_next_task("w1", ["b"])
    assert t is not None and t["id"] == b1
    assert (t["status"], t["locked_by"], t["attempt"]) == ("in_progress", "w1", 1)
    assert ISO.match(t["locked_at"])
    assert tm.get_next_task("w1", ["b"]) is None
    assert tm.get_next_task("w2", task_types="a")["id"] == a1  # a lone string is one type
    assert tm.get_next_task("w3", [])["id"] == a2  # empty means any type, as in the seed
    assert tm.get_next_task("w4") is None


def test_complete_and_release_need_the_holder(tm: TaskManager) -> None:
    task_id = tm.create_task("t", {"x": 1})
    assert tm.complete_task(task_id, "w1") is False
    assert tm.release_task(task_id, "w1") is False
    tm.get_next_task("w1")
    assert tm.complete_task(task_id, "w2") is False
    assert tm.release_task(task_id, "w2") is False
    assert tm.complete_task(task_id, "w1", result_data={"output": "results.json"}) is True
    assert tm.complete_task(task_id, "w1") is False
    t = tm.get_task(task_id)
    assert t["status"] == "completed" and ISO.match(t["completed_at"])
    assert t["data"] == {"x": 1, "result": {"output": "results.json"}}
    assert t["locked_by"] == "w1"


def test_failed_and_cancelled_completions(tm: TaskManager) -> None:
    ids = [tm.create_task("t", {}) for _ in range(3)]
    for _ in ids:
        tm.get_next_task("w")
    assert tm.complete_task(ids[0], "w", TaskStatus.FAILED, {"error": "boom"})
    assert tm.complete_task(ids[1], "w", status="cancelled")
    with pytest.raises(ValueError, match="completed, failed or cancelled"):
        tm.complete_task(ids[2], "w", TaskStatus.PENDING)
    with pytest.raises(ValueError):
        tm.complete_task(ids[2], "w", "done")
    assert [tm.get_task(i)["status"] for i in ids] == ["failed", "cancelled", "in_progress"]
    assert tm.get_task(ids[0])["data"] == {"result": {"error": "boom"}}


def test_release_makes_a_task_claimable_again(tm: TaskManager) -> None:
    task_id = tm.create_task("t", {})
    tm.get_next_task("w1")
    assert tm.release_task(task_id, "w1") is True
    t = tm.get_task(task_id)
    assert (t["status"], t["locked_by"], t["locked_at"]) == ("pending", None, None)
    again = tm.get_next_task("w2")
    assert (again["id"], again["attempt"]) == (task_id, 2)


def test_children_and_summary(tm: TaskManager) -> None:
    parent = tm.create_task("analyze", {"file": "data.csv"})
    kids = [tm.create_task("validate", {"n": i}, parent_id=parent) for i in range(2)]
    tm.create_task("analyze", {})
    assert [c["id"] for c in tm.get_task_children(parent)] == kids
    assert tm.get_task_children(kids[0]) == []
    tm.get_next_task("w", ["validate"])
    tm.update_workflow_metadata({"version": "2.0", "environment": "production"})
    tm.update_workflow_metadata({"started_by": "scheduler"})
    s = tm.get_status_summary()
    assert s["total_tasks"] == 4
    assert s["status_counts"] == {"pending": 3, "in_progress": 1}
    assert list(s["status_counts"]) == ["pending", "in_progress"]
    assert s["type_counts"] == {"analyze": 2, "validate": 2}
    meta = s["metadata"]
    assert list(meta)[:2] == ["initialized_at", "last_updated"]
    assert meta["version"] == "2.0" and meta["started_by"] == "scheduler"
    assert ISO.match(meta["initialized_at"]) and ISO.match(meta["last_updated"])


def test_expired_leases_return_and_old_holders_are_fenced(tmp_path: Path, kind: str) -> None:
    path = store(tmp_path, kind)
    patient = TaskManager(path)  # 24 h leases
    impatient = TaskManager(path, task_timeout_hours=0)  # every lease has expired
    task_id = patient.create_task("t", {})
    first = patient.get_next_task("w")
    assert patient.get_next_task("x") is None
    second = impatient.get_next_task("w")  # the same agent id, restarted
    assert (second["id"], first["attempt"], second["attempt"]) == (task_id, 1, 2)
    assert patient.complete_task(task_id, "w", attempt=first["attempt"]) is False
    assert patient.extend_lease(task_id, "w", attempt=first["attempt"]) is False
    assert patient.extend_lease(task_id, "w", attempt=second["attempt"]) is True
    assert patient.complete_task(task_id, "w", attempt=second["attempt"]) is True
    assert patient.get_task(task_id)["attempt"] == 2


def test_max_attempts_fails_abandoned_tasks(tmp_path: Path, kind: str) -> None:
    path = store(tmp_path, kind)
    tm = TaskManager(path, max_attempts=2)
    reaper = TaskManager(path, task_timeout_hours=0)
    task_id = tm.create_task("t", {})
    assert tm.get_task(task_id)["max_attempts"] == 2
    tm.get_next_task("w")
    assert reaper.get_next_task("w")["attempt"] == 2
    assert reaper.get_next_task("w") is None  # second lease expired: attempts used up
    t = tm.get_task(task_id)
    assert t["status"] == "failed" and t["completed_at"] is not None
    once = tm.create_task("t", {}, max_attempts=1)
    tm.get_next_task("w")
    assert tm.release_task(once, "w")
    assert tm.get_task(once)["status"] == "failed"


def test_priorities(tm: TaskManager) -> None:
    low = tm.create_task("t", {})
    high = tm.create_task("t", {}, priority=10)
    mid = tm.create_task("t", {}, priority=5)
    order = [tm.get_next_task("w")["id"] for _ in range(3)]
    assert order == [high, mid, low]


def test_wait_for_parent(tm: TaskManager) -> None:
    parent = tm.create_task("p", {})
    child = tm.create_task("c", {}, parent_id=parent, wait_for_parent=True)
    grandchild = tm.create_task("g", {}, parent_id=child, wait_for_parent=True)
    assert tm.get_next_task("w", ["c", "g"]) is None
    assert tm.get_next_task("w", ["p"])["id"] == parent
    assert tm.complete_task(parent, "w")
    assert tm.get_next_task("w", ["c", "g"])["id"] == child
    assert tm.complete_task(child, "w", TaskStatus.FAILED)
    assert tm.get_task(grandchild)["status"] == "cancelled"
    with pytest.raises(ValueError, match="parent_id"):
        tm.create_task("c", {}, wait_for_parent=True)
    with pytest.raises(ValueError, match="does not exist"):
        tm.create_task("c", {}, parent_id="p_00000000", wait_for_parent=True)


def test_cancel_task(tm: TaskManager) -> None:
    a = tm.create_task("t", {})
    b = tm.create_task("t", {})
    assert tm.cancel_task(a) is True
    assert tm.cancel_task(a) is False
    assert tm.get_task(a)["status"] == "cancelled"
    assert tm.get_next_task("w")["id"] == b
    assert tm.cancel_task(b) is False  # in progress
    assert tm.force_release(b) is True
    assert tm.get_task(b)["status"] == "pending"


def test_create_tasks_in_one_step(tm: TaskManager) -> None:
    ids = tm.create_tasks([("a", {"n": 1}), {"task_type": "b", "data": {"n": 2}, "priority": 3}])
    assert [tm.get_task(i)["type"] for i in ids] == ["a", "b"]
    with pytest.raises(TypeError, match="dict"):
        tm.create_tasks([("a", {}), ("b", [1, 2])])
    assert tm.get_status_summary()["total_tasks"] == 2  # all or none


def test_bad_data_is_refused(tm: TaskManager) -> None:
    with pytest.raises(TypeError):
        tm.create_task("t", {"when": object()})
    with pytest.raises(ValueError, match="empty"):
        tm.create_task("", {})
    assert tm.create_task("t", None)  # no data is an empty dict
    assert tm.get_status_summary()["total_tasks"] == 1


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_and_infinity_are_refused(tm: TaskManager, value: float) -> None:
    # Not JSON (RFC 8259): a state file holding them is not valid JSON for other readers.
    with pytest.raises(ValueError, match="NaN or Infinity"):
        tm.create_task("t", {"x": [1, {"y": value}]})
    with pytest.raises(ValueError, match="NaN or Infinity"):
        tm.create_tasks([("t", {"ok": 1}), ("t", {"x": value})])
    with pytest.raises(ValueError, match="NaN or Infinity"):
        tm.update_workflow_metadata({"x": value})
    tid = tm.create_task("t", {"ok": 1})
    assert tm.get_next_task("a")["id"] == tid
    with pytest.raises(ValueError, match="NaN or Infinity"):
        tm.complete_task(tid, "a", result_data={"x": value})
    assert tm.get_task(tid)["status"] == "in_progress"
    assert tm.get_status_summary()["total_tasks"] == 1
    if tm.backend == "json":
        json.loads(Path(tm.state_file).read_text(), parse_constant=pytest.fail)


def test_lone_surrogates_are_refused(tm: TaskManager) -> None:
    with pytest.raises(ValueError, match="task_type"):
        tm.create_task("a\ud800", {})
    with pytest.raises(ValueError, match="task_type"):
        tm.create_tasks([("ok", {}), ("\udfff", {})])
    with pytest.raises(ValueError, match="task type"):
        tm.get_next_task("agent", ["\ud800"])
    with pytest.raises(ValueError, match="task type"):
        tm.list_tasks(task_type="\ud800")
    assert tm.get_status_summary()["total_tasks"] == 0
    # In data they are escaped by the JSON encoder and come back as they went in.
    t = tm.get_task(tm.create_task("t", {"s": "\ud800"}))
    assert t["data"] == {"s": "\ud800"}


@pytest.mark.parametrize("bad", [-1, 2**32, 2**70, 1.5, "3", True])
def test_max_attempts_out_of_range_is_a_value_error(tm: TaskManager, bad: object) -> None:
    with pytest.raises((ValueError, TypeError), match="max_attempts"):
        tm.create_task("t", {}, max_attempts=bad)  # type: ignore[arg-type]
    with pytest.raises((ValueError, TypeError), match="max_attempts"):
        TaskManager(tm.state_file, max_attempts=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        tm.create_task("t", {}, max_attempts=-1)
    assert tm.get_status_summary()["total_tasks"] == 0
    assert tm.get_task(tm.create_task("t", {}, max_attempts=2**32 - 1))["max_attempts"] == 2**32 - 1


def test_data_round_trips_unicode_and_numbers(tm: TaskManager) -> None:
    data = {"text": 'café € 😀 \n\t"', "big": 2**70, "f": 1e-7, "neg": -0.0, "l": [None]}
    t = tm.get_task(tm.create_task("t", data))
    assert t["data"] == data


@pytest.mark.parametrize(
    "dump",
    [
        {"indent": 2},
        {"indent": "\t"},
        {"separators": (",", ":")},
        {"separators": (" , ", " :  ")},
        {"indent": 1, "ensure_ascii": False},
    ],
)
def test_data_read_from_any_layout_is_what_json_load_reads(tmp_path: Path, dump: dict) -> None:
    values = [
        {"a": [1, 2.5, {"b": None}], "s": 'é€😀\\"', "n": float("nan")},
        [],
        "text",
        -0.0,
        10**30,
        None,
        True,
        {},
        {"nested": {"deep": [[[]]], "ws": " \n "}},
    ]
    tasks = {
        f"t_{i:08x}": {
            "type": "t",
            "status": "pending",
            "parent_id": None,
            "locked_by": None,
            "locked_at": None,
            "created_at": f"2024-01-01T10:00:{i:02d}",
            "completed_at": None,
            "data": v,
        }
        for i, v in enumerate(values)
    }
    path = tmp_path / "layout.json"
    path.write_text(
        json.dumps({"workflow_type": "generic", "metadata": {}, "tasks": tasks}, **dump)
    )
    want = json.loads(path.read_text())["tasks"]
    tm = TaskManager(path)
    for task_id, entry in want.items():
        got = tm.get_task(task_id)["data"]
        assert json.dumps(got) == json.dumps(entry["data"]), task_id  # NaN != NaN, dumps agree
    claimed = [tm.get_next_task("w") for _ in values]
    assert [json.dumps(t["data"]) for t in claimed] == [
        json.dumps(e["data"]) for e in want.values()
    ]
    db = TaskManager(tmp_path / "layout.db")
    # New data cannot hold NaN (not JSON); the rest goes through SQLite as written.
    fresh = [v for v in values if isinstance(v, dict) and "n" not in v]
    ids = [db.create_task("t", v) for v in fresh]
    assert [json.dumps(db.get_task(i)["data"]) for i in ids] == [json.dumps(v) for v in fresh]
    # Text another program wrote: surrounding space is JSON too; trailing text is an error.
    with sqlite3.connect(tmp_path / "layout.db") as c:
        c.execute("UPDATE tm_queue_tasks SET data = ? WHERE id = ?", (' \n{"a": 1} \t', ids[0]))
        c.execute("UPDATE tm_queue_tasks SET data = ? WHERE id = ?", ('{"a": 1} x', ids[1]))
    assert db.get_task(ids[0])["data"] == {"a": 1}
    with pytest.raises(json.JSONDecodeError, match="Extra data"):
        db.get_task(ids[1])


def test_list_tasks(tm: TaskManager) -> None:
    ids = [tm.create_task("even" if i % 2 == 0 else "odd", {}) for i in range(5)]
    tm.get_next_task("w")
    assert [t["id"] for t in tm.list_tasks()] == ids
    assert [t["id"] for t in tm.list_tasks(status="pending", task_type="even")] == ids[2::2]
    assert len(tm.list_tasks(limit=2)) == 2


def test_blocking_get_next_task_waits_without_the_gil(tm: TaskManager) -> None:
    got: list[dict] = []
    # wait=600 outlasts the test's timeout: the waiter must be woken by the new task.
    waiter = threading.Thread(target=lambda: got.append(tm.get_next_task("w", wait=600)))
    waiter.start()
    # This thread runs Python while the other waits: a wait that held the GIL would hang here.
    task_id = tm.create_task("t", {"made": "later"})
    waiter.join()
    assert got and got[0]["id"] == task_id
    assert tm.get_next_task("w", wait=0.01) is None


def test_blocking_wait_is_interrupted_by_ctrl_c(tmp_path: Path, kind: str) -> None:
    code = (
        "import sys\n"
        "from tm.queue import TaskManager\n"
        f"tm = TaskManager({str(store(tmp_path, kind))!r})\n"
        "try:\n"
        "    print('waiting', flush=True)\n"
        "    tm.get_next_task('w', wait=600)\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "waiting"
    p.send_signal(2)  # SIGINT
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 3 and "interrupted" in out


def test_migrate_between_backends(tmp_path: Path) -> None:
    src = TaskManager(tmp_path / "a.json")
    p = src.create_task("p", {"k": "v"}, priority=2)
    src.create_task("c", {}, parent_id=p, wait_for_parent=True, max_attempts=3)
    src.get_next_task("w", ["p"])
    src.update_workflow_metadata({"owner": "me"})
    assert migrate(tmp_path / "a.json", tmp_path / "b.db") == 2
    db = TaskManager(tmp_path / "b.db")
    for t in src.list_tasks():
        assert db.get_task(t["id"]) == t
    assert db.get_status_summary()["metadata"]["owner"] == "me"
    assert db.get_next_task("x", ["c"]) is None
    assert db.complete_task(p, "w")
    assert db.get_next_task("x", ["c"])["parent_id"] == p
    assert migrate(tmp_path / "b.db", tmp_path / "c.json") == 2
    with pytest.raises(ValueError, match="already holds"):
        migrate(tmp_path / "a.json", tmp_path / "c.json")


def test_errors_are_tm_errors_with_builtin_bases(tmp_path: Path) -> None:
    assert issubclass(QueueLockTimeout, TimeoutError) and issubclass(QueueLockTimeout, TmError)
    assert issubclass(CorruptStateError, ValueError) and issubclass(CorruptStateError, TmError)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(CorruptStateError):
        TaskManager(tmp_path / "bad.json")


def test_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    from tm.exceptions import StoreError

    path = tmp_path / "notes.txt"
    path.write_text("x" * 200)
    with pytest.raises(StoreError, match="not a database"):
        TaskManager(path)
    assert path.read_text() == "x" * 200


def test_one_manager_from_many_threads(tm: TaskManager) -> None:
    ids = set(tm.create_tasks([("t", {"n": i}) for i in range(200)]))
    done: list[str] = []
    lock = threading.Lock()

    def work(agent: str) -> None:
        while (t := tm.get_next_task(agent)) is not None:
            assert tm.complete_task(t["id"], agent, attempt=t["attempt"])
            with lock:
                done.append(t["id"])

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(done) == sorted(ids)
    assert tm.get_status_summary()["status_counts"] == {"completed": 200}


def test_json_state_file_is_what_pythons_json_dump_writes(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    tm = TaskManager(path)
    p = tm.create_task("analyze", {"file": "data.csv", "unicode": "é€😀", "n": [1.5, 2, {}]})
    tm.create_task("validate", {"validation_type": "schema"}, parent_id=p, priority=3)
    tm.get_next_task("worker-001", ["analyze"])
    tm.complete_task(p, "worker-001", result_data={"output": "results.json"})
    tm.update_workflow_metadata({"version": "2.0", "nested": {"a": [1, 2]}})
    text = path.read_text()
    state = json.loads(text)
    assert text == json.dumps(state, indent=2)
    assert list(state) == ["workflow_type", "metadata", "tasks"]
    assert state["workflow_type"] == "generic"
    entry = state["tasks"][p]
    assert list(entry) == [*SEED_KEYS[1:], "attempt"]
    child = state["tasks"][next(k for k in state["tasks"] if k != p)]
    assert list(child) == [*SEED_KEYS[1:], "priority"]


def test_a_seed_written_state_file_is_used_in_place(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    state = {
        "workflow_type": "generic",
        "metadata": {"initialized_at": "2024-01-01T10:00:00", "custom_field": "custom_value"},
        "tasks": {
            "analyze_12345678": {
                "type": "analyze",
                "status": "pending",
                "parent_id": None,
                "locked_by": None,
                "locked_at": None,
                "created_at": "2024-01-01T10:00:00",
                "completed_at": None,
                "data": {"custom": "fields", "ratio": 1.0, "inf": float("nan")},
                "note": "a key tm does not know",
            },
            "analyze_9abcdef0": {
                "type": "analyze",
                "status": "in_progress",
                "parent_id": None,
                "locked_by": "worker-9",
                "locked_at": "2024-01-01T11:00:00",
                "created_at": "2024-01-01T10:00:01",
                "completed_at": None,
                "data": {},
            },
        },
        "extra_top_level": [1, 2, 3],
    }
    original = json.dumps(state, indent=2)
    path.write_text(original)
    tm = TaskManager(path)
    assert path.read_text() == original  # opening does not rewrite
    t = tm.get_next_task("w")  # the 2024 lease has expired: both are pending now
    assert t["id"] == "analyze_12345678" and t["note"] == "a key tm does not know"
    assert tm.complete_task(t["id"], "w", result_data=[1, 2])
    after = json.loads(path.read_text())
    assert after["extra_top_level"] == [1, 2, 3]
    assert after["metadata"]["custom_field"] == "custom_value"
    entry = after["tasks"]["analyze_12345678"]
    assert entry["note"] == "a key tm does not know"
    assert entry["data"]["ratio"] == 1.0 and entry["data"]["result"] == [1, 2]
    assert '"ratio": 1.0' in path.read_text() and '"inf": NaN' in path.read_text()
    assert after["tasks"]["analyze_9abcdef0"]["status"] == "pending"


def test_corrupt_json_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "wf.json"
    tm = TaskManager(path)
    tm.create_task("t", {})
    broken = path.read_text()[:-20]
    path.write_text(broken)
    for op in (
        lambda: tm.create_task("t", {}),
        lambda: tm.get_next_task("w"),
        tm.get_status_summary,
        lambda: TaskManager(path),
    ):
        with pytest.raises(
            ValueError, match=r"corrupt state file .*wf\.json: .*line \d+ column \d+"
        ):
            op()
        assert path.read_text() == broken
    path.write_text('{"tasks": {"x_1": {"type": "x"}}}')
    with pytest.raises(CorruptStateError, match="status"):
        TaskManager(path)


def test_json_lock_timeout(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "wf.json"
    tm = TaskManager(path, lock_timeout=0.05)
    tm.create_task("t", {})
    with open(f"{path}.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match=r"could not lock .*wf\.json\.lock within"):
            tm.create_task("t", {})
        with pytest.raises(QueueLockTimeout):
            tm.get_next_task("w")
        assert tm.get_status_summary()["total_tasks"] == 1  # reads take no lock
        fcntl.flock(holder, fcntl.LOCK_UN)
    assert tm.get_next_task("w") is not None


def test_sqlite_lock_timeout(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    tm = TaskManager(path, lock_timeout=0.05)
    tm.create_task("t", {})
    # The write lock is held by another process (within one process, Python's sqlite3 and tm's
    # own SQLite cannot see each other's locks).
    with _StoreLockHeld(path, "sqlite"):
        with pytest.raises(TimeoutError, match="could not lock"):
            tm.create_task("t", {})
        assert len(tm.list_tasks()) == 1  # WAL readers are not blocked
        # Nor is opening a queue that has its tables (it only reads them).
        assert TaskManager(path, lock_timeout=0.05).get_status_summary()["total_tasks"] == 1
    assert tm.get_next_task("w") is not None


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lock_timeout"):
        TaskManager(tmp_path / "a.json", lock_timeout=-1)
    with pytest.raises(ValueError, match="task_timeout_hours"):
        TaskManager(tmp_path / "a.db", task_timeout_hours=float("nan"))
    with pytest.raises(ValueError, match="database file"):
        TaskManager("sqlite://")
    tm = TaskManager(tmp_path / "a.db")
    with pytest.raises(ValueError, match="wait"):
        tm.get_next_task("w", wait=-1)
    with pytest.raises(ValueError, match="max_attempts"):
        tm.create_task("t", {}, max_attempts=0)


# The seed README's examples, as written there (with the tm import). Names the README leaves to
# the reader (dataset, extract_data, ...) are defined first.
README_PRELUDE = """
dataset = ["a.csv", "b.csv"]
def extract_data(data): return {"rows": 3, "source": data["source"]}
def transform_data(data): return data["data"]["rows"] * 2
error_occurred = False
"""

README_BLOCKS = [
    """
from tm.queue import TaskManager, TaskStatus
""",
    """
from pathlib import Path
from tm.queue import TaskManager

# Each workflow gets its own state file
tm = TaskManager(
    state_file=Path("states/my_workflow.json"),
    lock_timeout=5,        # seconds to wait for lock
    task_timeout_hours=24  # hours before auto-releasing tasks
)
""",
    """
# Create a root task
task_id = tm.create_task(
    task_type="analyze",
    data={"file": "data.csv", "params": {"threshold": 0.8}}
)

# Create a child task
child_id = tm.create_task(
    task_type="validate",
    data={"validation_type": "schema"},
    parent_id=task_id
)
""",
    """
# Agent requests next available task
task = tm.get_next_task(
    agent_id="worker-001",
    task_types=["analyze", "validate"]  # optional filter
)

if task:
    print(f"Processing task {task['id']} of type {task['type']}")
    # Do work...

    # Complete the task
    success = tm.complete_task(
        task_id=task["id"],
        agent_id="worker-001",
        status=TaskStatus.COMPLETED,
        result_data={"output": "results.json"}  # optional
    )
""",
    """
# Get specific task
task = tm.get_task("analyze_12345678")

# Get all children of a task
children = tm.get_task_children("analyze_12345678")

# Get status summary
summary = tm.get_status_summary()
print(f"Total tasks: {summary['total_tasks']}")
print(f"By status: {summary['status_counts']}")
print(f"By type: {summary['type_counts']}")
""",
    """
# Data processing workflow
data_tm = TaskManager(Path("states/data_processing.json"))

# Code review workflow
review_tm = TaskManager(Path("states/code_review.json"))

# Testing workflow
test_tm = TaskManager(Path("states/test_execution.json"))
""",
    """
tm.release_task(task_id="analyze_12345678", agent_id="worker-001")
""",
    """
tm.update_workflow_metadata({
    "version": "2.0",
    "environment": "production",
    "started_by": "scheduler"
})
""",
    # (setup for the next block, which uses a claimed `task`)
    """
task = tm.get_next_task("worker-001")
""",
    """
try:
    # Process task...
    if error_occurred:
        tm.complete_task(
            task_id=task["id"],
            agent_id="worker-001",
            status=TaskStatus.FAILED,
            result_data={"error": str(error)}
        )
except Exception as e:
    # Release task for retry
    tm.release_task(task["id"], "worker-001")
    raise
""",
    """
# Stage 1: Create initial tasks
for item in dataset:
    tm.create_task("extract", {"source": item})

# Stage 2: Workers process extraction
while True:
    task = tm.get_next_task("extractor-1", ["extract"])
    if not task:
        break

    # Process and create transform tasks
    result = extract_data(task["data"])
    tm.create_task("transform", {"data": result}, parent_id=task["id"])
    tm.complete_task(task["id"], "extractor-1")

# Stage 3: Different workers do transformation
while True:
    task = tm.get_next_task("transformer-1", ["transform"])
    if not task:
        break

    result = transform_data(task["data"])
    tm.complete_task(task["id"], "transformer-1",
                    result_data={"output": result})
""",
]


def test_seed_readme_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    ns: dict[str, object] = {}
    exec(README_PRELUDE, ns)
    for block in README_BLOCKS:
        exec(block, ns)
    out = capsys.readouterr().out
    assert "Processing task analyze_" in out and "Total tasks: 2" in out
    tm = ns["tm"]
    assert isinstance(tm, TaskManager)
    s = tm.get_status_summary()
    assert s["type_counts"] == {"analyze": 1, "validate": 1, "extract": 2, "transform": 2}
    assert s["metadata"]["environment"] == "production"
    transforms = tm.list_tasks(task_type="transform")
    assert [t["data"]["result"] for t in transforms] == [{"output": 6}, {"output": 6}]
    assert all(t["status"] == "completed" for t in transforms)
    for name in ("my_workflow", "data_processing", "code_review", "test_execution"):
        assert json.loads((tmp_path / "states" / f"{name}.json").read_text())["tasks"] is not None


def _child_reads_summary(tm: TaskManager) -> int:
    """The task count a forked child's first call on ``tm`` reads."""
    return int(in_forked_child(lambda: str(tm.get_status_summary()["total_tasks"])))


class _StoreLockHeld:
    """Holds the store's write lock from elsewhere: the JSON lock file's flock (on a descriptor
    of its own), or an SQLite write transaction in another process."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind

    def __enter__(self) -> None:
        if self.kind == "json":
            import fcntl

            self.holder = open(f"{self.path}.lock", "w")
            fcntl.flock(self.holder, fcntl.LOCK_EX)
            return
        self.holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys\n"
                f"c = sqlite3.connect({str(self.path)!r}, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\n"
                "print('locked', flush=True)\n"
                "sys.stdin.readline()\n"
                "c.execute('ROLLBACK')\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout.readline().strip() == "locked"

    def __exit__(self, *exc: object) -> None:
        if self.kind == "json":
            self.holder.close()
        else:
            self.holder.communicate("\n", timeout=30)


def _sleeps_in_the_kernel(tid: int) -> bool:
    """Whether thread ``tid`` of this process sleeps in nanosleep (not waiting for the GIL)."""
    return "nanosleep" in Path(f"/proc/self/task/{tid}/wchan").read_text()


@pytest.mark.skipif(
    not hasattr(os, "fork") or not Path("/proc/self/task").is_dir(),
    reason="needs os.fork, and /proc to see where a thread waits",
)
@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_a_fork_waits_for_a_queue_call_in_flight_on_another_thread(
    tmp_path: Path, kind: str
) -> None:
    # A thread's call waits for the store's lock, held elsewhere, inside the queue (holding its
    # mutex); the main thread forks meanwhile. The fork waits for the call to end (here, at its
    # lock timeout), so the child never inherits the mutex locked by a thread it does not have:
    # its first call used to wait forever.
    path = tmp_path / f"q.{kind}"
    tm = TaskManager(path if kind == "json" else f"sqlite:///{path}", lock_timeout=1)
    tm.create_task("t", {})
    outcome: list[str] = []

    def call() -> None:
        try:
            tm.create_task("t", {})
            outcome.append("created")
        except QueueLockTimeout:
            outcome.append("timed out")

    with _StoreLockHeld(path, kind):
        thread = threading.Thread(target=call)
        thread.start()
        # In flight: sleeping between two tries for the lock (before the call, or after it,
        # the thread waits for the GIL on a futex instead).
        while not _sleeps_in_the_kernel(thread.native_id):
            assert thread.is_alive()
        assert _child_reads_summary(tm) == 1
        thread.join()
    assert outcome == ["timed out"]
    assert tm.create_task("t", {}) and tm.get_status_summary()["total_tasks"] == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_forks_go_through_while_threads_keep_calling_the_queue(tmp_path: Path, kind: str) -> None:
    # Three threads call the queue without pause (most of the time inside a call, without the
    # GIL); the main thread forks twenty times. Every fork waits for the calls in flight and
    # no stream of new calls keeps it waiting; every child's first call answers.
    tm = TaskManager(tmp_path / f"q.{kind}")
    stop = threading.Event()
    done = [0, 0, 0]

    def work(i: int) -> None:
        # Each claim follows a creation of this thread's, so there is always a task to claim.
        while not stop.is_set():
            tm.create_task("t", {"by": i})
            t = tm.get_next_task(f"w{i}")
            if t is not None and tm.complete_task(t["id"], f"w{i}"):
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        seen = [_child_reads_summary(tm) for _ in range(20)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen == sorted(seen)  # each child saw the queue as it had grown by then
    summary = tm.get_status_summary()
    assert summary["total_tasks"] >= seen[-1] and summary["total_tasks"] == sum(done)
    assert summary["status_counts"] == {"completed": sum(done)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_children_forked_while_the_log_is_checkpointed_neither_hang_nor_lose_work(
    tmp_path: Path,
) -> None:
    # The parent's commits keep its checkpointer thread copying the log (every 4,000 pages);
    # each child drops the TaskManager it inherited without using it (the parent's connection
    # and checkpointer: closing them in the child would wait for a thread it does not have),
    # then opens its own and completes a task while the parent goes on.
    path = tmp_path / "q.db"
    tm = TaskManager(path)
    ids = tm.create_tasks([("t", {"n": i}) for i in range(5000)])
    by_child = set()

    def child() -> str:
        nonlocal tm
        del tm
        gc.collect()
        own = TaskManager(path)
        t = own.get_next_task("child")
        ok = own.complete_task(t["id"], "child")
        return f"{int(ok)} {t['id']}"

    for _ in range(20):
        for _ in range(150):
            t = tm.get_next_task("parent")
            assert tm.complete_task(t["id"], "parent")
        ok, task_id = in_forked_child(child).split()
        assert ok == "1"
        by_child.add(task_id)
    assert len(by_child) == 20
    done = {t["id"]: t["locked_by"] for t in tm.list_tasks(status="completed")}
    assert len(done) == 20 * 151
    assert all(done[i] == "child" for i in by_child)
    assert tm.get_status_summary()["status_counts"]["pending"] == len(ids) - len(done)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("manager", ["inherited", "new"])
def test_a_parent_closing_its_queue_loses_nothing_a_forked_child_writes(
    tmp_path: Path, manager: str
) -> None:
    # The child's connection sits on SQLite records inherited from the parent, which claim locks
    # the child does not hold: the parent, closing what it took for the last connection, deleted
    # the write-ahead log the child went on committing to (49 of 50 tasks were lost).
    path = tmp_path / "q.db"
    parent = [TaskManager(path)]
    first = parent[0].create_task("t", {"by": "parent"})
    own: list[TaskManager] = []
    ids: list[str] = []

    def connect() -> str:
        own.append(parent[0] if manager == "inherited" else TaskManager(path))
        ids.append(own[0].create_task("t", {"by": "child", "i": 0}))
        return ""

    def write_more() -> str:
        ids.extend(own[0].create_task("t", {"by": "child", "i": i}) for i in range(1, 50))
        return " ".join(ids)

    child = SteppedChild(connect, write_more)
    parent.clear()  # the parent's last connection closes
    gc.collect()
    child_ids = child.next().split()
    assert len(child_ids) == 50
    again = TaskManager(path)
    assert again.get_status_summary()["total_tasks"] == 51
    assert again.get_task(first)["data"] == {"by": "parent"}
    assert [again.get_task(i)["data"]["i"] for i in child_ids] == list(range(50))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_parent_closing_before_a_forked_child_connects_splits_nothing(tmp_path: Path) -> None:
    # The parent closes between the fork and the child's first use, then another connection
    # writes while the child does: with the log and index deleted under the child's inherited
    # records, the two sides kept separate indexes and overwrote each other's commits.
    path = tmp_path / "q.db"
    parent = [TaskManager(path)]
    first = parent[0].create_task("t", {"by": "parent"})
    own: list[TaskManager] = []

    def write(start: int) -> str:
        if not own:
            own.append(TaskManager(path))
        ids = [own[0].create_task("t", {"by": "child", "i": i}) for i in range(start, start + 20)]
        return " ".join(ids)

    child = SteppedChild(lambda: "forked", lambda: write(0), lambda: write(20))
    assert child.first == "forked"
    parent.clear()  # the parent's last connection closes
    gc.collect()
    child_ids = child.next().split()
    other = TaskManager(path)
    other_ids = [other.create_task("t", {"by": "other", "i": i}) for i in range(20)]
    child_ids += child.next().split()
    del other
    gc.collect()
    again = TaskManager(path)
    assert again.get_status_summary()["total_tasks"] == 61
    assert again.get_task(first)["data"] == {"by": "parent"}
    assert [again.get_task(i)["data"]["i"] for i in child_ids] == list(range(40))
    assert [again.get_task(i)["data"]["by"] for i in other_ids] == ["other"] * 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_opens_its_own_connection(tmp_path: Path, kind: str) -> None:
    tm = TaskManager(store(tmp_path, kind))
    parent_task = tm.create_task("t", {"by": "parent"})
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child uses the parent's TaskManager object
        code = 1
        try:
            t = tm.get_next_task("child")
            ok = t is not None and tm.complete_task(t["id"], "child")
            child_task = tm.create_task("t", {"by": "child"})
            os.write(w, f"{int(ok)} {child_task}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        ok, child_task = f.read().split()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and ok == "1"
    assert tm.get_task(parent_task)["status"] == "completed"
    assert tm.get_task(child_task)["data"] == {"by": "child"}
    assert tm.get_next_task("parent")["id"] == child_task
