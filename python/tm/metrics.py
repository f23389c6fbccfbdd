"""Prometheus metrics in the text exposition format, with no dependency.

``Executor(observers=[tm.metrics.Metrics()])`` counts what the executor does; :func:`render`
writes it (and, given a store, what the store knows of every scheduled graph) as the text a
Prometheus server scrapes; :func:`serve` answers ``GET /metrics`` with it on a thread.
``tm start --metrics-port N`` does all three.

Metrics (labels in braces):

- ``tm_runs_total{graph,state}``: runs that ended, by final state.
- ``tm_task_attempts_total{graph,task,outcome}``: attempts by outcome (completed, retrying,
  failed) and tasks skipped or cancelled.
- ``tm_task_duration_seconds{graph,task}``: a histogram of attempt durations.
- ``tm_tasks_running{graph}``: tasks running now.
- ``tm_schedule_fires_total{graph,kind}``: fires handled (schedule, catchup, missed).
- ``tm_schedule_lateness_seconds{graph}``: a histogram of when the scheduler handled a fire
  minus when it was due.
- ``tm_schedule_last_fire_timestamp_seconds{graph}``: the scheduled time of the last fire.
- from a store: ``tm_store_last_fire_timestamp_seconds{graph}`` and ``tm_store_paused{graph}``.
"""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._observe import Observer, RunContext

if TYPE_CHECKING:
    from .executor import Event

__all__ = ["CONTENT_TYPE", "Metrics", "MetricsServer", "render", "serve"]

#: The Content-Type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
LATENESS_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300)

_HELP = {
    "tm_runs_total": ("counter", "Runs that ended, by final state."),
    "tm_task_attempts_total": ("counter", "Task attempts by outcome (and skipped/cancelled)."),
    "tm_task_duration_seconds": ("histogram", "How long task attempts took."),
    "tm_tasks_running": ("gauge", "Tasks running now."),
    "tm_schedule_fires_total": ("counter", "Fires the scheduler handled, by kind."),
    "tm_schedule_lateness_seconds": ("histogram", "When a fire was handled minus when it was due."),
    "tm_schedule_last_fire_timestamp_seconds": ("gauge", "Scheduled time of the last fire."),
    "tm_store_last_fire_timestamp_seconds": ("gauge", "Last fire handled, from the store."),
    "tm_store_paused": ("gauge", "1 if the graph's schedule is paused, from the store."),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer():
        return str(int(x))
    return repr(float(x))


class _Histogram:
    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, v: float) -> None:
        self.count += 1
        self.sum += v
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1


