"""Running graphs: parameter injection, results, failures, retries, priorities, pools, parallelism,
sub-graphs, submit/cancel, threads, a differential test against plain Python, and Ctrl-C."""

from __future__ import annotations

import gc
import graphlib
import inspect
import itertools
import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tm
from tm import Executor, Graph, GraphError, TaskFailed, task

WAIT = 10.0  # liveness bound for events and barriers: reached only when something is broken


@pytest.fixture(scope="module")
def ex() -> Iterator[Executor]:
    with Executor(workers=8) as executor:
        yield executor


def chain(*fns: Callable[..., Any], name: str = "chain") -> Graph:
    g = Graph(name)
    g.add(fns[0])
    for p, c in itertools.pairwise(fns):
        g.add_edges(p, c)
    return g


# -- parameter injection ---------------------------------------------------------------------------


def test_parent_values_are_passed_by_name_including_none(ex: Executor) -> None:
    def nothing():
        return None

    def zero():
        return 0

    def payload():
        return {"k": [1, 2]}

    def child(nothing, zero, payload):
        return (nothing, zero, payload)

    g = Graph("values")
    g.add_edges([nothing, zero, payload], child)
    run = ex.run(g)
    assert run.state == "completed"
    assert run.result() == (None, 0, {"k": [1, 2]})
    assert run.result("nothing") is None


def test_parent_value_is_the_same_object(ex: Executor) -> None:
    marker = object()

    def make():
        return marker

    def check(make):
        return make is marker

    assert ex.run(chain(make, check)).result() is True


def test_config_dict(ex: Executor) -> None:
    def read(config):
        return config["k"]

    def also(read, config):
        return (read, config["k"] * 10)

    g = Graph("cfg", config={"k": 2})
    g.add_edges(read, also)
    assert ex.run(g).result() == (2, 20)
    # A per-run config overrides the graph's.
    assert ex.run(g, config={"k": 3}).result() == (3, 30)
    assert g() == (2, 20)


def test_config_file_is_reread_when_it_changes(tmp_path: Path, ex: Executor) -> None:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"v": 1}))
    seen = []

    def read(config):
        seen.append(config)
        return config["v"]

    g = Graph("cfg-file", config=str(path))
    g.add(read)
    assert ex.run(g).result() == 1
    path.write_text(json.dumps({"v": 22, "extra": True}))
    assert ex.run(g).result() == 22
    path.write_text(json.dumps({"v": 3}))
    assert ex.run(g).result() == 3
    assert g() == 3
    assert [c["v"] for c in seen] == [1, 22, 3, 3]
    # Unchanged file: not parsed again (the same object comes back).
    assert seen[-1] is seen[-2]
    assert g.config == str(path)


def test_config_yaml_file(tmp_path: Path, ex: Executor) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("v: 5\nitems: [a, b]\n")

    def read(config):
        return config

    g = Graph("cfg-yaml", config=path)
    g.add(read)
    assert ex.run(g).result() == {"v": 5, "items": ["a", "b"]}


def test_missing_config_file_is_a_graph_error(tmp_path: Path, ex: Executor) -> None:
    called = []

    def read(config):
        called.append(config)

    g = Graph("cfg-missing", config=str(tmp_path / "nope.json"))
    g.add(read)
    with pytest.raises(GraphError, match=r"nope\.json"):
        ex.run(g)
    assert called == []


def test_context(ex: Executor, caplog: pytest.LogCaptureFixture) -> None:
    seen: dict[str, Any] = {}

    def inspect_me(context):
        seen.update(
            run_id=context.run_id,
            task=context.task,
            attempt=context.attempt,
            cancelled=context.cancelled,
            logger=context.logger,
            graph=context.graph,
        )
        context.logger.warning("hello from %s", context.task)
        return 1

    g = Graph("ctx")
    g.add(task(inspect_me, name="inspected"))
    with caplog.at_level(logging.WARNING, logger="tm.task.inspected"):
        run = ex.run(g)
    assert run.state == "completed"
    assert seen["run_id"] == run.id
    assert seen["task"] == "inspected"
    assert seen["attempt"] == 0
    assert seen["cancelled"] is False
    assert isinstance(seen["logger"], logging.Logger)
    assert seen["logger"].name == "tm.task.inspected"
    assert seen["graph"] == "ctx"
    assert "hello from inspected" in caplog.text


def test_context_run_ids_differ_between_runs(ex: Executor) -> None:
    def rid(context):
        return context.run_id

    g = Graph("rids")
    g.add(rid)
    r1, r2 = ex.run(g), ex.run(g)
    assert r1.result() == r1.id
    assert r2.result() == r2.id
    assert r1.id != r2.id


def test_var_kwargs_receives_all_parents(ex: Executor) -> None:
    def p1():
        return 1

    def p2():
        return None

    def p3():
        return "three"

    def collect(**parents):
        return parents

    def partly(p1, **rest):
        return (p1, rest)

    g = Graph("kwargs")
    g.add_edges([p1, p2, p3], [collect, partly])
    run = ex.run(g)
    assert run.result("collect") == {"p1": 1, "p2": None, "p3": "three"}
    assert run.result("partly") == (1, {"p2": None, "p3": "three"})


def test_var_kwargs_with_config_and_context(ex: Executor) -> None:
    def up():
        return 7

    def down(config, context, **parents):
        return (config, context.task, parents)

    g = Graph("kw-cfg", config={"c": 1})
    g.add_edges(up, down)
    assert ex.run(g).result() == ({"c": 1}, "down", {"up": 7})


# -- calling a graph -------------------------------------------------------------------------------


def test_call_with_positional_and_keyword_arguments_to_the_root() -> None:
    def root(x, y, scale=1):
        return (x + y) * scale

    def after(root):
        return root + 1

    g = chain(root, after, name="args")
    assert g(1, 2) == 4
    assert g(1, y=5) == 7
    assert g(x=2, y=3, scale=10) == 51
    with pytest.raises(TypeError):
        g(1, 2, 3, 4)
    with pytest.raises(TypeError, match="zzz"):
        g(1, 2, zzz=3)
    with pytest.raises(GraphError, match="'y'"):
        g(1)


