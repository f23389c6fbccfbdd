"""The database is trusted less: result files are read and deleted only inside ``result_dir``.

A row written by anyone with write access to the database must not make tm load (unpickle) or
delete a file elsewhere: result paths are resolved (``..`` and symlinks) and refused outside the
store's result directory, and a function's own names cannot place files outside it either.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tm
from tm.cli import main as cli


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = tm.Store(f"sqlite:///{tmp_path / 'tm.db'}", result_dir=tmp_path / "results")
    yield s
    s.close()


class Touch:
    """Unpickling it creates ``marker``: proof that tm unpickled a file it should not have."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (Path.touch, (self.marker,))


def tamper(store: tm.Store, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Rewrites cache rows as another process with write access to the database could (another
    process: two SQLite libraries in one process break each other's locks)."""
    script = (
        "import json, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1])\n"
        "with con:\n"
        "    for sql, params in json.loads(sys.argv[2]):\n"
        "        con.execute(sql, params)\n"
    )
    db = store.url.removeprefix("sqlite:///")
    subprocess.run([sys.executable, "-c", script, db, json.dumps(statements)], check=True)


def point_row_at(store: tm.Store, path: Path, data: bytes) -> None:
    sql = "UPDATE cache_entries SET result_path = ?, content_hash = ?, size = ?"
    tamper(store, (sql, (str(path), hashlib.sha256(data).hexdigest(), len(data))))


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink"])
def test_a_row_pointing_outside_result_dir_is_not_loaded(
    store: Any, tmp_path: Path, where: str
) -> None:
    @store.task
    def make(x: int) -> complex:
        return complex(x, 1)  # not JSON: stored as a pickle

    make(1)
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Touch(marker))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "evil.pkl").write_bytes(evil)
    if where == "outside":
        path = outside / "evil.pkl"
    elif where == "dotdot":
        path = store.result_dir / ".." / "elsewhere" / "evil.pkl"
    else:
        path = store.result_dir / "link.pkl"
        os.symlink(outside / "evil.pkl", path)
    point_row_at(store, path, evil)
    other = tm.Store(store.url, result_dir=store.result_dir, cache_bytes=0)
    with pytest.raises(tm.CacheError, match="outside the result directory"):
        other.task(make.__wrapped__)(1)
    other.close()
    assert not marker.exists()


def test_cache_clear_deletes_nothing_outside_result_dir(
    store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @store.task
    def f(x: int) -> int:
        return x

    f(1)
    f(2)
    f(3)
    own = Path(store.cache_entries()[0]["result_path"])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    linked = tmp_path / "linked.txt"
    linked.write_text("keep me too")
    link = store.result_dir / "link.json"
    os.symlink(linked, link)
    first, second, _ = sorted(e["id"] for e in store.cache_entries())
    sql = "UPDATE cache_entries SET result_path = ? WHERE id = ?"
    tamper(store, (sql, (str(victim), first)), (sql, (str(link), second)))
    assert cli(["cache", "clear", "--db", store.url, "--result-dir", str(store.result_dir)]) == 0
    assert "kept 2 result file(s) outside the result directory" in capsys.readouterr().err
    assert victim.read_text() == "keep me"
    assert linked.read_text() == "keep me too"
    assert not own.exists()  # the entry tm wrote itself is deleted with its file
    assert store.cache_entries() == []


@pytest.mark.parametrize("names", [("..", ".."), (".", ".."), ("..", "x"), ("ok", "../..")])
def test_a_function_named_dots_stays_inside_result_dir(store: Any, names: tuple[str, str]) -> None:
    def body(x: int) -> int:
        return x + 1

    body.__module__, body.__qualname__ = names
    fn = store.task(body)
    assert fn(1) == 2
    assert fn(1) == 2
    (entry,) = store.cache_entries()
    path = Path(entry["result_path"]).resolve()
    assert path.is_relative_to(store.result_dir.resolve()), path
    assert path.exists()
