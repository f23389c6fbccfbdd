"""``tm.Executor`` and ``tm.Run``: running graphs on the Rust engine and reading the outcome."""

from __future__ import annotations

import atexit
import os
import threading
import traceback as _traceback
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ._tm import Engine, RunHandle
from .exceptions import ExecutorError, GraphError, TaskFailed

if TYPE_CHECKING:
    from .graph import Graph

__all__ = ["Attempt", "Executor", "Run", "TaskRun", "default_executor"]


def _default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def _dt(us: int | None) -> datetime | None:
    if not us:
        return None
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc)


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task: when it ran, how it ended, and when the next one was due."""

    number: int
    started_at: datetime | None
    ended_at: datetime | None
    error: BaseException | None
    retry_at: datetime | None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class TaskRun:
    """A task's state in a run (a snapshot taken when read)."""

    name: str
    state: str
    attempts: tuple[Attempt, ...]
    skipped_because: str | None

    @property
    def error(self) -> BaseException | None:
        """The exception of the last failed attempt, if the task failed."""
        if self.state not in ("failed", "retrying") or not self.attempts:
            return None
        return self.attempts[-1].error

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of :attr:`error`."""
        err = self.error
        if err is None:
            return None
        return "".join(_traceback.format_exception(type(err), err, err.__traceback__))

    @property
    def started_at(self) -> datetime | None:
        return self.attempts[0].started_at if self.attempts else None

    @property
    def ended_at(self) -> datetime | None:
        return self.attempts[-1].ended_at if self.attempts else None

    @property
    def next_attempt_at(self) -> datetime | None:
        """When a retrying task runs again."""
        if self.state != "retrying" or not self.attempts:
            return None
        return self.attempts[-1].retry_at

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


class Run:
    """A run of a graph: live while it runs, final once :meth:`wait` returns True."""

    def __init__(self, handle: RunHandle, graph: Graph) -> None:
        self._handle = handle
        self.graph = graph.name
        self._names = handle.names()
        self._index = {n: i for i, n in enumerate(self._names)}
        self._leaves = graph.leaves()

    @property
    def id(self) -> int:
        return self._handle.id

    @property
    def state(self) -> str:
        """``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self._handle.state

    def done(self) -> bool:
        return self._handle.done()

    def wait(self, timeout: float | None = None) -> bool:
        """Waits for the run to end (at most ``timeout`` seconds); returns whether it ended."""
        return self._handle.wait(timeout)

    def cancel(self, task: str | None = None) -> None:
        """Cancels the whole run, or one task and its descendants. Repeating it is harmless."""
        if task is None:
            self._handle.cancel()
        else:
            self._handle.cancel_task(self._task_index(task))

    def _task_index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"run of {self.graph!r} has no task {name!r}") from None

    def task(self, name: str) -> TaskRun:
        i = self._task_index(name)
        attempts = tuple(
            Attempt(n, _dt(s), _dt(e), err, _dt(r)) for n, s, e, err, r in self._handle.attempts(i)
        )
        cause = self._handle.skip_cause(i)
        return TaskRun(name, self._handle.task_state(i), attempts, None if cause is None else self._names[cause])

    @property
    def tasks(self) -> dict[str, TaskRun]:
        """Every task's state, attempts and timings."""
        return {n: self.task(n) for n in self._names}

    def states(self) -> dict[str, str]:
        """Every task's state name (cheaper than :attr:`tasks`)."""
        return dict(zip(self._names, self._handle.task_states()))

    def result(self, task: str | None = None) -> Any:
        """A task's return value; without a name, the single leaf's (or a dict of leaf results)."""
        if task is not None:
            return self._handle.value(self._task_index(task))
        if len(self._leaves) == 1:
            return self._handle.value(self._task_index(self._leaves[0]))
        return {leaf: self._handle.value(self._task_index(leaf)) for leaf in self._leaves}

    @property
    def failed_task(self) -> str | None:
        """The first task that failed (in order of failure time), or None."""
        failed = [(t.ended_at, t.name) for t in self.tasks.values() if t.state == "failed"]
        return min(failed, key=lambda x: (x[0] is None, x[0] or 0, x[1]))[1] if failed else None

    @property
    def error(self) -> BaseException | None:
        """The exception of the first failed task, or None."""
        name = self.failed_task
        return None if name is None else self.task(name).error

    @property
    def started_at(self) -> datetime | None:
        return _dt(self._handle.times()[0])

    @property
    def ended_at(self) -> datetime | None:
        return _dt(self._handle.times()[1])

    @property
    def duration(self) -> float | None:
        s, e = self._handle.times()
        return (e - s) / 1e6 if e else None

    def raise_for_state(self) -> None:
        """Raises TaskFailed (the task's exception as ``__cause__``) if the run failed."""
        if self.state == "failed":
            name = self.failed_task
            t = self.task(name) if name else None
            err = t.error if t else None
            attempt = len(t.attempts) if t else None
            raise TaskFailed(
                f"task {name!r} of graph {self.graph!r} failed: {type(err).__name__}: {err}",
                task=name,
                attempt=attempt,
            ) from err
        if self.state == "cancelled":
            from .exceptions import TaskCancelled

            raise TaskCancelled(f"run {self.id} of graph {self.graph!r} was cancelled")

    def __repr__(self) -> str:
        return f"<tm.Run {self.id} of {self.graph!r}: {self.state}>"


