"""Where task code runs when it is not a plain function on a worker thread: ``async def`` tasks on
an event loop owned by the executor, and tasks of a tag given a :class:`ProcessPool` in worker
processes.

Both wrappers are synchronous callables the engine runs on a worker thread; the thread waits with
the GIL released. Each exposes ``_tm_interrupt(thread_ident, reason)``, which the engine calls when
the attempt times out or is cancelled: the coroutine is cancelled, or the worker process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import multiprocessing
import os
import pickle
import threading
import types
from collections.abc import Callable
from typing import Any

from .exceptions import TaskCancelled, TaskTimeout, TmError

__all__ = ["AsyncRunner", "ProcessPool", "WorkerCrashed"]


class WorkerCrashed(TmError, RuntimeError):
    """The worker process running a task died (killed, crashed, out of memory)."""


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE


def is_async(fn: Any) -> bool:
    if type(fn) is types.FunctionType and not fn.__dict__:
        # What inspect.iscoroutinefunction decides for a plain function, without its unwrapping.
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def _reason_error(reason: str) -> BaseException:
    return TaskTimeout("task timed out") if reason == "timeout" else TaskCancelled("task cancelled")


class AsyncRunner:
    """One event loop on one thread, started on first use, shared by every async task of an executor."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()
                    loop.close()

                self._thread = threading.Thread(target=main, name="tm-async-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        running: dict[int, Any] = {}
        lock = threading.Lock()

        def call(*args: Any, **kwargs: Any) -> Any:
            # The slot exists before the coroutine is scheduled: an interrupt that comes once the
            # coroutine may be running (it may already have had effects) always finds it.
            slot: dict[str, Any] = {"fut": None, "cancel": False}
            me = threading.get_ident()
            with lock:
                running[me] = slot
            try:
                fut = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop())
                with lock:
                    slot["fut"] = fut
                    cancel = slot["cancel"]
                if cancel:
                    fut.cancel()
                return fut.result()
            finally:
                with lock:
                    running.pop(me, None)

        def interrupt(thread_ident: int, reason: str) -> None:
            with lock:
                slot = running.get(thread_ident)
                if slot is None:
                    return
                slot["cancel"] = True
                fut = slot["fut"]
            if fut is not None:
                fut.cancel()

        call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        call._tm_interrupt = interrupt  # type: ignore[attr-defined]
        return call

    def close(self) -> None:
        with self._lock:
            loop, self._loop = self._loop, None
            thread, self._thread = self._thread, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join()


def _worker_main(conn: Any) -> None:
    """A process-pool worker: run (fn, args, kwargs) messages until told to stop."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        fn, args, kwargs = msg
        try:
            reply = (True, fn(*args, **kwargs))
        except BaseException as e:
            reply = (False, e)
        try:
            conn.send(reply)
        except Exception as e:  # the result or exception does not pickle
            conn.send((False, TypeError(f"task result cannot be sent back from the worker: {e}")))


class _Worker:
    def __init__(self, ctx: Any) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_worker_main, args=(child,), daemon=True, name="tm-process-worker"
        )
        self.proc.start()
        child.close()
        self._lock = threading.Lock()
        self._dead = False

    def kill(self) -> None:
        """Kills the process and closes the pipe; safe to call from two threads at once."""
        with self._lock:
            if self._dead:
                return
            self._dead = True
        with contextlib.suppress(OSError, ValueError):
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join()
        with contextlib.suppress(OSError):
            self.conn.close()


class ProcessPool:
    """Runs a tag's tasks in ``size`` worker processes: ``Executor(pools={"cpu": ProcessPool(4)})``.

    Arguments and results cross by pickle (tasks must be importable module-level functions). A worker
    that dies fails the task it was running with :class:`WorkerCrashed` (retried as usual) and is
    replaced; a timed-out or cancelled task's worker is killed. Workers start on first use with the
    ``forkserver`` method (``spawn`` where unavailable), never by forking the threaded parent.
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"ProcessPool size must be a positive int, got {size!r}")
        self.size = size
        method = (
            "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        )
        self._ctx = multiprocessing.get_context(method)
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._running: dict[int, _Worker] = {}
        self._stopped: dict[int, str] = {}
        # Threads inside ``call``: only they can take an interrupt's mark, so a mark never
        # outlives its call (a thread replaced after a timeout never calls again).
        self._calling: set[int] = set()

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _Worker(self._ctx)

    def _release(self, w: _Worker) -> None:
        with self._lock:
            self._idle.append(w)

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                payload = pickle.dumps((fn, args, kwargs))
            except Exception as e:
                raise TypeError(f"task arguments cannot be sent to a worker process: {e}") from e
            me = threading.get_ident()
            with self._lock:
                self._stopped.pop(me, None)
                self._calling.add(me)
            try:
                return run(me, payload)
            finally:
                with self._lock:
                    self._calling.discard(me)
                    self._stopped.pop(me, None)

        def run(me: int, payload: bytes) -> Any:
            w = self._acquire()
            with self._lock:
                # An interrupt that came while the worker was starting left a mark instead.
                stopped = self._stopped.pop(me, None)
                if stopped is None:
                    self._running[me] = w
            if stopped is not None:
                w.kill()
                raise _reason_error(stopped)
            try:
                w.conn.send_bytes(payload)
                ok, value = w.conn.recv()
            except (EOFError, OSError) as e:
                w.kill()
                code = w.proc.exitcode
                raise WorkerCrashed(f"worker process {w.proc.pid} died (exit code {code})") from e
            finally:
                with self._lock:
                    self._running.pop(me, None)
            self._release(w)
            if ok:
                return value
            raise value

        def interrupt(thread_ident: int, reason: str) -> None:
            with self._lock:
                w = self._running.pop(thread_ident, None)
                if w is None and thread_ident in self._calling:
                    self._stopped[thread_ident] = reason
            if w is not None:
                w.kill()

        call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        call._tm_interrupt = interrupt  # type: ignore[attr-defined]
        return call

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            running = list(self._running.values())
        for w in idle:
            with contextlib.suppress(OSError):
                w.conn.send(None)
            w.proc.join(timeout=5)
            w.kill()
        for w in running:
            w.kill()

    def __repr__(self) -> str:
        return f"ProcessPool({self.size})"


def pid() -> int:
    """The current process id (a picklable helper for tests and examples)."""
    return os.getpid()
