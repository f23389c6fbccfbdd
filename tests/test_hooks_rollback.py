"""Lifecycle hooks, ``tm`` log records and rollback (saga) reverts (issue 4).

Hooks run on engine threads. Tests wait for ``on_run_end`` (an event it sets) before reading what the
hooks saw, except the test that checks that hooks have all run by the time ``Executor.run`` returns.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import tm
from tm import Executor, Graph, task

WAIT = 10.0  # liveness bound for events: reached only when something is broken


class Recorder:
    """Hooks that record every event they receive, and an event set when the run ends."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str, int]] = []
        self.raw: list[tm.Event] = []
        # The run on_run_end received, its state, and whether it was done with an end time.
        self.runs: list[tuple[tm.Run, str, bool]] = []
        self.threads: dict[tuple[str | None, str, int], int] = {}
        self.ended = threading.Event()
        self.lock = threading.Lock()

    def start(self, ev: tm.Event) -> None:
        with self.lock:
            self.events.append(("start", ev.task, ev.kind, ev.attempt))
            self.raw.append(ev)
            self.threads[(ev.task, ev.kind, ev.attempt)] = threading.get_ident()

    def end(self, ev: tm.Event) -> None:
        with self.lock:
            self.events.append(("end", ev.task, ev.kind, ev.attempt))
            self.raw.append(ev)

    def run_end(self, run: tm.Run) -> None:
        with self.lock:
            self.events.append(("run_end", None, "run_finished", 0))
            self.runs.append((run, run.state, run.done() and run.ended_at is not None))
        self.ended.set()

    def executor(self, **kwargs: Any) -> Executor:
        return Executor(
            on_task_start=self.start, on_task_end=self.end, on_run_end=self.run_end, **kwargs
        )

    def of(self, task_name: str, kind: str) -> tm.Event:
        (ev,) = [e for e in self.raw if e.task == task_name and e.kind == kind]
        return ev


