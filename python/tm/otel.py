"""OpenTelemetry traces and metrics for tm runs (``pip install tm-orchestrate[otel]``).

``Executor(tracer_provider=..., meter_provider=...)`` or :func:`instrument` gives:

- a span ``tm.run <graph>`` per run and a span ``tm.task <task>`` per task attempt, a child of
  its run's span (attributes ``tm.graph``, ``tm.run_id``, ``tm.task``, ``tm.attempt`` (1 for the
  first), ``tm.state``, ``tm.trigger``, ``tm.scheduled_at``, ``tm.error``; failed attempts carry
  the exception and an error status). A distributed run's trace context travels with the run
  (``meta["traceparent"]``), so the attempts that other executors run join the submitter's trace
  when those executors are instrumented too. Tasks see it in ``context.meta["traceparent"]``.
- metrics: ``tm.task.duration`` (histogram, seconds, by graph, task and outcome),
  ``tm.task.attempts`` (counter by graph, task and outcome), ``tm.tasks.running`` (up-down
  counter by graph: the tasks running now), ``tm.runs`` (counter by graph and final state) and
  ``tm.schedule.lateness`` (histogram, seconds: when the scheduler handled a fire minus when it
  was due, by graph and kind).

Importing ``tm`` does not import OpenTelemetry; this module does.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._observe import Observer, RunContext, add_global, remove_global

if TYPE_CHECKING:
    from .executor import Event, Executor

__all__ = ["OtelObserver", "instrument", "uninstrument"]

_propagator = TraceContextTextMapPropagator()
_ENDS = ("completed", "retrying", "failed", "skipped", "cancelled")


def _ns(ev: Event) -> int:
    return int(ev.at.timestamp() * 1e9) if ev.at is not None else time.time_ns()


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else None


class _RunState:
    __slots__ = ("attempts", "span", "started")

    def __init__(self, span: Any) -> None:
        self.span = span
        #: task -> (span, start in ns) of the attempt running now.
        self.attempts: dict[str, tuple[Any, int]] = {}


class OtelObserver(Observer):
    """Turns an executor's transitions into OpenTelemetry spans and metrics."""

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("tm", tracer_provider=tracer_provider)
        meter = metrics.get_meter("tm", meter_provider=meter_provider)
        self.duration = meter.create_histogram(
            "tm.task.duration", unit="s", description="How long task attempts took"
        )
        self.attempts = meter.create_counter(
            "tm.task.attempts", unit="{attempt}", description="Task attempts, by outcome"
        )
        self.running = meter.create_up_down_counter(
            "tm.tasks.running", unit="{task}", description="Tasks running now"
        )
        self.runs = meter.create_counter(
            "tm.runs", unit="{run}", description="Runs that ended, by state"
        )
        self.lateness = meter.create_histogram(
            "tm.schedule.lateness",
            unit="s",
            description="When the scheduler handled a fire minus when it was due",
        )
        self.lock = threading.Lock()
        self.key = id(self)

    # -- runs --------------------------------------------------------------------------------

    def run_started(self, ctx: RunContext) -> None:
        meta = ctx.meta
        attrs: dict[str, Any] = {"tm.graph": ctx.graph, "tm.trigger": str(meta.get("trigger"))}
        if meta.get("run_id") is not None:
            attrs["tm.run_id"] = str(meta["run_id"])
        scheduled = _iso(meta.get("scheduled_at"))
        if scheduled is not None:
            attrs["tm.scheduled_at"] = scheduled
        if ctx.distributed:
            attrs["tm.distributed"] = True
        parent = None
        if isinstance(meta.get("traceparent"), str):
            # A run started from inside a traced task (or resumed): it continues that trace.
            parent = _propagator.extract({"traceparent": meta["traceparent"]})
        span = self.tracer.start_span(f"tm.run {ctx.graph}", context=parent, attributes=attrs)
        carrier: dict[str, str] = {}
        _propagator.inject(carrier, context=trace.set_span_in_context(span))
        if "traceparent" in carrier:
            meta["traceparent"] = carrier["traceparent"]
        ctx.state[self.key] = _RunState(span)

    def _end_run(self, ctx: RunContext, state: str, end_ns: int | None) -> None:
        with self.lock:
            rs = ctx.state.pop(self.key, None)
        if rs is None or not isinstance(rs, _RunState):
            return
        rs.span.set_attribute("tm.state", state)
        if state == "failed":
            rs.span.set_status(Status(StatusCode.ERROR, "run failed"))
        rs.span.end(end_time=end_ns)
        self.runs.add(1, {"tm.graph": ctx.graph, "tm.state": state})

    def run_ended(self, ctx: RunContext, run: Any) -> None:
        # Local runs end with their run_finished event; this ends a distributed run's span.
        if ctx.distributed:
            self._end_run(ctx, str(run.state), None)

    # -- attempts ----------------------------------------------------------------------------

    def event(self, ctx: RunContext, ev: Event) -> None:
        kind = ev.kind
        if kind == "run_finished":
            self._end_run(ctx, str(ev.state), _ns(ev))
            return
        task = ev.task
        if task is None:
            return
        with self.lock:
            rs = ctx.state.get(self.key)
            if rs is None:
                if not ctx.distributed:
                    return  # not observed from its start (instrumented while it ran)
                # An attempt of a distributed run: its parent is the submitter's run span.
                rs = ctx.state[self.key] = _RunState(None)
            parent = None
            if rs.span is not None:
                parent = trace.set_span_in_context(rs.span)
            elif isinstance(ctx.meta.get("traceparent"), str):
                parent = _propagator.extract({"traceparent": ctx.meta["traceparent"]})
            if kind == "started":
                self._start_attempt(ctx, rs, parent, ev)
                return
            if kind not in _ENDS:
                return
            open_ = rs.attempts.pop(task, None)
        graph_attrs = {"tm.graph": ctx.graph, "tm.task": task}
        end_ns = _ns(ev)
        if open_ is None:
            # Skipped, or cancelled before it started: a zero-length span says so.
            span = self.tracer.start_span(
                f"tm.task {task}",
                context=parent,
                attributes=self._attrs(ctx, ev),
                start_time=end_ns,
            )
        else:
            span, start_ns = open_
            self.running.add(-1, {"tm.graph": ctx.graph})
            secs = max(0, end_ns - start_ns) / 1e9
            self.duration.record(secs, {**graph_attrs, "tm.outcome": kind})
        self.attempts.add(1, {**graph_attrs, "tm.outcome": kind})
        span.set_attribute("tm.state", ev.state if ev.state == "lease_lost" else kind)
        if ev.error is not None:
            span.set_attribute("tm.error", f"{type(ev.error).__name__}: {ev.error}")
            span.record_exception(ev.error)
        if kind == "failed" or (kind == "retrying" and ev.error is not None):
            desc = "" if ev.error is None else f"{type(ev.error).__name__}: {ev.error}"
            span.set_status(Status(StatusCode.ERROR, desc))
        if ev.retry_at is not None:
            span.set_attribute("tm.retry_at", ev.retry_at.isoformat())
        if ev.skipped_because is not None:
            span.set_attribute("tm.skipped_because", ev.skipped_because)
        span.end(end_time=end_ns)

    def _attrs(self, ctx: RunContext, ev: Event) -> dict[str, Any]:
        meta = ctx.meta
        attrs: dict[str, Any] = {
            "tm.graph": ctx.graph,
            "tm.task": str(ev.task),
            "tm.attempt": ev.attempt + 1,
            "tm.run_id": str(ev.run_id),
            "tm.trigger": str(meta.get("trigger")),
        }
        scheduled = _iso(meta.get("scheduled_at"))
        if scheduled is not None:
            attrs["tm.scheduled_at"] = scheduled
        return attrs

    def _start_attempt(self, ctx: RunContext, holder: _RunState, parent: Any, ev: Event) -> None:
        start_ns = _ns(ev)
        span = self.tracer.start_span(
            f"tm.task {ev.task}",
            context=parent,
            attributes=self._attrs(ctx, ev),
            start_time=start_ns,
        )
        assert ev.task is not None
        holder.attempts[ev.task] = (span, start_ns)
        self.running.add(1, {"tm.graph": ctx.graph})

    # -- schedules ---------------------------------------------------------------------------

    def fire(
        self, graph: str, scheduled_us: int, due_us: int, handled_us: int, kind: str, count: int
    ) -> None:
        self.lateness.record(
            max(0, handled_us - due_us) / 1e6, {"tm.graph": graph, "tm.fire_kind": kind}
        )


def instrument(
    executor: Executor | None = None, tracer_provider: Any = None, meter_provider: Any = None
) -> OtelObserver:
    """Reports ``executor``'s runs (or, with None, every executor's) to OpenTelemetry: to the
    given providers, else to the global ones (``opentelemetry.trace.set_tracer_provider``).
    Runs started before the call are not traced. Returns the observer (see
    :func:`uninstrument`)."""
    obs = OtelObserver(tracer_provider, meter_provider)
    if executor is None:
        add_global(obs)
    else:
        executor._observers += (obs,)
    return obs


def uninstrument(obs: OtelObserver, executor: Executor | None = None) -> None:
    """Stops what :func:`instrument` started (for runs that start afterwards)."""
    if executor is None:
        remove_global(obs)
    else:
        executor._observers = tuple(o for o in executor._observers if o is not obs)
