"""One run id everywhere (the store's, in hooks, ``context.run_id``, logs and the CLI), unique
prefixes of it in every command, and runs that record where their graph lives so ``tm resume``
needs no ``--graph`` (and says what changed when the graph's tasks did)."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import tm
from tm import Executor, Graph, GraphError, task

WAIT = 60


def test_a_recorded_run_has_one_id_everywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Any] = []
    g = Graph("ids")

    @task
    def work(context):
        return context.run_id

    g.add(work)
    with (
        caplog.at_level(logging.INFO, logger="tm"),
        Executor(store=f"sqlite:///{tmp_path}/tm.db", on_task_end=seen.append) as ex,
    ):
        run = ex.run(g)
    assert isinstance(run.run_id, str) and len(run.run_id) == 32
    assert run.id == run.run_id == run.result() == seen[0].run_id
    assert f"run {run.run_id} of ids completed" in caplog.text
    with Executor() as ex:  # not recorded: the engine's number, the same everywhere too
        run = ex.run(g)
    assert run.run_id is None and isinstance(run.id, int) and run.result() == run.id


FLOW = """
import os
import tm

flow = tm.Graph("flow")

@tm.task
def first():
    return 1

@tm.task
def second(first):
    if os.path.exists(os.path.join(os.path.dirname(__file__), "broken")):
        raise RuntimeError("broken")
    return first + 1

flow.add(first)
flow.add(second, depends_on=[first])
"""


def tm_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args, "--db", f"sqlite:///{cwd}/tm.db"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=cwd,
    )


def test_resume_by_prefix_loads_the_graph_the_run_recorded(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    (tmp_path / "broken").write_text("")
    p = tm_cli(tmp_path, "run", "flow.py")
    assert p.returncode == 1, p.stderr
    run_id = p.stdout.splitlines()[-1].split()[1]
    (tmp_path / "broken").unlink()
    other = tmp_path / "elsewhere"
    other.mkdir()
    # From another directory, by an 8-digit prefix, without --graph.
    p = subprocess.run(
        [sys.executable, "-m", "tm", "resume", run_id[:8], "--db", f"sqlite:///{tmp_path}/tm.db"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        cwd=other,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"run {run_id} of flow: completed"
    p = tm_cli(tmp_path, "show", run_id[:6])
    assert p.returncode == 0 and p.stdout.startswith(f"run {run_id} of flow: completed")
    assert tm_cli(tmp_path, "logs", run_id[:6]).returncode == 0


def test_prefixes_that_match_no_run_or_several_are_errors(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    for _ in range(2):
        assert tm_cli(tmp_path, "run", "flow.py").returncode == 0
    p = tm_cli(tmp_path, "show", "")
    assert p.returncode == 2 and "is the start of several run ids" in p.stderr
    p = tm_cli(tmp_path, "show", "zz")
    assert p.returncode == 1 and "no run 'zz'" in p.stderr


def test_a_graph_changed_since_the_run_is_named_in_the_error(tmp_path: Path) -> None:
    g = Graph("changing")

    @task
    def a():
        raise RuntimeError("first try fails")

    g.add(a)
    with Executor(store=f"sqlite:///{tmp_path}/tm.db") as ex:
        run = ex.run(g)
        assert run.state == "failed"

        @task
        def b():
            return 2

        g.add(b)
        with pytest.raises(GraphError, match=r"changed since run \w+: tasks added: b$"):
            ex.resume(run.run_id, g)


def test_a_graph_knows_where_it_can_be_loaded_from(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    from tm.cli import load_object

    graph = load_object(f"{tmp_path}/flow.py:flow")
    assert isinstance(graph, Graph)
    assert graph.source == f"{(tmp_path / 'flow.py').resolve()}:flow"
    assert load_object(graph.source) is not None
    # Built inside a function: no module-level name holds it.
    assert Graph("local").source is None
    assert tm.Graph("x").source is None
