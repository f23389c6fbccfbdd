"""Sharp edges of graphs and runs: a finished run outlives edits to its graph, graphs iterate,
a graph file nested too deeply is a GraphError, and a resumed run's ``context.attempt`` goes on
from the attempts already recorded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import tm
from tm import Executor, Graph, GraphError, Store, task


def test_a_finished_runs_result_survives_edits_to_its_graph() -> None:
    @task
    def a():
        return 1

    @task
    def b(a):
        return a + 1

    @task
    def c(a):
        return a + 10

    g = Graph("editable")
    g.add(b, depends_on=[a])
    with Executor(workers=2) as ex:
        run = ex.run(g)
        g.add(c, depends_on=[a])  # a new leaf the run never had
        assert run.result() == 2
        assert run.result("b") == 2
        assert set(run.states()) == {"a", "b"}
        # And a leaf of the run that gains a child after the run.
        g3 = Graph("leaves")
        g3.add(a)
        run3 = ex.run(g3)
        g3.add(c, depends_on=[a])
        assert run3.result() == 1


def test_graph_iterates_its_task_names_in_topological_order() -> None:
    @task
    def first():
        return 1

    @task
    def second(first):
        return first

    @task
    def third(second, first):
        return second

    @task
    def alone():
        return 0

    g = Graph("iter")
    g.add(third)  # added before its parents: iteration still puts parents first
    g.add(second, depends_on=[first])
    g.add_edges([second, first], [third])
    g.add(alone)
    names = list(g)
    assert names == g.topological_order() == list(iter(g))
    assert sorted(names) == sorted(g.tasks)
    assert names.index("first") < names.index("second") < names.index("third")
    assert list(Graph("empty")) == []


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_a_deeply_nested_graph_file_is_a_graph_error(tmp_path: Path, suffix: str) -> None:
    if suffix == ".yaml":
        pytest.importorskip("yaml")
    depth = 100_000 if suffix == ".json" else 5 * sys.getrecursionlimit()  # PyYAML is slow
    path = tmp_path / f"deep{suffix}"
    path.write_text('{"tasks": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(GraphError, match="nested too deeply"):
        Graph.from_file(path)
    # The same for a config file read for a run.
    g = Graph("deep-config", config=str(path))
    with pytest.raises(GraphError, match="nested too deeply"):
        g.load_config()


def test_a_resumed_runs_attempt_numbers_go_on(tmp_path: Path) -> None:
    seen: list[int] = []

    @task
    def flaky(context):
        seen.append(context.attempt)
        if len(seen) < 3:
            raise RuntimeError(f"call {len(seen)} fails")
        return "ok"

    g = Graph("resumable")
    g.add(flaky)
    store = Store(f"sqlite:///{tmp_path}/tm.db")
    with Executor(store=store, retries=1, retry_delay=0) as ex:
        run = ex.run(g)
        assert run.state == "failed"
        assert seen == [0, 1]
        store.flush()
        assert store.run(run.run_id)["tasks"][0]["attempt"] == 2
        resumed = ex.resume(run.run_id, g)
    assert resumed.state == "completed" and resumed.result() == "ok"
    # The third call is the task's third attempt, for the task and for `tm show` alike.
    assert seen == [0, 1, 2]
    store.flush()
    assert store.run(run.run_id)["tasks"][0]["attempt"] == 3
    assert [a["attempt"] for a in store.attempts(run.run_id, "flaky")] == [1, 2, 3]
    store.close()


def test_graph_file_json_shape_is_unchanged(tmp_path: Path) -> None:
    # Guard for the nesting check: an ordinary file still loads.
    path = tmp_path / "flow.json"
    path.write_text(json.dumps({"tasks": [{"name": "t", "function": "json.dumps"}]}))
    assert list(Graph.from_file(path)) == ["t"]
    assert isinstance(tm.Graph.from_file(path), Graph)
