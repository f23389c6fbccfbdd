"""A damaged SQLite database is refused, untouched, before tm writes to it (issue 24, item 5)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import tm
from tm._tm import StoreCore
from tm.exceptions import StoreError

TASKS = [(0, "extract", None, None, None, None), (1, "load", None, None, None, None)]


def begin(store: StoreCore, run_id: str, created_us: int = 100) -> None:
    store.begin_run(run_id, "etl", "running", "manual", created_us, TASKS)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_history(path: Path, runs: int) -> None:
    """A database as tm leaves it: graphs run through an executor with a store, then closed."""

    @tm.task(persist=True)
    def extract() -> dict[str, int]:
        return {"rows": 3}

    @tm.task()
    def load(extract: dict[str, int]) -> int:
        return extract["rows"] * 2

    graph = tm.Graph(name="etl")
    graph.add_edges([extract], [load])
    store = tm.Store(f"sqlite:///{path}")
    with tm.Executor(workers=2, store=store) as ex:
        for _ in range(runs):
            assert ex.run(graph).state == "completed"
    store.close()


def integrity_problems(path: Path) -> list[str]:
    """SQLite's own verdict on a copy (so the file under test is not even opened here)."""
    probe = path.with_name("probe.db")
    shutil.copyfile(path, probe)
    try:
        conn = sqlite3.connect(f"file:{probe}?mode=ro&immutable=1", uri=True)
        # A flipped byte may land in text the check quotes back.
        conn.text_factory = lambda b: b.decode("utf-8", "replace")
        try:
            rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        rows = [str(e)]
    finally:
        probe.unlink()
    return [] if rows == ["ok"] else rows


def schema_text(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return " ".join(r[0] or "" for r in conn.execute("SELECT sql FROM sqlite_schema"))
    finally:
        conn.close()


def run_a_graph(path: Path) -> None:
    @tm.task()
    def a() -> int:
        return 1

    graph = tm.Graph(name="after-damage")
    graph.add_edges([a], [])
    store = tm.Store(f"sqlite:///{path}")
    try:
        with tm.Executor(workers=1, store=store) as ex:
            ex.run(graph)
    finally:
        store.close()


def test_random_byte_flips_that_sqlite_flags_are_refused_and_left_untouched(tmp_path: Path) -> None:
    base = tmp_path / "base.db"
    make_history(base, runs=40)
    assert integrity_problems(base) == []
    size = base.stat().st_size
    rng = random.Random(24)
    flagged = 0
    for seed in range(600):
        if flagged == 15:
            break
        target = tmp_path / f"flip{seed}" / "tm.db"
        target.parent.mkdir()
        data = bytearray(base.read_bytes())
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(size)] ^= rng.randint(1, 255)
        target.write_bytes(bytes(data))
        problems = integrity_problems(target)
        if not problems:
            shutil.rmtree(target.parent)
            continue
        flagged += 1
        before = digest(target)
        with pytest.raises(StoreError) as info:
            run_a_graph(target)
        msg = str(info.value)
        assert "damaged" in msg or "not a SQLite database" in msg, (seed, problems, msg)
        assert ".recover" in msg or "not a SQLite database" in msg, msg
        assert str(target) in msg
        assert digest(target) == before, (seed, problems)
        shutil.rmtree(target.parent)
    assert flagged == 15


def test_a_flipped_column_name_in_the_schema_is_refused(tmp_path: Path) -> None:
    # The symptom: SQLite reads the schema fine, tm's writes then fail on a missing column.
    path = tmp_path / "tm.db"
    make_history(path, runs=2)
    flip_live_column_name(path)  # "error_message" -> "drror_message"
    assert integrity_problems(path) == []  # nothing SQLite itself would flag
    before = digest(path)
    with pytest.raises(StoreError, match="damaged") as info:
        run_a_graph(path)
    assert "schema" in str(info.value)
    assert digest(path) == before


def flip_live_column_name(path: Path) -> None:
    """Renames the column ``error_message`` in the live schema by one flipped bit."""
    clean = path.read_bytes()
    # Old definitions linger in free space: flip the first copy that the live schema reads.
    at = clean.find(b"error_message")
    while at >= 0:
        data = bytearray(clean)
        data[at] ^= 0x01
        path.write_bytes(bytes(data))
        if "drror_message" in schema_text(path):
            return
        at = clean.find(b"error_message", at + 1)
    raise AssertionError("no live definition names error_message")


def test_a_database_too_large_for_the_page_check_gets_the_schema_and_header_checks(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tm.db"
    store = tm.Store(f"sqlite:///{path}")

    @tm.task(persist=True)
    def bulky() -> bytes:
        return os.urandom(3 << 20)

    graph = tm.Graph(name="bulky")
    graph.add_edges([bulky], [])
    with tm.Executor(workers=1, store=store) as ex:
        assert ex.run(graph).state == "completed"
    store.close()
    clean = path.read_bytes()
    assert len(clean) > 2 << 20  # above the size whose every page is checked
    flip_live_column_name(path)
    before = digest(path)
    with pytest.raises(StoreError, match="schema"):
        run_a_graph(path)
    assert digest(path) == before
    # Whole pages cut off the end: the header's page count says so.
    path.write_bytes(clean[: len(clean) - 8 * 4096])
    with pytest.raises(StoreError, match="truncated"):
        run_a_graph(path)
    assert len(path.read_bytes()) == len(clean) - 8 * 4096


def test_a_truncated_file_with_its_log_beside_it_is_not_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "tm.db"
    # A writer killed with its write-ahead log holding commits.
    code = (
        "import os, sys\n"
        "from tm._tm import StoreCore\n"
        "s = StoreCore(sys.argv[1])\n"
        "s.begin_run('r1', 'etl', 'running', 'manual', 1, [(0, 'a', None, None, None, None)])\n"
        "s.flush()\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True, timeout=60)
    wal = Path(f"{path}-wal")
    assert wal.stat().st_size > 0
    os.truncate(path, 0)
    log = wal.read_bytes()
    with pytest.raises(StoreError, match="truncated") as info:
        StoreCore(f"sqlite:///{path}")
    assert "damaged" in str(info.value)
    assert path.stat().st_size == 0
    assert wal.read_bytes() == log
    # Deleted rather than truncated: the same.
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        StoreCore(f"sqlite:///{path}")
    assert not path.exists()


def test_an_empty_file_alone_is_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "tm.db"
    path.touch()
    with StoreCore(f"sqlite:///{path}") as store:
        begin(store, "r1")
        store.flush()
        assert store.get_run("r1") is not None


def test_a_deleted_write_ahead_log_fails_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "tm.db"
    store = StoreCore(f"sqlite:///{path}")
    begin(store, "r1", 1)
    store.flush()
    os.unlink(f"{path}-wal")
    begin(store, "r2", 2)
    with pytest.raises(StoreError, match="write-ahead log") as info:
        store.flush()
    msg = str(info.value)
    assert str(path) in msg
    assert "copied into the database file" in msg, msg
    # Later writes are refused too, not silently lost.
    begin(store, "r3", 3)
    with pytest.raises(StoreError, match="write-ahead log") as info:
        store.flush()
    assert "1 write(s) were not stored" in str(info.value)
    store.close()
    # What the message said was saved is there.
    with StoreCore(f"sqlite:///{path}") as again:
        assert again.get_run("r1") is not None
        assert again.get_run("r2") is not None
        assert again.get_run("r3") is None
