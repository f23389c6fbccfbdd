"""Pools that send a tag's tasks to a Dask or Ray cluster: ``Executor(pools={"heavy": DaskPool()})``.

Like :class:`tm.ProcessPool`, a cluster pool wraps a task's function into a synchronous callable
that the engine runs on one of the tag's worker threads: the call submits one Dask future or Ray
task and waits for it, so retries, timeouts, the store, resume, caching and history stay the
engine's. ``_tm_interrupt`` (timeout, cancellation) cancels the remote task. Dask and Ray are
imported on first use only; ``import tm`` never imports them.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pickle
import threading
import traceback
from collections.abc import Callable
from typing import Any

from ._runners import WorkerCrashed, _reason_error

__all__ = ["ClusterPool", "DaskPool", "RayPool"]


class _RemoteLogger:
    """``context.logger`` on a cluster worker: logs there as usual and keeps each record so the
    driver can replay it into the run's log once the task returns."""

    def __init__(self, task: str) -> None:
        self.name = f"tm.task.{task}"
        self.records: list[tuple[int, str]] = []

    def log(self, level: int, msg: object, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        text = str(msg) % args if args else str(msg)
        if exc_info:
            text += "\n" + traceback.format_exc().rstrip()
        self.records.append((level, text))
        logging.getLogger(self.name).log(level, "%s", text, **kw)

    def debug(self, msg: object, *args: Any, **kw: Any) -> None:
        self.log(logging.DEBUG, msg, *args, **kw)

    def info(self, msg: object, *args: Any, **kw: Any) -> None:
        self.log(logging.INFO, msg, *args, **kw)

    def warning(self, msg: object, *args: Any, **kw: Any) -> None:
        self.log(logging.WARNING, msg, *args, **kw)

    def error(self, msg: object, *args: Any, **kw: Any) -> None:
        self.log(logging.ERROR, msg, *args, **kw)

    def exception(self, msg: object, *args: Any, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self.log(logging.ERROR, msg, *args, **kw)

    def critical(self, msg: object, *args: Any, **kw: Any) -> None:
        self.log(logging.CRITICAL, msg, *args, **kw)


class _RemoteContext:
    """A picklable copy of a task's ``context`` for a cluster worker. ``cancelled`` is the value
    when the task was sent (a remote task is stopped by cancelling it, not by polling)."""

    def __init__(self, ctx: Any) -> None:
        self.run_id = ctx.run_id
        self.task = ctx.task
        self.attempt = ctx.attempt
        self.cancelled = ctx.cancelled
        self.meta = ctx.meta
        self.graph = ctx.graph
        self.scheduled_at = ctx.scheduled_at
        self.logger = _RemoteLogger(ctx.task)

    def __repr__(self) -> str:
        return f"TaskContext(run_id={self.run_id!r}, task={self.task!r}, attempt={self.attempt})"


def _pickler(flavour: str) -> Any:
    """Ray's vendored cloudpickle for Ray (Ray does not need the cloudpickle package), Dask's
    dependency for Dask."""
    return importlib.import_module("ray.cloudpickle" if flavour == "ray" else "cloudpickle")


# On a cluster worker: task functions by their pickled bytes, so a function is unpickled once per
# worker process rather than once per task (few entries: one per wrapped task function).
_functions: dict[bytes, Any] = {}
_FUNCTIONS_MAX = 256


def _run_remote(fn_blob: bytes, payload: bytes, flavour: str) -> bytes:
    """What a cluster worker runs: unpickles the task, runs it, and returns its outcome with its
    log records, pickled, so a task's exception comes back as itself (not wrapped by the cluster)
    and every value crosses with cloudpickle whatever the cluster's own serialisation does."""
    fn = _functions.get(fn_blob)
    if fn is None:
        if len(_functions) >= _FUNCTIONS_MAX:
            _functions.clear()
        fn = _functions[fn_blob] = pickle.loads(fn_blob)
    args, kwargs = pickle.loads(payload)
    ctx = next((a for a in (*args, *kwargs.values()) if isinstance(a, _RemoteContext)), None)
    try:
        ok, value = True, fn(*args, **kwargs)
    except BaseException as e:
        ok, value = False, e
    records = ctx.logger.records if ctx is not None else None
    dumps = _pickler(flavour).dumps
    try:
        return dumps((ok, value, records))
    except Exception as e:  # the result or exception does not pickle
        err = TypeError(f"task result cannot be sent back from the cluster worker: {e}")
        return dumps((False, err, records))


def _dumps(flavour: str, value: Any, what: str) -> bytes:
    try:
        return _pickler(flavour).dumps(value)
    except Exception as e:
        raise TypeError(f"task {what} cannot be sent to the cluster: {e}") from e


def _swap_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Replaces the engine's (unpicklable) context argument with a remote copy."""
    from ._tm import TaskContext

    ctx = None
    if any(isinstance(a, TaskContext) for a in args):
        new = []
        for a in args:
            if isinstance(a, TaskContext):
                ctx = a
                a = _RemoteContext(a)
            new.append(a)
        args = tuple(new)
    for k, v in kwargs.items():
        if isinstance(v, TaskContext):
            ctx = v
            kwargs = {**kwargs, k: _RemoteContext(v)}
            break
    return args, kwargs, ctx


def _replay(ctx: Any, records: list[tuple[int, str]] | None) -> None:
    if ctx is None or not records:
        return
    logger = ctx.logger
    for level, text in records:
        logger.log(level, "%s", text)


def _concurrency(value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"concurrency must be a positive int, got {value!r}")
    return value


class ClusterPool:
    """What the Dask and Ray pools share: the executor sees ``size`` (how many of the tag's tasks
    are on the cluster at once), ``wrap(fn, resources)`` and ``close()``."""

    size: int
    _flavour = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        # thread ident -> the remote handle its task waits on, or the interrupt reason that came
        # before the handle existed.
        self._running: dict[int, Any] = {}
        self._stopped: dict[int, str] = {}

    # Subclasses: start the cluster or connect (under self._lock), submit, wait, cancel, stop.
    def _start(self) -> None:
        raise NotImplementedError

    def _submit(self, fn_blob: bytes, payload: bytes, res: Any) -> Any:
        raise NotImplementedError

    def _result(self, handle: Any) -> Any:
        raise NotImplementedError

    def _cancel(self, handle: Any) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _options(self, resources: dict[str, float]) -> Any:
        return resources

    def _ensure(self) -> None:
        if self._started:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self!r} is closed")
            if not self._started:
                self._start()
                self._started = True

    def wrap(
        self, fn: Callable[..., Any], resources: dict[str, float] | None = None
    ) -> Callable[..., Any]:
        opts = self._options(dict(resources or {}))
        # The function is pickled once, on first use (as Dask and Ray do with their own functions:
        # a closure's captured values are those of that moment); arguments with every call.
        fn_blob: list[bytes] = []

        def call(*args: Any, **kwargs: Any) -> Any:
            me = threading.get_ident()
            with self._lock:
                # A mark left by an interrupt of this thread's previous task; one that comes from
                # here on (while a local cluster starts, say) is honoured once the task is sent.
                self._stopped.pop(me, None)
            self._ensure()
            args, kwargs, ctx = _swap_context(args, kwargs)
            if not fn_blob:
                fn_blob.append(_dumps(self._flavour, fn, "function"))
            payload = _dumps(self._flavour, (args, kwargs), "arguments")
            handle = self._submit(fn_blob[0], payload, opts)
            with self._lock:
                stopped = self._stopped.pop(me, None)
                if stopped is None:
                    self._running[me] = handle
            if stopped is not None:
                self._cancel(handle)
                raise _reason_error(stopped)
            try:
                ok, value, records = pickle.loads(self._result(handle))
            except BaseException:
                with self._lock:
                    stopped = self._stopped.pop(me, None)
                if stopped is not None:
                    raise _reason_error(stopped) from None
                raise
            finally:
                with self._lock:
                    self._running.pop(me, None)
            _replay(ctx, records)
            if ok:
                return value
            raise value

        def interrupt(thread_ident: int, reason: str) -> None:
            with self._lock:
                handle = self._running.pop(thread_ident, None)
                # Marked either way: the waiting thread reads it to tell an interrupt from a
                # failure once the cancelled handle raises.
                self._stopped[thread_ident] = reason
            if handle is not None:
                self._cancel(handle)

        call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        call._tm_interrupt = interrupt  # type: ignore[attr-defined]
        return call

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        if started:
            self._stop()


def _dask_resources(resources: dict[str, float]) -> dict[str, float] | None:
    """Ray-style names to Dask's conventional abstract resources; other names pass as they are."""
    names = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "MEMORY"}
    return {names.get(k, k): v for k, v in resources.items()} or None


