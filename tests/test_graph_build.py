"""Building graphs: ``@task``, ``Graph.add``/``add_edges``, validation, cycles, rendering, files."""

from __future__ import annotations

import functools
import itertools
import json
import re
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tm
from tm import CronError, CycleError, Executor, Graph, GraphError, TaskFunction, task
from tm.cron import Expression


@pytest.fixture(scope="module")
def ex() -> Iterator[Executor]:
    with Executor(workers=4) as executor:
        yield executor


def edges(g: Graph) -> set[tuple[str, str]]:
    return {(p, c) for c in g.tasks for p in g.parents_of(c)}


# -- @task -----------------------------------------------------------------------------------------


def test_bare_decorator_keeps_the_function_callable() -> None:
    @task
    def double(x):
        """Doubles."""
        return 2 * x

    assert isinstance(double, TaskFunction)
    assert double(21) == 42
    assert double(x=4) == 8
    assert double.task_name == "double"
    assert double.__name__ == "double"
    assert double.__doc__ == "Doubles."
    assert double.__tm_options__.name is None
    assert double.__tm_options__.priority == 0


def test_decorator_with_options() -> None:
    @task(name="renamed", retries=3, retry_delay=0.5, tag="io", priority=7)
    def f(a, b=1):
        return a + b

    assert f(1) == 2
    assert f(1, b=5) == 6
    assert f.task_name == "renamed"
    o = f.__tm_options__
    assert (o.retries, o.retry_delay, o.tag, o.priority) == (3, 0.5, "io", 7)


def test_empty_parentheses_decorator() -> None:
    @task()
    def g():
        return "g"

    assert isinstance(g, TaskFunction)
    assert g() == "g"
    assert g.task_name == "g"


def test_task_as_a_call_on_a_plain_function() -> None:
    def load(n):
        return list(range(n))

    t = task(load, name="load_numbers")
    assert t.task_name == "load_numbers"
    assert t(3) == [0, 1, 2]
    assert load(2) == [0, 1]  # the original is untouched
    assert not isinstance(load, TaskFunction)


def test_task_as_a_call_on_a_callable_object(ex: Executor) -> None:
    class Scale:
        def __init__(self, k):
            self.k = k

        def __call__(self, source):
            return source * self.k

    def source():
        return 5

    scale = task(Scale(3), name="scale")
    assert scale(2) == 6
    g = Graph("objects")
    g.add_edges(source, scale)
    assert g.tasks == ["source", "scale"]
    assert ex.run(g).result() == 15
    # Without a name a callable object is named after its class.
    g2 = Graph("unnamed")
    g2.add_edges(source, Scale(2))
    assert g2.tasks == ["source", "Scale"]
    assert ex.run(g2).result() == 10


def test_partial_is_a_task(ex: Executor) -> None:
    def power(base, exponent):
        return base**exponent

    def base():
        return 3

    square = task(functools.partial(power, exponent=2), name="square")
    g = Graph("partial")
    g.add(square, depends_on=[base])
    assert ex.run(g).result() == 9


