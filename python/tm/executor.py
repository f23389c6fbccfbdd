"""``tm.Executor`` and ``tm.Run``: running graphs on the Rust engine and reading the outcome."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import socket
import sys
import threading
import time
import traceback as _traceback
import uuid
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ._capture import PrintCapture, quiet
from ._capture import install as install_print_capture
from ._cluster import ClusterPool
from ._decorators import TaskOptions, _options, _seconds
from ._observe import Observer, RunContext, observers_of
from ._observe import call as call_observers
from ._runners import AsyncRunner, ProcessPool, is_async
from ._tm import Engine, RunHandle
from .exceptions import ExecutorError, TaskFailed
from .store import Store

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._scheduler import VirtualClock
    from .graph import Graph

__all__ = ["Attempt", "Event", "Executor", "Run", "TaskRun", "default_executor"]


def _default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


#: While ``tm start`` imports a file: the executors whose ``start()`` it called (see
#: :meth:`Executor.start`); None otherwise.
_deferred_starts: list[Executor] | None = None


#: Runs of this process recorded in a store, by run id (an idempotency key finds them).
_live_runs: weakref.WeakValueDictionary[str, Run] = weakref.WeakValueDictionary()

#: What ``Executor.submit(..., key=)`` may do when the key is taken.
_ON_CONFLICT = ("return", "error", "rerun_failed")


def _run_meta_json(graph: Graph, owner: str, params: dict[str, Any] | None = None) -> str:
    """A recorded run's ``meta_json``: its owner, where its graph can be loaded from, and the
    arguments its root tasks got (when JSON holds them), so ``tm run --rerun`` can repeat it."""
    meta: dict[str, Any] = {"owner": owner}
    if graph.source is not None:
        meta["source"] = graph.source
    # The graph's shape (node index pairs), so a reader such as `tm ui` can draw it, tasks not
    # yet run included, without importing the user's code.
    meta["edges"] = graph._edge_list()
    if params:
        with contextlib.suppress(TypeError, ValueError):
            meta["params"] = json.loads(json.dumps(params, allow_nan=False))
    return json.dumps(meta)


def process_owner() -> str:
    """This process as an owner of runs and fires: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
        # What the run needs of its graph, taken now: the graph may be edited later (a task
        # added, an edge drawn) while this run's tasks stay what they were. The list is the
        # graph's cached one, replaced (never changed) when the graph changes: no copy per run.
        self._leaves: list[str] = graph._leaf_names()
        self._names_cache: list[str] | None = None
        self._index_cache: dict[str, int] | None = None
        self.reverts: dict[str, str] = {}
        self.revert_errors: dict[str, BaseException] = {}
        #: The run's id in the executor's store (None when not recorded).
        self.run_id: str | None = None

    # Names, the name index and the leaves are built on first use, not per run.
    @property
    def _names(self) -> list[str]:
        if self._names_cache is None:
            self._names_cache = self._handle.names()
        return self._names_cache

    @property
    def _index(self) -> dict[str, int]:
        if self._index_cache is None:
            self._index_cache = {n: i for i, n in enumerate(self._names)}
        return self._index_cache

    @property
    def id(self) -> str | int:
        """The run's id: :attr:`run_id` when the run is recorded in a store, else the engine's
        number for it. Hooks' events, ``context.run_id`` and log lines use the same."""
        return self.run_id if self.run_id is not None else self._handle.id

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
        """Cancels the whole run, or one task and its descendants: tasks not started end
        ``cancelled`` at once and running ones are interrupted (see the README on timeouts). The run
        ends ``cancelled``. Repeating it, or cancelling after the end, is harmless."""
        if task is None:
            self._handle.cancel(True)
        else:
            self._handle.cancel_task(self._task_index(task))

    def _rollback(self, graph: Graph) -> None:
        """Runs the revert callables of completed tasks in reverse topological order."""
        states = self.states()
        for name in reversed(graph.topological_order()):
            if states.get(name) != "completed":
                continue
            node = graph._nodes[graph._core.find(name)]
            revert = node.options.revert
            if revert is None:
                continue
            try:
                revert(self._handle.value(self._index[name]))
            except Exception as e:
                self.reverts[name] = "revert_failed"
                self.revert_errors[name] = e
                _log.error("%s.%s revert failed: %r", self.graph, name, e, exc_info=e)
            else:
                self.reverts[name] = "reverted"

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
        return TaskRun(
            name,
            self._handle.task_state(i),
            attempts,
            None if cause is None else self._names[cause],
        )

    @property
    def tasks(self) -> dict[str, TaskRun]:
        """Every task's state, attempts and timings."""
        return {n: self.task(n) for n in self._names}

    def states(self) -> dict[str, str]:
        """Every task's state name (cheaper than :attr:`tasks`)."""
        return dict(zip(self._names, self._handle.task_states(), strict=True))

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
_tokens = itertools.count(1)
_log = logging.getLogger("tm")
_log.addHandler(logging.NullHandler())

# Event kinds by bit position; must match EVENT_KINDS in src/python/engine.rs.
_KINDS = ("started", "completed", "retrying", "failed", "skipped", "cancelled", "run_finished")
_LEVELS = {
    "started": logging.DEBUG,
    "completed": logging.DEBUG,
    "retrying": logging.WARNING,
    "failed": logging.ERROR,
    "skipped": logging.INFO,
    "cancelled": logging.INFO,
    "run_finished": logging.INFO,
}
_DEFAULT_KEYS = ("retries", "retry_delay", "backoff", "max_delay", "jitter", "timeout")


# Store run id -> (store, store run id) for runs being recorded, so task loggers can keep their
# records with the run. Registered before the run starts; entries go when the Run object does.
_recorded: dict[int, tuple[Any, str]] = {}


