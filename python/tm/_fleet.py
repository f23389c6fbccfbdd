"""Distributed runs: a run's tasks are rows in a PostgreSQL store, run by any executor process
(on any host) that serves the graph. The claiming, leases, fencing and wake-ups are in the Rust
core (``tm._tm.Fleet``); this module binds a claimed task to its graph's Python callable.

A process submits with ``Executor.submit(graph, distributed=True)`` (or ``run(...,
distributed=True)``, which also works on it); every process that calls ``Executor.work([graph,
...])`` takes ready tasks of those graphs until the run it waits for ends, or until stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
import traceback as _traceback
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._capture import PrintCapture
from ._observe import RunContext, observers_of
from ._observe import call as call_observers
from ._tm import Fleet
from .exceptions import ExecutorError, StoreError, TaskFailed

if TYPE_CHECKING:
    from ._signing import Signer
    from .executor import Executor
    from .graph import Graph

_log = logging.getLogger("tm")

_PARENT, _CONFIG, _CONTEXT, _ALL_PARENTS, _VALUE = 0, 1, 2, 3, 4
_UNFINISHED = ("pending", "running")


def graph_key(graph: Graph) -> str:
    """The graph's name and a digest of its shape (task names and edges): executors take only
    tasks of runs of the very graph they were given."""
    core = graph._core
    names = core.names()
    shape = [(n, sorted(names[p] for p in core.parents(i))) for i, n in enumerate(names)]
    digest = hashlib.sha256(json.dumps([graph.name, shape]).encode()).hexdigest()[:16]
    return f"{graph.name}:{digest}"


def _parents(graph: Graph) -> list[list[int]]:
    core = graph._core
    return [list(core.parents(i)) for i in range(len(core.names()))]


def _signer(ex: Executor) -> Signer:
    """Signs the pickles every executor of the store loads (see ``tm._signing``)."""
    assert ex.store is not None
    return ex.store.signer


def open_fleet(url: str, lease: float, workers: int) -> Fleet:
    if not url.startswith(("postgresql://", "postgres://")):
        raise ExecutorError(
            "distributed runs need a PostgreSQL store (Executor(store='postgresql://...')); "
            f"this executor's store is {url!r}"
        )
    from .executor import process_owner

    owner = f"{process_owner()}:{uuid.uuid4().hex[:8]}"
    # One connection per two task threads: completions overlap, without a connection per thread.
    return Fleet(url, owner, lease, max(1, min(8, (workers + 1) // 2)))


def _config_json(cfg: Any) -> str:
    from .executor import _config_json

    return _config_json(cfg)


def submit(
    ex: Executor,
    graph: Graph,
    config: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    meta: dict[str, Any] | None,
) -> DistributedRun:
    """Records a distributed run of ``graph``; returns its handle at once."""
    fleet = ex._get_fleet()
    # Compiled here too, so that a graph that cannot bind its arguments fails in the submitter.
    calls, specs = graph._compile(None, args, kwargs, defaults=ex._defaults)
    cfg = graph.load_config() if config is None else config
    info = {"graph": graph.name, "scheduled_at": None, "trigger": "manual"}
    info.update(meta or {})
    run_id = uuid.uuid4().hex
    observers = observers_of(ex)
    ctx = None
    if observers:
        # Observers see the run start here, and may add to its meta what every executor that
        # runs one of its tasks must know (OpenTelemetry's trace context).
        info["run_id"] = run_id
        ctx = RunContext(graph.name, info, distributed=True)
        call_observers(observers, "run_started", ctx)
    try:
        params = _signer(ex).dumps((args, kwargs, cfg, info))
    except Exception as e:
        raise ExecutorError(
            f"graph {graph.name!r}: a distributed run's arguments, config and meta must pickle "
            f"(every executor unpickles them): {e}"
        ) from e
    names = graph._core.names()
    tasks = []
    for i, name in enumerate(names):
        o = graph._nodes[i].options
        spec = specs[i]
        tasks.append((name, o.tag or "", int(spec[1] or 0), int(spec[2] or 0)))
    scheduled = info.get("scheduled_at")
    fleet.submit(
        run_id,
        graph.name,
        graph_key(graph),
        str(info.get("trigger", "manual")),
        params,
        tasks,
        _parents(graph),
        scheduled_us=int(scheduled.timestamp() * 1e6) if isinstance(scheduled, datetime) else None,
        meta_json=json.dumps({"distributed": True, "submitter": fleet.owner}),
        config_json=_config_json(cfg),
    )
    del calls
    drun = DistributedRun(ex, fleet, graph, run_id)
    drun._observed = ctx
    return drun


class DistributedRun:
    """A run whose tasks any executor serving its graph may run (see ``Executor.work``)."""

    def __init__(self, ex: Executor, fleet: Fleet, graph: Graph, run_id: str) -> None:
        self._ex = ex
        self._fleet = fleet
        self.graph = graph.name
        self._graph = graph
        #: The run's id in the store.
        self.run_id = run_id
        self._observed: RunContext | None = None

    def _ended(self) -> None:
        """Tells the submitter's observers that the run ended (``Executor.run`` waits for it)."""
        ctx, self._observed = self._observed, None
        if ctx is not None:
            call_observers(observers_of(self._ex), "run_ended", ctx, self)

    @property
    def state(self) -> str:
        """``running``, ``completed``, ``failed`` or ``cancelled``."""
        return self._fleet.run_state(self.run_id) or "unknown"

    def done(self) -> bool:
        return self.state not in _UNFINISHED

    def wait(self, timeout: float | None = None) -> bool:
        """Waits (woken by the database's notifications) until the run ends; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            seen = self._fleet.wakes()
            if self.done():
                self._ended()
                return True
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                return False
            self._fleet.wait(seen, left)

    def cancel(self) -> bool:
        """Tasks not yet started never will; running ones finish. False if the run was over."""
        return self._fleet.cancel(self.run_id)

    def states(self) -> dict[str, str]:
        detail = self._store().core.get_run(self.run_id) or {"tasks": []}
        return {t["name"]: t["status"] for t in detail["tasks"]}

    def _store(self) -> Any:
        assert self._ex.store is not None
        return self._ex.store

    def result(self, task: str | None = None) -> Any:
        """A task's result (from the database); without a name, the single leaf's (or a dict of
        leaf results)."""
        store = self._store()
        if task is not None:
            return store.result(self.run_id, task)
        leaves = self._graph.leaves()
        if len(leaves) == 1:
            return store.result(self.run_id, leaves[0])
        return {leaf: store.result(self.run_id, leaf) for leaf in leaves}

    @property
    def failed_task(self) -> str | None:
        detail = self._store().core.get_run(self.run_id) or {"tasks": []}
        failed = [t for t in detail["tasks"] if t["status"] == "failed"]
        failed.sort(key=lambda t: t.get("ended_us") or 0)
        return failed[0]["name"] if failed else None

    def raise_for_state(self) -> None:
        """Raises TaskFailed (naming the failed task and its error) if the run failed."""
        state = self.state
        if state == "failed":
            name = self.failed_task
            detail = self._store().core.get_run(self.run_id) or {"tasks": []}
            row = next((t for t in detail["tasks"] if t["name"] == name), {})
            raise TaskFailed(
                f"task {name!r} of graph {self.graph!r} failed: "
                f"{row.get('error_type')}: {row.get('error_message')}",
                task=name,
                attempt=row.get("attempt"),
            )
        if state == "cancelled":
            from .exceptions import TaskCancelled

            raise TaskCancelled(f"run {self.run_id} of graph {self.graph!r} was cancelled")

    def __repr__(self) -> str:
        return f"<DistributedRun {self.run_id} of {self.graph!r}>"


class FleetContext:
    """What a task of a distributed run sees through a ``context`` parameter."""

    def __init__(self, run_id: str, task: str, attempt: int, meta: dict[str, Any]) -> None:
        self.run_id = run_id
        self.task = task
        #: 0-based, counting every claim of the task (including ones lost with an executor).
        self.attempt = attempt
        self.meta = meta
        self.cancelled = False

    @property
    def graph(self) -> Any:
        return self.meta.get("graph")

    @property
    def scheduled_at(self) -> Any:
        return self.meta.get("scheduled_at")

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(f"tm.task.{self.task}")

    def __repr__(self) -> str:
        return f"FleetContext(run_id={self.run_id!r}, task={self.task!r}, attempt={self.attempt})"


class Worker:
    """Takes ready tasks of ``graphs`` from the database and runs them on ``workers`` threads."""

    def __init__(
        self,
        ex: Executor,
        graphs: Iterable[Graph],
        tags: Iterable[str] | None,
    ) -> None:
        self.ex = ex
        self.fleet = ex._get_fleet()
        self.graphs: dict[str, Graph] = {}
        for g in graphs:
            key = graph_key(g)
            self.graphs[key] = g
            self.fleet.register(key, _parents(g))
        if not self.graphs:
            raise ValueError("work() needs at least one graph to serve")
        self.tags = None if tags is None else sorted(set(tags))
        self.size = ex.workers
        self._runs: dict[int, tuple[Any, Any, dict[str, Any], list[str]]] = {}
        self._lock = threading.Lock()
        self.running = 0
        self.ran = 0
        self.stopping = threading.Event()

    def _program(self, rid: int, key: str) -> tuple[Any, Any, dict[str, Any], list[str]]:
        """The compiled calls, config and meta of run ``rid`` (cached per run)."""
        with self._lock:
            got = self._runs.get(rid)
        if got is not None:
            return got
        row = self._persist(self.fleet.run_params, rid)
        if row is None:
            raise ExecutorError(f"distributed run {rid} has no parameters in the store")
        graph = self.graphs[key]
        args, kwargs, cfg, info = _signer(self.ex).loads(
            row[1], f"the parameters of distributed run {rid}"
        )
        calls, specs = graph._compile(
            None, args, kwargs, defaults=self.ex._defaults, wrap=self.ex._wrap
        )
        got = (calls, specs, {**info, "cfg": cfg}, graph._core.names())
        with self._lock:
            if len(self._runs) > 64:
                self._runs.clear()
            self._runs[rid] = got
        return got

    def _execute(self, claim: tuple[Any, ...]) -> None:
        run_id, rid, key, node, attempt, started_us, inputs = claim
        ref = (rid, key, node, attempt, started_us)
        observed: _Observed | None = None
        try:
            try:
                calls, specs, info, names = self._program(rid, key)
                fn, params, call_args, retry_on, give_up_on, _persist = calls[node]
                signer = _signer(self.ex)
                values = {
                    p: signer.loads(data, f"the result of task {names[p]!r} of run {run_id}")
                    for p, fmt, data in inputs
                    if fmt == "pickle"
                }
            except Exception as e:
                # Not loadable here (a class only the submitter's __main__ has, a module this
                # executor lacks): an attempt that failed. Left claimed, its lease would be
                # renewed forever and the run would never end.
                self._unloadable(ref, run_id, key, node, attempt, e)
                return
            cfg = info["cfg"]
            meta = {k: v for k, v in info.items() if k != "cfg"}
            meta["run_id"] = run_id
            observers = observers_of(self.ex)
            if observers:
                observed = _Observed(observers, run_id, self.graphs[key].name, names[node], meta)
                observed.send("started", attempt - 1, started_us)
            kw: dict[str, Any] = {}
            for pname, kind, payload in params:
                if kind == _PARENT:
                    kw[pname] = values.get(payload)
                elif kind == _CONFIG:
                    kw[pname] = cfg
                elif kind == _CONTEXT:
                    kw[pname] = FleetContext(run_id, names[node], attempt - 1, meta)
                elif kind == _ALL_PARENTS:
                    for p in self.graphs[key]._core.parents(node):
                        kw.setdefault(names[p], values.get(p))
                else:
                    kw[pname] = payload
            capture = (
                PrintCapture(_StoreLog(self.ex.store), run_id)
                if self.ex.capture_print and self.ex.store is not None
                else None
            )
            outer = capture.enter(node) if capture is not None else None
            try:
                try:
                    value = fn(*(call_args or ()), **kw)
                finally:
                    if capture is not None:
                        capture.exit(outer)
            except Exception as e:
                retryable = isinstance(e, retry_on) and not (
                    give_up_on and isinstance(e, give_up_on)
                )
                spec = specs[node]
                delay = _delay(spec, attempt - 1)
                ended = self._persist(
                    self.fleet.fail,
                    ref,
                    type(e).__name__,
                    str(e),
                    "".join(_traceback.format_exception(e)),
                    retryable,
                    int((time.time() + delay) * 1e6),
                )
                if observed is not None:
                    observed.send(
                        ended[0] if ended else "failed", attempt - 1, None, e, lost=not ended
                    )
                    observed = None
                _log.log(
                    logging.WARNING if ended and ended[0] == "retrying" else logging.ERROR,
                    "%s[%s] attempt %d: %s: %s (%s)",
                    names[node],
                    run_id,
                    attempt,
                    type(e).__name__,
                    e,
                    ended[0] if ended else "lease lost",
                )
                return
            try:
                data = _signer(self.ex).dumps(value)
            except Exception as e:
                self._persist(
                    self.fleet.fail,
                    ref,
                    type(e).__name__,
                    f"task {names[node]!r}: its result cannot be pickled for the other "
                    f"executors: {e}",
                    None,
                    False,
                    0,
                )
                return
            ended = self._persist(self.fleet.complete, ref, "pickle", data)
            if observed is not None:
                observed.send("completed", attempt - 1, None, lost=ended is None)
                observed = None
            if ended is None:
                _log.warning(
                    "%s[%s] attempt %d: completed after its lease was lost; its result was "
                    "discarded (the task runs elsewhere)",
                    names[node],
                    run_id,
                    attempt,
                )
        except Exception as e:  # a store error: the lease will lapse and another takes it
            _log.error("distributed task %s of run %s: %r", node, run_id, e)
        finally:
            if observed is not None:  # the result could not be pickled, or a store error
                observed.send("failed", attempt - 1, None, None, lost=True)
            with self._lock:
                self.running -= 1
                self.ran += 1
            self.fleet.poke()

    def _unloadable(
        self,
        ref: tuple[Any, ...],
        run_id: str,
        key: str,
        node: int,
        attempt: int,
        e: Exception,
    ) -> None:
        """Records an attempt whose parameters, inputs or code could not be loaded: retried while
        the task's retries last (another executor may have what this one lacks), then failed."""
        graph = self.graphs[key]
        name = graph._core.names()[node]
        options = graph._nodes[node].options
        delay = float(options.retry_delay or self.ex._defaults.get("retry_delay") or 0.0)
        ended = self._persist(
            self.fleet.fail,
            ref,
            type(e).__name__,
            f"task {name!r} of run {run_id}: cannot load the inputs of this attempt on this "
            f"executor (its arguments, config or parents' results do not unpickle here): {e}",
            "".join(_traceback.format_exception(e)),
            True,  # the store retries it while the task's retries last
            int((time.time() + delay) * 1e6),
        )
        _log.error(
            "%s[%s] attempt %d: cannot load its inputs: %s: %s (%s)",
            name,
            run_id,
            attempt,
            type(e).__name__,
            e,
            ended[0] if ended else "lease lost",
        )

    def _persist(self, verb: Any, *args: Any) -> Any:
        """Records a task's end, retrying while the database is unreachable (a restart, a
        network cut): the attempt stays claimed by this executor, whose watcher renews its lease
        once the server is back, so giving up would strand the task. A retry after a lost reply
        is refused by the fence, never recorded twice."""
        pause = 0.05
        while True:
            try:
                return verb(*args)
            except StoreError as e:
                if self.stopping.is_set() and pause >= 5.0:
                    raise
                _log.warning("the store is unreachable (%s); retrying in %.2fs", e, pause)
                time.sleep(pause)
                pause = min(pause * 2, 5.0)

    def serve(self, run_id: str | None = None, max_tasks: int | None = None) -> int:
        """Claims and runs tasks until run ``run_id`` has ended (with none of ours left running),
        ``max_tasks`` have run here, or :meth:`stop`; returns how many tasks ran here."""
        pool = ThreadPoolExecutor(self.size, thread_name_prefix="tm-fleet")
        claimed = 0
        try:
            while not self.stopping.is_set():
                seen = self.fleet.wakes()
                with self._lock:
                    free = self.size - self.running
                if max_tasks is not None:
                    free = min(free, max_tasks - claimed)
                try:
                    got = self.fleet.claim(free, self.tags) if free > 0 else []
                    finished = (
                        run_id is not None
                        and not got
                        and self.running == 0
                        and self.fleet.run_state(run_id) not in _UNFINISHED
                    )
                except StoreError as e:
                    # The server is down or unreachable: keep the running tasks, try again.
                    _log.warning("cannot claim tasks (%s); retrying in 1s", e)
                    self.fleet.wait(seen, 1.0)
                    continue
                for c in got:
                    with self._lock:
                        self.running += 1
                    claimed += 1
                    pool.submit(self._execute, c)
                with self._lock:
                    idle = self.running == 0
                if max_tasks is not None and claimed >= max_tasks and idle:
                    break
                if got:
                    continue
                if idle and finished:
                    break
                # Woken by a notification (tasks became ready, a run ended, a lease came back),
                # by one of our tasks ending, or after a second (retry delays; a lost listener).
                self.fleet.wait(seen, 1.0)
        except BaseException:
            # Ctrl-C: stop claiming; tasks already running here finish and are recorded.
            self.stopping.set()
            raise
        finally:
            pool.shutdown(wait=True)
        return self.ran

    def stop(self) -> None:
        self.stopping.set()
        self.fleet.poke()


