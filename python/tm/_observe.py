"""Observers: what OpenTelemetry, the Prometheus metrics and failure alerts hang on.

An executor with no observer pays nothing for them: the engine's event mask only asks for the
events that hooks or the ``tm`` logger want. With observers, every transition is dispatched to
them (on the thread that produced it) after the hooks' :class:`tm.Event` is built.

Local runs reach observers through ``_Dispatch`` (one :class:`RunContext` per run); tasks of
distributed runs through the fleet worker (one context per attempt, whose ``meta`` is the
run's, as pickled by the submitter: the trace context travels there).
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executor import Event, Executor

#: Observers every executor reports to (``tm.otel.instrument(None)``), besides its own.
global_observers: list[Observer] = []
_lock = threading.Lock()


class RunContext:
    """What observers keep about one run (or one attempt of a distributed run)."""

    __slots__ = ("distributed", "graph", "meta", "state")

    def __init__(self, graph: str, meta: dict[str, Any], distributed: bool = False) -> None:
        self.graph = graph
        #: The run's meta (trigger, scheduled_at, run_id, traceparent...): observers may add keys
        #: before the run starts, and tasks see them in ``context.meta``.
        self.meta = meta
        self.distributed = distributed
        #: Per-observer state, keyed by the observer.
        self.state: dict[int, Any] = {}


class Observer:
    """Base class: every method is a no-op. Methods must not raise (errors are reported with
    ``sys.unraisablehook`` and never reach the run)."""

    def run_started(self, ctx: RunContext) -> None:
        """A run is about to start (its id, if recorded, is ``ctx.meta["run_id"]``)."""

    def event(self, ctx: RunContext, ev: Event) -> None:
        """A task or run transition (see :class:`tm.Event`)."""

    def run_ended(self, ctx: RunContext, run: Any) -> None:
        """The run ended: ``run`` is the :class:`tm.Run` (or a ``DistributedRun``)."""

    def fire(
        self, graph: str, scheduled_us: int, due_us: int, handled_us: int, kind: str, count: int
    ) -> None:
        """The scheduler handled a fire of ``graph`` (``kind``: schedule, catchup, or missed:
        ``count`` fires from ``scheduled_us`` on), ``handled_us - due_us`` late."""

    def missed(self, graph: str, scheduled_us: int, count: int, through_us: int) -> None:
        """The scheduler recorded ``count`` missed fires of ``graph`` (not run)."""

    def close(self) -> None:
        """The executor shuts down (notifiers deliver what they hold)."""


def observers_of(ex: Executor) -> tuple[Observer, ...]:
    """The observers an executor reports to: its own, then the global ones."""
    own = ex._observers
    if not global_observers:
        return own
    return own + tuple(global_observers)


def add_global(obs: Observer) -> None:
    with _lock:
        global_observers.append(obs)


def remove_global(obs: Observer) -> None:
    with _lock:
        if obs in global_observers:
            global_observers.remove(obs)


def call(observers: tuple[Observer, ...], method: str, *args: Any) -> None:
    """Calls ``method`` on each observer; one that raises is reported, not propagated."""
    for o in observers:
        try:
            getattr(o, method)(*args)
        except Exception as e:
            from .executor import _Unraisable

            sys.unraisablehook(_Unraisable(type(e), e, e.__traceback__, None, o))
