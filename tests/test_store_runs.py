"""Graph runs recorded in the embedded store, and read back by ``tm runs`` / ``tm show``."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tm
from tm import Executor, Graph, Store, task


def failing_graph() -> Graph:
    @task
    def a():
        return 1

    @task(retries=1)
    def b(a):
        raise ValueError("bad b")

    @task
    def c(b):
        return 3

    @task
    def d():
        return 4

    g = Graph("recorded")
    g.add_edges([a], [b])
    g.add_edges([b], [c])
    g.add(d)
    return g


def tm_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def test_every_transition_of_a_run_is_recorded(db_url: str) -> None:
    store = Store(db_url)
    with Executor(store=store) as ex:
        run = ex.run(failing_graph())
    store.flush()
    assert run.state == "failed" and run.run_id
    [listed] = store.runs()
    assert (listed["run_id"], listed["graph"], listed["state"]) == (
        run.run_id,
        "recorded",
        "failed",
    )
    assert listed["ended_us"] >= listed["started_us"] > 0
    detail = store.run(run.run_id)
    tasks = {t["name"]: t for t in detail["tasks"]}
    assert {n: t["status"] for n, t in tasks.items()} == {
        "a": "completed",
        "b": "failed",
        "c": "skipped",
        "d": "completed",
    }
    assert (tasks["b"]["error_type"], tasks["b"]["error_message"]) == ("ValueError", "bad b")
    assert "raise ValueError" in tasks["b"]["traceback"]
    attempts = store.attempts(run.run_id, "b")
    assert [(x["attempt"], x["status"], x["error_type"]) for x in attempts] == [
        (1, "failed", "ValueError"),
        (2, "failed", "ValueError"),
    ]
    assert attempts[0]["retry_at_us"] is not None and attempts[1]["retry_at_us"] is None
    store.close()


def test_store_is_optional_and_validated(tmp_path: Path) -> None:
    with Executor() as ex:
        assert ex.run(failing_graph()).run_id is None
    with pytest.raises(TypeError):
        Executor(store=42)  # type: ignore[arg-type]
    url = f"sqlite:///{tmp_path}/by-url.db"
    with Executor(store=url) as ex:
        run = ex.run(failing_graph())
    ex.store.flush()
    assert ex.store.run(run.run_id)["state"] == "failed"


def test_nothing_is_created_before_first_use(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TM_DB_URL", raising=False)
    store = Store()
    assert store.url == "sqlite:///.tm/tm.db"
    assert list(tmp_path.iterdir()) == []
    store.runs()
    assert (tmp_path / ".tm" / "tm.db").exists()
    store.close()


def test_cli_lists_and_shows_runs(tmp_path: Path, db_url: str) -> None:
    url = db_url
    with Executor(store=url) as ex:
        run = ex.run(failing_graph())
        ok = Graph("fine")
        ok.add(task(lambda: 1, name="one"))
        ex.run(ok)
    ex.store.close()
    listed = tm_cli("runs", "--db", url, "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["graph"] for r in rows] == ["fine", "recorded"]
    only_failed = json.loads(
        tm_cli("runs", "--db", url, "--json", "--state", "failed", cwd=tmp_path).stdout
    )
    assert [r["run_id"] for r in only_failed] == [run.run_id]
    shown = tm_cli("show", run.run_id, "--db", url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "ValueError: bad b" in shown.stdout
    assert any(line.split()[:3] == ["b", "failed", "2"] for line in shown.stdout.splitlines())
    missing = tm_cli("show", "nope", "--db", url, cwd=tmp_path)
    assert missing.returncode == 1 and "no run 'nope'" in missing.stderr


def test_a_corrupt_database_is_a_clear_error_and_is_not_touched(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database" * 100)
    before = bad.read_bytes()
    with pytest.raises(tm.StoreError, match="not a SQLite database"):
        Store(f"sqlite:///{bad}").runs()
    res = tm_cli("runs", "--db", f"sqlite:///{bad}", cwd=tmp_path)
    assert res.returncode == 1 and "bad.db" in res.stderr
    assert bad.read_bytes() == before


def test_cli_reads_while_another_process_writes(tmp_path: Path, db_url: str) -> None:
    url = db_url
    writer = textwrap.dedent(
        f"""
        import tm
        g = tm.Graph("busy")
        prev = None
        for i in range(20):
            t = tm.task(lambda **kw: 1, name=f"t{{i}}")
            g.add(t, depends_on=[prev] if prev else [])
            prev = t
        with tm.Executor(workers=2, store={url!r}) as ex:
            ex.store.core  # created now: readers refuse a store that does not exist yet
            print("open", flush=True)
            for _ in range(40):
                assert ex.run(g).state == "completed"
        ex.store.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", writer],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "open\n"
    reads = 0
    try:
        while proc.poll() is None or reads == 0:
            res = tm_cli("runs", "--db", url, "--json", "-n", "5", cwd=tmp_path)
            assert res.returncode == 0, res.stderr
            reads += 1
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    final = json.loads(tm_cli("runs", "--db", url, "--json", "-n", "100", cwd=tmp_path).stdout)
    assert len(final) == 40 and {r["state"] for r in final} == {"completed"}