class StoredRun:
    """A recorded run that another process runs (or ran), read from the store: what
    :meth:`Executor.submit` returns for an idempotency key taken elsewhere."""

    #: How often :meth:`wait` looks at the store.
    POLL_S = 0.05

    def __init__(self, store: Any, run_id: str, graph: str) -> None:
        self._store = store
        self.run_id = run_id
        self.graph = graph

    @property
    def id(self) -> str:
        return self.run_id

    def _detail(self) -> dict[str, Any]:
        detail = self._store.core.get_run(self.run_id)
        if detail is None:
            raise KeyError(f"run {self.run_id} is no longer in {self._store.location}")
        return detail  # type: ignore[no-any-return]

    @property
    def state(self) -> str:
        """``running``, ``completed``, ``failed`` or ``cancelled``, as recorded now."""
        return str(self._detail()["state"])

    def done(self) -> bool:
        return self.state != "running"

    def wait(self, timeout: float | None = None) -> bool:
        """Waits (by looking at the store) until the run ends; returns whether it ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(self.POLL_S)
        return True

    def states(self) -> dict[str, str]:
        return {t["name"]: t["status"] for t in self._detail()["tasks"]}

    def result(self, task: str) -> Any:
        """A task's persisted result (``persist=True``)."""
        return self._store.result(self.run_id, task)

    def __repr__(self) -> str:
        return f"<tm.StoredRun {self.run_id} of {self.graph!r}>"


class _TaskLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A task's logger: logs as usual, and keeps INFO and above with the run in the store."""

    def __init__(self, logger: logging.Logger, record: tuple[Any, str], node: int) -> None:
        super().__init__(logger, {})
        self._record = record
        self._node = node

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.INFO:
            core, run_id = self._record
            text = str(msg) % args if args else str(msg)
            with contextlib.suppress(Exception):  # a closed store must not break the task
                core.append_log(
                    run_id, self._node, int(time.time() * 1e6), logging.getLevelName(level), text
                )
            with quiet():
                super().log(level, msg, *args, **kwargs)
            return
        super().log(level, msg, *args, **kwargs)


def _task_logger(meta: Any, task: str, node: int) -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The logger a task gets from ``context.logger`` (called by the engine)."""
    logger = logging.getLogger(f"tm.task.{task}")
    run_id = meta.get("run_id") if isinstance(meta, dict) else None
    record = _recorded.get(run_id) if run_id is not None else None
    return logger if record is None else _TaskLogger(logger, record, node)


@dataclass(frozen=True)
class Event:
    """A task or run transition, passed to ``on_task_start``/``on_task_end`` hooks."""

    #: The run's id in the store (32 hex digits) when it is recorded, else the engine's number.
    run_id: str | int
    graph: str
    task: str | None
    kind: str
    attempt: int
    at: datetime | None
    error: BaseException | None = None
    retry_at: datetime | None = None
    skipped_because: str | None = None
    state: str | None = None


@dataclass
class _Unraisable:
    """The argument ``sys.unraisablehook`` expects."""

    exc_type: type[BaseException]
    exc_value: BaseException
    exc_traceback: Any
    err_msg: str | None
    object: Any


# Engines inherited across fork: never dropped in the child, whose copy of their worker threads
# does not exist (stopping them there would join threads of the parent).
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    # The child has none of the parent's worker threads: using an inherited executor would hang.
    for ex in list(_executors):
        ex._forked = True
        if ex._engine is not None:
            _inherited.append(ex._engine)
            ex._engine = None


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _shutdown_all() -> None:
    # Worker threads must leave the interpreter before it finalizes.
    for ex in list(_executors):
        ex.shutdown()


class _Dispatch:
    """Turns engine events of one run into hook calls and ``tm`` log records."""

    def __init__(
        self, ex: Executor, graph: Graph, on_end: Callable[[], None] | None = None
    ) -> None:
        self.ex = ex
        self.on_end = on_end
        self.graph = graph.name
        self._core = graph._core
        self._names: list[str] | None = None
        self.run: Run | None = None
        #: The run's id in the store, once recorded: events and logs name the run by it.
        self.run_key: str | None = None
        self.finished_early = False
        self.lock = threading.Lock()
        #: The executor's observers (OpenTelemetry, metrics, alerts): none in the common case.
        self.observers = observers_of(ex)
        self.ctx: RunContext | None = None

    def mask(self) -> int:
        ex = self.ex
        if self.observers:
            return (1 << len(_KINDS)) - 1
        bits = 0
        for i, kind in enumerate(_KINDS):
            hooked = (
                (kind == "started" and ex.on_task_start is not None)
                or (kind not in ("started", "run_finished") and ex.on_task_end is not None)
                or (kind == "run_finished" and (ex.on_run_end is not None or self.on_end))
            )
            if hooked or _log.isEnabledFor(_LEVELS[kind]):
                bits |= 1 << i
        return bits

    def __call__(
        self,
        run_id: int,
        node: int | None,
        attempt: int,
        at_us: int,
        kind: str,
        error: BaseException | None,
        extra: int | None,
        state: str | None,
    ) -> None:
        if self._names is None:
            self._names = self._core.names()
        names = self._names
        task = None if node is None else names[node]
        rid: str | int = run_id if self.run_key is None else self.run_key
        ev = Event(
            rid,
            self.graph,
            task,
            kind,
            attempt,
            _dt(at_us),
            error,
            _dt(extra) if kind == "retrying" else None,
            names[extra] if kind == "skipped" and extra is not None else None,
            state,
        )
        level = _LEVELS[kind]
        if _log.isEnabledFor(level):
            if task is None:
                _log.log(level, "run %s of %s %s", rid, self.graph, state)
            elif kind == "retrying":
                _log.log(
                    level,
                    "%s.%s attempt %d failed (%r); retrying at %s",
                    self.graph,
                    task,
                    attempt,
                    error,
                    ev.retry_at,
                )
            elif kind == "failed":
                _log.log(
                    level,
                    "%s.%s failed after %d attempt(s): %r",
                    self.graph,
                    task,
                    attempt + 1,
                    error,
                    exc_info=error,
                )
            elif kind == "skipped":
                _log.log(
                    level, "%s.%s skipped: upstream %s failed", self.graph, task, ev.skipped_because
                )
            else:
                _log.log(level, "%s.%s %s (attempt %d)", self.graph, task, kind, attempt)
        ex = self.ex
        if self.ctx is not None:
            call_observers(self.observers, "event", self.ctx, ev)
        if kind == "started":
            if ex.on_task_start is not None:
                ex.on_task_start(ev)
        elif kind == "run_finished":
            if self.on_end is not None:
                self.on_end()
            # Drop the Run here: the engine keeps this dispatcher as long as the run exists, and a
            # reference back to the Run would make a cycle through Rust that no GC can collect.
            with self.lock:
                run, self.run = self.run, None
                if run is None:
                    self.finished_early = True
            if run is not None:
                self._run_ended(run)
        elif ex.on_task_end is not None:
            ex.on_task_end(ev)

    def _run_ended(self, run: Run) -> None:
        if self.ctx is not None:
            call_observers(self.observers, "run_ended", self.ctx, run)
        if self.ex.on_run_end is not None:
            self.ex.on_run_end(run)

    def attach(self, run: Run) -> None:
        """Hands over the Run object; fires on_run_end now if the run ended before it existed."""
        wanted = self.ex.on_run_end is not None or self.ctx is not None
        with self.lock:
            early = self.finished_early
            if not early and wanted:
                self.run = run
        if early and wanted:
            # Same contract as hooks called from the engine: a failing hook never escapes.
            try:
                self._run_ended(run)
            except Exception as e:
                sys.unraisablehook(
                    _Unraisable(type(e), e, e.__traceback__, None, self.ex.on_run_end)
                )


def _config_json(cfg: Any) -> str:
    """The config a run used, as JSON for the run's record (values JSON cannot hold, by repr)."""
    try:
        return json.dumps(cfg, default=repr)
    except (TypeError, ValueError):  # keys JSON cannot hold, a cycle
        return json.dumps(repr(cfg))


