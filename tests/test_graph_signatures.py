"""A graph reads a plain function's parameters from its code object (cheap first runs); these tests
hold that reading to ``inspect.signature`` and the async check to ``inspect.iscoroutinefunction``
over generated signatures, and check the build shortcut against the general path."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tm
from tm import Graph, GraphError
from tm._runners import is_async
from tm.graph import _Sig

_NAMES = st.sampled_from(["a", "b", "c", "config", "context", "x_1", "data", "extract"])


@st.composite
def signatures(draw: st.DrawFn) -> str:
    """The parameter list of a ``def``: positional-only, ordinary, *args, keyword-only, **kwargs,
    with defaults where Python allows them."""
    names = draw(st.lists(_NAMES, unique=True, max_size=7))
    cut1 = draw(st.integers(0, len(names)))
    cut2 = draw(st.integers(cut1, len(names)))
    posonly, pos, kwonly = names[:cut1], names[cut1:cut2], names[cut2:]
    first_default = draw(st.integers(0, cut2))
    parts = [f"{n}=None" if i >= first_default else n for i, n in enumerate(posonly + pos)]
    if posonly:
        parts.insert(len(posonly), "/")
    if draw(st.booleans()):
        parts.append("*va")
    elif kwonly:
        parts.append("*")
    parts += [f"{n}=1" if draw(st.booleans()) else n for n in kwonly]
    if draw(st.booleans()):
        parts.append("**kw")
    return ", ".join(parts)


def _define(params: str, prefix: str = "") -> Any:
    ns: dict[str, Any] = {}
    exec(f"{prefix}def f({params}):\n    return 1\n", ns)
    return ns["f"]


def _reference(fn: Any) -> tuple[list[tuple[str, Any, bool]], list[str], bool, bool]:
    ps = list(inspect.signature(fn).parameters.values())
    return (
        [(p.name, p.kind, p.default is not p.empty) for p in ps],
        [p.name for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)],
        any(p.kind is p.VAR_POSITIONAL for p in ps),
        any(p.kind is p.VAR_KEYWORD for p in ps),
    )


@settings(max_examples=300, deadline=None)
@given(signatures(), st.booleans())
def test_code_object_reading_equals_inspect_signature(params: str, coroutine: bool) -> None:
    fn = _define(params, "async " if coroutine else "")
    sig = _Sig(fn)
    assert (sig.params, sig.positional, sig.var_positional, sig.var_keyword) == _reference(fn)
    assert is_async(fn) is inspect.iscoroutinefunction(fn) is coroutine


def test_wrapped_and_annotated_signatures_follow_inspect() -> None:
    def inner(a, b=2):
        return a

    @functools.wraps(inner)
    def outer(*args, **kwargs):
        return inner(*args, **kwargs)

    def custom(x, y):
        return x

    custom.__signature__ = inspect.signature(inner)  # type: ignore[attr-defined]
    for fn in (outer, custom):
        sig = _Sig(fn)
        assert (
            sig.params
            == _reference(fn)[0]
            == [
                ("a", inspect.Parameter.POSITIONAL_OR_KEYWORD, False),
                ("b", inspect.Parameter.POSITIONAL_OR_KEYWORD, True),
            ]
        )

    async def coro() -> None:
        pass

    @functools.wraps(coro)
    def sync_wrapper() -> None:
        pass

    assert is_async(sync_wrapper) is inspect.iscoroutinefunction(sync_wrapper) is False
    assert is_async(functools.partial(coro)) is True


def test_task_keeps_the_function_metadata() -> None:
    def load(path: str) -> int:
        """Loads."""
        return 1

    t = tm.task(load)
    assert (t.__name__, t.__qualname__, t.__module__, t.__doc__) == (
        load.__name__,
        load.__qualname__,
        load.__module__,
        "Loads.",
    )
    assert t.__annotations__ == {"path": "str", "return": "int"}
    assert inspect.signature(t) == inspect.signature(load)


def test_adding_new_tasks_after_known_ones_matches_add_edges() -> None:
    def a():
        return 1

    def b(a):
        return a + 1

    def c(a, b):
        return a + b

    quick, general = Graph("quick"), Graph("general")
    ta, tb, tc = tm.task(a), tm.task(b), tm.task(c)
    quick.add(ta)
    quick.add(tb, depends_on=ta)
    quick.add(tc, depends_on=[ta, "b", ta])
    general.add_edges([ta], [tb, tc])
    general.add_edges([tb], [tc])
    for g in (quick, general):
        assert g.tasks == ["a", "b", "c"]
        assert g.parents_of("c") == ["a", "b"]
        assert g() == 3


def test_adding_a_second_task_of_a_known_name_leaves_the_graph_unchanged() -> None:
    def a():
        return 1

    g = Graph("g")
    g.add(tm.task(a))
    other = tm.task(lambda: 2, name="a")
    with pytest.raises(GraphError, match='duplicate task name "a"'):
        g.add(other, depends_on=[])
    assert g.tasks == ["a"] and len(g) == 1
    with pytest.raises(GraphError, match="no task named"):
        g.add(tm.task(lambda: 3, name="z"), depends_on=["missing"])
    assert g.tasks == ["a"]
