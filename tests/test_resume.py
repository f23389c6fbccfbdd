"""Runs interrupted by SIGKILL resume without redoing completed work."""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tm

GRAPH = textwrap.dedent(
    """
    import os, random, sys
    import tm

    EFFECTS = os.environ["TM_TEST_EFFECTS"]

    def work(**parents):
        # One line per execution: the side effect that must not repeat once recorded complete.
        fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, (tm_task_name() + "\\n").encode())
        finally:
            os.close(fd)
        return sum(parents.values()) + 1

    def tm_task_name():
        return sys._getframe(1).f_locals.get("name", "?")

    def make(name):
        def fn(**parents):
            fd = os.open(EFFECTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, (name + "\\n").encode())
            finally:
                os.close(fd)
            return sum(parents.values()) + 1
        return tm.task(fn, name=name)

    rnd = random.Random(7)
    graph = tm.Graph("killable")
    tasks = [make(f"t{i:03d}") for i in range(N)]
    for i, t in enumerate(tasks):
        parents = [tasks[p] for p in rnd.sample(range(i), min(i, 3))] if i else []
        graph.add(t, depends_on=parents)

    if __name__ == "__main__":
        ex = tm.Executor(workers=4, store=os.environ["TM_DB_URL"], persist=True)
        run = ex.run(graph)
        print(run.state, run.run_id)
    """
)