def doubled(scaled):
    return 2 * scaled


def test_runs_with_arguments_bind_only_their_own_arguments(ex: Executor) -> None:
    """Runs with root arguments share one compiled graph and bind just the roots each time: the
    results match calling the functions directly, whatever ran before with other arguments, and
    the graph changing in between is seen."""

    def scaled(x, scale=1):
        return x * scale

    def labelled(*, label="none", **extra):
        return (label, tuple(sorted(extra.items())))

    def const():
        return 7

    def join(scaled, labelled, const):
        return (scaled, labelled, const)

    g = Graph("bound-roots")
    g.add_edges([scaled, labelled, const], join)

    def direct(kwargs: dict) -> tuple:
        # A root with **kwargs takes every keyword argument of the run.
        kw_scaled = {k: v for k, v in kwargs.items() if k in ("x", "scale")}
        return join(scaled(**kw_scaled), labelled(**kwargs), const())

    rng = random.Random(5)
    for _ in range(60):
        kwargs: dict = {"x": rng.randint(-9, 9)}
        if rng.random() < 0.5:
            kwargs["scale"] = rng.randint(1, 5)
        if rng.random() < 0.5:
            kwargs["label"] = rng.choice("abc")
        if rng.random() < 0.3:
            kwargs["other"] = rng.randint(0, 3)
        assert ex.run(g, kwargs=kwargs).result() == direct(kwargs)
    # Bad arguments are refused and leave the next run unaffected.
    with pytest.raises(GraphError, match="'x'"):
        ex.run(g, kwargs={"scale": 2})
    assert ex.run(g, kwargs={"x": 3}).result() == direct({"x": 3})

    # A root added later takes its share of the next run's arguments.
    def offset(shift):
        return shift + 100

    g.add(offset)
    with pytest.raises(GraphError, match="'shift'"):
        ex.run(g, kwargs={"x": 1})
    assert ex.run(g, kwargs={"x": 2, "shift": 1}).result() == {
        "join": direct({"x": 2, "shift": 1}),
        "offset": 101,
    }
    # Positional arguments go to every root; one root takes them here.
    single = Graph("bound-root")
    single.add_edges(scaled, doubled)
    assert [ex.run(single, args=(i,), kwargs={"scale": 3}).result() for i in range(4)] == [
        2 * scaled(i, scale=3) for i in range(4)
    ]


def test_call_keywords_go_to_the_roots_that_take_them() -> None:
    def left(a):
        return a

    def right(b):
        return b * 10

    def join(left, right):
        return left + right

    g = Graph("kw-roots")
    g.add_edges([left, right], join)
    assert g(a=1, b=2) == 21
    assert g(b=3, a=4) == 34


def test_single_leaf_returns_its_value_several_leaves_a_dict() -> None:
    def root():
        return 2

    def sq(root):
        return root * root

    def neg(root):
        return -root

    one = chain(root, sq, name="one-leaf")
    assert one() == 4
    two = Graph("two-leaves")
    two.add_edges(root, [sq, neg])
    assert two() == {"sq": 4, "neg": -2}


def test_graph_is_reusable(ex: Executor) -> None:
    calls = []

    def step(x):
        calls.append(x)
        return x * 2

    g = Graph("reuse")
    g.add(step)
    assert [g(i) for i in range(5)] == [0, 2, 4, 6, 8]
    assert [ex.run(g, args=(i,)).result() for i in range(3)] == [0, 2, 4]
    assert calls == [0, 1, 2, 3, 4, 0, 1, 2]


def test_graph_grows_between_runs(ex: Executor) -> None:
    def a():
        return 1

    def b(a):
        return a + 1

    def c(b):
        return b + 1

    g = chain(a, b, name="grow")
    assert ex.run(g).result() == 2
    g.add_edges(b, c)
    assert ex.run(g).result() == 3


# -- failures --------------------------------------------------------------------------------------


class Boom(Exception):
    pass


def test_failure_raises_task_failed_with_the_cause() -> None:
    def ok():
        return 1

    def bad(ok):
        raise Boom("kaput")

    g = chain(ok, bad, name="fails")
    with pytest.raises(TaskFailed) as info:
        g()
    err = info.value
    assert isinstance(err, tm.TmError)
    assert err.task == "bad"
    assert err.attempt == 1
    assert isinstance(err.__cause__, Boom)
    assert str(err.__cause__) == "kaput"
    assert "bad" in str(err)
    assert "kaput" in str(err)


def test_descendants_skipped_unrelated_branches_complete(ex: Executor) -> None:
    ran = []

    def root():
        ran.append("root")
        return 1

    def bad(root):
        ran.append("bad")
        raise Boom("x")

    def below(bad):
        ran.append("below")

    def further(below):
        ran.append("further")

    def side(root):
        ran.append("side")
        return 2

    def side2(side):
        ran.append("side2")
        return 3

    def join(further, side2):
        ran.append("join")

    g = Graph("partial-failure")
    g.add_edges(root, [bad, side])
    g.add_edges(bad, below)
    g.add_edges(below, further)
    g.add_edges(side, side2)
    g.add_edges([further, side2], join)
    run = ex.run(g)
    assert run.state == "failed"
    assert run.states() == {
        "root": "completed",
        "bad": "failed",
        "side": "completed",
        "below": "skipped",
        "further": "skipped",
        "side2": "completed",
        "join": "skipped",
    }
    assert sorted(ran) == ["bad", "root", "side", "side2"]
    assert run.tasks["below"].skipped_because == "bad"
    assert run.tasks["further"].skipped_because is not None
    assert run.tasks["side2"].skipped_because is None
    assert run.tasks["below"].attempts == ()
    assert run.failed_task == "bad"
    assert isinstance(run.error, Boom)
    assert isinstance(run.tasks["bad"].error, Boom)
    assert "Boom" in run.tasks["bad"].traceback
    assert run.result("side2") == 3
    with pytest.raises(KeyError):
        run.result("below")
    with pytest.raises(TaskFailed) as info:
        run.raise_for_state()
    assert info.value.task == "bad"
    assert isinstance(info.value.__cause__, Boom)