def test_plain_functions_added_directly_stay_plain(ex: Executor) -> None:
    def one():
        return 1

    def two(one):
        return one + 1

    g = Graph("plain")
    g.add_edges(one, two)
    assert two(10) == 11
    assert not isinstance(two, TaskFunction)
    assert ex.run(g).result() == 2


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"retries": -1}, ValueError),
        ({"retries": 1.5}, ValueError),
        ({"jitter": 2}, ValueError),
        ({"backoff": -1}, ValueError),
        ({"retry_delay": -1}, ValueError),
        ({"retry_delay": "soon"}, TypeError),
        ({"retry_on": (int,)}, TypeError),
        ({"colour": "red"}, TypeError),
    ],
)
def test_bad_task_options(options: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        task(**options)


@pytest.mark.parametrize("obj", [5, "name", 3.5, [1, 2], object()])
def test_non_callables_are_type_errors(obj: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        task(obj)
    with pytest.raises(TypeError, match="callable"):
        task(obj, name="x")
    with pytest.raises(TypeError, match="callable"):
        task(retries=1)(obj)
    with pytest.raises(TypeError, match="callable"):
        Graph("g").add(obj)


@pytest.mark.parametrize("obj", [5, 3.5, object()])
def test_non_callables_in_add_edges_are_type_errors(obj: Any) -> None:
    g = Graph("g")
    g.add(a)
    with pytest.raises(TypeError, match="callable"):
        g.add_edges([obj])
    with pytest.raises(TypeError, match="callable"):
        g.add_edges([a], [obj])
    with pytest.raises(TypeError, match="callable"):
        g.add(b, depends_on=[obj])
    assert edges(g) == set()


# -- add / add_edges -------------------------------------------------------------------------------


def a():
    return "a"


def b(a):
    return a + "b"


def c(b):
    return b + "c"


def d(a, c):
    return a + c + "d"


def test_add_edges_accumulates_across_calls() -> None:
    g = Graph("acc")
    g.add_edges([a], [b])
    g.add_edges([b], [c])
    g.add_edges([a, c], [d])
    assert g.tasks == ["a", "b", "c", "d"]
    assert edges(g) == {("a", "b"), ("b", "c"), ("a", "d"), ("c", "d")}
    assert g.topological_order() == ["a", "b", "c", "d"]
    assert g.roots() == ["a"]
    assert g.leaves() == ["d"]


def test_add_edges_is_idempotent(ex: Executor) -> None:
    g = Graph("idem")
    for _ in range(3):
        g.add_edges([a], [b])
        g.add(a)
        g.add(b, depends_on=[a])
    assert len(g) == 2
    assert g.tasks == ["a", "b"]
    assert edges(g) == {("a", "b")}
    assert g.to_dot().count("->") == 1
    assert ex.run(g).result() == "ab"


def test_add_edges_single_objects_and_lists() -> None:
    g1 = Graph("single")
    g1.add_edges(a, b)
    g1.add_edges(b, [c])
    g1.add_edges([c], d)
    g1.add_edges(a, d)
    g2 = Graph("lists")
    g2.add_edges([a], [b])
    g2.add_edges([b], [c])
    g2.add_edges([a, c], [d])
    assert edges(g1) == edges(g2)
    assert g1.tasks == g2.tasks


def test_add_edges_without_children_adds_independent_tasks() -> None:
    g = Graph("flat")
    g.add_edges([a, c])
    assert g.tasks == ["a", "c"]
    assert edges(g) == set()
    assert sorted(g.roots()) == ["a", "c"]


def test_add_edges_accepts_task_names() -> None:
    g = Graph("names")
    g.add(a)
    g.add(b)
    g.add_edges("a", "b")
    g.add_edges(["b"], [c])
    assert edges(g) == {("a", "b"), ("b", "c")}
    with pytest.raises(GraphError, match="nope"):
        g.add_edges(["nope"], ["a"])
    assert edges(g) == {("a", "b"), ("b", "c")}


def test_add_with_depends_on_by_object_and_by_name(ex: Executor) -> None:
    g = Graph("deps")
    g.add(a)
    g.add(b, depends_on=[a])
    g.add(c, depends_on=["b"])
    g.add(d, depends_on=["a", c])
    assert edges(g) == {("a", "b"), ("b", "c"), ("a", "d"), ("c", "d")}
    assert ex.run(g).result() == "aabcd"


def test_add_with_a_single_dependency_not_in_a_list() -> None:
    g = Graph("single-dep")
    g.add(b, depends_on=a)
    g.add(c, depends_on="b")
    assert edges(g) == {("a", "b"), ("b", "c")}


def test_add_returns_the_task_for_use_as_a_decorator() -> None:
    g = Graph("decorated")

    @g.add
    @task
    def first():
        return 1

    assert isinstance(first, TaskFunction)
    assert first() == 1
    assert g.tasks == ["first"]


def test_add_unknown_dependency_name_is_a_graph_error() -> None:
    g = Graph("unknown-dep")
    g.add(a)
    with pytest.raises(GraphError, match="nope"):
        g.add(b, depends_on=["nope"])


def test_rejected_add_leaves_the_graph_unchanged() -> None:
    # All or nothing: a GraphError from add() must not leave the new task half-added (here `b`
    # would be left with its required parameter `a` unfilled, so the graph no longer validates).
    g = Graph("unknown-dep")
    g.add(a)
    with pytest.raises(GraphError, match="nope"):
        g.add(b, depends_on=["nope"])
    assert g.tasks == ["a"]
    assert b not in g
    g.validate()


def test_duplicate_name_for_different_tasks_is_an_error() -> None:
    def first():
        return 1

    def second():
        return 2

    g = Graph("dup")
    g.add(task(first, name="same"))
    with pytest.raises(GraphError, match="same"):
        g.add(task(second, name="same"))
    assert g.tasks == ["same"]


def test_duplicate_name_same_function_wrapped_twice_is_an_error() -> None:
    # Two different task objects for one function, both called "a": ambiguous, rejected.
    g = Graph("dup2")
    g.add(task(a))
    with pytest.raises(GraphError, match=r"'a'|\"a\""):
        g.add(task(a, retries=2))


def test_contains_and_len() -> None:
    g = Graph("contains")
    g.add_edges(a, b)
    assert a in g
    assert "b" in g
    assert c not in g
    assert "c" not in g
    assert len(g) == 2


def test_graph_name_must_be_a_non_empty_string() -> None:
    with pytest.raises(GraphError):
        Graph("")
    with pytest.raises(GraphError):
        Graph(None)  # type: ignore[arg-type]


# -- cycles ----------------------------------------------------------------------------------------


def assert_real_cycle(err: CycleError, existing: set[tuple[str, str]], tried: set[tuple[str, str]]):
    path = err.path
    assert len(path) >= 2
    assert path[0] == path[-1], path
    for p, ch in itertools.pairwise(path):
        assert (p, ch) in existing | tried, (p, ch, path)
    # At least one of the edges of the cycle is one the rejected call tried to add.
    assert any(pair in tried for pair in itertools.pairwise(path))
    assert " -> " in str(err)
    assert " -> ".join(path) in str(err)


def test_cycle_is_rejected_naming_the_cycle() -> None:
    g = Graph("cycle")
    g.add_edges([a], [b])
    g.add_edges([b], [c])
    before = edges(g)
    with pytest.raises(CycleError) as info:
        g.add_edges([c], [a])
    assert isinstance(info.value, GraphError)
    assert isinstance(info.value, ValueError)
    assert_real_cycle(info.value, before, {("c", "a")})
    assert set(info.value.path) == {"a", "b", "c"}
    assert edges(g) == before


def test_self_loop_is_a_cycle() -> None:
    g = Graph("self")
    g.add(a)
    with pytest.raises(CycleError) as info:
        g.add_edges(a, a)
    assert info.value.path == ["a", "a"]
    assert "a -> a" in str(info.value)
    assert edges(g) == set()


def test_rejected_add_edges_keeps_none_of_its_edges() -> None:
    g = Graph("atomic")
    g.add_edges(a, b)
    g.add_edges(b, c)
    before_edges = edges(g)
    # (c, d) alone would be fine, (c, a) closes a cycle: neither is kept.
    with pytest.raises(CycleError) as info:
        g.add_edges([c], [d, a])
    assert_real_cycle(info.value, before_edges, {("c", "d"), ("c", "a")})
    assert edges(g) == before_edges
    assert g.to_mermaid().count("-->") == len(before_edges)
    # The graph is still usable afterwards.
    g.add_edges(c, d)
    assert ("c", "d") in edges(g)


def test_rejected_add_edges_leaves_the_task_list_unchanged() -> None:
    # "The graph is unchanged after a rejected add_edges": a task that only this call introduced
    # must not stay behind as an isolated node (its parameter `c` would then be unfillable).
    g = Graph("atomic-nodes")
    g.add_edges(a, b)
    g.add_edges(b, c)
    before_tasks = g.tasks
    with pytest.raises(CycleError):
        g.add_edges([c], [d, a])
    assert g.tasks == before_tasks
    assert d not in g
    g.validate()


def test_long_cycle_through_many_calls() -> None:
    fns = []
    for i in range(20):
        fns.append(task(lambda **_: None, name=f"n{i}"))
    g = Graph("long")
    for x, y in itertools.pairwise(fns):
        g.add_edges(x, y)
    before = edges(g)
    with pytest.raises(CycleError) as info:
        g.add_edges(fns[-1], fns[0])
    assert_real_cycle(info.value, before, {("n19", "n0")})
    assert len(info.value.path) == 21
    assert edges(g) == before


# -- parameters ------------------------------------------------------------------------------------


def test_unfillable_required_parameter_via_validate() -> None:
    def needs(a, mystery):
        return a

    g = Graph("unfillable")
    g.add(needs, depends_on=[a])
    with pytest.raises(GraphError) as info:
        g.validate()
    assert "needs" in str(info.value)
    assert "mystery" in str(info.value)


def test_unfillable_required_parameter_via_running(ex: Executor) -> None:
    calls = []

    def needs(a, mystery):
        calls.append(1)

    g = Graph("unfillable-run")
    g.add(needs, depends_on=[a])
    with pytest.raises(GraphError, match="mystery") as info:
        g()
    assert "needs" in str(info.value)
    with pytest.raises(GraphError, match="mystery"):
        ex.run(g)
    assert calls == []


def test_parameter_naming_a_non_parent_task_is_unfillable() -> None:
    # `c` takes `b`; `b` is in the graph but not c's parent.
    g = Graph("not-parent")
    g.add(b, depends_on=[a])
    g.add(c, depends_on=[a])
    with pytest.raises(GraphError, match=r"'c'.*'b'|'b'.*'c'"):
        g.validate()


def test_defaults_config_context_and_kwargs_need_nothing() -> None:
    def fine(a, config, context, optional=3, **rest):
        return a

    g = Graph("fine")
    g.add(fine, depends_on=[a])
    g.validate()


def test_root_parameters_may_come_from_the_call() -> None:
    def root(x, y):
        return x + y

    g = Graph("root-args")
    g.add(root)
    g.validate()  # roots may be given arguments when the graph is called
    assert g(1, y=2) == 3


def test_positional_only_parameter_cannot_be_filled() -> None:
    def pos(a, /):
        return a

    g = Graph("posonly")
    g.add(pos, depends_on=[a])
    with pytest.raises(GraphError, match="pos"):
        g.validate()


# -- rendering -------------------------------------------------------------------------------------


def test_to_mermaid() -> None:
    g = Graph("render")
    g.add_edges(a, [b, d])
    g.add_edges(b, c)
    g.add_edges(c, d)
    text = g.to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    ids = {}
    for line in lines[1:]:
        if "[" in line:
            node_id, label = line.strip().split("[", 1)
            ids[label.strip('"]')] = node_id
    assert set(ids) == {"a", "b", "c", "d"}
    arrows = {tuple(part.strip() for part in line.split("-->")) for line in lines if "-->" in line}
    assert arrows == {(ids[p], ids[ch]) for p, ch in edges(g)}


def test_to_dot() -> None:
    g = Graph('my "graph"')
    g.add_edges(a, [b, d])
    g.add_edges(b, c)
    g.add_edges(c, d)
    text = g.to_dot()
    assert text.startswith('digraph "my \\"graph\\"" {')
    assert text.rstrip().endswith("}")
    for name in "abcd":
        assert f'"{name}";' in text
    arrows = {line.strip() for line in text.splitlines() if "->" in line}
    assert arrows == {f'"{p}" -> "{ch}";' for p, ch in edges(g)}


def test_render_escapes_quotes_in_task_names() -> None:
    def odd():
        return 1

    g = Graph("esc")
    g.add(task(odd, name='say "hi"'))
    assert 'say \\"hi\\"' in g.to_dot()
    assert 'say \\"hi\\"' in g.to_mermaid()


# -- schedule --------------------------------------------------------------------------------------


def test_schedule_parses() -> None:
    g = Graph("scheduled", schedule="*/5 * * * *")
    assert g.schedule == Expression("*/5 * * * *")
    assert Graph("manual").schedule is None
    assert Graph("manual2", schedule="manual").schedule is None
    e = Expression("0 0 * * *")
    assert Graph("expr", schedule=e).schedule is e


@pytest.mark.parametrize("bad", ["61 * * * *", "* * *", "every minute", "0 0 30 2 *"])
def test_bad_schedule_is_a_cron_error(bad: str) -> None:
    with pytest.raises(CronError):
        Graph("bad", schedule=bad)


def test_schedule_of_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        Graph("bad", schedule=5)  # type: ignore[arg-type]


# -- from_file -------------------------------------------------------------------------------------


@pytest.fixture
def funcs_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"tm_test_funcs_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            def fetch():
                return 3

            def double(fetch):
                return fetch * 2

            def total(fetch, double):
                return fetch + double

            class Ns:
                @staticmethod
                def inner(fetch):
                    return -fetch

            NOT_CALLABLE = 5
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_from_file_json(tmp_path: Path, funcs_module: str, ex: Executor) -> None:
    m = funcs_module
    path = write(
        tmp_path / "pipeline.json",
        {
            "name": "from-json",
            "tasks": [
                {"name": "fetch", "function": f"{m}.fetch"},
                {"name": "double", "function": f"{m}.double", "depends_on": ["fetch"]},
                {
                    "name": "total",
                    "function": f"{m}:total",
                    "depends_on": ["fetch", "double"],
                    "retries": 2,
                    "priority": 5,
                },
            ],
        },
    )
    g = Graph.from_file(path)
    assert g.name == "from-json"
    assert g.tasks == ["fetch", "double", "total"]
    assert edges(g) == {("fetch", "double"), ("fetch", "total"), ("double", "total")}
    assert ex.run(g).result() == 9
    assert g() == 9


def test_from_file_yaml(tmp_path: Path, funcs_module: str, ex: Executor) -> None:
    path = write(
        tmp_path / "pipeline.yaml",
        textwrap.dedent(
            f"""
            tasks:
              - name: fetch
                function: {funcs_module}.fetch
              - name: negate
                function: {funcs_module}:Ns.inner
                depends_on: [fetch]
            """
        ),
    )
    g = Graph.from_file(path)
    assert g.name == "pipeline"  # the file's stem when the file names none
    assert edges(g) == {("fetch", "negate")}
    assert ex.run(g).result() == -3


def test_from_file_entries_in_any_order(tmp_path: Path, funcs_module: str, ex: Executor) -> None:
    m = funcs_module
    path = write(
        tmp_path / "reversed.json",
        {
            "tasks": [
                {"name": "double", "function": f"{m}.double", "depends_on": ["fetch"]},
                {"name": "fetch", "function": f"{m}.fetch"},
            ]
        },
    )
    assert ex.run(Graph.from_file(path)).result() == 6


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ({"name": "x", "function": "tm_no_such_module_xyz.f"}, "tm_no_such_module_xyz"),
        ({"name": "x", "function": "{m}.nope"}, "nope"),
        ({"name": "x", "function": "{m}.NOT_CALLABLE"}, "not callable"),
        ({"name": "x", "function": "nodots"}, "dotted path"),
        ({"name": "x", "function": 5}, "function"),
        ({"name": "x"}, "function"),
        ({"name": "x", "function": "{m}.fetch", "depends_on": ["ghost"]}, "ghost"),
        ({"name": "x", "function": "{m}.fetch", "depends_on": "fetch"}, "depends_on"),
        ({"name": "x", "function": "{m}.fetch", "retries": -2}, "retries"),
        ({"name": "x", "function": "{m}.fetch", "colour": "red"}, "colour"),
    ],
)
def test_from_file_bad_entry_names_the_entry(
    tmp_path: Path, funcs_module: str, entry: dict[str, Any], expect: str
) -> None:
    entry = {k: v.format(m=funcs_module) if isinstance(v, str) else v for k, v in entry.items()}
    path = write(tmp_path / "bad.json", {"tasks": [entry]})
    with pytest.raises(GraphError) as info:
        Graph.from_file(path)
    msg = str(info.value)
    assert "'x'" in msg
    assert "bad.json" in msg
    assert expect in msg


