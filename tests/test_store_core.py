"""``tm._tm.StoreCore``: the embedded state database through its thin Python binding."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tm._tm import StoreCore
from tm.exceptions import StoreError, TmError

TASKS = [
    (0, "extract", "k-extract", "d0", 7, "v1"),
    (1, "load", None, None, None, None),
    (2, "report", None, None, None, None),
]


def begin(store: StoreCore, run_id: str = "r1", graph: str = "etl", created_us: int = 100) -> None:
    store.begin_run(
        run_id,
        graph,
        "running",
        "manual",
        created_us,
        TASKS,
        scheduled_us=created_us - 1,
        started_us=created_us,
        config_json='{"k": 1}',
    )


def test_every_verb_round_trips(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/tm.db"
    with StoreCore(url) as store:
        assert store.location == str(tmp_path / "sub" / "tm.db")
        begin(store)
        store.task_started("r1", 0, 1, 110)
        store.task_ended("r1", 0, 1, 120, "failed", "ValueError", "boom", "Traceback ...", 150)
        store.task_started("r1", 0, 2, 150)
        store.append_log("r1", 0, 151, "INFO", "extracting")
        store.task_ended("r1", 0, 2, 160, "completed")
        store.save_result("r1", 0, "pickle", b"\x00\x01\x02")
        store.task_status("r1", 1, "skipped", 161)
        store.task_status("r1", 2, "cancelled", 162)
        store.append_log("r1", None, 163, "WARNING", "run over")
        store.finish_run("r1", "failed", 170)
        store.upsert_graph("etl", 1, 2, schedule="0 * * * *", tz="UTC", last_fire_us=99)
        store.record_event(171, "missed_fire", run_id="r1", detail_json='{"n": 1}')
        store.flush()

        run = store.get_run("r1")
        assert run is not None
        assert run["state"] == "failed"
        assert (run["created_us"], run["ended_us"], run["scheduled_us"]) == (100, 170, 99)
        assert run["config_json"] == '{"k": 1}'
        tasks = run["tasks"]
        assert [t["name"] for t in tasks] == ["extract", "load", "report"]
        assert tasks[0]["status"] == "completed"
        assert tasks[0]["attempt"] == 2
        assert (tasks[0]["started_us"], tasks[0]["ended_us"]) == (110, 160)
        assert tasks[0]["seed"] == 7
        assert tasks[0]["error_type"] is None
        assert [t["status"] for t in tasks[1:]] == ["skipped", "cancelled"]

        attempts = store.attempts("r1", "extract")
        assert attempts == store.attempts("r1", 0)
        assert [a["status"] for a in attempts] == ["failed", "completed"]
        assert attempts[0]["error_type"] == "ValueError"
        assert attempts[0]["error_message"] == "boom"
        assert attempts[0]["traceback"] == "Traceback ..."
        assert attempts[0]["retry_at_us"] == 150

        assert [(log["task"], log["message"]) for log in store.logs("r1")] == [
            ("extract", "extracting"),
            (None, "run over"),
        ]
        assert len(store.logs("r1", "extract")) == 1
        assert store.results("r1") == [(0, "pickle", b"\x00\x01\x02")]
        assert store.result("r1", 0) == ("pickle", b"\x00\x01\x02")
        assert store.result("r1", 1) is None

        graph = store.graph("etl")
        assert graph is not None
        assert (graph["schedule"], graph["tz"], graph["last_fire_us"]) == ("0 * * * *", "UTC", 99)
        assert [g["name"] for g in store.graphs()] == ["etl"]
        events = store.events()
        assert [(e["kind"], e["run_id"]) for e in events] == [("missed_fire", "r1")]

    # Reopening the file finds everything.
    store = StoreCore(str(tmp_path / "sub" / "tm.db"))
    assert store.get_run("r1") is not None
    store.close()


def test_list_and_unfinished_runs(db_url: str) -> None:
    store = StoreCore(db_url)
    for i in range(5):
        begin(store, f"r{i}", "even" if i % 2 == 0 else "odd", 10 + i)
    store.finish_run("r0", "completed", 20)
    store.flush()
    assert [r["run_id"] for r in store.list_runs()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r["run_id"] for r in store.list_runs(graph="even", limit=2)] == ["r4", "r2"]
    assert [r["run_id"] for r in store.list_runs(state="completed")] == ["r0"]
    assert [r["run_id"] for r in store.unfinished_runs()] == ["r1", "r2", "r3", "r4"]
    assert store.get_run("nope") is None
    store.close()


def test_a_refused_write_raises_on_flush_and_the_rest_is_kept(db_url: str) -> None:
    store = StoreCore(db_url)
    begin(store)
    store.task_started("ghost", 0, 1, 1)
    store.task_started("r1", 0, 1, 1)
    with pytest.raises(StoreError, match="ghost"):
        store.flush()
    assert "no such run" in (store.last_error() or "")
    store.flush()
    run = store.get_run("r1")
    assert run is not None
    assert run["tasks"][0]["status"] == "running"
    store.close()


def test_prune(db_url: str) -> None:
    day = 86_400_000_000
    now = 100 * day
    store = StoreCore(db_url)
    for i in range(4):
        begin(store, f"r{i}", "g", now - (10 - i) * day)
        store.save_result(f"r{i}", 0, "bytes", b"x" * 100)
        store.finish_run(f"r{i}", "completed", now - (10 - i) * day)
    begin(store, "live", "g", now - 50 * day)
    store.prune(now, keep_runs=2)
    store.flush()
    assert sorted(r["run_id"] for r in store.list_runs()) == ["live", "r2", "r3"]
    assert store.results("r0") == []
    store.prune(now, keep_days=7)
    store.flush()
    assert sorted(r["run_id"] for r in store.list_runs()) == ["live", "r3"]
    store.close()


def test_close_is_idempotent_and_later_calls_raise(tmp_path: Path) -> None:
    store = StoreCore(str(tmp_path / "tm.db"))
    begin(store)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.task_started("r1", 0, 1, 1)
    with pytest.raises(StoreError, match="closed"):
        store.list_runs()
    # The queued run was committed by close.
    reopened = StoreCore(str(tmp_path / "tm.db"))
    assert reopened.get_run("r1") is not None
    reopened.close()


def test_corrupt_file_raises_store_error_and_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    junk = os.urandom(8192)
    path.write_bytes(junk)
    with pytest.raises(StoreError, match="not a SQLite database") as info:
        StoreCore(str(path))
    assert str(path) in str(info.value)
    assert isinstance(info.value, OSError)
    assert isinstance(info.value, TmError)
    assert path.read_bytes() == junk


def test_unusable_locations_raise_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is a directory"):
        StoreCore(str(tmp_path))
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        StoreCore(str(plain / "tm.db"))
    with pytest.raises(StoreError, match="not supported"):
        StoreCore("mysql://user@localhost/tm")
    with pytest.raises(StoreError, match="cannot connect"):
        StoreCore("postgresql://user@127.0.0.1:1/tm")  # nothing listens on port 1
    with pytest.raises(StoreError, match="no host"):
        StoreCore("sqlite://host/tm.db")


def test_threads_write_and_read_one_file(db_url: str) -> None:
    url = db_url
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            store = StoreCore(url)
            for r in range(20):
                run_id = f"w{w}-r{r}"
                begin(store, run_id, "g", r)
                for node in range(3):
                    store.task_started(run_id, node, 1, r)
                    store.task_ended(run_id, node, 1, r + 1, "completed")
                store.finish_run(run_id, "completed", r + 2)
                store.flush()
            store.close()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    reader = StoreCore(url)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        reader.list_runs(limit=5)
    for t in threads:
        t.join()
    assert errors == []
    runs = reader.list_runs()
    assert len(runs) == 60
    assert {r["state"] for r in runs} == {"completed"}
    reader.close()


WRITER = """
import sys
from tm._tm import StoreCore

url, tag = sys.argv[1], sys.argv[2]
store = StoreCore(url)
tasks = [(n, f"t{n}", None, None, None, None) for n in range(5)]
for r in range(30):
    run_id = f"{tag}-{r}"
    store.begin_run(run_id, "g", "running", "manual", r, tasks)
    for n in range(5):
        store.task_started(run_id, n, 1, r)
        store.task_ended(run_id, n, 1, r + 1, "completed")
    store.finish_run(run_id, "completed", r + 2)
    store.flush()
store.close()
"""


def test_two_processes_write_while_a_third_reads(db_url: str) -> None:
    url = db_url
    StoreCore(url).close()  # create and migrate once, so the race is about writes
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    reader = StoreCore(url)
    while any(p.poll() is None for p in procs):
        for run in reader.list_runs(limit=3):
            reader.get_run(run["run_id"])
    for p in procs:
        _out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert "locked" not in err
    runs = reader.list_runs()
    assert len(runs) == 60
    assert {r["state"] for r in runs} == {"completed"}
    reader.close()