def test_fail_fast_cancels_pending_work() -> None:
    slow_started = threading.Event()
    slow_stopped = threading.Event()
    observed = []

    def bad():
        assert slow_started.wait(WAIT)  # fail only once `slow` is running
        raise Boom("first")

    def slow(context):
        slow_started.set()
        try:
            deadline = time.monotonic() + WAIT
            while not context.cancelled and time.monotonic() < deadline:
                time.sleep(0.005)  # polling a condition, not synchronising on time
            observed.append(f"slow saw cancelled={context.cancelled}")
            return "slow"
        except tm.TaskCancelled:
            observed.append("slow interrupted")
            raise
        finally:
            slow_stopped.set()

    def after_slow(slow):
        observed.append("after_slow ran")

    g = Graph("fail-fast")
    g.add(bad)
    g.add_edges(slow, after_slow)
    with Executor(workers=4, fail_fast=True) as ff:
        run = ff.run(g)
        assert slow_stopped.wait(WAIT)
    assert run.state == "failed"
    # The running task was stopped (interrupted, or it saw the flag); its child never started.
    assert observed in (["slow interrupted"], ["slow saw cancelled=True"])
    states = run.states()
    assert states["bad"] == "failed"
    assert states["slow"] in ("cancelled", "completed")
    assert states["after_slow"] in ("cancelled", "skipped")
    assert isinstance(run.error, Boom)


def test_without_fail_fast_the_other_branch_finishes(ex: Executor) -> None:
    def bad():
        raise Boom("first")

    def slow(context):
        return context.cancelled

    def after_slow(slow):
        return ("after", slow)

    g = Graph("no-fail-fast")
    g.add(bad)
    g.add_edges(slow, after_slow)
    run = ex.run(g)
    assert run.state == "failed"
    assert run.result("after_slow") == ("after", False)


def test_base_exception_fails_the_task_without_retry(ex: Executor) -> None:
    class Fatal(BaseException):
        pass

    @task(retries=3)
    def dies():
        raise Fatal("no")

    g = Graph("fatal")
    g.add(dies)
    run = ex.run(g)
    assert run.state == "failed"
    assert len(run.tasks["dies"].attempts) == 1
    assert isinstance(run.error, Fatal)


# -- retries ---------------------------------------------------------------------------------------


class Flaky:
    """Fails the first ``k`` calls with ``exc``, then returns ``value``."""

    def __init__(self, k: int, exc: type[BaseException] = ValueError, value: Any = "ok") -> None:
        self.k = k
        self.exc = exc
        self.value = value
        self.attempts: list[int] = []
        self.__signature__ = inspect.Signature(
            [inspect.Parameter("context", inspect.Parameter.KEYWORD_ONLY)]
        )

    def __call__(self, *, context: Any) -> Any:
        self.attempts.append(context.attempt)
        if len(self.attempts) <= self.k:
            raise self.exc(f"failure {len(self.attempts)}")
        return self.value


@pytest.mark.parametrize("k", [0, 1, 3])
def test_task_failing_k_times_then_succeeding(k: int, ex: Executor) -> None:
    flaky = Flaky(k)
    g = Graph("retry")
    g.add(task(flaky, name="flaky", retries=3, retry_delay=0.001))
    run = ex.run(g)
    assert run.state == "completed"
    assert run.result() == "ok"
    assert flaky.attempts == list(range(k + 1))
    t = run.tasks["flaky"]
    assert t.state == "completed"
    assert [a.number for a in t.attempts] == list(range(k + 1))
    assert [str(a.error) for a in t.attempts[:-1]] == [f"failure {i + 1}" for i in range(k)]
    assert t.attempts[-1].error is None
    assert t.error is None


def test_retries_exhausted(ex: Executor) -> None:
    flaky = Flaky(10)
    g = Graph("exhausted")
    g.add(task(flaky, name="flaky", retries=2))
    run = ex.run(g)
    assert run.state == "failed"
    assert flaky.attempts == [0, 1, 2]
    assert len(run.tasks["flaky"].attempts) == 3
    assert str(run.error) == "failure 3"
    flaky2 = Flaky(10)
    g2 = Graph("exhausted2")
    g2.add(task(flaky2, name="flaky", retries=2))
    with pytest.raises(TaskFailed) as info:
        g2()
    assert info.value.attempt == 3
    assert str(info.value.__cause__) == "failure 3"


def test_retry_on_is_respected(ex: Executor) -> None:
    wrong = Flaky(1, exc=KeyError)
    right = Flaky(1, exc=ValueError)
    g = Graph("retry-on")
    g.add(task(wrong, name="wrong", retries=3, retry_on=ValueError))
    g.add(task(right, name="right", retries=3, retry_on=(ValueError, OSError)))
    run = ex.run(g)
    assert run.states() == {"wrong": "failed", "right": "completed"}
    assert wrong.attempts == [0]
    assert right.attempts == [0, 1]


def test_give_up_on_is_respected(ex: Executor) -> None:
    fatal = Flaky(1, exc=PermissionError)
    transient = Flaky(1, exc=ConnectionError)
    g = Graph("give-up")
    g.add(task(fatal, name="fatal", retries=3, give_up_on=PermissionError))
    g.add(task(transient, name="transient", retries=3, give_up_on=PermissionError))
    run = ex.run(g)
    assert run.states() == {"fatal": "failed", "transient": "completed"}
    assert fatal.attempts == [0]
    assert transient.attempts == [0, 1]


def retry_gaps(t: tm.TaskRun) -> list[timedelta]:
    """retry_at - ended_at of every failed attempt, checking the next one started after it."""
    gaps = []
    for prev, nxt in itertools.pairwise(t.attempts):
        assert prev.retry_at is not None
        assert prev.ended_at is not None and prev.ended_at >= prev.started_at
        assert nxt.started_at >= prev.retry_at, (prev, nxt)
        gaps.append(prev.retry_at - prev.ended_at)
    assert t.attempts[-1].retry_at is None
    return gaps