_executors: weakref.WeakSet[Executor] = weakref.WeakSet()


@atexit.register
def _shutdown_all() -> None:
    # Worker threads must leave the interpreter before it finalizes.
    for ex in list(_executors):
        ex.shutdown()


class Executor:
    """Runs graphs on bounded worker pools: one per task tag, plus a default pool.

    Args:
        workers: size of the default pool (untagged tasks). Default: ``min(32, cpus + 4)``.
        workers_per_tag: size of each tag's pool unless ``pools`` names it.
        pools: ``{tag: size}`` for specific tags.
        fail_fast: cancel everything else as soon as one task fails (default: finish unrelated
            branches, skip the failed task's descendants).

    No thread starts before the first run. ``with Executor() as ex:`` shuts the workers down.
    """

    def __init__(
        self,
        workers: int | None = None,
        workers_per_tag: int | None = None,
        pools: dict[str, int] | None = None,
        fail_fast: bool = False,
    ) -> None:
        for what, n in (("workers", workers), ("workers_per_tag", workers_per_tag)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"{what} must be a positive int, got {n!r}")
        self._pools = dict(pools or {})
        for tag, n in self._pools.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"pool {tag!r} must have a positive int size, got {n!r}")
        self.workers = workers or workers_per_tag or _default_workers()
        self.workers_per_tag = workers_per_tag
        self.fail_fast = fail_fast
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._closed = False
        _executors.add(self)

    def _get_engine(self) -> Engine:
        if self._closed:
            raise ExecutorError("executor is shut down")
        with self._lock:
            if self._engine is None:
                pools = [("", self.workers)] + [(t, n) for t, n in self._pools.items() if t]
                self._engine = Engine(pools)
            return self._engine

    def _pool_of(self, engine: Engine) -> Any:
        def pool_of(tag: str | None) -> int:
            if not tag:
                return 0
            idx = engine.pool_index(tag)
            if idx is None:
                size = self._pools.get(tag) or self.workers_per_tag or self.workers
                idx = engine.add_pool(tag, size)
            return idx

        return pool_of

    def submit(
        self,
        graph: Graph,
        config: Any = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Run:
        """Starts a run of ``graph`` and returns it at once (see :meth:`Run.wait`).

        Args:
            graph: the graph.
            config: overrides the graph's config for this run.
            args: positional arguments for the root tasks.
            kwargs: keyword arguments for the root tasks.
            meta: run metadata visible to tasks as ``context.meta``.
        """
        from .graph import Graph

        if not isinstance(graph, Graph):
            raise TypeError(f"expected a tm.Graph, got {type(graph).__name__}")
        engine = self._get_engine()
        calls, specs = graph._compile(self._pool_of(engine), tuple(args), dict(kwargs or {}), cache_key=id(self))
        cfg = graph.load_config() if config is None else config
        info = {"graph": graph.name, "scheduled_at": None, "trigger": "manual"}
        info.update(meta or {})
        try:
            handle = engine.submit(graph._core, calls, specs, cfg, info, self.fail_fast)
        except ValueError as e:
            raise GraphError(str(e)) from e
        return Run(handle, graph)

    def run(
        self,
        graph: Graph,
        config: Any = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Run:
        """Runs ``graph`` to the end and returns the :class:`Run` (it does not raise on failure:
        see :meth:`Run.raise_for_state`). Ctrl-C once stops starting tasks and waits for running
        ones; twice stops waiting; either way KeyboardInterrupt propagates."""
        run = self.submit(graph, config, args=args, kwargs=kwargs, meta=meta)
        run.wait()
        return run

    def shutdown(self) -> None:
        """Stops the worker threads after their current tasks. Idempotent."""
        self._closed = True
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<tm.Executor workers={self.workers} pools={self._pools}>"


_default: Executor | None = None
_default_lock = threading.Lock()


def default_executor() -> Executor:
    """The process-wide executor used by ``graph(...)`` (created on first use)."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            _default = Executor()
        return _default