def _warn_rerun(
    graph: Graph,
    names: list[str],
    recorded: dict[str, Any],
    done: dict[int, Any],
    run_id: str,
) -> None:
    """Says which completed tasks a resume runs again: those whose result was not persisted
    while a task that has not completed needs it."""
    again = [
        n for n, t in recorded.items() if t["status"] == "completed" and names.index(n) not in done
    ]
    if not again:
        return
    again.sort(key=names.index)
    needing = sorted(
        {
            names[c]
            for n in again
            for c in graph._core.children(names.index(n))
            if c not in done and names[c] not in again
        }
    )
    message = (
        f"resuming run {run_id} of graph {graph.name!r}: completed task(s) "
        f"{', '.join(repr(n) for n in again)} will run again, because their results were not "
        f"persisted and unfinished task(s) {', '.join(repr(n) for n in needing)} need them; "
        "use Executor(persist=True) or @tm.task(persist=True) to keep results for a resume"
    )
    _log.warning("%s", message)
    warnings.warn(message, UserWarning, stacklevel=4)


class Executor:
    """Runs graphs on bounded worker pools: one per task tag, plus a default pool.

    Args:
        workers: size of the default pool (untagged tasks). Default: ``workers_per_tag`` if
            given, else ``min(32, cpus + 4)``.
        workers_per_tag: size of each tag's pool unless ``pools`` names it.
        pools: ``{tag: size}`` for specific tags, ``{tag: tm.ProcessPool(n)}`` to run a tag's
            tasks in worker processes, or ``{tag: tm.DaskPool(...)}`` / ``{tag: tm.RayPool(...)}``
            to send them to a Dask or Ray cluster (stopped with the executor if it started it).
        fail_fast: cancel everything else as soon as one task fails (default: finish unrelated
            branches, skip the failed task's descendants).
        retries, retry_delay, backoff, max_delay, jitter, timeout: defaults for tasks that do not
            set their own (see ``tm.task``).
        on_task_start: called with an :class:`Event` when a task attempt starts (on its worker).
        on_task_end: called with an :class:`Event` when an attempt ends (completed, retrying,
            failed) or a task is skipped or cancelled.
        on_run_end: called with the :class:`Run` when a run ends.
        store: a :class:`tm.Store` (or database URL) where every run and task transition is
            recorded; None (the default) keeps runs in memory only.
        persist: keep every task's pickled result in the store (tasks can also set
            ``persist=``), so :meth:`resume` can continue a run without re-running them.
        keep_runs, keep_days: retention in the store: keep at most this many finished runs per
            graph and none older than this many days (pruned as each run ends).
        graphs: scheduled graphs to :meth:`add` with the default options.
        clock: a :class:`tm.VirtualClock` that the scheduler reads instead of the system clock.
        lease: seconds a task of a distributed run stays claimed by this executor without a renewal
            (a Rust thread renews it every third of that); past it, another executor takes the
            task over. See :meth:`work`.
        on_failure: told when a run fails or the scheduler misses fires: a callable (called with
            a :class:`tm.notify.Alert`, on the thread that saw it) or a ready notifier such as
            ``tm.notify.webhook(url)`` or ``tm.notify.email(...)`` (which send from a thread of
            their own). See "Observability" in the README.
        tracer_provider, meter_provider: OpenTelemetry providers (``pip install
            tm-orchestrate[otel]``): a span per run and per task attempt, and task, run and
            schedule metrics (see :mod:`tm.otel`).
        observers: further :class:`tm._observe.Observer` objects (e.g. ``tm.metrics.Metrics``).
        capture_print: with a store, what a task prints (on its own thread) is also kept as
            its log at INFO (see ``tm logs``); it is still printed as usual. False: only printed.

    No thread starts before the first run. ``with Executor() as ex:`` shuts the workers down.
    Transitions are also logged to the ``tm`` logger (DEBUG start/complete, WARNING retries, ERROR
    failures, INFO skips, cancellations and run ends). A hook that raises is reported with
    ``sys.unraisablehook`` and does not affect the run.
    """

    def __init__(
        self,
        workers: int | None = None,
        workers_per_tag: int | None = None,
        pools: dict[str, Any] | None = None,
        fail_fast: bool = False,
        *,
        retries: int | None = None,
        retry_delay: float | timedelta | None = None,
        backoff: float | None = None,
        max_delay: float | timedelta | None = None,
        jitter: float | None = None,
        timeout: float | timedelta | None = None,
        on_task_start: Callable[[Event], Any] | None = None,
        on_task_end: Callable[[Event], Any] | None = None,
        on_run_end: Callable[[Run], Any] | None = None,
        store: Store | str | None = None,
        persist: bool = False,
        keep_runs: int | None = None,
        keep_days: int | None = None,
        graphs: Iterable[Graph] = (),
        clock: VirtualClock | None = None,
        lease: float = 30.0,
        on_failure: Callable[[Any], Any] | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        observers: Iterable[Observer] = (),
        capture_print: bool = True,
    ) -> None:
        for what, n in (("workers", workers), ("workers_per_tag", workers_per_tag)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
                raise ValueError(f"{what} must be a positive int, got {n!r}")
        self._pools: dict[str, Any] = dict(pools or {})
        for tag, n in self._pools.items():
            if isinstance(n, (ProcessPool, ClusterPool)):
                continue
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(
                    f"pool {tag!r} must have a positive int size, a ProcessPool, a DaskPool "
                    f"or a RayPool, got {n!r}"
                )
        for name, hook in (
            ("on_task_start", on_task_start),
            ("on_task_end", on_task_end),
            ("on_run_end", on_run_end),
        ):
            if hook is not None and not callable(hook):
                raise TypeError(f"{name} must be callable, got {hook!r}")
        self.workers = workers or workers_per_tag or _default_workers()
        self.workers_per_tag = workers_per_tag
        self.fail_fast = fail_fast
        opts = _options(
            retries=retries,
            retry_delay=retry_delay,
            backoff=backoff,
            max_delay=max_delay,
            jitter=jitter,
            timeout=timeout,
        )
        self._defaults = {
            k: getattr(opts, k) for k in _DEFAULT_KEYS if getattr(opts, k) is not None
        }
        self._defaults["persist"] = bool(persist)
        self.on_task_start = on_task_start
        self.on_task_end = on_task_end
        self.on_run_end = on_run_end
        self._observers: tuple[Observer, ...] = tuple(observers)
        for o in self._observers:
            if not isinstance(o, Observer):
                raise TypeError(f"observers must be tm observers, got {o!r}")
        if on_failure is not None:
            from .notify import alerts

            self._observers += (alerts(on_failure),)
        if tracer_provider is not None or meter_provider is not None:
            from .otel import OtelObserver

            self._observers += (OtelObserver(tracer_provider, meter_provider),)
        self._engine: Engine | None = None
        # Compiled graphs are cached per executor under this token (never reused, unlike id()).
        self._token = next(_tokens)
        self._async = AsyncRunner()
        self._lock = threading.Lock()
        # Runs started with an idempotency key by this executor when it has no store.
        self._keyed_runs: dict[tuple[str, str], Run] = {}
        self._closed = False
        self._forked = False
        if isinstance(store, str):
            store = Store(store)
        if store is not None and not isinstance(store, Store):
            raise TypeError(f"store must be a tm.Store, a database URL or None, got {store!r}")
        self.store = store
        for what, n in (("keep_runs", keep_runs), ("keep_days", keep_days)):
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
                raise ValueError(f"{what} must be a non-negative int, got {n!r}")
        self.keep_runs = keep_runs
        self.keep_days = keep_days
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.lease = float(lease)
        self.capture_print = bool(capture_print)
        self._fleet: Any = None
        self._workers_running: list[Any] = []
        from ._scheduler import Scheduler

        self._scheduler = Scheduler(self, clock)
        _executors.add(self)
        for g in graphs:
            self.add(g)

    def _get_engine(self) -> Engine:
        if self._forked:
            raise ExecutorError(
                "executor was forked: its worker threads live in the parent process; "
                "create a new tm.Executor in the child"
            )
        if self._closed:
            raise ExecutorError("executor is shut down")
        with self._lock:
            if self._engine is None:
                self._engine = Engine([("", self.workers)])
            return self._engine

    def _size_of(self, tag: str) -> int:
        p = self._pools.get(tag)
        if isinstance(p, (ProcessPool, ClusterPool)):
            return p.size
        return p or self.workers_per_tag or self.workers

    def _pool_of(self, engine: Engine) -> Callable[[str | None], int]:
        def pool_of(tag: str | None) -> int:
            if not tag:
                return 0
            idx = engine.pool_index(tag)
            if idx is None:
                idx = engine.add_pool(tag, self._size_of(tag))
            return idx

        return pool_of

    def _wrap(self, fn: Callable[..., Any], options: TaskOptions) -> Callable[..., Any]:
        pool = self._pools.get(options.tag) if options.tag else None
        if isinstance(pool, ProcessPool):
            call = pool.wrap(fn)
        elif isinstance(pool, ClusterPool):
            call = pool.wrap(fn, dict(options.resources))
        elif is_async(fn):
            call = self._async.wrap(fn)
        else:
            call = fn
        if options.cache:
            from ._cached import for_graph_task

            call = for_graph_task(fn, call, self.store)
        return call

    def submit(
        self,
        graph: Graph,
        config: Any = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | timedelta | None = None,
        distributed: bool = False,
        key: str | None = None,
        on_conflict: str = "return",
        _resume: tuple[str, list[tuple[int, Any]], list[tuple[int, int]]] | None = None,
        _on_end: Callable[[], None] | None = None,
        _record: tuple[Any, str] | None = None,
        _cancelled: list[str] | None = None,
    ) -> Any:
        """Starts a run of ``graph`` and returns it at once (see :meth:`Run.wait`).

        Args:
            graph: the graph.
            config: overrides the graph's config for this run.
            args: positional arguments for the root tasks.
            kwargs: keyword arguments for the root tasks.
            meta: run metadata visible to tasks as ``context.meta``.
            timeout: the whole run's limit in seconds: past it, running tasks fail with
                ``tm.TaskTimeout``, the others are cancelled, and the run ends ``failed``.
            distributed: record the run's tasks in the (PostgreSQL) store for any executor
                process serving this graph to run (see :meth:`work`), and return a
                ``DistributedRun``; this process runs none of them unless it calls ``work``.
            key: an idempotency key: if a run of this graph already has it (in any process
                sharing the store; in this executor without one), no second run starts and
                ``on_conflict`` decides: ``"return"`` that run (a :class:`Run` when it lives in
                this process, else a :class:`StoredRun` read from the store), ``"error"``
                (:class:`ExecutorError`), or ``"rerun_failed"`` (resume it if it failed or was
                cancelled, else return it).
            on_conflict: see ``key``.
        """
        from .graph import Graph

        if not isinstance(graph, Graph):
            raise TypeError(f"expected a tm.Graph, got {type(graph).__name__}")
        if key is not None:
            if distributed:
                raise ExecutorError("idempotency keys are not available for distributed runs yet")
            record, existing = self._claim_key(graph, key, on_conflict, meta)
            if existing is not None:
                return self._on_key_conflict(graph, key, on_conflict, existing, config, timeout)
            if record is not None:
                _record = record
        if distributed:
            if timeout is not None:
                raise ExecutorError("a distributed run has no run timeout (tasks have their own)")
            from ._fleet import submit as fleet_submit

            return fleet_submit(self, graph, config, tuple(args), dict(kwargs or {}), meta)
        engine = self._get_engine()
        program = graph._compile(
            self._pool_of(engine),
            tuple(args),
            dict(kwargs or {}),
            cache_key=self._token,
            defaults=self._defaults,
            wrap=self._wrap,
            prepare=engine.prepare,
        )
        cfg = graph.load_config() if config is None else config
        info = {"graph": graph.name, "scheduled_at": None, "trigger": "manual"}
        info.update(meta or {})
        dispatch = _Dispatch(self, graph, _on_end)
        mask = dispatch.mask()
        limit = _seconds(timeout, "timeout")
        # The engine also puts the handle here before returning, so a Ctrl-C that lands between
        # the run starting and this frame seeing the handle can still cancel the run.
        started: list[RunHandle] = []
        if _resume is not None:
            assert self.store is not None
            record: tuple[Any, str] | None = (self.store.core, _resume[0])
            done: list[tuple[int, Any]] | None = _resume[1]
            attempts: list[tuple[int, int]] | None = _resume[2]
        else:
            if _record is not None:
                record = _record
            else:
                record = (
                    self._begin_record(graph, info, cfg, dict(kwargs or {}))
                    if self.store is not None
                    else None
                )
            done = None
            attempts = None
        capture = None
        if record is not None:
            info["run_id"] = dispatch.run_key = record[1]
            _recorded[record[1]] = record
            if self.capture_print:
                install_print_capture()
                capture = PrintCapture(*record)
        if dispatch.observers:
            dispatch.ctx = RunContext(graph.name, info)
            call_observers(dispatch.observers, "run_started", dispatch.ctx)
        try:
            handle = engine.submit(
                program,
                cfg,
                info,
                self.fail_fast,
                limit,
                (dispatch, mask) if mask else None,
                started,
                record,
                done,
                (self.keep_runs, self.keep_days)
                if record is not None and (self.keep_runs is not None or self.keep_days is not None)
                else None,
                add_tasks=record is not None and _resume is None,
                attempts=attempts,
                cancelled=[graph._core.find(n) for n in _cancelled] if _cancelled else None,
                capture=capture,
            )
            run = Run(handle, graph)
            run.run_id = record[1] if record is not None else None
            if record is not None:
                weakref.finalize(run, _recorded.pop, record[1], None)
                _live_runs[record[1]] = run
            if key is not None and self.store is None:
                with self._lock:
                    self._keyed_runs[(graph.name, key)] = run
            dispatch.attach(run)
        except BaseException:
            for h in started:
                h.cancel(False)
            if record is not None and not started:
                _recorded.pop(record[1], None)
            raise
        return run

    def resume(
        self, run_id: str, graph: Graph, config: Any = None, timeout: float | None = None
    ) -> Run:
        """Continues a run recorded in this executor's store (after a crash, a kill or a reboot).

        Tasks that completed are not run again: those with a persisted result feed it to their
        children, and the others are kept when none of their children needs to run. Everything
        else (including tasks that were running) runs again, as new attempts. A completed task
        without a persisted result that an unfinished task needs runs again too: the resume
        names those tasks in a ``tm`` WARNING and a ``UserWarning`` (``persist=True`` avoids it). Returns the
        :class:`Run` once it ends; its ``run_id`` is the same.

        Raises:
            ExecutorError: the executor has no store.
            KeyError: no run ``run_id`` in the store.
            GraphError: ``graph`` is not the graph the run was started with.
        """
        run = self._resume_submit(run_id, graph, config, timeout)
        run.wait()
        return run

    def _resume_submit(
        self,
        run_id: str,
        graph: Graph,
        config: Any = None,
        timeout: float | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> Run:
        """Starts continuing a recorded run (see :meth:`resume`) and returns it at once."""
        from .exceptions import GraphError

        if self.store is None:
            raise ExecutorError("resume needs an executor with a store: Executor(store=...)")
        core = self.store.core
        # Transitions this process queued (a run that just ended here) are read back too.
        core.flush()
        detail = core.get_run(run_id)
        if detail is None:
            raise KeyError(f"no run {run_id!r} in {self.store.location}")
        names = graph._core.names()
        recorded = {t["name"]: t for t in detail["tasks"]}
        if not recorded and detail["graph"] == graph.name:
            # Killed before the task rows were committed: nothing had completed; record them now.
            core.add_tasks(run_id, [(i, n, None, None, None, None) for i, n in enumerate(names)])
        elif detail["graph"] != graph.name:
            raise GraphError(
                f"run {run_id} was a run of graph {detail['graph']!r}, not of {graph.name!r}"
            )
        elif set(recorded) != set(names):
            added, removed = sorted(set(names) - set(recorded)), sorted(set(recorded) - set(names))
            raise GraphError(
                f"graph {graph.name!r} changed since run {run_id}: "
                + "; ".join(
                    f"{what} {', '.join(tasks)}"
                    for what, tasks in (("tasks added:", added), ("tasks removed:", removed))
                    if tasks
                )
            )
        by_recorded_node = {t["node"]: t["name"] for t in recorded.values()}
        results: dict[str, Any] = {}
        for node, fmt, data in core.results(run_id):
            if fmt == "pickle" and node in by_recorded_node:
                name = by_recorded_node[node]
                results[name] = self.store.signer.loads(
                    data, f"the persisted result of task {name!r} of run {run_id!r}"
                )
        done: dict[int, Any] = {}
        for name in reversed(graph.topological_order()):
            if name not in recorded or recorded[name]["status"] != "completed":
                continue
            idx = names.index(name)
            if name in results:
                done[idx] = results[name]
            elif all(c in done for c in graph._core.children(idx)):
                done[idx] = None
        _warn_rerun(graph, names, recorded, done, run_id)
        core.set_run_state(run_id, "running")
        run = self.submit(
            graph,
            config,
            meta={"trigger": "resume", "scheduled_at": _dt(detail.get("scheduled_us"))},
            timeout=timeout,
            _resume=(
                run_id,
                sorted(done.items()),
                [(names.index(n), t["attempt"]) for n, t in recorded.items() if t["attempt"]],
            ),
            _on_end=on_end,
        )
        return run

    def _begin_record(
        self, graph: Graph, info: dict[str, Any], cfg: Any, params: dict[str, Any]
    ) -> tuple[Any, str]:
        """Records a new run and its tasks; returns what the engine's recorder needs."""
        record = self._begin_records([(graph, info)], configs=[cfg], params=[params])[0]
        assert record is not None
        return record

    def _begin_records(
        self,
        items: list[tuple[Graph, dict[str, Any]]],
        fires: bool = False,
        configs: list[Any] | None = None,
        params: list[dict[str, Any]] | None = None,
    ) -> list[tuple[Any, str] | None]:
        """Records new runs (one commit for all: the scheduler's fires of one instant) and their
        tasks; returns what the engine's recorder needs for each.

        With ``fires``, each run with a scheduled time is a schedule fire and is claimed first: its run is recorded
        only if no process sharing the database fired the same graph at the same scheduled time,
        and its place in the result is None otherwise (the other process runs it)."""
        assert self.store is not None
        core = self.store.core
        now = int(time.time() * 1e6)
        owner = process_owner()
        records: list[tuple[Any, str] | None] = []
        for i, (graph, info) in enumerate(items):
            meta_json = _run_meta_json(graph, owner, None if params is None else params[i])
            run_id = uuid.uuid4().hex
            scheduled = info.get("scheduled_at")
            scheduled_us = (
                int(scheduled.timestamp() * 1e6) if isinstance(scheduled, datetime) else None
            )
            trigger = str(info.get("trigger", "manual"))
            config_json = None if configs is None else _config_json(configs[i])
            if fires and scheduled_us is not None:
                won = core.claim_fire(
                    run_id,
                    graph.name,
                    trigger,
                    scheduled_us,
                    now,
                    owner,
                    meta_json=meta_json,
                    config_json=config_json,
                )
                records.append((core, run_id) if won else None)
                continue
            core.begin_run(
                run_id,
                graph.name,
                "running",
                trigger,
                now,
                [],
                scheduled_us=scheduled_us,
                started_us=now,
                config_json=config_json,
                meta_json=meta_json,
            )
            records.append((core, run_id))
        # The runs themselves are durable before any task runs, so a crash at any later moment
        # leaves a resumable run. Their task rows follow in the writer's queue, ahead of every
        # transition (the engine queues them: ``submit(..., add_tasks=True)``).
        core.flush()
        return records

    def _claim_key(
        self, graph: Graph, key: str, on_conflict: str, meta: dict[str, Any] | None
    ) -> tuple[tuple[Any, str] | None, Any]:
        """(the new run's record, None) when ``key`` is new for ``graph``, else (None, the run or
        run id that has it)."""
        if not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty str, got {key!r}")
        if on_conflict not in _ON_CONFLICT:
            raise ValueError(
                f"on_conflict must be one of {', '.join(_ON_CONFLICT)}, got {on_conflict!r}"
            )
        if self.store is None:
            with self._lock:
                return None, self._keyed_runs.get((graph.name, key))
        core = self.store.core
        run_id = uuid.uuid4().hex
        trigger = str((meta or {}).get("trigger", "manual"))
        now = int(time.time() * 1e6)
        existing = core.claim_key(
            run_id, graph.name, trigger, key, now, _run_meta_json(graph, process_owner())
        )
        return (None, existing) if existing is not None else ((core, run_id), None)

    def _on_key_conflict(
        self,
        graph: Graph,
        key: str,
        on_conflict: str,
        existing: Any,
        config: Any,
        timeout: float | timedelta | None,
    ) -> Any:
        run = existing
        if isinstance(existing, str):
            live = _live_runs.get(existing)
            run = live if live is not None else StoredRun(self.store, existing, graph.name)
        if on_conflict == "error":
            raise ExecutorError(
                f"graph {graph.name!r} already has a run with key {key!r}: {run.id}"
            )
        if on_conflict == "rerun_failed" and run.done() and run.state in ("failed", "cancelled"):
            if self.store is None or run.run_id is None:
                raise ExecutorError(
                    "rerun_failed needs an executor with a store (a failed run is resumed)"
                )
            _seconds(timeout, "timeout")
            return self._resume_submit(run.run_id, graph, config)
        return run

    def run(
        self,
        graph: Graph,
        config: Any = None,
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
        timeout: float | timedelta | None = None,
        rollback: bool = False,
        distributed: bool = False,
        key: str | None = None,
        on_conflict: str = "return",
    ) -> Any:
        """Runs ``graph`` to the end and returns the :class:`Run` (it does not raise on failure:
        see :meth:`Run.raise_for_state`).

        With ``rollback=True``, a failed run calls the ``revert`` callable of every completed task
        that has one, in reverse topological order, with that task's result; outcomes are in
        :attr:`Run.reverts` (``reverted`` or ``revert_failed``). Ctrl-C once stops starting tasks
        and waits for running ones; twice interrupts them; either way KeyboardInterrupt propagates.

        ``key`` and ``on_conflict`` are :meth:`submit`'s idempotency key.

        With ``distributed=True`` the run is recorded for the whole fleet (see :meth:`submit`) and
        this process works on it (see :meth:`work`) until it ends; returns the
        ``DistributedRun``.
        """
        if distributed:
            if rollback:
                raise ExecutorError("rollback is not available for distributed runs")
            drun = self.submit(graph, config, args=args, kwargs=kwargs, meta=meta, distributed=True)
            try:
                self.work([graph], run_id=drun.run_id)
            finally:
                if drun.done():
                    drun._ended()
            return drun
        run = self.submit(
            graph,
            config,
            args=args,
            kwargs=kwargs,
            meta=meta,
            timeout=timeout,
            key=key,
            on_conflict=on_conflict,
        )
        run.wait()
        if rollback and run.state == "failed" and isinstance(run, Run):
            run._rollback(graph)
        return run

    # -- distributed runs ------------------------------------------------------------------------

    def _get_fleet(self) -> Any:
        if self.store is None:
            raise ExecutorError(
                "distributed runs need an executor with a PostgreSQL store: "
                "Executor(store='postgresql://...')"
            )
        with self._lock:
            if self._closed:
                raise ExecutorError("executor is shut down")
            if self._fleet is None:
                from ._fleet import open_fleet

                self._fleet = open_fleet(self.store.url, self.lease, self.workers)
            return self._fleet

    def work(
        self,
        graphs: Iterable[Graph],
        *,
        run_id: str | None = None,
        tags: Iterable[str] | None = None,
        max_tasks: int | None = None,
    ) -> int:
        """Runs tasks of distributed runs of ``graphs`` (submitted by any process sharing this
        executor's PostgreSQL store) on this executor's ``workers`` threads; returns how many ran
        here.

        Ready tasks are claimed with ``FOR UPDATE SKIP LOCKED`` (every task runs on one executor
        at a time) and held under a lease that a Rust thread renews; a task whose executor died
        is taken over by another once its lease (``Executor(lease=...)``) runs out, as a new
        attempt, and a late completion of the lost attempt is refused. Results travel through the
        database (pickled). Idle executors sleep until the database notifies them (LISTEN/NOTIFY;
        a one-second poll is the fallback).

        Args:
            graphs: the graphs this executor serves (their tasks' code must be importable here);
                a run is served only by executors whose graph has the same task names and edges.
            run_id: return once this run has ended (else run until :meth:`stop` or Ctrl-C).
            tags: serve only tasks with one of these tags (``""`` for untagged tasks).
            max_tasks: return after running this many tasks here.
        """
        from ._fleet import Worker

        worker = Worker(self, graphs, tags)
        with self._lock:
            self._workers_running.append(worker)
        try:
            return worker.serve(run_id=run_id, max_tasks=max_tasks)
        finally:
            with self._lock:
                self._workers_running.remove(worker)

    # -- schedules ---------------------------------------------------------------------------------

    def add(
        self,
        graph: Graph,
        *,
        max_active_runs: int = 1,
        overlap: str = "skip",
        catchup: str = "latest",
        grace: float | timedelta = 1.0,
        max_catchup: int = 100,
        jitter: float | timedelta = 0.0,
    ) -> None:
        """Keeps ``graph`` on its cron schedule while :meth:`start` runs (adding a graph of the
        same name replaces it; runs it started go on).

        Args:
            graph: a graph with a schedule.
            max_active_runs: how many runs of the graph may be going at once.
            overlap: what a fire does when ``max_active_runs`` runs are going: ``"skip"`` it
                (logged, and recorded in the store's events), ``"queue"`` it until a run ends,
                or ``"allow"`` it to start anyway (no limit).
            grace: how many seconds late a fire may start and still count as on time. Fires
                missed by more (the process was down, suspended, or a virtual clock jumped)
                follow ``catchup``.
            catchup: which missed fires still run, with trigger ``"catchup"``: ``"none"``,
                the ``"latest"`` one (unless an on-time fire follows it), or ``"all"``. With a
                store, "missed" counts from the last fire any earlier process handled. Every
                missed fire that does not run is logged and recorded (event ``missed``).
            max_catchup: at most this many of the newest missed fires run under ``"all"``.
            jitter: delay every fire of this graph by a fixed offset below this many seconds,
                derived from the graph's name (spreads graphs that share a schedule; the same
                in every process). ``context.scheduled_at`` stays the cron time.

        Raises:
            TypeError: the graph is manual (``schedule="manual"``): run it with :meth:`run` or
                by calling it.
            ValueError: an option is out of range.
        """
        from ._scheduler import ScheduleOptions
        from .graph import Graph

        if not isinstance(graph, Graph):
            raise TypeError(f"expected a tm.Graph, got {type(graph).__name__}")
        if graph.schedule is None:
            raise TypeError(
                f"graph {graph.name!r} has no schedule (schedule='manual'): "
                "run it with executor.run(graph) or graph()"
            )
        options = ScheduleOptions(
            max_active_runs=max_active_runs,
            overlap=overlap,
            catchup=catchup,
            grace=grace,  # type: ignore[arg-type]
            max_catchup=max_catchup,
            jitter=jitter,  # type: ignore[arg-type]
        )
        self._scheduler.add(graph, options)

    def remove(self, name: str) -> None:
        """Stops scheduling the graph called ``name`` (its running run finishes).

        Raises:
            KeyError: no scheduled graph has that name.
        """
        self._scheduler.remove(name)

    def pause(self, name: str) -> bool:
        """Pauses the schedule of the graph called ``name``: its fires are recorded as skipped
        (reason ``paused``) until :meth:`unpause`. With a store, every scheduler sharing it obeys
        at its next fire, and ``tm status`` shows it; the graph need not be added here. Runs
        already going are left alone. Returns False when it was paused already."""
        return self._scheduler.pause(name)

    def unpause(self, name: str) -> bool:
        """Lets the graph called ``name`` fire again from its next fire time on (fires skipped
        while it was paused are not caught up). Returns False when it was not paused."""
        return self._scheduler.unpause(name)

    def paused(self) -> dict[str, datetime]:
        """The paused graphs and when each was paused."""
        return self._scheduler.paused()

    def backfill(
        self,
        graph: Graph,
        start: datetime,
        end: datetime,
        *,
        reprocess: str = "none",
        max_active: int = 1,
        dry_run: bool = False,
        on_item: Callable[[Any, str], Any] | None = None,
    ) -> list[Any]:
        """Runs ``graph`` once per fire time of its schedule from ``start`` to ``end`` (both
        included; naive bounds are in the graph's zone), each with ``context.scheduled_at`` set
        and trigger ``"backfill"``, at most ``max_active`` at once, oldest first.

        Each logical time runs at most once across the processes sharing the store (the
        schedulers' fire claims). Times that already have a run keep it unless ``reprocess`` is
        ``"failed"`` (failed or cancelled runs are resumed: only what failed runs again) or
        ``"all"`` (completed times also run again, as new runs). Running the same backfill again
        continues an interrupted one. ``dry_run`` only returns the plan. ``on_item(item, what)``
        is called as each item is ``"started"`` and ``"ended"``.

        Returns:
            One ``BackfillItem`` per time: its ``action`` (``run``, ``resume``, ``rerun``,
            ``keep``, ``taken`` or ``busy``), ``run_id`` and final ``state``.
        """
        from ._backfill import backfill

        return backfill(
            self,
            graph,
            start,
            end,
            reprocess=reprocess,
            max_active=max_active,
            dry_run=dry_run,
            on_item=on_item,
        )

    def trigger(self, name: str, **params: Any) -> int | None:
        """Asks for a run of the scheduled graph ``name`` now, with ``params`` for its root tasks
        (``context.meta["trigger"] == "manual"``). With a store, any scheduler sharing it that
        serves the graph may run it (exactly one does, within a wake-up of half a second), and
        the request's id is returned; without one, this executor's :meth:`start` runs it."""
        return self._scheduler.trigger(name, params)

    def next_fire(self, name: str) -> datetime | None:
        """The next logical fire time of the scheduled graph ``name`` (in its zone), or None
        if its schedule has ended.

        Raises:
            KeyError: no scheduled graph has that name.
        """
        return self._scheduler.next_fire(name)

    def settle(self, timeout: float = 30.0) -> bool:
        """Waits until :meth:`start` (in another thread) is up and has handled every fire due at
        the clock's current time (runs started, skips and misses recorded); returns False after
        ``timeout`` seconds. For tests with a :class:`tm.VirtualClock`: move the clock, then
        settle."""
        return self._scheduler.settle(timeout)

    def start(self) -> None:
        """Fires the added graphs on their schedules until :meth:`stop` (from any thread), SIGINT
        or SIGTERM; blocks.

        Each run's logical time is in ``context.scheduled_at`` and its trigger in
        ``context.meta["trigger"]`` (``schedule``, ``catchup``, or ``resume`` for a run that a
        killed process left running, resumed from the store on start). See :meth:`add` for the
        overlap and catch-up policies. In the main thread, the first SIGINT/SIGTERM stops firing
        and lets running runs finish; a second one cancels them. Queued fires left at a stop are
        dropped and recorded as skipped.
        """
        if self._forked:
            self._get_engine()  # raises the forked-executor error
        if _deferred_starts is not None:
            # `tm start FILE.py` is importing a file that starts its executor itself (as seed
            # 004's examples do): the command runs it once the file is loaded, instead.
            _deferred_starts.append(self)
            return
        self._scheduler.start()

    def stop(self, timeout: float | None = None) -> None:
        """Makes :meth:`start` stop firing and return once running runs end; past ``timeout``
        seconds they are cancelled. Also makes :meth:`work` stop claiming and return once its
        running tasks end. Safe from any thread (and from hooks); does not block."""
        self._scheduler.stop(timeout)
        with self._lock:
            workers = list(self._workers_running)
        for w in workers:
            w.stop()

    def shutdown(self) -> None:
        """Stops the worker threads after their current tasks (and makes a running :meth:`start`
        stop firing). Idempotent."""
        self._scheduler.stop()
        self._closed = True
        if self._forked:
            return  # nothing of the parent's to stop here
        fleet, self._fleet = self._fleet, None
        if fleet is not None:
            fleet.close()
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.shutdown()
        self._async.close()
        call_observers(self._observers, "close")
        for p in self._pools.values():
            if isinstance(p, (ProcessPool, ClusterPool)):
                p.close()

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