def us(seconds: float) -> timedelta:
    return timedelta(microseconds=round(seconds * 1e6))


def test_retry_delays_with_backoff_are_honoured(ex: Executor) -> None:
    flaky = Flaky(3)
    g = Graph("backoff")
    g.add(task(flaky, name="flaky", retries=3, retry_delay=0.005, backoff=1.0))
    run = ex.run(g)
    assert run.state == "completed"
    gaps = retry_gaps(run.tasks["flaky"])
    one = timedelta(microseconds=1)
    for gap, want in zip(gaps, [0.005, 0.010, 0.020], strict=True):
        assert abs(gap - us(want)) <= one, (gaps, want)


def test_retry_delay_is_capped_by_max_delay(ex: Executor) -> None:
    flaky = Flaky(3)
    g = Graph("max-delay")
    g.add(
        task(
            flaky,
            name="flaky",
            retries=3,
            retry_delay=timedelta(milliseconds=4),
            backoff=3.0,
            max_delay=0.008,
        )
    )
    run = ex.run(g)
    gaps = retry_gaps(run.tasks["flaky"])
    one = timedelta(microseconds=1)
    for gap, want in zip(gaps, [0.004, 0.008, 0.008], strict=True):
        assert abs(gap - us(want)) <= one, (gaps, want)


def test_retry_jitter_stays_in_range(ex: Executor) -> None:
    flaky = Flaky(8)
    g = Graph("jitter")
    g.add(task(flaky, name="flaky", retries=8, retry_delay=0.002, jitter=0.5))
    run = ex.run(g)
    gaps = retry_gaps(run.tasks["flaky"])
    assert len(gaps) == 8
    one = timedelta(microseconds=1)
    for gap in gaps:
        assert us(0.001) - one <= gap <= us(0.003) + one, gaps


def test_retrying_task_does_not_block_a_worker() -> None:
    # One worker. `flaky` fails and must wait a minute before its retry; meanwhile `other` runs on
    # the same worker, sees `flaky` retrying, and cancels it (which drops the pending retry).
    order: list[str] = []
    seen: dict[str, Any] = {}
    submitted = threading.Event()

    def flaky(context):
        order.append(f"flaky{context.attempt}")
        raise ValueError("transient")

    def other():
        assert submitted.wait(WAIT)
        order.append("other")
        run = seen["run"]
        seen["flaky"] = run.tasks["flaky"]
        run.cancel("flaky")
        return "other done"

    g = Graph("retry-frees-worker")
    g.add(task(flaky, retries=1, retry_delay=60, priority=10))
    g.add(task(other, priority=0))
    with Executor(workers=1) as one:
        run = one.submit(g)
        seen["run"] = run
        submitted.set()
        assert run.wait(WAIT)
    assert order == ["flaky0", "other"]
    assert seen["flaky"].state == "retrying"
    assert seen["flaky"].next_attempt_at == seen["flaky"].attempts[0].retry_at
    assert seen["flaky"].next_attempt_at - seen["flaky"].attempts[0].ended_at == timedelta(
        seconds=60
    )
    assert run.states() == {"flaky": "cancelled", "other": "completed"}
    assert run.result("other") == "other done"


# -- priorities ------------------------------------------------------------------------------------


def test_priorities_with_one_worker(ex: Executor) -> None:
    order = []

    def gate():
        return None

    g = Graph("priorities")
    priorities = [3, -1, 10, 0, 7, 5, -20, 2]
    for p in priorities:

        def body(gate, p=p):
            order.append(p)

        g.add(task(body, name=f"p{p}", priority=p), depends_on=[gate])
    with Executor(workers=1) as one:
        run = one.run(g)
    assert run.state == "completed"
    assert order == sorted(priorities, reverse=True)


def test_priorities_order_roots_too() -> None:
    order = []
    g = Graph("root-priorities")
    for p in [1, 9, 4, 6]:

        def body(p=p):
            order.append(p)

        g.add(task(body, name=f"r{p}", priority=p))
    with Executor(workers=1) as one:
        one.run(g)
    assert order == [9, 6, 4, 1]


# -- pools and parallelism -------------------------------------------------------------------------


def test_tag_pool_never_exceeds_its_size() -> None:
    n_io, n_free = 6, 3
    cond = threading.Condition()
    state = {"running": 0, "peak": 0}
    entered: list[str] = []
    gates = {f"io{i}": threading.Event() for i in range(n_io)}
    free_done = threading.Barrier(n_free + 1, timeout=WAIT)

    def io_task(name: str) -> tm.TaskFunction:
        def body():
            with cond:
                state["running"] += 1
                state["peak"] = max(state["peak"], state["running"])
                entered.append(name)
                cond.notify_all()
            released = gates[name].wait(WAIT)
            with cond:
                state["running"] -= 1
                cond.notify_all()
            return released

        return task(body, name=name, tag="io")

    def free_task(i: int) -> tm.TaskFunction:
        def body():
            free_done.wait()
            return i

        return task(body, name=f"free{i}")

    g = Graph("pools")
    for i in range(n_io):
        g.add(io_task(f"io{i}"))
    for i in range(n_free):
        g.add(free_task(i))
    with Executor(workers=4, pools={"io": 2}) as pooled:
        run = pooled.submit(g)
        try:
            # Untagged tasks are not held up by the busy io pool.
            free_done.wait()
            released = 0
            while released < n_io:
                with cond:
                    want = min(n_io, released + 2)
                    assert cond.wait_for(lambda w=want: len(entered) >= w, timeout=WAIT), entered
                    assert state["running"] <= 2, state
                    waiting = [n for n in entered if not gates[n].is_set()]
                running_states = [n for n, s in run.states().items() if s == "running"]
                assert len([n for n in running_states if n.startswith("io")]) <= 2
                assert len(waiting) == 2 or released + len(waiting) == n_io
                gates[waiting[0]].set()
                released += 1
        finally:
            for e in gates.values():
                e.set()
        assert run.wait(WAIT)
    assert run.state == "completed"
    assert state["peak"] == 2
    assert sorted(entered) == sorted(gates)
    assert all(run.result(f"io{i}") is True for i in range(n_io))


