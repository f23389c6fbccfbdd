"""Seed 003's TaskFlow API on tm: ``from tm.taskflow import Task, Scheduler, Executor``."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import tm
from tm.taskflow import Executor, Scheduler, Task, TaskStatus

WAIT = 10.0


class Value(Task):
    """Returns ``value`` (or raises ``fail``), recording the call in ``log``."""

    def __init__(self, value: Any = None, log: list[str] | None = None, fail=None, **kwargs):
        super().__init__(**kwargs)
        self.value = value
        self.log = log if log is not None else []
        self.fail = fail

    def execute(self):
        self.log.append(self.task_id)
        if self.fail is not None:
            raise self.fail
        return self.value


def callbacks(tasks: list[Task], events: list[tuple[str, str, TaskStatus]]) -> None:
    for t in tasks:
        t.on_complete(lambda t: events.append(("complete", t.task_id, t.status)))
        t.on_failure(lambda t: events.append(("failure", t.task_id, t.status)))
        t.on_cancel(lambda t: events.append(("cancel", t.task_id, t.status)))


# -- statuses --------------------------------------------------------------------------------------


def test_status_names() -> None:
    assert TaskStatus.CANCELED is TaskStatus.CANCELLED
    assert TaskStatus("cancelled") is TaskStatus.CANCELED
    assert TaskStatus.SCHEDULED.value == "scheduled"
    assert str(TaskStatus.SCHEDULED) == "scheduled"
    assert TaskStatus.COMPLETED == "completed"
    assert {s.value for s in TaskStatus} == {
        "pending",
        "scheduled",
        "running",
        "retrying",
        "completed",
        "failed",
        "cancelled",
        "skipped",
    }
    assert tm.TaskStatus is TaskStatus
    assert tm.Task is Task


def test_statuses_through_a_run() -> None:
    seen: dict[str, TaskStatus] = {}

    class Peek(Task):
        def __init__(self, other: Task, **kwargs):
            super().__init__(**kwargs)
            self.other = other

        def execute(self):
            seen["self"] = self.status
            seen["other"] = self.other.status
            return 1

    later = Value(2, task_id="later")
    first = Peek(later, task_id="first")
    later.add_dependency(first)
    assert first.status is TaskStatus.PENDING
    Executor(Scheduler([later]), workers_per_tag=1).run()
    assert seen == {"self": TaskStatus.RUNNING, "other": TaskStatus.SCHEDULED}
    assert first.status is TaskStatus.COMPLETED
    assert later.status is TaskStatus.COMPLETED


def test_results() -> None:
    a = Value(1, task_id="a")
    b = Value([1, 2], task_id="b", dependencies={a})
    c = Value(None, task_id="c", dependencies={a, b})
    run = Executor(Scheduler([c]), workers_per_tag=2).run()
    assert (a.result, b.result, c.result) == (1, [1, 2], None)
    assert [t.status for t in (a, b, c)] == [TaskStatus.COMPLETED] * 3
    assert run.state == "completed"
    assert run.result("b") == [1, 2]


def test_scheduler_collects_dependencies_and_orders_them() -> None:
    a = Value(task_id="a")
    b = Value(task_id="b", dependencies={a})
    c = Value(task_id="c", dependencies={b})
    d = Value(task_id="d", dependencies={a})
    s = Scheduler([c, d])
    assert {t.task_id for t in s.tasks} == {"a", "b", "c", "d"}
    order = [t.task_id for t in s.order()]
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("a") < order.index("d")


def test_execution_respects_dependencies() -> None:
    log: list[str] = []
    a = Value(task_id="a", log=log)
    b = Value(task_id="b", log=log, dependencies={a})
    c = Value(task_id="c", log=log, dependencies={b})
    d = Value(task_id="d", log=log, dependencies={a, c})
    Executor(Scheduler([d]), workers_per_tag=4).run()
    assert log == ["a", "b", "c", "d"]


def test_task_needs_execute() -> None:
    class Nothing(Task):
        pass

    t = Nothing(task_id="nothing")
    run = Executor(Scheduler([t])).run()
    assert t.status is TaskStatus.FAILED
    assert isinstance(t.error, NotImplementedError)
    assert run.state == "failed"


def test_dependencies_must_be_tasks() -> None:
    with pytest.raises(TypeError):
        Value(dependencies=[lambda: 1])
    with pytest.raises(TypeError):
        Scheduler([object()])


# -- callbacks and failures ------------------------------------------------------------------------


def test_callbacks_on_complete() -> None:
    events: list[tuple[str, str, TaskStatus]] = []
    got: list[Any] = []
    a = Value(5, task_id="a", on_complete=lambda t: got.append(t.result))
    callbacks([a], events)
    Executor(Scheduler([a])).run()
    assert got == [5]
    assert events == [("complete", "a", TaskStatus.COMPLETED)]


def test_failed_task_cancels_its_transitive_dependents() -> None:
    log: list[str] = []
    events: list[tuple[str, str, TaskStatus]] = []
    a = Value(1, task_id="a", log=log)
    b = Value(task_id="b", log=log, fail=RuntimeError("b broke"), dependencies={a})
    c = Value(task_id="c", log=log, dependencies={b})
    d = Value(task_id="d", log=log, dependencies={c})
    e = Value(5, task_id="e", log=log)  # unrelated
    f = Value(6, task_id="f", log=log, dependencies={a, e})  # depends on a, not on b
    tasks = [a, b, c, d, e, f]
    callbacks(tasks, events)
    run = Executor(Scheduler([d, f]), workers_per_tag=2).run()
    assert run.state == "failed"
    assert {t.task_id: t.status for t in tasks} == {
        "a": TaskStatus.COMPLETED,
        "b": TaskStatus.FAILED,
        "c": TaskStatus.CANCELED,
        "d": TaskStatus.CANCELED,
        "e": TaskStatus.COMPLETED,
        "f": TaskStatus.COMPLETED,
    }
    assert sorted(log) == ["a", "b", "e", "f"]
    assert isinstance(b.error, RuntimeError)
    assert str(b.error) == "b broke"
    assert c.result is None and d.result is None
    assert f.result == 6
    by_task = {(kind, tid) for kind, tid, _ in events}
    assert by_task == {
        ("complete", "a"),
        ("complete", "e"),
        ("complete", "f"),
        ("failure", "b"),
        ("cancel", "c"),
        ("cancel", "d"),
    }
    assert len(events) == 6  # each callback once
    # Callbacks see the final status.
    for kind, _, status in events:
        want = {
            "complete": TaskStatus.COMPLETED,
            "failure": TaskStatus.FAILED,
            "cancel": TaskStatus.CANCELLED,
        }
        assert status is want[kind]


def test_retries_on_taskflow_tasks() -> None:
    calls: list[int] = []

    class Flaky(Task):
        def execute(self):
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError("again")
            return "ok"

    t = Flaky(task_id="flaky", retries=2, retry_delay=0.001)
    Executor(Scheduler([t])).run()
    assert t.status is TaskStatus.COMPLETED
    assert t.result == "ok"
    assert len(calls) == 3


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_before_the_run_cancels_the_task_and_its_dependents() -> None:
    log: list[str] = []
    events: list[tuple[str, str, TaskStatus]] = []
    a = Value(1, task_id="a", log=log)
    b = Value(2, task_id="b", log=log, dependencies={a})
    c = Value(3, task_id="c", log=log, dependencies={b})
    other = Value(4, task_id="other", log=log)
    callbacks([a, b, c, other], events)
    a.cancel()
    a.cancel()  # harmless twice
    assert a.cancelled
    run = Executor(Scheduler([c, other])).run()
    assert log == ["other"]
    assert a.status is TaskStatus.CANCELLED
    assert b.status is TaskStatus.CANCELED
    assert c.status is TaskStatus.CANCELED
    assert other.status is TaskStatus.COMPLETED
    assert {(kind, tid) for kind, tid, _ in events} == {
        ("cancel", "a"),
        ("cancel", "b"),
        ("cancel", "c"),
        ("complete", "other"),
    }
    assert len(events) == 4
    assert run.states()["a"] == "cancelled"


def test_cancel_a_middle_task_before_the_run() -> None:
    log: list[str] = []
    a = Value(1, task_id="a", log=log)
    b = Value(2, task_id="b", log=log, dependencies={a})
    c = Value(3, task_id="c", log=log, dependencies={b})
    b.cancel()
    Executor(Scheduler([c])).run()
    assert log == ["a"]
    assert [t.status for t in (a, b, c)] == [
        TaskStatus.COMPLETED,
        TaskStatus.CANCELLED,
        TaskStatus.CANCELLED,
    ]


def test_cancel_during_the_run() -> None:
    started = threading.Event()
    release = threading.Event()
    log: list[str] = []

    class Blocker(Task):
        def execute(self):
            started.set()
            release.wait(WAIT)
            return "blocker"

    blocker = Blocker(task_id="blocker")
    after = Value(task_id="after", log=log, dependencies={blocker})
    ex = Executor(Scheduler([after]), workers_per_tag=2)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run=ex.run()))
    runner.start()
    try:
        assert started.wait(WAIT)
        after.cancel()
    finally:
        release.set()
    runner.join(WAIT)
    assert not runner.is_alive()
    assert log == []
    assert blocker.status is TaskStatus.COMPLETED
    assert after.status is TaskStatus.CANCELLED


# -- tags ------------------------------------------------------------------------------------------


def check_pool_limits(workers_per_tag: Any, limit: dict[str, int], **options: Any) -> None:
    """Runs 5 tasks of each tag in ``limit`` and checks each tag runs exactly ``limit[tag]`` at
    once: gates hold every task until the test releases it, one at a time."""
    n = 5
    cond = threading.Condition()
    running: dict[str, int] = dict.fromkeys(limit, 0)
    peak: dict[str, int] = dict.fromkeys(limit, 0)
    entered: list[str] = []
    gates: dict[str, threading.Event] = {}

    class Tagged(Task):
        def __init__(self, kind: str, **kwargs):
            super().__init__(**kwargs)
            self.kind = kind
            gates[self.task_id] = threading.Event()

        def tag(self):
            return self.kind

        def execute(self):
            with cond:
                running[self.kind] += 1
                peak[self.kind] = max(peak[self.kind], running[self.kind])
                entered.append(self.task_id)
                cond.notify_all()
            ok = gates[self.task_id].wait(WAIT)
            with cond:
                running[self.kind] -= 1
            return ok

    tasks = [Tagged(kind, task_id=f"{kind}{i}") for kind in limit for i in range(n)]
    ex = Executor(Scheduler(tasks), workers_per_tag=workers_per_tag, **options)
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(run=ex.run()))
    runner.start()
    try:
        released = dict.fromkeys(limit, 0)

        def inside(kind: str) -> int:
            return sum(1 for t in entered if t.startswith(kind) and not gates[t].is_set())

        def pools_full() -> bool:
            # Every tag runs as many tasks as its pool allows (or as it has left).
            return all(inside(k) == min(limit[k], n - released[k]) for k in released)

        while sum(released.values()) < len(limit) * n:
            with cond:
                assert cond.wait_for(pools_full, timeout=WAIT), (entered, released)
                assert all(running[k] <= limit[k] for k in limit), running
                waiting = [t for t in entered if not gates[t].is_set()]
            # Release the longest-waiting task; its pool slot must go to the next task of its tag.
            gates[waiting[0]].set()
            released[waiting[0].rstrip("0123456789")] += 1
    finally:
        for g in gates.values():
            g.set()
        runner.join(WAIT)
    assert not runner.is_alive()
    assert peak == limit
    assert {t.task_id: (t.status.value, t.result) for t in tasks} == {
        t.task_id: ("completed", True) for t in tasks
    }
    assert result["run"].state == "completed"


def test_workers_per_tag_bounds_concurrency_per_tag() -> None:
    check_pool_limits(2, {"io": 2, "cpu": 2})


def test_workers_per_tag_takes_a_size_per_tag() -> None:
    # Seed 003 sizes pools per tag; a tag the dict does not name gets the default pool's size.
    check_pool_limits({"io": 3, "cpu": 1}, {"io": 3, "cpu": 1})
    check_pool_limits({"io": 3}, {"io": 3, "net": 2}, workers=2)


def test_workers_per_tag_rejects_bad_sizes() -> None:
    for bad in ({"io": 0}, {"io": "2"}, {3: 1}, -1):
        with pytest.raises((ValueError, TypeError)):
            Executor(Scheduler([]), workers_per_tag=bad)


def test_untagged_tasks_use_their_own_pool() -> None:
    # workers_per_tag=1: one io task at a time, yet an untagged task runs next to it.
    release = threading.Event()
    untagged_ran = threading.Event()

    class Io(Task):
        def tag(self):
            return "io"

        def execute(self):
            return release.wait(WAIT)

    class Free(Task):
        def execute(self):
            untagged_ran.set()
            return True

    io = Io(task_id="io")
    free = Free(task_id="free")
    ex = Executor(Scheduler([io, free]), workers_per_tag=1)
    runner = threading.Thread(target=ex.run)
    runner.start()
    try:
        assert untagged_ran.wait(WAIT)
        assert io.status is not TaskStatus.COMPLETED
    finally:
        release.set()
        runner.join(WAIT)
    assert io.result is True
    assert free.result is True


def test_seed_example_shape() -> None:
    # The seed's pipeline: read (io) -> process (cpu) -> compress (cpu), per file.
    log: list[tuple[str, str]] = []
    lock = threading.Lock()

    class Stage(Task):
        def __init__(self, filename, stage, kind, **kwargs):
            super().__init__(**kwargs)
            self.filename, self.stage, self.kind = filename, stage, kind

        def execute(self):
            with lock:
                log.append((self.filename, self.stage))
            return f"{self.filename}:{self.stage}"

        def tag(self):
            return self.kind

    files = [f"file{i}.txt" for i in range(1, 6)]
    compress = []
    for f in files:
        r = Stage(f, "read", "io")
        p = Stage(f, "process", "cpu", dependencies={r})
        compress.append(Stage(f, "compress", "cpu", dependencies={p}))
    Executor(Scheduler(set(compress)), workers_per_tag=2).run()
    assert [t.result for t in compress] == [f"{f}:compress" for f in files]
    for f in files:
        assert [s for g, s in log if g == f] == ["read", "process", "compress"]