class Metrics(Observer):
    """Counts an executor's runs, attempts and fires (thread-safe); :meth:`render` writes
    them in the Prometheus text format."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[tuple[str, str], int] = {}
        self.attempts: dict[tuple[str, str, str], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.running: dict[tuple[str], int] = {}
        self.fires: dict[tuple[str, str], int] = {}
        self.lateness: dict[tuple[str], _Histogram] = {}
        self.last_fire: dict[tuple[str], float] = {}
        #: (run context id, task) -> start of the attempt running now, in seconds.
        self._started: dict[tuple[int, str], float] = {}

    # -- observer ----------------------------------------------------------------------------

    def event(self, ctx: RunContext, ev: Event) -> None:
        at = ev.at.timestamp() if ev.at is not None else None
        g = ctx.graph
        with self.lock:
            if ev.kind == "run_finished":
                if not ctx.distributed:
                    key = (g, str(ev.state))
                    self.runs[key] = self.runs.get(key, 0) + 1
                return
            if ev.task is None:
                return
            akey = (id(ctx), ev.task)
            if ev.kind == "started":
                self._started[akey] = at or 0.0
                self.running[(g,)] = self.running.get((g,), 0) + 1
                return
            k3 = (g, ev.task, ev.kind)
            self.attempts[k3] = self.attempts.get(k3, 0) + 1
            start = self._started.pop(akey, None)
            if start is not None:
                self.running[(g,)] = self.running.get((g,), 1) - 1
                if at is not None:
                    h = self.durations.get((g, ev.task))
                    if h is None:
                        h = self.durations[(g, ev.task)] = _Histogram(DURATION_BUCKETS)
                    h.observe(max(0.0, at - start))

    def run_ended(self, ctx: RunContext, run: Any) -> None:
        if ctx.distributed:
            with self.lock:
                key = (ctx.graph, str(run.state))
                self.runs[key] = self.runs.get(key, 0) + 1

    def fire(
        self, graph: str, scheduled_us: int, due_us: int, handled_us: int, kind: str, count: int
    ) -> None:
        with self.lock:
            self.fires[(graph, kind)] = self.fires.get((graph, kind), 0) + count
            if kind != "missed":
                h = self.lateness.get((graph,))
                if h is None:
                    h = self.lateness[(graph,)] = _Histogram(LATENESS_BUCKETS)
                h.observe(max(0, handled_us - due_us) / 1e6)
            self._last(graph, scheduled_us)

    def missed(self, graph: str, scheduled_us: int, count: int, through_us: int) -> None:
        with self.lock:
            self._last(graph, through_us)

    def _last(self, graph: str, us: int) -> None:
        last = self.last_fire.get((graph,))
        if last is None or us / 1e6 > last:
            self.last_fire[(graph,)] = us / 1e6

    # -- exposition --------------------------------------------------------------------------

    def render(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        out: list[str] = []
        with self.lock:
            _counter(out, "tm_runs_total", ("graph", "state"), self.runs)
            _counter(out, "tm_task_attempts_total", ("graph", "task", "outcome"), self.attempts)
            _histogram(out, "tm_task_duration_seconds", ("graph", "task"), self.durations)
            _counter(out, "tm_tasks_running", ("graph",), self.running)
            _counter(out, "tm_schedule_fires_total", ("graph", "kind"), self.fires)
            _histogram(out, "tm_schedule_lateness_seconds", ("graph",), self.lateness)
            _counter(out, "tm_schedule_last_fire_timestamp_seconds", ("graph",), self.last_fire)
        return "".join(out)


def _header(out: list[str], name: str) -> None:
    kind, text = _HELP[name]
    out.append(f"# HELP {name} {text}\n# TYPE {name} {kind}\n")


def _counter(out: list[str], name: str, names: tuple[str, ...], values: dict[Any, float]) -> None:
    _header(out, name)
    for key in sorted(values):
        out.append(f"{name}{_labels(names, key)} {_num(values[key])}\n")


def _histogram(
    out: list[str], name: str, names: tuple[str, ...], values: dict[Any, _Histogram]
) -> None:
    _header(out, name)
    for key in sorted(values):
        h = values[key]
        for b, c in zip(h.buckets, h.counts, strict=True):
            le = 'le="' + _num(b) + '"'
            out.append(f"{name}_bucket{_labels(names, key, le)} {c}\n")
        inf = 'le="+Inf"'
        out.append(f"{name}_bucket{_labels(names, key, inf)} {h.count}\n")
        out.append(f"{name}_sum{_labels(names, key)} {_num(h.sum)}\n")
        out.append(f"{name}_count{_labels(names, key)} {h.count}\n")


def render(metrics: Metrics | None = None, store: Any = None) -> str:
    """The Prometheus text for an executor's :class:`Metrics` and/or what a store (a
    ``tm.Store``) records of its scheduled graphs (last fire, paused): what ``/metrics`` serves.
    A dashboard reading only the store passes ``store`` alone."""
    text = metrics.render() if metrics is not None else ""
    if store is not None:
        core = store.core
        last: dict[tuple[str], float] = {}
        for g in core.graphs():
            if g.get("last_fire_us") is not None:
                last[(g["name"],)] = g["last_fire_us"] / 1e6
        paused = {(g,): 1 for g, _, _ in core.pauses()}
        out: list[str] = []
        _counter(out, "tm_store_last_fire_timestamp_seconds", ("graph",), last)
        _counter(out, "tm_store_paused", ("graph",), paused)
        text += "".join(out)
    return text


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` on a daemon thread (see :func:`serve`)."""

    def __init__(self, host: str, port: int, produce: Any) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404, "only /metrics is here")
                    return
                try:
                    body = produce().encode()
                except Exception as e:
                    self.send_error(500, f"metrics failed: {type(e).__name__}")
                    import logging

                    logging.getLogger("tm").error("/metrics failed: %r", e)
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the service's log

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, name="tm-metrics", daemon=True
        )
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def serve(
    port: int, host: str = "127.0.0.1", metrics: Metrics | None = None, store: Any = None
) -> MetricsServer:
    """Serves :func:`render` of ``metrics`` and ``store`` at ``http://host:port/metrics`` (port 0
    picks a free one: see :attr:`MetricsServer.port`) until :meth:`MetricsServer.close`."""
    return MetricsServer(host, port, lambda: render(metrics, store))