def test_workers_per_tag_default_size() -> None:
    # Tags not named in `pools` get `workers_per_tag` workers: 3 tasks of a size-3 pool meet.
    barrier = threading.Barrier(3, timeout=WAIT)

    def make(i: int) -> tm.TaskFunction:
        def body():
            return barrier.wait()

        return task(body, name=f"t{i}", tag="net")

    g = Graph("per-tag")
    for i in range(3):
        g.add(make(i))
    with Executor(workers=1, workers_per_tag=3) as e:
        run = e.run(g)
    assert run.state == "completed", run.error
    assert sorted(run.result().values()) == [0, 1, 2]


def test_independent_tasks_really_run_in_parallel() -> None:
    n = 6
    barrier = threading.Barrier(n, timeout=WAIT)

    def make(i: int) -> tm.TaskFunction:
        def body():
            barrier.wait()  # only returns when all n tasks are inside at once
            return i

        return task(body, name=f"par{i}")

    def total(**parts):
        return sum(parts.values())

    g = Graph("parallel")
    g.add_edges([make(i) for i in range(n)], total)
    with Executor(workers=n) as e:
        run = e.run(g)
    assert run.state == "completed", run.error
    assert run.result() == sum(range(n))


def test_python_work_in_tasks_runs_while_main_thread_waits() -> None:
    # The waiting caller holds no GIL: a task can hand work back to the main thread and continue.
    to_main = threading.Event()
    from_main = threading.Event()

    def worker():
        to_main.set()
        return from_main.wait(WAIT)

    g = Graph("gil")
    g.add(worker)
    with Executor(workers=1) as e:
        run = e.submit(g)
        assert to_main.wait(WAIT)
        assert not run.done()
        from_main.set()
        assert run.wait(WAIT)
    assert run.result() is True


# -- sub-graphs ------------------------------------------------------------------------------------


def make_inner() -> Graph:
    def seed(x):
        return x

    def doubled(seed):
        return seed * 2

    def plus_one(doubled):
        return doubled + 1

    return chain(seed, doubled, plus_one, name="inner")


def test_task_calls_another_graph() -> None:
    inner = make_inner()

    def outer(config):
        return inner(config["x"])

    def after(outer):
        return outer * 10

    g = Graph("outer", config={"x": 5})
    g.add_edges(outer, after)
    assert g() == 110


@pytest.mark.parametrize("workers", [1, 2])
def test_sub_graphs_on_the_same_small_executor(workers: int) -> None:
    inner = make_inner()
    with Executor(workers=workers) as small:

        def make(k: int) -> tm.TaskFunction:
            def body():
                return small.run(inner, args=(k,)).result()

            return task(body, name=f"o{k}")

        def total(**parts):
            return sorted(parts.values())

        outer = Graph("outer-small")
        outer.add_edges([make(k) for k in range(5)], total)
        run = small.submit(outer)
        assert run.wait(WAIT * 2), run.states()
        assert run.state == "completed", run.error
        assert run.result() == [1, 3, 5, 7, 9]

        # Two levels of nesting.
        def top():
            return small.run(outer).result()

        top_graph = Graph("top")
        top_graph.add(top)
        run2 = small.submit(top_graph)
        assert run2.wait(WAIT * 2), run2.states()
        assert run2.result() == [1, 3, 5, 7, 9]


def test_sub_graphs_called_concurrently_from_several_tasks() -> None:
    inner = make_inner()
    n = 4
    barrier = threading.Barrier(n, timeout=WAIT)

    def make(k: int) -> tm.TaskFunction:
        def body():
            barrier.wait()  # all n outer tasks start their inner graph together
            return inner(k)

        return task(body, name=f"c{k}")

    def total(**parts):
        return sorted(parts.values())

    outer = Graph("outer-concurrent")
    outer.add_edges([make(k) for k in range(n)], total)
    with Executor(workers=n) as e:
        run = e.run(outer)
    assert run.state == "completed", run.error
    assert run.result() == [2 * k + 1 for k in range(n)]


# -- submit, wait, cancel --------------------------------------------------------------------------


def blocked_graph(name: str = "blocked"):
    """blocker -> dependent -> grandchild; blocker waits for `release` and sets `stopped` when its
    code ends, however it ends (``ran`` records how)."""
    started = threading.Event()
    release = threading.Event()
    stopped = threading.Event()
    ran: list[str] = []

    def blocker(context):
        started.set()
        try:
            release.wait(WAIT)
            ran.append("blocker")
            return context.cancelled
        except BaseException as e:
            ran.append(f"blocker raised {type(e).__name__}")
            raise
        finally:
            stopped.set()

    def dependent(blocker):
        ran.append("dependent")

    def grandchild(dependent):
        ran.append("grandchild")

    g = Graph(name)
    g.add_edges(blocker, dependent)
    g.add_edges(dependent, grandchild)
    return g, started, release, stopped, ran


def test_submit_wait_done(ex: Executor) -> None:
    g, started, release, _, ran = blocked_graph()
    run = ex.submit(g)
    try:
        assert started.wait(WAIT)
        assert not run.done()
        assert run.state == "running"
        assert run.wait(timeout=0.01) is False
        assert run.states()["blocker"] == "running"
        assert run.states()["dependent"] == "pending"
    finally:
        release.set()
    assert run.wait(WAIT) is True
    assert run.done()
    assert run.state == "completed"
    assert ran == ["blocker", "dependent", "grandchild"]
    assert run.wait(0) is True
    assert run.duration is not None and run.duration >= 0
    assert run.started_at <= run.ended_at