def test_from_file_entry_without_a_name(tmp_path: Path, funcs_module: str) -> None:
    path = write(
        tmp_path / "noname.json",
        {"tasks": [{"name": "ok", "function": f"{funcs_module}.fetch"}, {"function": "a.b"}]},
    )
    with pytest.raises(GraphError, match="#1") as info:
        Graph.from_file(path)
    assert "name" in str(info.value)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"tasks": 5}', '{"steps": []}'])
def test_from_file_bad_json(tmp_path: Path, content: str) -> None:
    path = write(tmp_path / "broken.json", content)
    with pytest.raises(GraphError, match=re.escape("broken.json")):
        Graph.from_file(path)


def test_from_file_bad_yaml(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.yaml", "tasks: [\n  - name: x\n   bad")
    with pytest.raises(GraphError, match=re.escape("broken.yaml")):
        Graph.from_file(path)


def test_from_file_missing(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match=re.escape("missing.json")):
        Graph.from_file(tmp_path / "missing.json")


def test_from_file_cycle(tmp_path: Path, funcs_module: str) -> None:
    m = funcs_module
    path = write(
        tmp_path / "cycle.json",
        {
            "tasks": [
                {"name": "p", "function": f"{m}.fetch", "depends_on": ["q"]},
                {"name": "q", "function": f"{m}.fetch", "depends_on": ["p"]},
            ]
        },
    )
    with pytest.raises(CycleError) as info:
        Graph.from_file(path)
    assert set(info.value.path) == {"p", "q"}
    assert info.value.path[0] == info.value.path[-1]


def test_from_file_duplicate_names(tmp_path: Path, funcs_module: str) -> None:
    m = funcs_module
    path = write(
        tmp_path / "dup.json",
        {
            "tasks": [
                {"name": "x", "function": f"{m}.fetch"},
                {"name": "x", "function": f"{m}.double"},
            ]
        },
    )
    with pytest.raises(GraphError, match=r"'x'|\"x\""):
        Graph.from_file(path)


# -- from_tasks with tm.Task -----------------------------------------------------------------------


class Emit(tm.Task):
    def __init__(self, value, **kwargs):
        super().__init__(**kwargs)
        self.value = value

    def execute(self):
        return self.value


class Sum(tm.Task):
    def execute(self, **parents):
        return sum(parents.values())


def test_from_tasks_with_task_subclasses(ex: Executor) -> None:
    one = Emit(1, task_id="one")
    two = Emit(2, task_id="two")
    total = Sum(dependencies=[one, two], task_id="total")
    g = Graph.from_tasks([total], name="classes")  # dependencies come along
    assert sorted(g.tasks) == ["one", "total", "two"]
    assert edges(g) == {("one", "total"), ("two", "total")}
    run = ex.run(g)
    assert run.state == "completed"
    assert run.result() == 3
    assert run.result("one") == 1
    assert total.result == 3


def test_from_tasks_mixing_classes_and_functions(ex: Executor) -> None:
    seven = Emit(7, task_id="seven")

    def plus_one(seven):
        return seven + 1

    g = Graph.from_tasks([seven], name="mixed")
    g.add(plus_one, depends_on=[seven])
    assert ex.run(g).result() == 8


def test_task_class_ids_are_unique_by_default() -> None:
    t1, t2 = Emit(1), Emit(2)
    assert t1.task_id != t2.task_id
    g = Graph.from_tasks([t1, t2])
    assert len(g) == 2


def test_task_without_execute_fails_when_run(ex: Executor) -> None:
    class Lazy(tm.Task):
        pass

    g = Graph.from_tasks([Lazy(task_id="lazy")])
    run = ex.run(g)
    assert run.state == "failed"
    assert isinstance(run.error, NotImplementedError)
