"""Files and directories tm creates are owner-only unless configured (issue 24, item 4).

The mode comes from ``Store(file_mode=...)``, else ``$TM_FILE_MODE`` (octal), else 0o600; the
directories tm creates get the same bits plus search (x) wherever reading is allowed: 0o700 by
default. The process umask still applies, as to any file. Tests run as root: mode bits are still
what ``os.stat`` reports.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import tm
from tm._tm import StoreCore
from tm.exceptions import StoreError
from tm.queue import TaskManager


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def usual_umask(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TM_FILE_MODE", raising=False)
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def write_a_run(store: StoreCore) -> None:
    store.begin_run("r1", "g", "running", "manual", 1, [(0, "a", None, None, None, None)])
    store.flush()


def test_the_store_creates_owner_only_files_and_directories(tmp_path: Path) -> None:
    db = tmp_path / ".tm" / "tm.db"
    store = tm.Store(f"sqlite:///{db}")
    write_a_run(store.core)
    assert mode(tmp_path / ".tm") == 0o700
    assert mode(db) == 0o600
    # SQLite gives its log and index the database's own mode.
    assert mode(Path(f"{db}-wal")) == 0o600
    assert mode(Path(f"{db}-shm")) == 0o600
    store.close()


def test_file_mode_is_configurable(tmp_path: Path) -> None:
    db = tmp_path / "shared" / "deeper" / "tm.db"
    store = tm.Store(f"sqlite:///{db}", file_mode=0o640)
    write_a_run(store.core)
    assert mode(db) == 0o640
    assert mode(Path(f"{db}-wal")) == 0o640
    assert mode(tmp_path / "shared") == 0o750
    assert mode(tmp_path / "shared" / "deeper") == 0o750
    store.close()


def test_tm_file_mode_sets_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TM_FILE_MODE", "0644")
    db = tmp_path / "d" / "tm.db"
    with StoreCore(f"sqlite:///{db}") as store:
        write_a_run(store)
    assert mode(db) == 0o644
    assert mode(tmp_path / "d") == 0o755


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "tm.db"
    with StoreCore(f"sqlite:///{db}") as store:
        write_a_run(store)
    os.chmod(db, 0o664)
    with StoreCore(f"sqlite:///{db}") as store:
        store.begin_run("r2", "g", "running", "manual", 2, [])
        store.flush()
    assert mode(db) == 0o664


@pytest.mark.parametrize("bad", ["rw", "0999", "1777", "0400"])
def test_a_bad_mode_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("TM_FILE_MODE", bad)
    with pytest.raises(StoreError, match="TM_FILE_MODE"):
        StoreCore(f"sqlite:///{tmp_path}/tm.db")
    assert not (tmp_path / "tm.db").exists()


def test_a_bad_file_mode_argument_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="file_mode"):
        tm.Store(f"sqlite:///{tmp_path}/tm.db", file_mode=0o200)


def test_the_queue_s_sqlite_database_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "q" / "queue.db"
    tasks = TaskManager(f"sqlite:///{path}")
    tasks.create_task("work", {"n": 1})
    assert mode(tmp_path / "q") == 0o700
    assert mode(path) == 0o600
    assert mode(Path(f"{path}-wal")) == 0o600


def test_the_queue_s_json_state_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "j" / "state.json"
    tasks = TaskManager(path)
    tasks.create_task("work", {"n": 1})
    assert mode(tmp_path / "j") == 0o700
    assert mode(path) == 0o600
    assert mode(Path(f"{path}.lock")) == 0o600
    # Rewrites keep the mode an owner gave the file.
    os.chmod(path, 0o640)
    tasks.create_task("work", {"n": 2})
    assert mode(path) == 0o640


@pytest.mark.parametrize(("file_mode", "dir_mode"), [(None, 0o700), (0o640, 0o750)])
def test_cached_results_and_their_folders_follow_the_store_s_mode(
    tmp_path: Path, file_mode: int | None, dir_mode: int
) -> None:
    results = tmp_path / "results"
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db", result_dir=results, file_mode=file_mode)

    @store.task
    def double(x: int) -> dict[str, int]:
        return {"x": 2 * x}

    assert double(21) == {"x": 42}
    (entry,) = store.cache_entries()
    path = Path(entry["result_path"])
    assert mode(path) == (file_mode or 0o600)
    folder = path.parent
    while folder != tmp_path:  # every folder tm made, up to and including the result directory
        assert mode(folder) == dir_mode, folder
        folder = folder.parent
    store.close()