def test_cancel_a_running_run(ex: Executor) -> None:
    # Run.cancel(): "tasks not started end cancelled at once and running ones are interrupted".
    g, started, release, stopped, ran = blocked_graph()
    run = ex.submit(g)
    try:
        assert started.wait(WAIT)
        run.cancel()
        run.cancel()  # twice is harmless
        states = run.states()
        assert states["dependent"] == "cancelled"
        assert states["grandchild"] == "cancelled"
    finally:
        release.set()
    assert run.wait(WAIT)
    assert stopped.wait(WAIT)
    assert run.state == "cancelled"
    # The blocked task was interrupted when its wait returned: it did not go on to finish.
    assert ran == ["blocker raised TaskCancelled"]
    assert run.states() == {
        "blocker": "cancelled",
        "dependent": "cancelled",
        "grandchild": "cancelled",
    }
    with pytest.raises(KeyError):
        run.result("blocker")
    run.cancel()  # after the end: harmless
    assert run.state == "cancelled"
    assert run.states()["blocker"] == "cancelled"
    with pytest.raises(tm.TaskCancelled):
        run.raise_for_state()


def test_cancelled_task_that_polls_context_stops(ex: Executor) -> None:
    started = threading.Event()
    stopped = threading.Event()
    how: list[str] = []

    def poller(context):
        started.set()
        try:
            deadline = time.monotonic() + WAIT
            while not context.cancelled and time.monotonic() < deadline:
                time.sleep(0.001)  # polling a condition
            how.append(f"saw cancelled={context.cancelled}")
        except tm.TaskCancelled:
            how.append("interrupted")
            raise
        finally:
            stopped.set()

    g = Graph("poller")
    g.add(poller)
    run = ex.submit(g)
    assert started.wait(WAIT)
    run.cancel()
    assert run.wait(WAIT)
    assert stopped.wait(WAIT)
    assert how in (["interrupted"], ["saw cancelled=True"])
    assert run.states() == {"poller": "cancelled"}


def test_cancel_one_pending_task(ex: Executor) -> None:
    g, started, release, _, ran = blocked_graph()

    def side():
        ran.append("side")
        return "side"

    g.add(side)
    run = ex.submit(g)
    try:
        assert started.wait(WAIT)
        run.cancel("dependent")
        run.cancel("dependent")
        with pytest.raises(KeyError):
            run.cancel("no-such-task")
    finally:
        release.set()
    assert run.wait(WAIT)
    states = run.states()
    assert states["blocker"] == "completed"
    assert states["side"] == "completed"
    assert states["dependent"] == "cancelled"
    assert "dependent" not in ran
    assert "grandchild" not in ran
    assert run.result("blocker") is False  # the run itself was not cancelled
    assert run.state == "cancelled"


def test_cancelling_a_task_cancels_its_descendants(ex: Executor) -> None:
    # Run.cancel(task): "Cancels ... one task and its descendants."
    g, started, release, _, _ = blocked_graph()
    run = ex.submit(g)
    try:
        assert started.wait(WAIT)
        run.cancel("dependent")
    finally:
        release.set()
    assert run.wait(WAIT)
    assert run.states()["dependent"] == "cancelled"
    assert run.states()["grandchild"] == "cancelled"


def test_cancel_before_anything_runs() -> None:
    started = threading.Event()
    release = threading.Event()

    def hog():
        started.set()
        return release.wait(WAIT)

    def queued():
        return "ran"

    hog_graph = Graph("hog")
    hog_graph.add(hog)
    q = Graph("queued")
    q.add(queued)
    with Executor(workers=1) as one:
        first = one.submit(hog_graph)
        try:
            assert started.wait(WAIT)
            second = one.submit(q)  # cannot start: the only worker is busy
            second.cancel()
        finally:
            release.set()
        assert second.wait(WAIT)
        assert first.wait(WAIT)
    assert second.state == "cancelled"
    assert second.states() == {"queued": "cancelled"}
    assert first.state == "completed"


def test_graphs_run_concurrently_from_many_threads(ex: Executor) -> None:
    def root(x):
        return x

    def sq(root):
        return root * root

    def plus(root, sq):
        return root + sq

    g = Graph("threads")
    g.add_edges(root, [sq, plus])
    g.add_edges(sq, plus)
    n = 8
    start = threading.Barrier(n, timeout=WAIT)
    results: dict[int, Any] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait()
            for j in range(20):
                x = i * 100 + j
                results[x] = ex.run(g, args=(x,)).result()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 3)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert results == {
        i * 100 + j: (i * 100 + j) ** 2 + i * 100 + j for i in range(n) for j in range(20)
    }


def test_finished_runs_do_not_keep_results_alive(ex: Executor) -> None:
    # Once nobody holds a Run any more, its task results (and the Run) must be freeable;
    # a long-lived process running a graph every minute must not grow without bound.
    class Payload:
        pass

    refs: list[weakref.ref[Payload]] = []

    def make():
        p = Payload()
        refs.append(weakref.ref(p))
        return p

    def fails(make):
        raise Boom("also after a failure")

    g = Graph("leak")
    g.add(make)
    g2 = Graph("leak-failed")
    g2.add_edges(make, fails)
    for graph in (g, g2):
        for _ in range(5):
            run = ex.run(graph)
            assert isinstance(run.result("make"), Payload)
            run_ref = weakref.ref(run)
            del run
    with Executor(workers=1) as own:
        own.run(g)
    g()
    gc.collect()
    assert run_ref() is None
    assert [r() is None for r in refs] == [True] * len(refs)


def test_fresh_executors_with_different_pools_run_a_tagged_graph() -> None:
    # A graph caches its compiled form per executor. A new executor must never be given another
    # executor's pool layout, even when it reuses the memory (and so the id()) of a freed one.
    def tagged():
        return "ran"

    g = Graph("pool-layouts")
    g.add(task(tagged, tag="io"))
    for i in range(40):
        pools = {"x": 1, "y": 1, "io": 2} if i % 2 == 0 else {}
        e = Executor(workers=1, pools=pools)
        try:
            run = e.run(g)
        finally:
            e.shutdown()
        assert run.state == "completed", (i, run.error)
        assert run.result() == "ran"
        del e, run


# -- differential: random DAGs against sequential Python -------------------------------------------