class _Observed:
    """One attempt of a distributed run's task, as the executor's observers see it."""

    def __init__(
        self, observers: Any, run_id: str, graph: str, task: str, meta: dict[str, Any]
    ) -> None:
        self.observers = observers
        self.ctx = RunContext(graph, meta, distributed=True)
        self.run_id = run_id
        self.task = task

    def send(
        self,
        kind: str,
        attempt: int,
        at_us: int | None,
        error: BaseException | None = None,
        lost: bool = False,
    ) -> None:
        from .executor import Event, _dt

        at = _dt(at_us) if at_us else _dt(int(time.time() * 1e6))
        ev = Event(
            self.run_id,
            self.ctx.graph,
            self.task,
            kind,
            attempt,
            at,
            error,
            state="lease_lost" if lost else kind,
        )
        call_observers(self.observers, "event", self.ctx, ev)


class _StoreLog:
    """Appends to the store's task logs, opening the store's own connection only once a task
    prints (a fleet worker needs none otherwise)."""

    __slots__ = ("store",)

    def __init__(self, store: Any) -> None:
        self.store = store

    def append_log(self, *args: Any) -> None:
        self.store.core.append_log(*args)


def _delay(spec: tuple[Any, ...], i: int) -> float:
    """Seconds before retry ``i`` (0-based), as the engine computes them (see ``retry.rs``)."""
    _pool, _prio, _retries, delay, backoff, max_delay, jitter = spec[:7]
    secs = float(delay or 0.0) * (1.0 + float(backoff or 0.0)) ** i
    if max_delay is not None:
        secs = min(secs, float(max_delay))
    j = min(max(float(jitter or 0.0), 0.0), 1.0)
    return secs * (1.0 - j + 2.0 * j * random.random())
