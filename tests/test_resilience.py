"""Retries, timeouts and cancellation on real worker threads (issue 4).

Synchronisation is by events set from inside tasks or hooks, never by sleeping. Recorded times are
compared only as orderings, or (retry delays, jitter 0) against the documented formula
``min(max_delay, retry_delay * (1 + backoff) ** i)`` to the microsecond the run records.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import tm
from tm import Executor, Graph, task
from tm.taskflow import Executor as FlowExecutor
from tm.taskflow import Scheduler, Task, TaskStatus

WAIT = 10.0  # liveness bound for events: reached only when something is broken
LIMIT = 20.0  # a "hanging" task gives up by itself after this long, so a broken engine cannot hang pytest
EPS = timedelta(microseconds=2)  # the run records times in whole microseconds
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def formula(delay: float, backoff: float, max_delay: float, i: int) -> timedelta:
    return timedelta(seconds=min(max_delay, delay * (1 + backoff) ** i))


def close(a: timedelta, b: timedelta) -> bool:
    return abs(a - b) <= EPS


class Spinner:
    """A task body that burns CPU in pure Python (or sleeps in small steps) until it is interrupted.

    It counts its iterations, records how each call ended, and releases ``stopped`` from a
    ``finally:`` block, so a test can wait for the Python code to have really left the task.
    """

    def __init__(self, sleeping: bool = False) -> None:
        self.sleeping = sleeping
        self.count = 0
        self.calls = 0
        self.how: list[str] = []
        self.started = threading.Event()
        self.stopped = threading.Semaphore(0)
        self.abort = threading.Event()  # set by the test's cleanup: never by the engine
        _spinners.append(self)

    def __call__(self) -> str:
        self.calls += 1
        self.started.set()
        try:
            end = time.monotonic() + LIMIT
            while not self.abort.is_set() and time.monotonic() < end:
                self.count += 1
                if self.sleeping:
                    time.sleep(0.002)  # a blocking C call: the interrupt lands when it returns
            self.how.append("aborted by the test" if self.abort.is_set() else "ran to its limit")
            return "not interrupted"
        except BaseException as e:
            self.how.append(type(e).__name__)
            raise
        finally:
            self.stopped.release()

    def assert_stopped(self, calls: int = 1) -> None:
        """Waits for ``calls`` calls to have left the task, then checks that nothing still counts."""
        for i in range(calls):
            if not self.stopped.acquire(timeout=WAIT):
                self.abort.set()  # let the stray call end so the executor can shut down
                pytest.fail(
                    f"call {i} of the task was still running {WAIT} s later; ended so far: {self.how}"
                )
        before = self.count
        assert before > 0
        hand_off()
        assert self.count == before, "the interrupted task's Python code is still running"


def hand_off() -> None:
    """Runs a small graph on a fresh executor: a real round trip through other threads."""

    def one():
        return 1

    def two(one):
        return one + 1

    g = Graph("hand-off")
    g.add_edges(one, two)
    with Executor(workers=2) as other:
        assert other.run(g).result() == 2


_spinners: list[Spinner] = []


def abort_spinners() -> None:
    """Ends every Spinner still running, so no stray task keeps an executor from shutting down."""
    while _spinners:
        _spinners.pop().abort.set()


@pytest.fixture(autouse=True)
def _no_stray_spinners() -> Iterator[None]:
    yield
    abort_spinners()


@pytest.fixture
def ex() -> Iterator[Executor]:
    with Executor(workers=4) as executor:
        try:
            yield executor
        finally:
            abort_spinners()


def spinning(spinner: Spinner, name: str = "busy", **options: Any) -> tm.TaskFunction:
    def body():
        return spinner()

    return task(body, name=name, **options)


def on(kind: str, task_name: str | None = None) -> tuple[threading.Event, Any]:
    """An event and an ``on_task_end`` hook that sets it when ``task_name`` reaches ``kind``."""
    ev = threading.Event()

    def hook(e: tm.Event) -> None:
        if e.kind == kind and (task_name is None or e.task == task_name):
            ev.set()

    return ev, hook


# -- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3])
def test_flaky_task_records_every_attempt_and_the_formula_delays(k: int, ex: Executor) -> None:
    seen: list[int] = []
    delay, backoff, max_delay = 0.02, 1.0, 0.05

    @task(retries=k, retry_delay=delay, backoff=backoff, max_delay=max_delay, jitter=0)
    def flaky(context):
        seen.append(context.attempt)
        if context.attempt < k:
            raise ConnectionError(f"failure {context.attempt}")
        return "ok"

    def after(flaky):
        return flaky + "!"

    g = Graph("flaky")
    g.add_edges(flaky, after)
    run = ex.run(g)
    assert run.state == "completed"
    assert run.result() == "ok!"
    assert seen == list(range(k + 1))
    t = run.task("flaky")
    assert t.state == "completed"
    assert [a.number for a in t.attempts] == list(range(k + 1))
    for i, a in enumerate(t.attempts[:-1]):
        assert isinstance(a.error, ConnectionError)
        assert str(a.error) == f"failure {i}"
        assert a.started_at <= a.ended_at
        assert close(a.retry_at - a.ended_at, formula(delay, backoff, max_delay, i))
        nxt = t.attempts[i + 1]
        assert nxt.started_at >= a.retry_at  # the next attempt waited for its time
    last = t.attempts[-1]
    assert last.error is None and last.retry_at is None
    assert t.error is None and t.next_attempt_at is None
    assert len(run.task("after").attempts) == 1


def test_retries_exhausted_records_each_error(ex: Executor) -> None:
    @task(retries=2, retry_delay=0.0)
    def always(context):
        raise ValueError(f"attempt {context.attempt}")

    g = Graph("exhausted")
    g.add(always)
    run = ex.run(g)
    assert run.state == "failed"
    t = run.task("always")
    assert t.state == "failed"
    assert [str(a.error) for a in t.attempts] == ["attempt 0", "attempt 1", "attempt 2"]
    assert t.attempts[-1].retry_at is None
    assert str(t.error) == "attempt 2"
    with pytest.raises(tm.TaskFailed) as info:
        run.raise_for_state()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.task == "always"
    assert info.value.attempt == 3


def test_waiting_retry_is_visible_and_holds_no_worker() -> None:
    # One worker: while `a` waits 30 s for its retry, independent `b` still runs and completes.
    retrying, hook_retry = on("retrying", "a")
    b_done, hook_b = on("completed", "b")

    @task(retries=2, retry_delay=timedelta(seconds=30), priority=1)
    def a():
        raise ConnectionError("down")

    def b():
        return "b"

    def hooks(e: tm.Event) -> None:
        hook_retry(e)
        hook_b(e)

    g = Graph("waiting")
    g.add(a)
    g.add(b)
    with Executor(workers=1, on_task_end=hooks) as ex:
        run = ex.submit(g)
        try:
            assert retrying.wait(WAIT)
            assert b_done.wait(WAIT)
            ta = run.task("a")
            assert ta.state == "retrying"
            assert run.states() == {"a": "retrying", "b": "completed"}
            assert run.state == "running" and not run.done()
            assert len(ta.attempts) == 1
            first = ta.attempts[0]
            assert isinstance(first.error, ConnectionError)
            assert isinstance(ta.error, ConnectionError)
            assert close(first.retry_at - first.ended_at, timedelta(seconds=30))
            assert ta.next_attempt_at == first.retry_at
            # `b` ran on the only worker after `a` failed, i.e. while `a` was waiting.
            assert run.task("b").started_at >= first.ended_at
            assert run.result("b") == "b"
        finally:
            run.cancel()
        assert run.wait(WAIT)
    assert run.state == "cancelled"
    assert run.states() == {"a": "cancelled", "b": "completed"}
    assert len(run.task("a").attempts) == 1


def test_executor_defaults_apply_when_the_task_sets_none() -> None:
    calls: list[int] = []

    def failing(context):
        calls.append(context.attempt)
        raise OSError("nope")

    g = Graph("defaults")
    g.add(failing)
    with Executor(workers=2, retries=2, retry_delay=timedelta(milliseconds=10), backoff=1.0) as ex:
        run = ex.run(g)
    assert run.state == "failed"
    assert calls == [0, 1, 2]
    attempts = run.task("failing").attempts
    assert [a.retry_at - a.ended_at for a in attempts[:-1]] == [
        timedelta(milliseconds=10),
        timedelta(milliseconds=20),
    ]


def test_task_options_override_executor_defaults() -> None:
    calls: dict[str, list[int]] = {"short": [], "never": []}

    @task(retries=1, retry_delay=0.01, backoff=0.0)
    def short(context):
        calls["short"].append(context.attempt)
        raise OSError("short")

    @task(retries=0)
    def never(context):
        calls["never"].append(context.attempt)
        raise OSError("never")

    g = Graph("overrides")
    g.add(short)
    g.add(never)
    with Executor(workers=2, retries=5, retry_delay=30.0, backoff=3.0) as ex:
        run = ex.run(g)
    assert run.state == "failed"
    assert calls == {"short": [0, 1], "never": [0]}
    a0 = run.task("short").attempts[0]
    assert close(a0.retry_at - a0.ended_at, timedelta(milliseconds=10))


def test_timedelta_max_delay_caps_the_backoff(ex: Executor) -> None:
    @task(
        retries=3,
        retry_delay=timedelta(milliseconds=10),
        backoff=2.0,
        max_delay=timedelta(milliseconds=50),
    )
    def capped(context):
        if context.attempt < 3:
            raise RuntimeError("again")
        return context.attempt

    g = Graph("capped")
    g.add(capped)
    run = ex.run(g)
    assert run.result() == 3
    attempts = run.task("capped").attempts
    delays = [a.retry_at - a.ended_at for a in attempts[:-1]]
    assert delays == [
        timedelta(milliseconds=10),
        timedelta(milliseconds=30),
        timedelta(milliseconds=50),
    ]


def test_retry_on_restricts_which_errors_are_retried(ex: Executor) -> None:
    calls: list[str] = []

    @task(retries=3, retry_on=(KeyError,))
    def picky(context):
        calls.append("picky")
        raise ValueError("not retried")

    @task(retries=3, retry_on=KeyError)
    def lucky(context):
        calls.append("lucky")
        if context.attempt == 0:
            raise KeyError("retried")
        return "second time"

    g = Graph("retry_on")
    g.add(picky)
    g.add(lucky)
    run = ex.run(g)
    assert run.states() == {"picky": "failed", "lucky": "completed"}
    assert calls.count("picky") == 1
    assert calls.count("lucky") == 2
    assert isinstance(run.task("picky").error, ValueError)
    assert run.result("lucky") == "second time"


def test_give_up_on_stops_retrying(ex: Executor) -> None:
    calls: list[int] = []

    # give_up_on wins over retry_on for a subclass of a retried class.
    @task(retries=5, retry_on=(OSError,), give_up_on=(FileNotFoundError,))
    def stubborn(context):
        calls.append(context.attempt)
        if context.attempt == 0:
            raise ConnectionError("retried")
        raise FileNotFoundError("gives up")

    g = Graph("give_up_on")
    g.add(stubborn)
    run = ex.run(g)
    assert run.state == "failed"
    assert calls == [0, 1]
    t = run.task("stubborn")
    assert isinstance(t.attempts[0].error, ConnectionError)
    assert t.attempts[0].retry_at is not None
    assert isinstance(t.error, FileNotFoundError)
    assert t.attempts[1].retry_at is None


# -- timeouts --------------------------------------------------------------------------------------


def test_timeout_interrupts_a_pure_python_busy_loop(ex: Executor) -> None:
    spinner = Spinner()
    busy = spinning(spinner, timeout=0.2)

    def after(busy):
        return "never"

    def unrelated():
        return "ran"

    g = Graph("timeout")
    g.add_edges(busy, after)
    g.add(unrelated)
    run = ex.run(g)
    assert run.state == "failed"
    assert run.states() == {"busy": "failed", "after": "skipped", "unrelated": "completed"}
    assert run.task("after").skipped_because == "busy"
    t = run.task("busy")
    assert len(t.attempts) == 1
    err = t.attempts[0].error
    assert isinstance(err, tm.TaskTimeout)
    assert isinstance(err, TimeoutError)
    assert isinstance(run.error, tm.TaskTimeout)
    spinner.assert_stopped()
    assert spinner.how == ["TaskTimeout"]


def test_timeout_counts_as_an_attempt_for_retries(ex: Executor) -> None:
    spinner = Spinner()
    attempts: list[int] = []

    @task(timeout=0.2, retries=1, retry_delay=0.0)
    def slow(context):
        attempts.append(context.attempt)
        return spinner()

    g = Graph("timeout-retry")
    g.add(slow)
    run = ex.run(g)
    assert run.state == "failed"
    assert attempts == [0, 1]
    t = run.task("slow")
    assert [type(a.error) for a in t.attempts] == [tm.TaskTimeout, tm.TaskTimeout]
    assert t.attempts[0].retry_at is not None and t.attempts[1].retry_at is None
    assert t.attempts[1].started_at >= t.attempts[0].retry_at
    assert isinstance(t.error, tm.TaskTimeout)


def test_a_timed_out_attempt_cleaning_up_slowly_does_not_shield_the_next_one(ex: Executor) -> None:
    # Attempt 0 times out and its `finally:` cleanup is still running when attempt 1 (retry_delay 0)
    # starts on another thread. Attempt 1's own timeout must still interrupt attempt 1.
    first, second = Spinner(), Spinner()
    cleaned_up: list[bool] = []

    @task(timeout=0.2, retries=1, retry_delay=0.0)
    def slow(context):
        if context.attempt == 0:
            try:
                return first()
            finally:
                cleaned_up.append(second.started.wait(WAIT))  # e.g. closing a connection
        return second()

    g = Graph("slow-cleanup")
    g.add(slow)
    run = ex.run(g)
    assert [type(a.error) for a in run.task("slow").attempts] == [tm.TaskTimeout, tm.TaskTimeout]
    first.assert_stopped()
    assert first.how == ["TaskTimeout"]
    second.assert_stopped()
    assert second.how == ["TaskTimeout"]
    assert cleaned_up == [True]


def test_timeout_frees_the_slot_of_a_one_worker_pool() -> None:
    # Pool "one" has a single slot: `queued` can only run once the timed-out task gave it back.
    spinner = Spinner()
    busy = spinning(spinner, timeout=0.2, tag="one", priority=1)

    @task(tag="one")
    def queued():
        return "got the slot"

    g = Graph("slot")
    g.add(busy)
    g.add(queued)
    with Executor(workers=2, pools={"one": 1}) as ex:
        run = ex.run(g)
    assert run.states() == {"busy": "failed", "queued": "completed"}
    assert run.result("queued") == "got the slot"
    assert run.task("queued").started_at >= run.task("busy").started_at
    spinner.assert_stopped()


def test_timeout_fires_when_every_worker_is_busy() -> None:
    # Executor(workers=1): the only worker runs the hanging task. Its timeout must still fire, free
    # the slot (so `other` runs) and fail the task.
    spinner = Spinner()
    busy = spinning(spinner, timeout=0.2, priority=1)

    def other():
        return "other"

    g = Graph("one-worker")
    g.add(busy)
    g.add(other)
    with Executor(workers=1) as ex:
        run = ex.submit(g)
        try:
            ended = run.wait(WAIT)
            states = run.states()
        finally:
            run.cancel()  # if the timeout never fired, stop the task so the executor can shut down
        spinner.assert_stopped()
    assert ended, f"the 0.2 s timeout had not fired after {WAIT} s: {states}"
    assert states == {"busy": "failed", "other": "completed"}
    assert isinstance(run.task("busy").error, tm.TaskTimeout)


def test_timed_out_attempt_records_when_it_really_ended(ex: Executor) -> None:
    # An attempt cannot time out before its limit: ended_at - started_at >= timeout.
    spinner = Spinner()
    g = Graph("ended")
    g.add(spinning(spinner, timeout=0.2))
    run = ex.run(g)
    spinner.assert_stopped()
    a = run.task("busy").attempts[0]
    assert isinstance(a.error, tm.TaskTimeout)
    assert a.ended_at - a.started_at >= timedelta(seconds=0.2), (
        f"attempt recorded as ending {a.duration:.6f} s after it started, before its 0.2 s timeout"
    )


def test_run_timeout_records_when_the_attempt_really_ended(ex: Executor) -> None:
    spinner = Spinner()
    g = Graph("run-ended")
    g.add(spinning(spinner))
    run = ex.run(g, timeout=0.2)
    spinner.assert_stopped()
    a = run.task("busy").attempts[0]
    assert isinstance(a.error, tm.TaskTimeout)
    assert a.ended_at >= run.started_at + timedelta(seconds=0.2), (
        f"attempt recorded as ending {(a.ended_at - run.started_at).total_seconds():.6f} s into a run "
        "with a 0.2 s timeout"
    )


@pytest.mark.parametrize("field", ["retry_on", "give_up_on"])
def test_timeouts_obey_retry_on_and_give_up_on(field: str, ex: Executor) -> None:
    # A TaskTimeout is not a KeyError (retry_on) and is a TimeoutError (give_up_on): no retry.
    spinner = Spinner()
    opts: dict[str, Any] = (
        {"retry_on": (KeyError,)} if field == "retry_on" else {"give_up_on": (TimeoutError,)}
    )
    g = Graph("timeout-filters")
    g.add(spinning(spinner, timeout=0.2, retries=2, retry_delay=0.0, **opts))
    run = ex.run(g)
    assert run.state == "failed"
    errors = [type(a.error).__name__ for a in run.task("busy").attempts]
    assert errors == ["TaskTimeout"], f"{field} ignored for timeouts: attempts {errors}"


def test_run_timeout_fails_the_run_and_cancels_what_is_not_running() -> None:
    spinner = Spinner()
    busy = spinning(spinner, tag="one", priority=1)

    @task(tag="one")
    def queued():
        return "never"

    @task(retries=1, retry_delay=30.0)
    def retrier():
        raise ConnectionError("waits 30 s for its retry")

    g = Graph("run-timeout")
    g.add(busy)
    g.add(queued)
    g.add(retrier)
    with Executor(workers=2, pools={"one": 1}) as ex:
        run = ex.run(g, timeout=0.5)
    assert run.state == "failed"
    assert run.states() == {"busy": "failed", "queued": "cancelled", "retrier": "cancelled"}
    assert isinstance(run.task("busy").error, tm.TaskTimeout)
    assert run.task("queued").attempts == ()
    assert len(run.task("retrier").attempts) <= 1
    assert run.failed_task == "busy"
    with pytest.raises(tm.TaskFailed) as info:
        run.raise_for_state()
    assert isinstance(info.value.__cause__, tm.TaskTimeout)
    spinner.assert_stopped()


def test_run_timeout_cancels_pending_descendants(ex: Executor) -> None:
    # "past it, running tasks fail with tm.TaskTimeout, the others are cancelled" (Executor.submit).
    spinner = Spinner()
    busy = spinning(spinner)

    def after(busy):
        return "never"

    g = Graph("run-timeout-descendants")
    g.add_edges(busy, after)
    run = ex.run(g, timeout=0.2)
    spinner.assert_stopped()
    assert run.state == "failed"
    assert run.task("busy").state == "failed"
    assert run.task("after").state == "cancelled"


def test_graph_call_raises_task_failed_caused_by_the_timeout() -> None:
    spinner = Spinner()
    g = Graph("called")
    g.add(spinning(spinner, name="hangs", timeout=0.2))
    with pytest.raises(tm.TaskFailed) as info:
        g()
    assert info.value.task == "hangs"
    assert isinstance(info.value.__cause__, tm.TaskTimeout)
    assert isinstance(info.value.__cause__, TimeoutError)
    spinner.assert_stopped()


# -- cancellation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sleeping", [False, True], ids=["busy-loop", "sleep-steps"])
def test_cancel_a_run_while_a_task_runs_and_others_wait(sleeping: bool) -> None:
    spinner = Spinner(sleeping=sleeping)
    busy = spinning(spinner, tag="one", priority=1)

    def child(busy):
        return "never"

    @task(tag="one")
    def queued():
        return "never"

    g = Graph("cancel-run")
    g.add_edges(busy, child)
    g.add(queued)
    with Executor(workers=2, pools={"one": 1}) as ex:
        run = ex.submit(g)
        assert spinner.started.wait(WAIT)
        assert run.states() == {"busy": "running", "child": "pending", "queued": "scheduled"}
        run.cancel()
        run.cancel()  # twice is harmless
        assert run.wait(WAIT)
        spinner.assert_stopped()
        assert run.state == "cancelled"
        assert run.states() == {"busy": "cancelled", "child": "cancelled", "queued": "cancelled"}
        assert isinstance(run.task("busy").attempts[0].error, tm.TaskCancelled)
        assert run.task("child").attempts == () and run.task("queued").attempts == ()
        assert spinner.how == ["TaskCancelled"]
        run.cancel()  # after the end: harmless
        run.cancel("busy")
        assert run.state == "cancelled"
        assert run.states()["busy"] == "cancelled"
        with pytest.raises(tm.TaskCancelled):
            run.raise_for_state()
        with pytest.raises(KeyError):
            run.result("busy")
        # The executor is still usable.
        g2 = Graph("after-cancel")
        g2.add(task(lambda: 5, name="five"))
        assert ex.run(g2).result() == 5


def test_cancel_one_running_task_spares_the_rest(ex: Executor) -> None:
    spinner = Spinner()
    busy = spinning(spinner)
    cancelled = threading.Event()

    def child(busy):
        return "never"

    def side():
        # Running while `busy` is cancelled: it must not be interrupted.
        assert cancelled.wait(WAIT)
        return "side"

    g = Graph("cancel-task")
    g.add_edges(busy, child)
    g.add(side)
    run = ex.submit(g)
    assert spinner.started.wait(WAIT)
    run.cancel("busy")
    run.cancel("busy")
    cancelled.set()
    assert run.wait(WAIT)
    spinner.assert_stopped()
    assert run.task("busy").state == "cancelled"
    assert run.task("child").state == "cancelled"
    assert run.task("side").state == "completed"
    assert run.result("side") == "side"
    assert run.state == "cancelled"
    assert isinstance(run.task("busy").attempts[0].error, tm.TaskCancelled)


def test_cancelling_a_running_task_cancels_its_pending_descendants(ex: Executor) -> None:
    # Run.cancel(task): "tasks not started end cancelled" -- also when the named task is running.
    spinner = Spinner()
    busy = spinning(spinner)

    def child(busy):
        return "never"

    def grandchild(child):
        return "never"

    g = Graph("cancel-task-descendants")
    g.add_edges(busy, child)
    g.add_edges(child, grandchild)
    run = ex.submit(g)
    assert spinner.started.wait(WAIT)
    run.cancel("busy")
    assert run.wait(WAIT)
    spinner.assert_stopped()
    assert run.states() == {"busy": "cancelled", "child": "cancelled", "grandchild": "cancelled"}


def test_cancel_a_pending_task_and_its_descendants_only(ex: Executor) -> None:
    spinner = Spinner()
    busy = spinning(spinner)
    ran: list[str] = []

    def child(busy):
        ran.append("child")

    def grandchild(child):
        ran.append("grandchild")

    def side():
        ran.append("side")
        return "side"

    g = Graph("cancel-pending")
    g.add_edges(busy, child)
    g.add_edges(child, grandchild)
    g.add(side)
    run = ex.submit(g)
    assert spinner.started.wait(WAIT)
    run.cancel("child")
    assert run.states()["child"] == "cancelled"
    assert run.states()["grandchild"] == "cancelled"
    assert run.states()["busy"] == "running"
    run.cancel()  # now stop `busy` too
    assert run.wait(WAIT)
    spinner.assert_stopped()
    assert "child" not in ran and "grandchild" not in ran


def test_cancel_a_retrying_task(ex: Executor) -> None:
    retrying, hook = on("retrying", "waits")

    @task(retries=3, retry_delay=30.0)
    def waits():
        raise ConnectionError("later")

    def child(waits):
        return "never"

    def side():
        return "side"

    g = Graph("cancel-retrying")
    g.add_edges(waits, child)
    g.add(side)
    with Executor(workers=2, on_task_end=hook) as ex2:
        run = ex2.submit(g)
        assert retrying.wait(WAIT)
        assert run.task("waits").state == "retrying"
        run.cancel("waits")
        assert run.wait(WAIT)
    assert run.states() == {"waits": "cancelled", "child": "cancelled", "side": "completed"}
    assert len(run.task("waits").attempts) == 1
    assert run.state == "cancelled"


def test_seed003_task_cancel_during_a_run() -> None:
    spinner = Spinner()
    cancelled: list[str] = []

    class Spin(Task):
        def execute(self):
            return spinner()

    class After(Task):
        def execute(self):
            return "never"

    class Other(Task):
        def execute(self):
            return "other"

    spin = Spin(task_id="spin", on_cancel=lambda t: cancelled.append(t.task_id))
    after = After(
        dependencies=[spin], task_id="after", on_cancel=lambda t: cancelled.append(t.task_id)
    )
    other = Other(task_id="other")
    flow = FlowExecutor(Scheduler([after, other]), workers_per_tag=2)
    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(flow.run()))
    runner.start()
    try:
        assert spinner.started.wait(WAIT)
        spin.cancel()
        spin.cancel()  # twice is harmless
    finally:
        runner.join(WAIT)
    assert not runner.is_alive()
    spinner.assert_stopped()
    assert spin.status is TaskStatus.CANCELLED
    assert after.status is TaskStatus.CANCELLED
    assert other.status is TaskStatus.COMPLETED and other.result == "other"
    assert sorted(cancelled) == ["after", "spin"]
    assert spinner.how == ["TaskCancelled"]
    (run,) = out
    assert run.state == "cancelled"
    spin.cancel()  # after the end: harmless
    assert spin.status is TaskStatus.CANCELLED


# -- the seed 004 retry example --------------------------------------------------------------------


def test_retry_example_prints_the_formula_delays(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "retry.py")],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    delays = re.findall(
        r"^attempt (\d+) delay: recorded ([0-9.]+) s, formula ([0-9.]+) s$", r.stdout, re.M
    )
    assert [int(i) for i, _, _ in delays] == [0, 1]
    for i, recorded, expected in delays:
        assert abs(float(recorded) - float(expected)) <= 2e-6
        assert float(expected) == pytest.approx(min(1.0, 0.05 * 2.0 ** int(i)))
    lines = r.stdout.splitlines()
    assert lines[0] == "attempt 0 failed: ConnectionError('flaky service: failure 1')"
    assert lines[2] == "attempt 1 failed: ConnectionError('flaky service: failure 2')"
    assert lines[-2:] == ["attempt 2 completed", "result: 42"]


def test_retry_example_uses_the_seed_options() -> None:
    ns = runpy.run_path(str(EXAMPLES / "retry.py"), run_name="retry_example")
    opts = ns["flaky"].__tm_options__
    assert (opts.retries, opts.retry_delay, opts.backoff, opts.jitter) == (3, 0.05, 1.0, 0)
    assert ns["graph"].parents_of("report") == ["flaky"]


def _settled(ex: Executor) -> dict[str, int]:
    """The engine's thread bookkeeping once every replaced thread has returned and exited
    (polled; pytest's timeout bounds it)."""
    engine = ex._engine
    assert engine is not None
    while True:
        counts = engine.debug_counts()
        if counts["stuck"] == 0 and counts["exiting"] == 0:
            return counts
        time.sleep(0.001)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_abandoned_attempts_leave_nothing_behind(how: str) -> None:
    """Every attempt that times out (or is cancelled) while running has its thread replaced;
    once that thread returns, nothing of it may stay: not its handle in the engine, not its
    ``threading._DummyThread``. Counted after N and after 2N abandoned attempts: equal."""
    started = threading.Event()

    @task(timeout=0.01 if how == "timeout" else None)
    def stuck(context: Any) -> None:
        threading.current_thread()  # as logging in a task does: makes a _DummyThread
        started.set()
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            time.sleep(0.0005)  # interrupted at the next bytecode boundary

    g = Graph(f"abandoned-{how}")
    g.add(stuck)

    def abandon(ex: Executor, n: int) -> None:
        for _ in range(n):
            started.clear()
            run = ex.submit(g)
            if how == "cancel":
                assert started.wait(WAIT)
                run.cancel()
            assert run.wait(WAIT)
            assert run.state == ("failed" if how == "timeout" else "cancelled")

    n = 25
    with Executor(workers=2) as ex:
        abandon(ex, n)
        first = _settled(ex)
        active = len(threading._active)  # type: ignore[attr-defined]
        abandon(ex, n)
        second = _settled(ex)
        assert second == first == {"handles": 2, "exiting": 0, "stuck": 0}
        assert len(threading._active) == active  # type: ignore[attr-defined]
        assert ex._engine is not None and ex._engine.thread_count == 2


@pytest.mark.timeout(120)
def test_a_nested_run_s_timed_out_attempts_leave_no_extra_threads() -> None:
    """A task that runs a graph waits by running that graph's tasks on its own thread; when one
    of those times out, a replacement thread starts, and the waiting thread goes on (it is inside
    the outer task): the pool must shrink back, not keep a thread more per timeout."""

    @task(timeout=0.01)
    def inner_stuck() -> None:
        deadline = time.monotonic() + LIMIT
        while time.monotonic() < deadline:
            time.sleep(0.0005)

    inner = Graph("inner-timeouts")
    inner.add(inner_stuck)

    with Executor(workers=1) as ex:

        @task
        def outer() -> str:
            return ex.run(inner).state

        g = Graph("outer-of-timeouts")
        g.add(outer)
        for _ in range(5):
            run = ex.run(g)
            assert run.result() == "failed"
        counts = _settled(ex)
        assert counts == {"handles": 1, "exiting": 0, "stuck": 0}
        assert ex._engine is not None and ex._engine.thread_count == 1
