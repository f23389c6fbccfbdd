"""Manual triggers: ``tm trigger GRAPH -p ...`` (a real subprocess) asks the schedulers sharing a
store to run a graph now; exactly one of them runs it, with ``context.meta["trigger"] ==
"manual"``. On SQLite and PostgreSQL, with two schedulers; and in one executor without a store."""

from __future__ import annotations

import queue
import subprocess
import sys
from contextlib import ExitStack

import pytest
from test_scheduler import WAIT, running

import tm
from tm import Executor, Graph, task


def tm_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args], capture_output=True, text=True, timeout=WAIT
    )


def yearly(out: queue.Queue, who: str) -> Graph:
    g = Graph("yearly", schedule="0 0 1 1 *")

    @task
    def work(n, context):
        out.put((who, n, context.meta["trigger"], context.meta["trigger_id"]))

    g.add(work)
    return g


def test_each_trigger_runs_once_on_one_of_the_schedulers(db_url: str) -> None:
    out: queue.Queue = queue.Queue()
    # Three schedulers on a PostgreSQL server, two on one SQLite file.
    n = 3 if db_url.startswith("postgresql") else 2
    stores = [tm.Store(db_url) for _ in range(n)]
    executors = [Executor(store=s) for s in stores]
    for who, ex in zip("abc", executors, strict=False):
        ex.add(yearly(out, who))
    got = []
    with ExitStack() as stack:
        for ex in executors:
            stack.enter_context(running(ex))
        for n in (5, 6, 7):
            p = tm_cli("trigger", "yearly", "-p", f"n={n}", "--db", db_url)
            assert p.returncode == 0, p.stderr
            tid = int(p.stdout.split()[1])
            who, value, trigger, got_tid = out.get(timeout=WAIT)
            assert (value, trigger, got_tid) == (n, "manual", tid)
            got.append(who)
    assert out.empty()  # the schedulers stopped after their runs ended: no second run of any
    runs = stores[0].runs(graph="yearly")
    assert sorted(r["trigger"] for r in runs) == ["manual"] * 3
    assert all(r["state"] == "completed" for r in runs)
    for s in stores:
        s.close()


def test_a_trigger_with_bad_parameters_is_logged_and_the_scheduler_goes_on(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    out: queue.Queue = queue.Queue()
    store = tm.Store(db_url)
    ex = Executor(store=store)
    ex.add(yearly(out, "a"))
    with running(ex):
        ex.trigger("yearly", n=0, bogus=1)
        ex.trigger("yearly", n=1)
        assert out.get(timeout=WAIT)[1] == 1
    assert "yearly: the triggered run could not start" in caplog.text
    assert "bogus" in caplog.text
    store.close()


def test_without_a_store_the_executor_runs_its_own_triggers() -> None:
    out: queue.Queue = queue.Queue()
    ex = Executor()
    ex.add(yearly(out, "a"))
    with pytest.raises(KeyError, match="'other'"):
        ex.trigger("other")
    with running(ex):
        assert ex.trigger("yearly", n=3) is None
        assert out.get(timeout=WAIT) == ("a", 3, "manual", None)


def test_trigger_needs_an_existing_store(tmp_path) -> None:
    p = tm_cli("trigger", "g", "--db", f"sqlite:///{tmp_path}/missing/tm.db")
    assert p.returncode != 0 and "Traceback" not in p.stderr
    p = tm_cli("trigger", "g", "-p", "x")
    assert p.returncode == 2 and "expected NAME=VALUE" in p.stderr
