"""The store against a hostile environment: a full disk and a read-only directory, for real.

Both use a small tmpfs mounted for the test (this needs root, as CI and the dev machines run); the
disk fills up or turns read-only under a live store. The promise checked: a clear ``tm.StoreError``,
nothing already committed lost, a database that passes ``PRAGMA integrity_check``, and recovery
once the disk has room again.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from _disk import fill, integrity, tmpfs

import tm
from tm.exceptions import StoreError


def blob_graph(name: str, n: int, size: int) -> tm.Graph:
    g = tm.Graph(name)
    for i in range(n):

        def make(i: int = i) -> bytes:
            return bytes([i % 256]) * size

        g.add(tm.task(make, name=f"blob{i}", persist=True))
    return g


def test_a_full_disk_is_a_clear_error_loses_nothing_committed_and_recovers(
    tmp_path: Path,
) -> None:
    with tmpfs(tmp_path / "disk", "2m") as disk:
        db = disk / "tm.db"
        store = tm.Store(f"sqlite:///{db}")
        with tm.Executor(workers=2, store=store) as ex:
            small = ex.run(blob_graph("small", 2, 1000))
            assert small.state == "completed"
            store.flush()
            fill(disk, leave=64 * 1024)
            big = ex.run(blob_graph("big", 8, 200_000))
            # The run itself is not the store's victim: it ran and completed in memory.
            assert big.state == "completed"
            with pytest.raises(StoreError, match="full") as info:
                store.flush()
            assert str(db) in str(info.value)
            # Committed history is intact and the file is consistent.
            kept = store.run(small.run_id)
            assert kept is not None
            assert [t["status"] for t in kept["tasks"]] == ["completed", "completed"]
            assert store.result(small.run_id, "blob1") == b"\x01" * 1000
            assert integrity(db) == "ok"
            # Room again: the same store records the next run completely.
            (disk / "filler").unlink()
            again = ex.run(blob_graph("again", 2, 1000))
            store.flush()
            detail = store.run(again.run_id)
            assert detail is not None and detail["state"] == "completed"
            assert [t["status"] for t in detail["tasks"]] == ["completed", "completed"]
        store.close()
        assert integrity(db) == "ok"


def test_a_new_database_in_a_read_only_directory_is_a_clear_error(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "1m") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        with pytest.raises(StoreError) as info:
            tm.Store(f"sqlite:///{ro}/tm.db").core  # noqa: B018 - opening is the point
        message = str(info.value)
        assert str(ro / "tm.db") in message
        assert "read-only" in message or "readonly" in message
        assert not (ro / "tm.db").exists()


def test_a_database_on_a_disk_turned_read_only_is_refused_clearly_and_kept(
    tmp_path: Path,
) -> None:
    import hashlib

    with tmpfs(tmp_path / "disk", "4m") as disk:
        db = disk / "tm.db"
        store = tm.Store(f"sqlite:///{db}")
        with tm.Executor(workers=2, store=store) as ex:
            first = ex.run(blob_graph("first", 3, 100))
        store.close()
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(StoreError) as info:
            tm.Store(f"sqlite:///{db}").core  # noqa: B018 - opening is the point
        assert str(db) in str(info.value)
        assert "read-only" in str(info.value)
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        # Read-only, the history is there to inspect; writing is refused; nothing is written.
        ro = tm.Store(f"sqlite:///{db}", read_only=True)
        kept = ro.run(first.run_id)
        assert kept is not None and kept["state"] == "completed"
        assert [t["status"] for t in kept["tasks"]] == ["completed"] * 3
        assert ro.result(first.run_id, "blob2") == b"\x02" * 100
        with pytest.raises(StoreError, match="read-only"):
            ro.core.finish_run(first.run_id, "failed", 1)
        ro.close()
        # The reading commands fall back to a read-only open by themselves.
        url = f"sqlite:///{db}"
        cli = [sys.executable, "-m", "tm"]
        listed = subprocess.run(
            [*cli, "runs", "--db", url, "--json"], capture_output=True, text=True
        )
        assert listed.returncode == 0, listed.stderr
        assert [r["run_id"] for r in json.loads(listed.stdout)] == [first.run_id]
        shown = subprocess.run(
            [*cli, "show", first.run_id, "--db", url, "--json"], capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        assert [t["status"] for t in json.loads(shown.stdout)["tasks"]] == ["completed"] * 3
        # The key that signs persisted results sits beside the database.
        assert sorted(p.name for p in disk.iterdir()) == ["secret.key", "tm.db"]
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
        reader = tm.Store(f"sqlite:///{db}")
        detail = reader.run(first.run_id)
        assert detail is not None and detail["state"] == "completed"
        assert [t["status"] for t in detail["tasks"]] == ["completed"] * 3
        reader.close()
        assert integrity(db) == "ok"


def test_a_read_only_store_reads_what_a_live_writer_commits(tmp_path: Path) -> None:
    db = tmp_path / "tm.db"
    writer = tm.Store(f"sqlite:///{db}")
    with tm.Executor(workers=2, store=writer) as ex:
        first = ex.run(blob_graph("first", 2, 10))
        writer.flush()
        # The writer is open, so its log is beside the file: the reader follows it.
        assert (tmp_path / "tm.db-wal").exists()
        reader = tm.Store(f"sqlite:///{db}", read_only=True)
        assert [r["run_id"] for r in reader.runs()] == [first.run_id]
        second = ex.run(blob_graph("second", 2, 10))
        writer.flush()
        assert [r["run_id"] for r in reader.runs()] == [second.run_id, first.run_id]
        detail = reader.run(second.run_id)
        assert detail is not None and detail["state"] == "completed"
        reader.flush()  # nothing is ever queued in a read-only store
        with pytest.raises(StoreError, match="read-only"):
            reader.core.finish_run(second.run_id, "failed", 1)
        reader.close()
    writer.close()
    assert integrity(db) == "ok"


def test_read_only_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database file"):
        tm.Store(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True).core  # noqa: B018
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(StoreError, match="in-memory"):
        tm.Store("sqlite://:memory:", read_only=True).core  # noqa: B018
    # A database of an older schema needs one read-write open to be upgraded first.
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.execute("CREATE TABLE t (x)")
    con.execute("PRAGMA user_version = 1")
    con.close()
    with pytest.raises(StoreError, match="upgrade"):
        tm.Store(f"sqlite:///{old}", read_only=True).core  # noqa: B018
