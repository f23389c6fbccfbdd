"""Sharp edges of cached calls a new user hit: ``tm cache why`` errors and stale answers, the
decorator's ``db_url``, superseded result files left behind, arguments without a key."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import tm
import tm.store
from tm.cli import main as cli


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = tm.Store(f"sqlite:///{tmp_path / 'tm.db'}", result_dir=tmp_path / "results")
    yield s
    s.close()


def tm_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TM_SECRET_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "tm", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def write_module(where: Path, body: str) -> None:
    (where / "shapes.py").write_text(
        textwrap.dedent(
            """
            import tm

            store = tm.Store("sqlite:///tm.db", result_dir="results")

            @store.task
            def area(w, h=2):
                return {body}
            """
        ).format(body=body)
    )
    for cache in where.glob("__pycache__"):
        for f in cache.iterdir():
            f.unlink()


def call_area(where: Path, w: int) -> None:
    code = f"import shapes; print(shapes.area({w})); shapes.store.close()"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=where, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_why_with_a_missing_argument_is_a_clear_error(tmp_path: Path) -> None:
    write_module(tmp_path, "w * h")
    call_area(tmp_path, 3)
    done = tm_cli(tmp_path, "cache", "why", "shapes:area", '{"h": 3}', "--db", "sqlite:///tm.db")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "missing" in done.stderr and "'w'" in done.stderr, done.stderr


def test_why_by_name_notices_a_changed_function(tmp_path: Path) -> None:
    write_module(tmp_path, "w * h")
    call_area(tmp_path, 3)
    db = ("--db", "sqlite:///tm.db")
    done = tm_cli(tmp_path, "cache", "why", "area", '{"w": 3}', *db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hit"), done.stdout
    write_module(tmp_path, "w * h + 1")
    for name in ("area", "shapes.area"):
        done = tm_cli(tmp_path, "cache", "why", name, '{"w": 3}', *db)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("miss"), done.stdout
        assert "version" in done.stdout, done.stdout


def test_why_by_name_of_a_function_it_cannot_import_does_not_claim_a_hit(
    store: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    @store.task
    def local(x: int) -> int:
        return x

    local(1)
    db = ["--db", store.url]
    assert cli(["cache", "why", "local", '{"x": 1}', *db]) == 0
    out = capsys.readouterr().out
    assert not out.startswith("hit"), out
    assert "code not compared" in out, out


def test_cached_decorator_takes_the_database_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    runs: list[int] = []

    @tm.cached(db_url=url, result_dir=tmp_path / "own-results", version="1")
    def f(x: int) -> int:
        runs.append(x)
        return x * 2

    @tm.cached(db_url=url, result_dir=tmp_path / "own-results")
    def g(x: int) -> int:
        return x

    assert not (tmp_path / "own.db").exists()  # decorating opens nothing
    assert f(2) == f(2) == 4 and g(1) == 1
    assert runs == [2]
    assert f.store is g.store  # one store per database and result directory
    assert {e["func"] for e in f.store.cache_entries()} == {
        "test_cached_decorator_takes_the_database_url.<locals>.f",
        "test_cached_decorator_takes_the_database_url.<locals>.g",
    }
    assert len(list((tmp_path / "own-results").rglob("*.json"))) == 2
    with pytest.raises(
        TypeError, match=r"tm\.cached\(\) got an unexpected keyword argument 'nope'"
    ):
        tm.cached(nope=1)
    with pytest.raises(TypeError, match=r"tm\.cached\(\)"):
        tm.cached(lambda x: x, nope=1)
    f.store.close()


def test_forced_reruns_remove_the_files_they_supersede(db_url: str, tmp_path: Path) -> None:
    store = tm.Store(db_url, result_dir=tmp_path / "superseded")
    runs: list[int] = []

    def counter(x: int) -> int:
        runs.append(x)
        return len(runs)

    cached = store.task(counter)
    forced = store.task(counter, use_cache=False)
    assert cached(1) == 1
    assert forced(1) == 2 and forced(1) == 3
    assert cached.refresh(1) == 4
    assert cached(2) == 5
    files = sorted(p for p in store.result_dir.rglob("*") if p.is_file())
    entries = store.cache_entries()
    assert len(files) == 2, files  # one per key: the newest
    assert sorted(Path(e["result_path"]) for e in entries) == files
    assert cached(1) == 4 and runs == [1, 1, 1, 1, 2]
    store.close()


def test_a_self_referencing_argument_is_a_cache_key_error(store: Any) -> None:
    @store.task
    def f(data: Any) -> int:
        return 1

    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(tm.CacheKeyError, match=r"'data'.*(refers to itself|nested too deeply)"):
        f(loop)
    d: dict[str, Any] = {}
    d["self"] = d
    with pytest.raises(tm.CacheKeyError, match="'data"):
        f(d)
    assert store.cache_index.states() == []


def test_a_huge_integer_argument_is_a_cache_key_error(store: Any) -> None:
    @store.task
    def f(n: Any, m: int = 0) -> int:
        return 1

    with pytest.raises(tm.CacheKeyError, match=r"'n'.*digits") as info:
        f(10**5000)
    assert isinstance(info.value, TypeError)
    with pytest.raises(tm.CacheKeyError, match=r"'n\[0\]'"):
        f([10**5000])
    assert f(10**100) == 1  # big, but within Python's int-to-text limit