def combine(i: int, parents: dict[str, Any]) -> Any:
    if i % 7 == 6:
        return None
    acc = i + 1
    for name in sorted(parents):
        v = parents[name]
        acc = (acc * 1_000_003 + (17 if v is None else v) + len(name)) % (2**61 - 1)
    return acc


class Node:
    """Task ``i``: explicit keyword parameters named after its parents (even i) or ``**parents``."""

    def __init__(self, i: int, parent_names: list[str]) -> None:
        self.i = i
        self.__name__ = f"t{i}"
        if i % 2 == 0:
            params = [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY) for p in parent_names]
        else:
            params = [inspect.Parameter("parents", inspect.Parameter.VAR_KEYWORD)]
        self.__signature__ = inspect.Signature(params)

    def __call__(self, **parents: Any) -> Any:
        return combine(self.i, parents)


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    n = draw(st.integers(1, 14))
    pairs = [(p, c) for c in range(n) for p in range(c)]
    chosen = draw(st.lists(st.booleans(), min_size=len(pairs), max_size=len(pairs)))
    order = draw(st.permutations(range(n)))  # add tasks in a random order
    edges = [pair for pair, keep in zip(pairs, chosen, strict=True) if keep]
    return n, [(order[p], order[c]) for p, c in edges]


@settings(max_examples=60, deadline=None)
@given(dags())
def test_random_dags_match_sequential_python(ex: Executor, dag) -> None:
    n, edge_list = dag
    parents: dict[int, list[int]] = {i: [] for i in range(n)}
    for p, c in edge_list:
        parents[c].append(p)
    nodes = {i: task(Node(i, [f"t{p}" for p in parents[i]]), name=f"t{i}") for i in range(n)}
    g = Graph("random")
    for i in range(n):
        g.add(nodes[i], depends_on=[nodes[p] for p in parents[i]])

    expected: dict[str, Any] = {}
    for i in graphlib.TopologicalSorter(parents).static_order():
        expected[f"t{i}"] = combine(i, {f"t{p}": expected[f"t{p}"] for p in parents[i]})

    run = ex.run(g)
    assert run.state == "completed", run.error
    assert {f"t{i}": run.result(f"t{i}") for i in range(n)} == expected
    leaves = [f"t{i}" for i in range(n) if not any(p == i for p, _ in edge_list)]
    assert sorted(g.leaves()) == sorted(leaves)
    want = expected[leaves[0]] if len(leaves) == 1 else {leaf: expected[leaf] for leaf in leaves}
    assert run.result() == want
    order = g.topological_order()
    assert all(order.index(f"t{p}") < order.index(f"t{c}") for p, c in edge_list)


class Failing(Node):
    def __call__(self, **parents: Any) -> Any:
        raise Boom(f"t{self.i}")


@settings(max_examples=60, deadline=None)
@given(dags(), st.data())
def test_random_dags_with_failures_match_the_rules(ex: Executor, dag, data) -> None:
    # Sequential model: a task whose parent failed or was skipped is skipped; otherwise it runs
    # and either fails or completes with combine(...) of its parents.
    n, edge_list = dag
    failing = data.draw(st.sets(st.integers(0, n - 1), max_size=3))
    parents: dict[int, list[int]] = {i: [] for i in range(n)}
    for p, c in edge_list:
        parents[c].append(p)
    g = Graph("random-failures")
    nodes = {}
    for i in range(n):
        cls = Failing if i in failing else Node
        nodes[i] = task(cls(i, [f"t{p}" for p in parents[i]]), name=f"t{i}")
    for i in range(n):
        g.add(nodes[i], depends_on=[nodes[p] for p in parents[i]])

    states: dict[int, str] = {}
    values: dict[int, Any] = {}
    for i in graphlib.TopologicalSorter(parents).static_order():
        if any(states[p] != "completed" for p in parents[i]):
            states[i] = "skipped"
        elif i in failing:
            states[i] = "failed"
        else:
            states[i] = "completed"
            values[i] = combine(i, {f"t{p}": values[p] for p in parents[i]})

    def ancestors(i: int) -> set[int]:
        out: set[int] = set()
        stack = list(parents[i])
        while stack:
            p = stack.pop()
            if p not in out:
                out.add(p)
                stack.extend(parents[p])
        return out

    run = ex.run(g)
    assert run.states() == {f"t{i}": s for i, s in states.items()}
    assert run.state == ("failed" if "failed" in states.values() else "completed")
    for i, s in states.items():
        t = run.tasks[f"t{i}"]
        if s == "completed":
            assert run.result(f"t{i}") == values[i]
        elif s == "failed":
            assert isinstance(t.error, Boom) and str(t.error) == f"t{i}"
            assert len(t.attempts) == 1
        else:
            assert t.attempts == ()
            cause = t.skipped_because
            assert cause is not None
            assert int(cause[1:]) in ancestors(i), (i, cause)
            assert states[int(cause[1:])] == "failed"


# -- threads, signals and process lifetime (subprocesses) ------------------------------------------