def effects(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


@pytest.mark.timeout(300)
def test_sigkill_at_random_moments_then_resume_runs_each_task_once_more_at_most(
    tmp_path: Path,
) -> None:
    n = 1000
    script = tmp_path / "killable.py"
    script.write_text(GRAPH.replace("range(N)", f"range({n})"))
    rnd = random.Random(2024)
    for trial in range(20):
        db = tmp_path / f"trial{trial}.db"
        fx = tmp_path / f"effects{trial}.txt"
        env = {**os.environ, "TM_DB_URL": f"sqlite:///{db}", "TM_TEST_EFFECTS": str(fx)}
        proc = subprocess.Popen(
            [sys.executable, str(script)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        kill_after = rnd.randrange(1, n)
        # Kill once the run has done a random amount of work (polling the side effects).
        while proc.poll() is None and len(effects(fx)) < kill_after:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        con.close()
        store = tm.Store(f"sqlite:///{db}")
        [row] = store.runs()
        run_id = row["run_id"]
        done_before = {t["name"] for t in store.run(run_id)["tasks"] if t["status"] == "completed"}
        store.close()
        before = effects(fx)
        resumed = subprocess.run(
            [
                sys.executable,
                "-m",
                "tm",
                "resume",
                run_id,
                "--graph",
                f"{script}:graph",
                "--db",
                f"sqlite:///{db}",
            ],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=False,
        )
        assert resumed.returncode == 0, resumed.stderr
        after = effects(fx)[len(before) :]
        # Nothing recorded complete ran again; everything else ran exactly once more.
        assert not done_before & set(after), (trial, sorted(done_before & set(after))[:5])
        assert sorted(after) == sorted(
            f"t{i:03d}" for i in range(n) if f"t{i:03d}" not in done_before
        )
        store = tm.Store(f"sqlite:///{db}")
        final = store.run(run_id)
        store.close()
        assert final["state"] == "completed"
        assert {t["status"] for t in final["tasks"]} == {"completed"}


STUCK = textwrap.dedent(
    """
    import os, sys
    import tm

    store = tm.Store(os.environ["TM_DB_URL"])

    @tm.task
    def first() -> int:
        return 1

    @tm.task
    def stuck(first: int, context) -> int:
        if os.environ.get("TM_TEST_STUCK"):
            run_id = context.meta["run_id"]
            # Make this attempt's start durable, then tell the test and hang until killed.
            for _ in range(10_000):
                store.flush()
                if store.run(run_id)["tasks"][1]["status"] == "running":
                    break
            with open(os.environ["TM_TEST_FIFO"], "w") as fifo:
                fifo.write("running\\n")
            os.read(os.open(os.environ["TM_TEST_FIFO"], os.O_RDONLY), 1)
        return first + 1

    graph = tm.Graph("stuck")
    graph.add_edges(first, stuck)

    if __name__ == "__main__":
        with tm.Executor(workers=2, store=store, persist=True) as ex:
            ex.run(graph)
    """
)


def test_a_task_running_at_the_kill_resumes_as_its_next_attempt(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    url = f"sqlite:///{tmp_path}/tm.db"
    env = {**os.environ, "TM_DB_URL": url, "TM_TEST_FIFO": str(fifo), "TM_TEST_STUCK": "1"}
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, cwd=tmp_path, stderr=subprocess.PIPE
    )
    # Wait for the task to be running (and recorded so), or for the process to die.
    got = b""
    while not got.endswith(b"\n") and proc.poll() is None:
        if select.select([reader], [], [], 1.0)[0]:
            got += os.read(reader, 64)
    os.close(reader)
    assert got == b"running\n", proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    store = tm.Store(url)
    [row] = store.runs()
    run_id = row["run_id"]
    assert [a["attempt"] for a in store.attempts(run_id, "stuck")] == [1]
    store.close()
    del env["TM_TEST_STUCK"]
    resumed = subprocess.run(
        [sys.executable, "-m", "tm", "resume", run_id, "--graph", f"{script}:graph", "--db", url],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    store = tm.Store(url)
    detail = store.run(run_id)
    assert detail is not None and detail["state"] == "completed"
    by_name = {t["name"]: t for t in detail["tasks"]}
    # The interrupted attempt stays in the history; the resumed one is attempt 2.
    assert by_name["stuck"]["attempt"] == 2
    attempts = store.attempts(run_id, "stuck")
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert attempts[0]["status"] == "running"
    assert attempts[1]["status"] == "completed"
    # The completed parent was not run again: still its single attempt.
    assert [a["attempt"] for a in store.attempts(run_id, "first")] == [1]
    assert store.result(run_id, "stuck") == 2
    store.close()


def test_resume_without_persist_warns_which_completed_tasks_run_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without persisted results, a completed task whose result an unfinished task needs must run
    again; the resume says so (a ``tm`` WARNING and a Python warning) naming those tasks and
    why. A completed task that no unfinished task needs is not run again."""
    ran: list[str] = []
    fail = [True]

    @tm.task
    def a() -> int:
        ran.append("a")
        return 1

    @tm.task
    def b(a: int) -> int:
        ran.append("b")
        return a + 1

    @tm.task
    def c(b: int) -> int:
        ran.append("c")
        if fail[0]:
            raise RuntimeError("first time")
        return b + 1

    @tm.task
    def leaf() -> str:
        ran.append("leaf")
        return "done"

    g = tm.Graph("no-persist")
    g.add_edges(a, b)
    g.add_edges(b, c)
    g.add(leaf)
    with tm.Executor(workers=2, store=f"sqlite:///{tmp_path}/tm.db") as ex:
        first = ex.run(g)
        assert first.state == "failed"
        assert sorted(ran) == ["a", "b", "c", "leaf"]
        ran.clear()
        fail[0] = False
        caplog.set_level("WARNING", logger="tm")
        with pytest.warns(UserWarning, match=r"'a', 'b'.*persist") as warned:
            again = ex.resume(first.run_id, g)
        assert again.state == "completed" and again.result("c") == 3
        assert sorted(ran) == ["a", "b", "c"]  # not the leaf: nothing unfinished needs it
    message = str(warned[0].message)
    assert "'leaf'" not in message and "'c'" in message
    logged = [r for r in caplog.records if r.name == "tm" and r.levelname == "WARNING"]
    assert any("'a', 'b'" in r.getMessage() and "persist" in r.getMessage() for r in logged)


def test_resume_with_persisted_results_warns_nothing(tmp_path: Path) -> None:
    import warnings

    calls = {"n": 0}

    @tm.task
    def a() -> int:
        return 1

    @tm.task
    def b(a: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("first time")
        return a + 1

    g = tm.Graph("persisted")
    g.add_edges(a, b)
    with tm.Executor(store=f"sqlite:///{tmp_path}/tm.db", persist=True) as ex:
        first = ex.run(g)
        assert first.state == "failed"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert ex.resume(first.run_id, g).result() == 2
