"""The store on a real PostgreSQL server: the Rust store tests, URLs, errors, sharing.

The behaviours shared with SQLite (every transition of a run, the CLI, filters, refused writes,
prune, concurrent writers) run on both through the ``db_url`` fixture in their own files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _forking import in_forked_child

import tm
from tm import Executor, Graph, Store, task
from tm._tm import StoreCore

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs the Rust toolchain")
def test_rust_store_tests_pass_on_postgresql(pg_url: str) -> None:
    # `make test-rust` skips them (no server); here they run against the real one.
    res = subprocess.run(
        ["cargo", "test", "--no-default-features", "-q", "--lib", "store::"],
        cwd=ROOT,
        env={**os.environ, "TM_TEST_PG_URL": pg_url},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    out = subprocess.run(
        [
            "psql",
            pg_url,
            "-Atc",
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tm_rust_%'",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    # Six store tests and six cache-index tests each made a schema: they ran on the server.
    assert int(out.stdout) >= 12, out.stdout


def test_a_graph_runs_with_its_history_on_postgresql(pg_url: str) -> None:
    @task
    def a() -> int:
        return 1

    @task(persist=True)
    def b(a: int) -> int:
        return a + 1

    g = Graph("pg")
    g.add_edges([a], [b])
    with Executor(store=pg_url) as ex:
        run = ex.run(g)
    assert run.state == "completed"
    ex.store.close()
    # Another store (as another process would) reads it back from the server.
    other = Store(pg_url)
    detail = other.run(run.run_id)
    assert detail["state"] == "completed"
    assert {t["name"]: t["status"] for t in detail["tasks"]} == {"a": "completed", "b": "completed"}
    other.close()


def test_urls_are_validated_and_passwords_never_shown() -> None:
    with pytest.raises(tm.StoreError) as bad:
        StoreCore("postgresql://tm:hunter2@127.0.0.1:notaport/db")
    assert "hunter2" not in str(bad.value)
    # Nothing listens on port 1.
    with pytest.raises(tm.StoreError, match="cannot connect") as down:
        StoreCore("postgres://tm:hunter2@127.0.0.1:1/db")
    assert "hunter2" not in str(down.value) and "tm:***@127.0.0.1:1" in str(down.value)


def test_sqlalchemy_driver_spelling_is_accepted(pg_url: str) -> None:
    store = StoreCore(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    store.begin_run("r", "g", "running", "manual", 1, [(0, "t", None, None, None, None)])
    store.flush()
    assert store.get_run("r") is not None
    store.close()


def test_a_database_with_someone_elses_runs_table_is_refused(pg_url: str, pg_server) -> None:
    psql = pg_server.bindir / "psql"
    if not psql.exists():
        psql = Path(shutil.which("psql") or "psql")
    subprocess.run(
        [str(psql), pg_url, "-qc", "CREATE TABLE runs (invoice int)"],
        check=True,
        capture_output=True,
    )
    with pytest.raises(tm.StoreError, match="did not create"):
        StoreCore(pg_url)


WRITER = """
import sys
from tm._tm import StoreCore

store = StoreCore(sys.argv[1])
tasks = [(n, f"t{n}", None, None, None, None) for n in range(5)]
for r in range(25):
    run_id = f"{sys.argv[2]}-{r}"
    store.begin_run(run_id, "g", "running", "manual", r, tasks)
    for n in range(5):
        store.task_started(run_id, n, 1, r)
        store.task_ended(run_id, n, 1, r + 1, "completed")
    store.finish_run(run_id, "completed", r + 2)
    store.flush()
store.close()
"""


def test_four_processes_migrate_and_write_one_new_database_at_once(pg_url: str) -> None:
    # No process has opened the database before: all four race to migrate it.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, pg_url, tag], stderr=subprocess.PIPE, text=True
        )
        for tag in "abcd"
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    store = StoreCore(pg_url)
    runs = store.list_runs()
    assert len(runs) == 100 and {r["state"] for r in runs} == {"completed"}
    detail = store.get_run("c-7")
    assert detail is not None
    assert [t["status"] for t in detail["tasks"]] == ["completed"] * 5
    store.close()


def test_cached_calls_hit_across_stores_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    calls: list[int] = []

    def build(store: Store):
        @store.task
        def square(x: int) -> int:
            calls.append(x)
            return x * x

        return square

    first = Store(pg_url, result_dir=tmp_path)
    assert build(first)(4) == 16
    # A second store (another process would do the same) finds the entry in the database.
    second = Store(pg_url, result_dir=tmp_path)
    assert build(second)(4) == 16 and build(second)(5) == 25
    assert calls == [4, 5]
    first.close()
    second.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_talks_to_postgresql_on_connections_of_its_own(
    tmp_path: Path, pg_url: str
) -> None:
    # The parent has a read connection and a cached-call connection open when it forks. The
    # child's reads and cached calls must go over connections of its own: sharing the parent's
    # sockets interleaves two processes' messages, and the child closing its store would end
    # the parent's sessions. Its writes go through a writer of its own.
    store = Store(pg_url, result_dir=tmp_path / "results")

    @store.task
    def double(x: int) -> int:
        return 2 * x

    assert double(1) == 2
    store.runs(limit=1)

    def child() -> str:
        value = double(2)
        store.core.begin_run("from-child", "g", "running", "manual", 0, [])
        store.flush()
        runs = [r["run_id"] for r in store.runs(limit=None)]
        store.close()
        return f"{value} {runs}"

    assert in_forked_child(child) == "4 ['from-child']"
    # The parent's connections and writer outlived the child's store.
    assert double(3) == 6
    store.core.begin_run("from-parent", "g", "running", "manual", 1, [])
    store.flush()
    assert {r["run_id"] for r in store.runs(limit=None)} == {"from-child", "from-parent"}
    assert double(2) == 4  # the child's result, stored on the server
    assert {e["inputs_json"] for e in store.cache_entries(func="double")} == {
        '{"x":1}',
        '{"x":2}',
        '{"x":3}',
    }
    store.close()
