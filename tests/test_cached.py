"""Cached calls (seed 000): ``@store.task`` and ``@tm.cached`` in one process.

Round trips of every supported type, the layout on disk, keys, forced re-runs, tampered files,
failures, ``skip_if_in_progress`` between threads, configuration, graph tasks and ``tm cache``.
Several processes are in ``test_cached_processes.py``.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import os
import pickle
import re
import shutil
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from _forking import SteppedChild, in_forked_child

import tm
import tm._cached
import tm.config
import tm.store
from tm.cli import main as cli

np = pytest.importorskip("numpy")
pd = pytest.importorskip("pandas")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = tm.Store(f"sqlite:///{tmp_path / 'tm.db'}", result_dir=tmp_path / "results")
    yield s
    s.close()


def fresh(s: tm.Store) -> tm.Store:
    """Another store on the same database: nothing in memory, every hit reads its file."""
    return tm.Store(s.url, result_dir=s.result_dir)


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: float


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, pd.DataFrame):
        return a.equals(b) and list(a.dtypes) == list(b.dtypes) and a.index.equals(b.index)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


VALUES: list[tuple[str, Any, str]] = [
    ("none", None, "json"),
    ("bool", True, "json"),
    ("int", 7, "json"),
    ("bigint", 2**80 + 1, "json"),
    ("float-int-valued", 3.0, "json"),
    ("float", 0.1, "json"),
    ("nan", float("nan"), "json"),
    ("inf", float("-inf"), "json"),
    ("str", "héllo\x00", "json"),
    ("list", [1, 2.0, "3"], "json"),
    ("tuple", (1, (2, [3, (4,)])), "json"),
    ("empty-tuple", (), "json"),
    ("dict", {"b": 1, "a": (2, 3)}, "json"),
    ("dict-int-keys", {1: "a", (2, 3): [4]}, "json"),
    ("dict-with-tag-key", {"__tm__": "tuple", "v": [1]}, "json"),
    ("set", {1, 2, 3}, "json"),
    ("frozenset", frozenset({"a"}), "json"),
    ("bytes", b"\x00\xff" * 10, "bytes"),
    ("bytearray", bytearray(b"ab"), "pickle"),
    ("dataclass", Point(1, 2.5), "pickle"),
    ("decimal", decimal.Decimal("1.10"), "pickle"),
    ("ndarray", np.arange(12, dtype=np.int32).reshape(3, 4), "npy"),
    ("ndarray-float", np.linspace(0, 1, 5), "npy"),
]


@pytest.mark.parametrize(("name", "value", "fmt"), VALUES, ids=[v[0] for v in VALUES])
def test_round_trip_keeps_value_and_type(store: Any, name: str, value: Any, fmt: str) -> None:
    runs: list[int] = []

    @store.task
    def produce(tag: str) -> Any:
        runs.append(1)
        return value

    first = produce(name)
    assert same(first, value)
    hot = produce(name)
    assert same(hot, value)
    entry = store.cache_entries()[0]
    assert entry["format"] == fmt
    other = fresh(store)
    cold = other.task(produce.__wrapped__)(name)
    other.close()
    assert same(cold, value), (cold, value)
    assert runs == [1]


def test_dataframe_round_trip_uses_parquet(store: Any) -> None:
    pytest.importorskip("pyarrow")
    df = pd.DataFrame(
        {"a": np.arange(5), "b": np.linspace(0, 1, 5), "c": list("vwxyz")},
        index=pd.Index([10, 11, 12, 13, 14], name="i"),
    )

    @store.task
    def frame(n: int) -> Any:
        return df.head(n)

    assert same(frame(5), df)
    assert store.cache_entries()[0]["format"] == "parquet"
    other = fresh(store)
    assert same(other.task(frame.__wrapped__)(5), df)
    other.close()


def test_results_do_not_share_mutable_objects(store: Any) -> None:
    @store.task
    def make() -> dict[str, list[int]]:
        return {"a": [1]}

    first = make()
    first["a"].append(2)
    assert make() == {"a": [1]}
    second = make()
    second["a"].append(3)
    assert make() == {"a": [1]}


def test_layout_on_disk(store: Any) -> None:
    @store.task
    def layout(x: int, random_seed: int = 42) -> list[int]:
        return [x]

    layout(1)
    layout(2, random_seed=None)
    entries = {json.loads(e["inputs_json"])["x"]: e for e in store.cache_entries()}
    folder = store.result_dir / __name__ / "test_layout_on_disk._locals_.layout"
    files = sorted(p.name for p in folder.iterdir())
    assert len(files) == 2, files
    for x, seed in ((1, "42"), (2, "noseed")):
        path = Path(entries[x]["result_path"])
        assert path.parent == folder
        m = re.fullmatch(r"(\d{8}T\d{12}Z)_([^_]+)_([0-9a-f]{32})\.json", path.name)
        assert m, path.name
        assert m.group(2) == seed and m.group(3) == entries[x]["key"]
    assert entries[1]["seed"] == "42" and entries[2]["seed"] is None
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_key_binds_defaults_and_ignores_keyword_order(store: Any) -> None:
    runs: list[tuple[Any, ...]] = []

    @store.task
    def f(a: Any, b: Any = 2, *, c: Any = 3) -> int:
        runs.append((a, b, c))
        return len(runs)

    assert f(1) == f(1, 2) == f(a=1, b=2) == f(b=2, a=1, c=3) == 1
    assert f({"x": 1, "y": 2}) == f({"y": 2, "x": 1}) == 2
    assert f({1, 2, 3}) == f({3, 2, 1}) == 3
    assert f(1.0) == 4  # 1.0 is not 1
    assert f([1, 2]) == 5
    assert f((1, 2)) == 6  # a tuple is not a list
    assert f(np.arange(3)) == f(np.arange(3)) == 7  # arrays by content
    assert f(np.arange(3, dtype=np.int8)) == 8  # ... and dtype
    assert f(pd.DataFrame({"a": [1, 2]})) == f(pd.DataFrame({"a": [1, 2]})) == 9
    assert f(pd.DataFrame({"a": [1, 3]})) == 10
    assert f(Point(1, 2.0)) == f(Point(1, 2.0)) == 11
    assert f(Point(1, 2.5)) == 12
    assert len(runs) == 12


def test_argument_without_canonical_form_is_named(store: Any) -> None:
    @store.task
    def f(data: Any, log: Any = None) -> int:
        return 1

    with pytest.raises(tm.CacheKeyError, match=r"'data\[0\]\.'|data\[0\]") as info:
        f([object()])
    assert isinstance(info.value, TypeError)
    assert "ignore=" in str(info.value)
    runs: list[int] = []

    @store.task(ignore=["log"])
    def g(x: int, log: Any) -> int:
        runs.append(x)
        return x

    assert g(1, log=object()) == g(1, log=object()) == 1
    assert runs == [1]
    with pytest.raises(ValueError, match="nope"):
        store.task(ignore=["nope"])(lambda x: x)


def test_coroutine_functions_are_refused_clearly(store: Any) -> None:
    async def fetch(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="coroutine"):
        store.task(fetch)


def test_forced_rerun_supersedes(store: Any) -> None:
    runs: list[int] = []

    def counter(x: int) -> int:
        runs.append(x)
        return len(runs)

    cached = store.task(counter)
    forced = store.task(counter, use_cache=False)
    assert cached(1) == 1 and cached(1) == 1
    assert forced(1) == 2 and forced(1) == 3
    assert cached(1) == 3  # the newest result wins
    assert cached.refresh(1) == 4 and cached(1) == 4
    assert len(store.cache_entries()) == 1  # each run superseded the one before


def test_version_and_seed_are_part_of_the_key(store: Any) -> None:
    runs: list[str] = []

    def body(x: int, random_seed: int = 0) -> int:
        runs.append("run")
        return x

    v1 = store.task(body, version="1")
    v2 = store.task(body, version="2")
    v1(1)
    v1(1)
    v2(1)
    v1(1, random_seed=5)
    assert len(runs) == 3
    why = v2.why(1, random_seed=5)
    assert not why["hit"]
    assert why["differences"] == ["version: 2 (stored 1)"]  # the nearest: v1 with seed 5
    why = v2.why(1, random_seed=6)
    assert why["differences"] == ["seed: 6 (stored 0)", "arg random_seed: 6 (stored 0)"]
    assert v2.why(1)["hit"]


def test_default_version_follows_the_source(store: Any) -> None:
    ns: dict[str, Any] = {}
    exec("def src(x):\n    return x + 1\n", ns)
    a = store.task(ns["src"])
    b = store.task(ns["src"])
    assert a.version == b.version
    assert store.task(lambda x: x).version != store.task(lambda x: x * 2).version


def test_tampered_file_is_refused(store: Any, tmp_path: Path) -> None:
    @store.task
    def secret(x: int) -> Point:
        return Point(x, 0.5)

    secret(1)
    path = Path(store.cache_entries()[0]["result_path"])
    assert path.suffix == ".pkl"
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    path.write_bytes(pickle.dumps(Evil()))
    other = fresh(store)
    with pytest.raises(tm.SignatureError, match="signature that does not match") as info:
        other.task(secret.__wrapped__)(1)
    other.close()
    assert isinstance(info.value, tm.StoreError)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_missing_file_is_recomputed(store: Any) -> None:
    runs: list[int] = []

    @store.task
    def f(x: int) -> int:
        runs.append(x)
        return x * 10

    f(1)
    Path(store.cache_entries()[0]["result_path"]).unlink()
    other = fresh(store)
    assert other.task(f.__wrapped__)(1) == 10
    other.close()
    assert runs == [1, 1]
    shutil.rmtree(store.result_dir)  # the whole directory, under a function that made it
    assert f(2) == 20
    assert Path(store.cache_entries()[0]["result_path"]).exists()


def test_ttl_expires(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []

    @store.task(ttl=timedelta(hours=1))
    def f(x: int) -> int:
        runs.append(x)
        return len(runs)

    assert f(1) == f(1) == 1
    now = tm._cached._now_us()
    monkeypatch.setattr(tm._cached, "_now_us", lambda: now + 3600 * 10**6 + 1)
    assert f(1) == 2
    assert f(1) == 2


def test_failure_is_recorded_and_retried_next_call(store: Any) -> None:
    fail = [True]

    @store.task
    def flaky(x: int) -> int:
        if fail[0]:
            raise ValueError("boom")
        return x

    with pytest.raises(ValueError, match="boom"):
        flaky(1)
    (state,) = store.cache_index.states()
    assert state["status"] == "FAILED"
    assert (state["error_type"], state["error_message"]) == ("ValueError", "boom")
    fail[0] = False
    assert flaky(1) == 1
    (state,) = store.cache_index.states()
    assert state["status"] == "COMPLETED"


def test_skip_if_in_progress_between_threads_and_skipped_parent(store: Any) -> None:
    entered, release = threading.Event(), threading.Event()
    out: list[Any] = []

    @store.task
    def child(x: int) -> int:
        entered.set()
        assert release.wait(30)
        return x

    skipping_child = store.task(child.__wrapped__, skip_if_in_progress=True)

    @store.task
    def parent(x: int) -> int:
        return skipping_child(x) + 1

    t = threading.Thread(target=lambda: out.append(child(1)))
    t.start()
    assert entered.wait(30)
    with pytest.raises(tm.TaskInProgress) as info:
        skipping_child(1)
    assert info.value.key == skipping_child.facts(1)["key"]
    with pytest.raises(tm.TaskInProgress):
        parent(1)
    states = {s["func"]: s for s in store.cache_index.states()}
    assert states["test_skip_if_in_progress_between_threads_and_skipped_parent.<locals>.parent"][
        "status"
    ] == ("SKIPPED")
    release.set()
    t.join(30)
    assert out == [1]
    assert parent(1) == 2  # no longer in progress: the parent runs and the child hits


def test_identical_calls_from_threads_compute_once(store: Any) -> None:
    entered, release = threading.Event(), threading.Event()
    runs: list[int] = []

    @store.task
    def slow(x: int) -> int:
        runs.append(x)
        entered.set()
        assert release.wait(30)
        return x * 2

    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(slow(4)))
    first.start()
    assert entered.wait(30)
    others = [threading.Thread(target=lambda: results.append(slow(4))) for _ in range(3)]
    for t in others:
        t.start()
    release.set()
    for t in [first, *others]:
        t.join(30)
    assert results == [8, 8, 8, 8]
    assert runs == [4]


def test_heartbeat_renews_the_lease_of_a_running_call(store: Any) -> None:
    entered, release = threading.Event(), threading.Event()

    @store.task
    def held(x: int) -> int:
        entered.set()
        assert release.wait(30)
        return x

    t = threading.Thread(target=held, args=(1,))
    t.start()
    assert entered.wait(30)
    (state,) = store.cache_index.states()
    first = state["lease_until_us"]
    assert state["status"] == "RUNNING" and first > state["started_us"]
    lease = first
    while lease == first:  # the heartbeat thread renews it; the test timeout bounds the wait
        tm._cached._heartbeats.beat_now()
        time.sleep(0.001)
        lease = store.cache_index.states()[0]["lease_until_us"]
    assert lease > first
    release.set()
    t.join(30)
    (state,) = store.cache_index.states()
    assert state["status"] == "COMPLETED" and state["lease_until_us"] is None


def test_methods_and_recursion_guard(store: Any) -> None:
    class Model:
        def __init__(self) -> None:
            self.fits = 0

        @store.task(ignore=["self"])
        def fit(self, x: int) -> int:
            self.fits += 1
            return x * 3

    m = Model()
    assert m.fit(2) == m.fit(x=2) == 6
    assert m.fits == 1

    @store.task
    def fact(n: int) -> int:
        return 1 if n <= 1 else n * fact(n - 1)

    assert fact(5) == 120
    assert len(store.cache_entries("fact")) == 5

    @store.task
    def loop(n: int) -> int:
        return loop(n)

    with pytest.raises(tm.TmError, match="calls itself"):
        loop(1)


def test_config_load_builds_postgres_url_from_the_seed_yaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("yaml")
    monkeypatch.setattr(tm.config, "DEFAULT_DB_URL", None)
    monkeypatch.setattr(tm.config, "DEFAULT_RESULT_DIR", None)
    monkeypatch.delenv("TM_DB_URL", raising=False)
    monkeypatch.delenv("TM_RESULT_DIR", raising=False)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        "db:\n  user: analyst\n  password: 'p@ss/word'\n  host: db.example.org\n"
        "  port: 5433\n  name: experiments\napp:\n  output_dir: /data/results\n"
    )
    loaded = tm.config.load(cfg)
    url = "postgresql://analyst:p%40ss%2Fword@db.example.org:5433/experiments"
    assert loaded["DEFAULT_DB_URL"] == url
    assert url == tm.config.DEFAULT_DB_URL
    assert tm.config.DEFAULT_RESULT_DIR == "/data/results"
    s = tm.Store()
    assert s.url == url and s.result_dir == Path("/data/results")
    with pytest.raises(tm.StoreError, match="postgresql"):
        s.cache_index  # noqa: B018 - an unreachable server is a clear error when first used
    monkeypatch.setenv("TM_DB_URL", "sqlite:///env.db")
    monkeypatch.setenv("TM_RESULT_DIR", "env-results")
    s = tm.Store()
    assert s.url == "sqlite:///env.db" and s.result_dir == Path("env-results").absolute()


def test_config_load_json_and_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tm.config, "DEFAULT_DB_URL", None)
    monkeypatch.setattr(tm.config, "DEFAULT_RESULT_DIR", None)
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"DEFAULT_DB_URL": "sqlite:///a.db", "DEFAULT_RESULT_DIR": "r"}))
    tm.config.load(j)
    assert (tm.config.DEFAULT_DB_URL, tm.config.DEFAULT_RESULT_DIR) == ("sqlite:///a.db", "r")
    p = tmp_path / "settings.py"
    p.write_text("DEFAULT_DB_URL = 'sqlite:///b.db'\nDEFAULT_RESULT_DIR = 'out'\n")
    tm.config.load(p)
    assert (tm.config.DEFAULT_DB_URL, tm.config.DEFAULT_RESULT_DIR) == ("sqlite:///b.db", "out")
    bad = tmp_path / "c.toml"
    bad.write_text("")
    with pytest.raises(ValueError, match="yaml"):
        tm.config.load(bad)


def test_tm_cached_uses_the_default_store_made_at_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tm.store, "_default", None)
    monkeypatch.setenv("TM_DB_URL", f"sqlite:///{tmp_path / 'default.db'}")
    monkeypatch.setenv("TM_RESULT_DIR", str(tmp_path / "out"))
    runs: list[int] = []

    @tm.cached
    def f(x: int) -> int:
        runs.append(x)
        return x

    @tm.cached(version="x")
    def g(x: int) -> int:
        return x

    assert sorted(os.listdir(tmp_path)) == []  # decorating creates nothing
    assert f(3) == f(3) == 3 and g(1) == 1
    assert runs == [3]
    assert (tmp_path / "default.db").exists()
    assert len(list((tmp_path / "out").rglob("*.json"))) == 2
    tm.store._default.close()  # type: ignore[union-attr]


def test_graph_task_cache(store: Any) -> None:
    runs: list[str] = []

    @tm.task(cache=True)
    def load(context: Any) -> tuple[int, int]:
        runs.append("load")
        return (1, 2)

    @tm.task(cache=True)
    def total(load: tuple[int, int], config: Any) -> int:
        runs.append("total")
        return sum(load) + config["k"]

    g = tm.Graph("cached", config={"k": 10})
    g.add_edges(load, total)
    with tm.Executor(store=store) as ex:
        assert ex.run(g).result() == 13
        assert ex.run(g).result() == 13
        assert ex.run(g, config={"k": 20}).result() == 23
    assert runs == ["load", "total", "total"]
    assert {e["func"] for e in store.cache_entries()} == {
        "test_graph_task_cache.<locals>.load",
        "test_graph_task_cache.<locals>.total",
    }


def test_cli_ls_show_why_clear(store: Any, capsys: pytest.CaptureFixture[str]) -> None:
    @store.task
    def area(w: int, h: int = 2) -> int:
        return w * h

    area(3)
    area(4, h=5)
    db = ["--db", store.url, "--result-dir", str(store.result_dir)]
    assert cli(["cache", "ls", "area", *db, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2
    key = rows[0]["key"]
    assert cli(["cache", "show", key[:10], *db]) == 0
    out = capsys.readouterr().out
    assert key in out and "COMPLETED" in out and '"h":5' in out
    assert cli(["cache", "why", "area", '{"w": 3, "h": 7}', *db, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hit"] is False
    assert report["differences"] == ["arg h: 7 (stored 2)"]
    assert cli(["cache", "why", "area", '{"w": 3}', *db]) == 0
    # A function defined inside a test cannot be imported: only the arguments are compared.
    assert capsys.readouterr().out.startswith("arguments match the stored call")
    assert cli(["cache", "show", "ffff", *db]) == 1
    assert "no cached call" in capsys.readouterr().err
    assert cli(["cache", "clear", "area", "--older-than", "7d", *db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] == 0
    paths = [Path(r["result_path"]) for r in rows]
    assert all(p.exists() for p in paths)
    assert cli(["cache", "clear", "area", *db]) == 0
    assert "deleted 2" in capsys.readouterr().out
    assert not any(p.exists() for p in paths)
    assert store.cache_entries() == []
    assert cli(["cache", "clear", "--older-than", "soon", *db]) == 2


def _double(x: int) -> int:
    return 2 * x


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_parent_closing_its_store_loses_nothing_a_forked_child_records(
    store: Any,
) -> None:
    # A forked child's new Store sits on SQLite records inherited from the parent, which claim
    # locks the child does not hold: a parent closing its store must not take the database as
    # its own (checkpoint and delete the log the child commits to).
    double = store.task()(_double)
    assert double(0) == 0
    own: list[Any] = []

    def connect() -> str:
        own.append(fresh(store))
        return str(own[0].task()(_double)(1))

    def record_more() -> str:
        mine = own[0].task()(_double)
        got = [mine(i) for i in range(2, 30)]
        own[0].close()
        return " ".join(map(str, got))

    child = SteppedChild(connect, record_more)
    assert child.first == "2"
    store.close()
    assert child.next() == " ".join(str(2 * i) for i in range(2, 30))
    again = fresh(store)
    try:
        looked = again.task()(_double)
        missing = [i for i in range(30) if not looked.why(i)["hit"]]
        assert missing == []
    finally:
        again.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_store_a_forked_child_inherits_records_what_the_child_does(store: Any) -> None:
    # multiprocessing forks its workers on Linux: they inherit the parent's Store, with the
    # writer's queue but not its thread, and the parent's connections. The child writes through
    # a writer of its own and reads on connections of its own; closing the store there (which
    # had failed with a Rust panic) leaves the parent's store working.
    double = store.task()(_double)
    assert double(0) == 0

    @tm.task
    def triple(x: int) -> int:
        return 3 * x

    g = tm.Graph("forked")
    g.add(triple)

    def work() -> str:
        signal.alarm(120)  # a watchdog: a child stuck on the parent's writer dies, and fails
        got = [double(i) for i in range(1, 10)]
        with tm.Executor(store=store) as ex:
            run = ex.run(g, args=(7,))
            assert run.result() == 21
        store.flush()
        seen = store.run(run.run_id)
        return f"{' '.join(map(str, got))} {run.run_id} {seen['state'] if seen else None}"

    def close() -> str:
        store.close()
        return "closed"

    child = SteppedChild(work, close)
    *got, run_id, state = child.first.split(" ")
    assert got == [str(2 * i) for i in range(1, 10)]
    assert state == "completed"
    assert double(20) == 40
    assert child.next() == "closed"
    assert double(21) == 42
    store.flush()
    again = fresh(store)
    try:
        looked = again.task()(_double)
        assert [i for i in [*range(10), 20, 21] if not looked.why(i)["hit"]] == []
        assert (again.run(run_id) or {}).get("state") == "completed"
    finally:
        again.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forks_go_through_while_threads_keep_using_the_store(store: Any) -> None:
    # One thread makes cached calls without pause (the cache index's connection: lookups,
    # claims, completions); another records runs and results and reads them back (the writer
    # thread's commits, the result cache, the read pool). The main thread forks twenty times;
    # each child's first calls of every kind answer, and the parent loses nothing.
    @store.task
    def double(x: int) -> int:
        return 2 * x

    core = store.core
    stop = threading.Event()
    made = {"calls": 0, "runs": 0}

    def call() -> None:
        while not stop.is_set():
            n = made["calls"]
            assert double(n) == 2 * n
            made["calls"] = n + 1

    def record() -> None:
        while not stop.is_set():
            n = made["runs"]
            core.begin_run(f"r{n}", "g", "running", "manual", n, [(0, "t", None, None, None, None)])
            core.save_result(f"r{n}", 0, "pickle", store.signer.dumps(n))
            assert store.result(f"r{n}", 0) == n
            store.runs(limit=1)
            made["runs"] = n + 1
            recorded.set()

    def child(k: int) -> str:
        core.begin_run(f"child{k}", "g", "running", "manual", 0, [])
        core.flush()
        runs = {r["run_id"] for r in store.runs(limit=None)}
        return f"{double(-k - 1)} {f'child{k}' in runs} {store.result('r0', 0)}"

    recorded = threading.Event()
    threads = [threading.Thread(target=f) for f in (call, record)]
    for t in threads:
        t.start()
    # The children read run r0's result back: fork once it is stored (its first write also
    # creates the store's signing key, which takes a moment).
    assert recorded.wait(60)
    try:
        said = [in_forked_child(lambda k=k: child(k)) for k in range(20)]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert said == [f"{-2 * (k + 1)} True 0" for k in range(20)]
    store.flush()
    assert len(store.runs(limit=None)) == made["runs"] + 20
    stored = {json.loads(e["inputs_json"])["x"] for e in store.cache_entries()}
    assert stored == set(range(made["calls"])) | {-k - 1 for k in range(20)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_renew_the_leases_of_its_parents_calls(store: Any) -> None:
    # A call runs in a thread of the parent (its lease renewed by the parent's heartbeat thread)
    # when the main thread forks: the child has neither the call nor the thread, so it must not
    # renew that lease (were the parent killed, the call would stay claimed for as long as the
    # child lives), and its own calls still get renewed by a heartbeat thread of its own.
    started, release = threading.Event(), threading.Event()

    @store.task
    def slow(x: int) -> int:
        started.set()
        release.wait()
        return x

    @store.task
    def quick(x: int) -> int:
        return x

    t = threading.Thread(target=slow, args=(1,))
    t.start()
    started.wait()
    beats = tm._cached._heartbeats
    try:
        in_parent = len(beats.owned)
        said = in_forked_child(lambda: f"{len(beats.owned)} {quick(2)} {len(beats.owned)}")
    finally:
        release.set()
        t.join()
    assert in_parent == 1
    assert said == "0 2 0"