class Spinner:
    """A busy task body that runs until interrupted (or aborted by the test's cleanup)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        self.abort = threading.Event()

    def __call__(self) -> str:
        self.started.set()
        try:
            end = time.monotonic() + 20
            while not self.abort.is_set() and time.monotonic() < end:
                pass
            return "not interrupted"
        finally:
            self.stopped.set()


# -- hooks -----------------------------------------------------------------------------------------


def test_hooks_see_every_transition_in_order() -> None:
    rec = Recorder()

    @task(retries=1, retry_delay=0.01)
    def a(context):
        if context.attempt == 0:
            raise ConnectionError("first")
        return "A"

    def b(a):
        raise KeyError("b fails")

    def c(b):
        return "never"

    g = Graph("hooks")
    g.add_edges(a, b)
    g.add_edges(b, c)
    with rec.executor(workers=2) as ex:
        run = ex.run(g)
        assert rec.ended.wait(WAIT)
    assert rec.events == [
        ("start", "a", "started", 0),
        ("end", "a", "retrying", 0),
        ("start", "a", "started", 1),
        ("end", "a", "completed", 1),
        ("start", "b", "started", 0),
        ("end", "b", "failed", 0),
        ("end", "c", "skipped", 0),
        ("run_end", None, "run_finished", 0),
    ]
    assert [r for r, _, _ in rec.runs] == [run]
    for ev in rec.raw:
        assert ev.run_id == run.id
        assert ev.graph == "hooks"
        assert isinstance(ev.at, type(run.started_at))
    retrying = rec.of("a", "retrying")
    assert isinstance(retrying.error, ConnectionError)
    assert retrying.retry_at == run.task("a").attempts[0].retry_at
    failed = rec.of("b", "failed")
    assert isinstance(failed.error, KeyError)
    assert failed.retry_at is None
    assert rec.of("c", "skipped").skipped_because == "b"
    assert rec.of("a", "completed").error is None
    # Task-start hooks run on the worker that runs the task, not on the caller's thread.
    assert threading.get_ident() not in rec.threads.values()
    # Event times follow the order of events.
    times = [ev.at for ev in rec.raw]
    assert times == sorted(times)


def test_hooks_see_cancellation_and_timeouts() -> None:
    rec = Recorder()
    spinner = Spinner()

    def busy():
        return spinner()

    def child(busy):
        return "never"

    @task(timeout=0.2)
    def slow():
        return spinner_two()

    spinner_two = Spinner()

    g = Graph("hooks-cancel")
    g.add_edges(busy, child)
    g.add(slow)
    with rec.executor(workers=4) as ex:
        try:
            run = ex.submit(g)
            assert spinner.started.wait(WAIT)
            assert spinner_two.stopped.wait(WAIT)  # `slow` timed out
            run.cancel()
            assert rec.ended.wait(WAIT)
            assert spinner.stopped.wait(WAIT)
        finally:
            spinner.abort.set()
            spinner_two.abort.set()
    assert run.state == "cancelled"
    ends = sorted((t, k) for kind, t, k, _ in rec.events if kind == "end")
    assert ends == [("busy", "cancelled"), ("child", "cancelled"), ("slow", "failed")]
    assert isinstance(rec.of("slow", "failed").error, tm.TaskTimeout)
    assert rec.events[-1] == ("run_end", None, "run_finished", 0)
    starts = sorted(t for kind, t, _, _ in rec.events if kind == "start")
    assert starts == ["busy", "slow"]


def test_raising_hooks_do_not_break_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[BaseException | None] = []
    all_reported = threading.Event()
    expected = 2 * (2 + 2 + 1)  # two runs of two starts, two ends and one run end

    def unraisable(u: Any) -> None:
        reported.append(u.exc_value)
        if len(reported) >= expected:
            all_reported.set()

    monkeypatch.setattr(sys, "unraisablehook", unraisable)

    def bad_start(ev: tm.Event) -> None:
        raise RuntimeError(f"start hook: {ev.task}")

    def bad_end(ev: tm.Event) -> None:
        raise RuntimeError(f"end hook: {ev.task} {ev.kind}")

    def bad_run_end(run: tm.Run) -> None:
        raise RuntimeError(f"run end hook: {run.graph}")

    gate = threading.Event()

    def one():
        assert gate.wait(WAIT)  # the run cannot end before submit() has returned
        return 1

    def two(one):
        return one + 1

    g = Graph("bad-hooks")
    g.add_edges(one, two)
    with Executor(
        workers=2, on_task_start=bad_start, on_task_end=bad_end, on_run_end=bad_run_end
    ) as ex:
        runs = []
        for _ in range(2):  # the executor keeps working after hooks raised
            gate.clear()
            run = ex.submit(g)
            gate.set()
            assert run.wait(WAIT)
            assert run.state == "completed"
            assert run.result() == 2
            runs.append(run)
        assert all_reported.wait(WAIT)
    messages = sorted(str(e) for e in reported)
    assert messages == sorted(
        2
        * [
            "end hook: one completed",
            "end hook: two completed",
            "run end hook: bad-hooks",
            "start hook: one",
            "start hook: two",
        ]
    )
    assert all(isinstance(e, RuntimeError) for e in reported)


def test_raising_on_run_end_does_not_escape_from_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run with nothing to do ends inside submit(), before the Run object exists: its on_run_end
    # is then called from submit() itself, and must still be reported, not raised.
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_value))

    def bad_run_end(run: tm.Run) -> None:
        raise RuntimeError("run end hook")

    with Executor(workers=1, on_run_end=bad_run_end) as ex:
        run = ex.run(Graph("empty"))
    assert run.state == "completed"
    assert [str(e) for e in reported] == ["run end hook"]


@pytest.mark.parametrize("outcome", ["completed", "failed", "cancelled"])
def test_on_run_end_receives_the_finished_run(outcome: str) -> None:
    rec = Recorder()

    def first():
        return 1

    def second(first):
        if outcome == "failed":
            raise ValueError("second fails")
        return first + 1

    g = Graph("run-end")
    g.add_edges(first, second)
    spinner = Spinner()
    if outcome == "cancelled":
        g.add(task(lambda: spinner(), name="blocks"))
    with rec.executor(workers=2) as ex:
        try:
            run = ex.submit(g)
            if outcome == "cancelled":
                assert spinner.started.wait(WAIT)
                run.cancel()
            assert rec.ended.wait(WAIT)
        finally:
            spinner.abort.set()
    ((seen, state, finished),) = rec.runs
    assert seen is run
    # Inside the hook the run is over: final state, done(), an end time (run.wait() would return).
    assert (state, finished) == (outcome, True), "on_run_end was handed a run that had not finished"


def test_hooks_have_all_run_when_run_returns() -> None:
    # A user collecting metrics in hooks reads them after Executor.run returns: by then the hooks of
    # that run, on_run_end included, must have been called.
    release = threading.Event()
    ended: list[str] = []

    def slow_end(ev: tm.Event) -> None:
        if ev.kind == "completed":
            release.wait(1.0)  # a hook doing some work

    def run_end(run: tm.Run) -> None:
        ended.append("on_run_end called")

    def only():
        return 1

    g = Graph("hooks-before-return")
    g.add(only)
    with Executor(workers=2, on_task_end=slow_end, on_run_end=run_end) as ex:
        try:
            run = ex.run(g)
            seen = list(ended)
        finally:
            release.set()
    assert run.state == "completed"
    assert seen == ["on_run_end called"], (
        "Executor.run returned before on_task_end/on_run_end were called"
    )


def test_hooks_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_task_end"):
        Executor(on_task_end="not callable")  # type: ignore[arg-type]


# -- logging ---------------------------------------------------------------------------------------


def test_tm_logger_records_transitions_at_their_levels(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tm")
    ended = threading.Event()

    @task(retries=1, retry_delay=0.0)
    def flaky(context):
        if context.attempt == 0:
            raise ConnectionError("first try")
        return 1

    def broken(flaky):
        raise ValueError("broken on purpose")

    def downstream(broken):
        return "never"

    g = Graph("logged")
    g.add_edges(flaky, broken)
    g.add_edges(broken, downstream)
    with Executor(workers=2, on_run_end=lambda run: ended.set()) as ex:
        run = ex.run(g)
        assert ended.wait(WAIT)
    assert run.state == "failed"
    records = [r for r in caplog.records if r.name == "tm"]

    def find(level: int, *words: str) -> logging.LogRecord:
        hits = [
            r for r in records if r.levelno == level and all(w in r.getMessage() for w in words)
        ]
        assert len(hits) == 1, (
            logging.getLevelName(level),
            words,
            [r.getMessage() for r in records],
        )
        return hits[0]

    retry = find(logging.WARNING, "logged.flaky", "attempt 0", "ConnectionError", "retrying")
    assert "first try" in retry.getMessage()
    failure = find(logging.ERROR, "logged.broken", "failed")
    assert failure.exc_info is not None and isinstance(failure.exc_info[1], ValueError)
    find(logging.INFO, "logged.downstream", "skipped", "broken")
    find(logging.INFO, f"run {run.id}", "failed")
    starts = [r for r in records if r.levelno == logging.DEBUG and "started" in r.getMessage()]
    assert len(starts) == 3  # flaky twice, broken once
    assert find(logging.DEBUG, "logged.flaky", "completed")
    assert not [
        r for r in records if r.levelno >= logging.WARNING and "downstream" in r.getMessage()
    ]


def test_tm_logger_records_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tm")
    ended = threading.Event()
    spinner = Spinner()

    def busy():
        return spinner()

    g = Graph("logged-cancel")
    g.add(busy)
    with Executor(workers=2, on_run_end=lambda run: ended.set()) as ex:
        try:
            run = ex.submit(g)
            assert spinner.started.wait(WAIT)
            run.cancel()
            assert ended.wait(WAIT)
        finally:
            spinner.abort.set()
    msgs = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "tm"]
    assert (logging.INFO, "logged-cancel.busy cancelled (attempt 0)") in msgs
    assert (logging.INFO, f"run {run.id} of logged-cancel cancelled") in msgs
    assert all(level == logging.INFO for level, _ in msgs)


# -- rollback --------------------------------------------------------------------------------------


@pytest.fixture
def ex() -> Iterator[Executor]:
    with Executor(workers=4) as executor:
        yield executor


def saga(
    reverted: list[tuple[str, Any]], fail: bool = True, bad_revert: str | None = None
) -> Graph:
    """root -> (left, right) -> join -> last, plus an unrelated `solo`; `last` fails if ``fail``.

    Every task has a revert that records (name, value) -- `bad_revert`'s raises instead.
    """
    lock = threading.Lock()

    def revert_of(name: str) -> Any:
        def revert(value: Any) -> None:
            if name == bad_revert:
                raise RuntimeError(f"cannot undo {name}")
            with lock:
                reverted.append((name, value))

        return revert

    @task(revert=revert_of("root"))
    def root():
        return {"id": 1}

    @task(revert=revert_of("left"))
    def left(root):
        return ["left", root["id"]]

    @task(revert=revert_of("right"))
    def right(root):
        return None  # reverts receive None results too

    @task(revert=revert_of("join"))
    def join(left, right):
        return ("join", left[1])

    @task(revert=revert_of("last"))
    def last(join):
        if fail:
            raise ValueError("last step failed")
        return "done"

    @task(revert=revert_of("after"))
    def after(last):
        return "never"

    @task(revert=revert_of("solo"))
    def solo():
        return "solo"

    g = Graph("saga")
    g.add_edges(root, [left, right])
    g.add_edges([left, right], join)
    g.add_edges(join, last)
    g.add_edges(last, after)
    g.add(solo)
    return g


def test_rollback_reverts_completed_tasks_in_reverse_topological_order(ex: Executor) -> None:
    reverted: list[tuple[str, Any]] = []
    g = saga(reverted)
    run = ex.run(g, rollback=True)
    assert run.state == "failed"
    assert run.states()["last"] == "failed" and run.states()["after"] == "skipped"
    names = [n for n, _ in reverted]
    # Completed tasks only: not the failed `last`, not the skipped `after`.
    assert sorted(names) == ["join", "left", "right", "root", "solo"]
    assert names == [n for n in reversed(g.topological_order()) if n in names]
    pos = {n: i for i, n in enumerate(names)}
    assert pos["join"] < pos["left"] < pos["root"]
    assert pos["join"] < pos["right"] < pos["root"]
    assert dict(reverted) == {
        "root": {"id": 1},
        "left": ["left", 1],
        "right": None,
        "join": ("join", 1),
        "solo": "solo",
    }
    assert run.reverts == dict.fromkeys(["join", "left", "right", "root", "solo"], "reverted")
    assert run.revert_errors == {}


def test_failing_revert_is_recorded_and_the_others_still_run(
    ex: Executor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tm")
    reverted: list[tuple[str, Any]] = []
    run = ex.run(saga(reverted, bad_revert="left"), rollback=True)
    assert run.state == "failed"
    assert sorted(n for n, _ in reverted) == ["join", "right", "root", "solo"]
    assert run.reverts["left"] == "revert_failed"
    assert {k: v for k, v in run.reverts.items() if k != "left"} == dict.fromkeys(
        ["join", "right", "root", "solo"], "reverted"
    )
    err = run.revert_errors["left"]
    assert isinstance(err, RuntimeError) and str(err) == "cannot undo left"
    assert any(
        "saga.left revert failed" in r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR
    )


def test_no_rollback_without_rollback_true(ex: Executor) -> None:
    reverted: list[tuple[str, Any]] = []
    run = ex.run(saga(reverted))
    assert run.state == "failed"
    assert reverted == []
    assert run.reverts == {}


def test_no_rollback_when_the_run_succeeds(ex: Executor) -> None:
    reverted: list[tuple[str, Any]] = []
    run = ex.run(saga(reverted, fail=False), rollback=True)
    assert run.state == "completed"
    assert reverted == []
    assert run.reverts == {}


def test_rollback_after_a_timeout(ex: Executor) -> None:
    reverted: list[Any] = []
    spinner = Spinner()

    @task(revert=reverted.append)
    def prepared():
        return "prepared"

    @task(timeout=0.2, revert=reverted.append)
    def hangs(prepared):
        return spinner()

    g = Graph("saga-timeout")
    g.add_edges(prepared, hangs)
    try:
        run = ex.run(g, rollback=True)
        assert spinner.stopped.wait(WAIT)
    finally:
        spinner.abort.set()
    assert run.state == "failed"
    assert isinstance(run.error, tm.TaskTimeout)
    assert reverted == ["prepared"]
    assert run.reverts == {"prepared": "reverted"}
