"""Cached calls that fail after the function returned: the claim is released on every path.

An unpicklable result, a full disk or a name too long for the file system must not leave the
call's key ``RUNNING`` (the next identical call would wait out the whole lease), and the error
names the cached function and what could not be stored.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from _disk import fill, tmpfs

import tm


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = tm.Store(f"sqlite:///{tmp_path / 'tm.db'}", result_dir=tmp_path / "results")
    yield s
    s.close()


def statuses(store: tm.Store) -> list[str]:
    return [s["status"] for s in store.cache_index.states()]


def test_unpicklable_result_releases_the_claim(store: Any) -> None:
    runs: list[int] = []

    @store.task(skip_if_in_progress=True)
    def make_lock(x: int) -> Any:
        runs.append(x)
        return threading.Lock()

    with pytest.raises(tm.CacheError) as info:
        make_lock(1)
    text = str(info.value)
    assert "make_lock" in text and "could not be stored" in text, text
    assert "lock" in text.lower(), text  # what could not be stored
    assert info.value.__cause__ is not None
    assert statuses(store) == ["FAILED"]
    (state,) = store.cache_index.states()
    assert "could not be stored" in state["error_message"]
    # Not RUNNING: the next identical call runs at once (it would raise TaskInProgress while
    # the dead claim's lease held).
    with pytest.raises(tm.CacheError):
        make_lock(1)
    assert runs == [1, 1]


def test_full_disk_releases_the_claim_and_leaves_no_partial_file(
    store: Any, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    with tmpfs(small, "1m") as disk:
        s = tm.Store(store.url, result_dir=disk / "results")
        runs: list[int] = []

        @s.task(skip_if_in_progress=True)
        def big(x: int) -> bytes:
            runs.append(x)
            return b"x" * (256 << 10)

        (disk / "results").mkdir()
        fill(disk, leave=16 << 10)
        with pytest.raises(tm.CacheError) as info:
            big(1)
        text = str(info.value)
        assert "big" in text and "could not be stored" in text, text
        assert isinstance(info.value.__cause__, OSError)
        assert statuses(s) == ["FAILED"]
        assert [p.name for p in (disk / "results").rglob("*") if p.is_file()] == []
        (disk / "filler").unlink()
        assert big(1) == b"x" * (256 << 10)
        assert big(1) == b"x" * (256 << 10)
        assert runs == [1, 1]
        assert statuses(s) == ["COMPLETED"]
        s.close()


def test_a_long_seed_and_a_long_name_are_stored(store: Any) -> None:
    runs: list[str] = []

    def body(x: int, random_seed: str = "") -> int:
        runs.append(random_seed)
        return x

    body.__qualname__ = "q" * 300
    fn = store.task(body, skip_if_in_progress=True)
    seed = "s" * 300
    assert fn(1, random_seed=seed) == 1
    assert fn(1, random_seed=seed) == 1
    assert runs == [seed]
    (entry,) = store.cache_entries()
    assert entry["seed"] == seed  # the database keeps the whole seed; the file name a part
    path = Path(entry["result_path"])
    assert path.exists() and path.is_relative_to(store.result_dir)
    assert all(len(part.encode()) <= 255 for part in path.parts)
    assert statuses(store) == ["COMPLETED"]