def run_script(code: str, tmp_path: Path, *args: str, timeout: float = 40):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_import_starts_no_thread(tmp_path: Path) -> None:
    r = run_script(
        """
        import os, threading

        def native():
            return len(os.listdir("/proc/self/task"))

        before = (threading.active_count(), native())
        import tm
        g = tm.Graph("g")
        g.add(lambda: 1)
        g.validate()
        ex = tm.Executor(workers=3)
        after = (threading.active_count(), native())
        print("idle", before == after, before, after)
        ex.run(g)
        print("running", native() > before[1])
        ex.shutdown()
        """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("idle True"), lines
    assert lines[1] == "running True"  # the measure can see engine threads


SIGINT_SCRIPT = """
import sys, time
from pathlib import Path
import tm

d = Path(sys.argv[1])
mode = sys.argv[2]

def waiter(context):
    (d / "started").touch()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if context.cancelled and not (d / "saw_cancel").exists():
                (d / "saw_cancel").touch()
                if mode == "once":
                    break
            if (d / "release").exists():
                break
            time.sleep(0.01)
    except tm.TaskCancelled:
        (d / "waiter_interrupted").touch()
        raise
    (d / "waiter_done").touch()
    return 1

def pending(waiter):
    (d / "pending_ran").touch()

g = tm.Graph("sigint")
g.add_edges(waiter, pending)
try:
    g()
    print("no interrupt")
except KeyboardInterrupt:
    done = (d / "waiter_done").exists()
    print("KeyboardInterrupt", "after running task" if done else "while task running", flush=True)
    (d / "interrupted").touch()
"""


def poll_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT * 3
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"process ended before {path.name} appeared: {out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.005)  # polling for a condition


@pytest.mark.parametrize("mode", ["once", "twice"])
def test_ctrl_c(mode: str, tmp_path: Path) -> None:
    script = tmp_path / "sigint.py"
    script.write_text(SIGINT_SCRIPT)
    work = tmp_path / "flags"
    work.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(script), str(work), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        poll_for(work / "started", proc)
        os.kill(proc.pid, signal.SIGINT)
        if mode == "twice":
            # The first Ctrl-C cancelled the run (the task sees it); the second stops waiting.
            poll_for(work / "saw_cancel", proc)
            os.kill(proc.pid, signal.SIGINT)
            poll_for(work / "interrupted", proc)
            (work / "release").touch()  # let the still-running task end so the process can exit
        out, err = proc.communicate(timeout=WAIT * 3)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    if mode == "once":
        # The first Ctrl-C lets the running task finish (it sees context.cancelled), then raises.
        assert out.splitlines() == ["KeyboardInterrupt after running task"], (out, err)
        assert (work / "waiter_done").exists()
        assert not (work / "waiter_interrupted").exists()
    else:
        # The second stops waiting at once and interrupts the running task.
        assert out.splitlines() == ["KeyboardInterrupt while task running"], (out, err)
        assert (work / "waiter_interrupted").exists()
        assert not (work / "waiter_done").exists()
    assert (work / "saw_cancel").exists()
    assert not (work / "pending_ran").exists()


def test_ctrl_c_while_a_run_is_being_submitted(tmp_path: Path) -> None:
    # The first task sends SIGINT to its own process the moment it starts, which is often while
    # Executor.run() is still returning from starting the run, before it waits on it. Wherever the
    # KeyboardInterrupt surfaces, the run must be cancelled: `second` must never run. Repeated so
    # that the early case is hit; a correct run of one round takes milliseconds.
    code = """
        import os, signal, time
        import tm

        seen = {}

        def first(context):
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 2
            while not context.cancelled and time.monotonic() < deadline:
                time.sleep(0.002)  # polling a condition
            seen["first saw cancel"] = context.cancelled
            return 1

        def second(first):
            seen["second ran"] = True

        g = tm.Graph("big")
        g.add_edges(first, second)
        for i in range(2000):
            g.add(tm.task(lambda second: None, name=f"leaf{i}"), depends_on=[second])
        interrupted = 0
        for attempt in range(30):
            seen.clear()
            ex = tm.Executor(workers=2)
            try:
                ex.run(g)
            except KeyboardInterrupt:
                interrupted += 1
            ex.shutdown()  # returns once nothing runs any more
            if seen != {"first saw cancel": True}:
                print(f"round {attempt}: {sorted(seen.items())}")
                break
        print(f"interrupted {interrupted}")
        """
    r = run_script(code, tmp_path, timeout=40)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["interrupted 30"]


def test_executor_dropped_without_shutdown_does_not_hang(tmp_path: Path) -> None:
    # An Executor that ran something and is then garbage-collected (no shutdown(), no `with`)
    # must not hang the process.
    code = """
        import tm
        g = tm.Graph("g")
        g.add(lambda: 1)
        print(tm.Executor().run(g).result(), flush=True)
        ex = tm.Executor()
        ex.run(g)
        del ex
        print("dropped", flush=True)
        """
    try:
        r = run_script(code, tmp_path, timeout=15)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout
        pytest.fail(f"process hung after dropping an Executor; output so far: {out!r}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1", "dropped"]


def test_a_forked_child_refuses_an_inherited_executor_but_can_make_its_own() -> None:
    import os

    g = tm.Graph("fork")
    g.add(tm.task(lambda: 1, name="one"))
    with tm.Executor(workers=2) as ex:
        assert ex.run(g).state == "completed"  # the parent's workers are running
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, then leave without cleanup
            try:
                try:
                    ex.run(g)
                    msg = b"ran"
                except tm.ExecutorError as e:
                    msg = b"refused" if b"forked" in str(e).encode() else b"other"
                with tm.Executor(workers=1) as own:
                    msg += b" own:" + own.run(g).state.encode()
            except BaseException:
                msg = b"crashed"
            os.write(w, msg)
            os._exit(0)
        os.close(w)
        out = os.read(r, 100)
        os.close(r)
        os.waitpid(pid, 0)
        assert out == b"refused own:completed"
        assert ex.run(g).state == "completed"  # the parent is unaffected


def test_executors_taking_turns_on_one_graph_each_keep_their_compiled_form() -> None:
    # A graph caches its compiled form per executor: two executors taking turns (say, one
    # recording runs and one not) must not recompile the graph on every run.
    g = tm.Graph("turns")
    g.add(tm.task(lambda: 1, name="a"))
    with tm.Executor(workers=2) as first, tm.Executor(workers=2) as second:
        assert first.run(g).state == "completed"
        assert second.run(g).state == "completed"
        kept = {key: compiled for key, (_, compiled) in g._compiled.items()}
        assert len(kept) == 2
        for _ in range(3):
            assert first.run(g).result("a") == 1
            assert second.run(g).result("a") == 1
        assert {key: compiled for key, (_, compiled) in g._compiled.items()} == kept
        assert all(g._compiled[key][1] is kept[key] for key in kept)
        # A change to the graph invalidates them.
        g.add(tm.task(lambda a: a + 1, name="b"), depends_on=["a"])
        assert first.run(g).result("b") == 2
        assert g._compiled[first._token][1] is not kept[first._token]