class DaskPool(ClusterPool):
    """Runs a tag's tasks on a Dask cluster, one future per task attempt.

    Args:
        address: None starts a ``distributed.LocalCluster`` of worker processes owned by the pool
            (stopped when the executor shuts down); a scheduler address (``"tcp://host:8786"``)
            connects a client; a ``distributed.Client`` is used as it is (never closed by tm).
        n_workers, threads_per_worker, **cluster_kwargs: the local cluster's size and other
            ``LocalCluster`` arguments (only with ``address=None``).
        concurrency: how many of the tag's tasks are on the cluster at once (the tag's worker
            threads); default: the local cluster's threads, else 32.

    The local cluster does not re-run a task whose worker died (``allowed-failures`` 0): the attempt
    fails with :class:`tm.WorkerCrashed` and tm's retries apply. A scheduler of your own re-runs it
    first as configured. Dask cannot stop a running task: a timed-out or cancelled task's future is
    cancelled and its worker thread finishes the function in the background.
    """

    _flavour = "dask"

    def __init__(
        self,
        address: Any = None,
        *,
        n_workers: int = 2,
        threads_per_worker: int = 1,
        concurrency: int | None = None,
        **cluster_kwargs: Any,
    ) -> None:
        super().__init__()
        for what, n in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{what} must be a positive int, got {n!r}")
        if (
            address is not None
            and not isinstance(address, str)
            and type(address).__name__ != "Client"
        ):
            raise TypeError(
                f"address must be None, a scheduler address or a distributed.Client, "
                f"got {address!r}"
            )
        if address is not None and cluster_kwargs:
            raise ValueError("cluster arguments only apply to a local cluster (address=None)")
        self.address = address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.cluster_kwargs = cluster_kwargs
        local = n_workers * threads_per_worker
        self.size = _concurrency(concurrency) or (local if address is None else 32)
        self.client: Any = None
        self._cluster: Any = None
        self._own_client = False

    def _start(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        if self.address is None:
            kwargs = {"dashboard_address": ":0", "processes": True, **self.cluster_kwargs}
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = LocalCluster(
                    n_workers=self.n_workers,
                    threads_per_worker=self.threads_per_worker,
                    **kwargs,
                )
            self.client = Client(self._cluster, set_as_default=False)
            self._own_client = True
        elif isinstance(self.address, str):
            self.client = Client(self.address, set_as_default=False)
            self._own_client = True
        else:
            self.client = self.address

    def _options(self, resources: dict[str, float]) -> Any:
        return _dask_resources(resources)

    def _submit(self, fn_blob: bytes, payload: bytes, res: Any) -> Any:
        # pure=False: two attempts (or two tasks with equal arguments) are two futures.
        return self.client.submit(_run_remote, fn_blob, payload, "dask", pure=False, resources=res)

    def _result(self, handle: Any) -> Any:
        from distributed import KilledWorker

        try:
            return handle.result()
        except KilledWorker as e:
            raise WorkerCrashed(f"Dask worker running the task died: {e}") from e

    def _cancel(self, handle: Any) -> None:
        handle.cancel()

    def _stop(self) -> None:
        if self._own_client and self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __repr__(self) -> str:
        where = "local" if self.address is None else repr(self.address)
        return f"DaskPool({where})"


_RAY_OPTIONS = ("num_cpus", "num_gpus", "memory")


def _ray_options(resources: dict[str, float]) -> dict[str, Any]:
    """A task's ``resources`` as ``.options()``: Ray's own names as keywords, others custom."""
    opts: dict[str, Any] = {k: resources[k] for k in _RAY_OPTIONS if k in resources}
    custom = {k: v for k, v in resources.items() if k not in _RAY_OPTIONS}
    if custom:
        opts["resources"] = custom
    # tm retries: Ray must not re-run a task whose worker died, nor retry exceptions.
    opts["max_retries"] = 0
    return opts


class RayPool(ClusterPool):
    """Runs a tag's tasks on Ray, one Ray task per task attempt.

    Args:
        address: None starts a local Ray instance owned by the pool (``ray.shutdown()`` when the
            executor shuts down) unless this process already called ``ray.init``, which is then
            used as it is; ``"auto"`` or ``"ray://host:10001"`` connects to a cluster.
        num_cpus, num_gpus, resources: the local instance's size (``ray.init``'s arguments;
            ``num_cpus`` defaults to 2). A task asks for its own share with
            ``@tm.task(resources={"num_gpus": 1})`` (Ray's default: one CPU).
        concurrency: how many of the tag's tasks are on the cluster at once (the tag's worker
            threads); default: the local instance's CPUs, else 32.

    Ray does not re-run the task (``max_retries=0``): a worker that dies fails the attempt with
    :class:`tm.WorkerCrashed` and tm's retries apply. A timed-out or cancelled task is stopped with
    ``ray.cancel(force=True)``, which kills its worker process.
    """

    _flavour = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        resources: dict[str, float] | None = None,
        concurrency: int | None = None,
        **init_kwargs: Any,
    ) -> None:
        super().__init__()
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be None, 'auto' or 'ray://host:port', got {address!r}")
        if address is not None and (num_cpus or num_gpus or resources):
            raise ValueError(
                "num_cpus, num_gpus and resources size a local Ray instance (address=None); "
                "a task asks for its share with @tm.task(resources=...)"
            )
        self.address = address
        self.num_cpus = 2 if num_cpus is None and address is None else num_cpus
        self.num_gpus = num_gpus
        self.resources = resources
        self.init_kwargs = init_kwargs
        self.size = _concurrency(concurrency) or (
            self.num_cpus if address is None and self.num_cpus else 32
        )
        self._own = False
        self._remote: Any = None
        self._with_options: dict[tuple[Any, ...], Any] = {}

    def _start(self) -> None:
        import ray

        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": True,
                **self.init_kwargs,
            }
            if self.address is None:
                # "local": a new instance of our own, even where another one runs on the host.
                kwargs.update(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus)
                if self.resources:
                    kwargs["resources"] = self.resources
            else:
                kwargs["address"] = self.address
            ray.init(**kwargs)
            self._own = True
        self._remote = ray.remote(_run_remote)

    def _options(self, resources: dict[str, float]) -> Any:
        return _ray_options(resources)

    def _submit(self, fn_blob: bytes, payload: bytes, res: Any) -> Any:
        key = tuple(sorted((k, repr(v)) for k, v in res.items()))
        remote = self._with_options.get(key)
        if remote is None:
            remote = self._with_options[key] = self._remote.options(**res)
        return remote.remote(fn_blob, payload, "ray")

    def _result(self, handle: Any) -> Any:
        import ray
        from ray import exceptions as rex

        crashed = tuple(
            getattr(rex, name)
            for name in (
                "WorkerCrashedError",
                "NodeDiedError",
                "LocalRayletDiedError",
                "OutOfMemoryError",
                "ActorDiedError",
            )
            if hasattr(rex, name)
        )
        try:
            return ray.get(handle)
        except crashed as e:
            raise WorkerCrashed(f"Ray worker running the task died: {e}") from e

    def _cancel(self, handle: Any) -> None:
        import ray

        ray.cancel(handle, force=True)

    def _stop(self) -> None:
        if self._own:
            import ray

            ray.shutdown()

    def __repr__(self) -> str:
        where = "local" if self.address is None else repr(self.address)
        return f"RayPool({where})"
