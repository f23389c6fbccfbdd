"""Seed 003's TaskFlow API (``Task`` subclasses, ``Scheduler``, ``Executor``) on tm's engine.

Programs written for TaskFlow run after changing their imports to::

    from tm.taskflow import Task, Scheduler, Executor

Each ``Task`` overrides ``execute()`` and may override ``tag()`` (its worker pool). Tasks of one tag
share a bounded pool (``workers_per_tag``); independent tasks run in parallel. A task that fails
cancels its transitive dependents; unrelated tasks still run.
"""

from __future__ import annotations

import inspect
import itertools
import threading
from collections.abc import Callable, Iterable, Mapping
from enum import Enum
from typing import Any

from ._decorators import TaskOptions
from .exceptions import TaskCancelled

__all__ = ["Executor", "Scheduler", "Task", "TaskStatus"]

_ids = itertools.count(1)


class TaskStatus(str, Enum):
    """Task states. ``CANCELED`` is an alias of ``CANCELLED``."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    CANCELED = "cancelled"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


_FROM_ENGINE = {
    "pending": TaskStatus.PENDING,
    "scheduled": TaskStatus.SCHEDULED,
    "running": TaskStatus.RUNNING,
    "retrying": TaskStatus.RETRYING,
    "completed": TaskStatus.COMPLETED,
    "failed": TaskStatus.FAILED,
    "cancelled": TaskStatus.CANCELLED,
    # TaskFlow's rule: a failed task cancels its dependents.
    "skipped": TaskStatus.CANCELLED,
}

Callback = Callable[["Task"], Any]


class Task:
    """A unit of work: subclass it and override :meth:`execute` (and optionally :meth:`tag`).

    Args:
        dependencies: tasks that must complete before this one starts.
        task_id: a unique name (default: the class name and a counter).
        on_complete, on_failure, on_cancel: callbacks receiving the task.
        priority: higher runs first among ready tasks of one pool.
        retries, retry_delay, backoff: retry policy (see ``tm.task``).
    """

    def __init__(
        self,
        dependencies: Iterable[Task] | None = None,
        task_id: str | None = None,
        on_complete: Callback | None = None,
        on_failure: Callback | None = None,
        on_cancel: Callback | None = None,
        priority: int = 0,
        retries: int = 0,
        retry_delay: float = 0.0,
        backoff: float = 0.0,
    ) -> None:
        self.task_id = task_id or f"{type(self).__name__}_{next(_ids)}"
        self.dependencies: set[Task] = set(dependencies or ())
        for d in self.dependencies:
            if not isinstance(d, Task):
                raise TypeError(f"dependencies must be Task objects, got {d!r}")
        self.status = TaskStatus.PENDING
        self.result: Any = None
        self.error: BaseException | None = None
        self.priority = priority
        self.retries = retries
        self.retry_delay = retry_delay
        self.backoff = backoff
        self._callbacks: dict[str, list[Callback]] = {"complete": [], "failure": [], "cancel": []}
        for kind, cb in (("complete", on_complete), ("failure", on_failure), ("cancel", on_cancel)):
            if cb is not None:
                self._callbacks[kind].append(cb)
        self._cancel_requested = False
        self._live: tuple[Any, int] | None = None
        self._lock = threading.Lock()

    def execute(self) -> Any:
        """The task's work. Its return value becomes :attr:`result`."""
        raise NotImplementedError(f"{type(self).__name__} must override execute()")

    def tag(self) -> str | None:
        """The worker pool this task runs in (None: the default pool)."""
        return None

    def add_dependency(self, task: Task) -> None:
        self.dependencies.add(task)

    def on_complete(self, cb: Callback) -> None:
        self._callbacks["complete"].append(cb)

    def on_failure(self, cb: Callback) -> None:
        self._callbacks["failure"].append(cb)

    def on_cancel(self, cb: Callback) -> None:
        self._callbacks["cancel"].append(cb)

    def cancel(self) -> None:
        """Cancels the task and its dependents: before the run, or while the run is in progress
        (a running task is asked to stop; a finished one is unaffected). Repeating it is harmless."""
        with self._lock:
            self._cancel_requested = True
            live = self._live
        if live is not None:
            handle, node = live
            handle.cancel_task(node)

    @property
    def cancelled(self) -> bool:
        return self._cancel_requested

    # -- engine integration ----------------------------------------------------------------------

    @property
    def _tm_dependencies(self) -> set[Task]:
        return self.dependencies

    def _tm_options(self) -> TaskOptions:
        return TaskOptions(
            name=self.task_id,
            tag=self.tag(),
            priority=self.priority,
            retries=self.retries or None,
            retry_delay=float(self.retry_delay) or None,
            backoff=float(self.backoff) or None,
        ).validate()

    @property
    def _tm_call(self) -> Callable[..., Any]:
        execute = self.execute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._tm_invoke(execute, args, kwargs)

        call.__signature__ = inspect.signature(execute)  # type: ignore[attr-defined]
        call.__name__ = self.task_id
        return call

    def _tm_invoke(
        self, execute: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self._cancel_requested:
            raise TaskCancelled(f"task {self.task_id!r} was cancelled")
        self.status = TaskStatus.RUNNING
        try:
            result = execute(*args, **kwargs)
        except BaseException as e:
            self.error = e
            raise
        self.result = result
        self.status = TaskStatus.COMPLETED
        for cb in self._callbacks["complete"]:
            cb(self)
        return result

    def _tm_settle(self, state: str) -> None:
        """Takes the final state the engine recorded and runs the matching callbacks."""
        status = _FROM_ENGINE.get(state, TaskStatus.PENDING)
        previous, self.status = self.status, status
        self._live = None
        if status is TaskStatus.FAILED:
            for cb in self._callbacks["failure"]:
                cb(self)
        elif status is TaskStatus.CANCELLED and previous is not TaskStatus.CANCELLED:
            for cb in self._callbacks["cancel"]:
                cb(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.task_id!r}: {self.status.value}>"


class Scheduler:
    """Holds a set of tasks (and, transitively, their dependencies) and orders them."""

    def __init__(self, tasks: Iterable[Task]) -> None:
        seen: dict[int, Task] = {}
        stack = list(tasks)
        while stack:
            t = stack.pop()
            if not isinstance(t, Task):
                raise TypeError(f"Scheduler takes Task objects, got {t!r}")
            if id(t) not in seen:
                seen[id(t)] = t
                stack.extend(t.dependencies)
        self.tasks: list[Task] = sorted(seen.values(), key=lambda t: t.task_id)

    def graph(self, name: str = "taskflow") -> Any:
        from .graph import Graph

        return Graph.from_tasks(self.tasks, name=name)

    def order(self) -> list[Task]:
        """The tasks in a valid execution order."""
        by_name = {t.task_id: t for t in self.tasks}
        return [by_name[n] for n in self.graph().topological_order()]


class Executor:
    """Runs a :class:`Scheduler`'s tasks with one bounded pool per tag.

    Args:
        scheduler: the tasks to run.
        workers_per_tag: pool size for each tag (and for untagged tasks), or a size per tag:
            ``{"io": 4, "cpu": 2}``; tags it does not name (and untagged tasks) get ``workers``.
        workers: size of the pool for untagged tasks, if different (default: ``workers_per_tag``
            when it is an int, else ``tm.Executor``'s default).
        fail_fast: cancel everything as soon as one task fails.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        workers_per_tag: int | Mapping[str, int] | None = None,
        workers: int | None = None,
        fail_fast: bool = False,
    ) -> None:
        from .executor import Executor as Engine

        self.scheduler = scheduler
        if isinstance(workers_per_tag, Mapping):
            for tag in workers_per_tag:
                if not isinstance(tag, str):
                    raise TypeError(f"workers_per_tag keys must be tag names, got {tag!r}")
            # Each named tag is a pool of its own size (tm.Executor's `pools`, which checks them).
            self._engine = Engine(workers=workers, pools=dict(workers_per_tag), fail_fast=fail_fast)
        else:
            self._engine = Engine(
                workers=workers or workers_per_tag,
                workers_per_tag=workers_per_tag,
                fail_fast=fail_fast,
            )
        self.run_record: Any = None

    def run(self) -> Any:
        """Runs every task to the end; statuses, results and callbacks are settled on return.
        Returns the :class:`tm.Run`."""
        graph = self.scheduler.graph()
        tasks = self.scheduler.tasks
        for t in tasks:
            if not t._cancel_requested:
                t.status = TaskStatus.SCHEDULED
        try:
            # Tasks cancelled before the run are cancelled by the engine before any task starts.
            before = [t.task_id for t in tasks if t._cancel_requested]
            run = self._engine.submit(graph, _cancelled=before)
            index = {n: i for i, n in enumerate(run._names)}
            for t in tasks:
                with t._lock:
                    t._live = (run._handle, index[t.task_id])
                    late = t._cancel_requested and t.task_id not in before
                if late:
                    # Cancelled while the run was being submitted.
                    run._handle.cancel_task(index[t.task_id])
            run.wait()
            states = run.states()
            for t in tasks:
                t._tm_settle(states[t.task_id])
            self.run_record = run
            return run
        finally:
            self._engine.shutdown()
