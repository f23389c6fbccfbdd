"""OpenTelemetry: spans per run and per attempt, their parents and attributes, metrics, and a
distributed run whose attempts (run by another process) join the submitter's trace. Exported
with the SDK's in-memory exporter and metric reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

import tm
import tm.otel

TESTS = os.path.dirname(os.path.abspath(__file__))
WAIT = 60


@pytest.fixture
def tracing() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


def flaky_graph() -> tm.Graph:
    calls = {"n": 0}
    g = tm.Graph("traced")

    @tm.task
    def extract() -> int:
        return 2

    @tm.task(retries=1, retry_delay=0)
    def flaky(extract: int) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("first call fails")
        return extract * 10

    @tm.task
    def broken(extract: int) -> int:
        raise ValueError("broken for good")

    @tm.task
    def after(broken: int) -> int:
        return broken

    g.add(extract)
    g.add(flaky, depends_on=[extract])
    g.add(broken, depends_on=[extract])
    g.add(after, depends_on=[broken])
    return g


def test_a_run_is_a_span_with_a_child_span_per_attempt(
    tracing: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    provider, exporter = tracing
    reader = InMemoryMetricReader()
    with tm.Executor(
        store=f"sqlite:///{tmp_path}/tm.db",
        tracer_provider=provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
    ) as ex:
        run = ex.run(flaky_graph())
    assert run.state == "failed"
    spans = exporter.get_finished_spans()
    runs = [s for s in spans if s.name == "tm.run traced"]
    assert len(runs) == 1
    root = runs[0]
    assert root.parent is None
    assert root.attributes["tm.graph"] == "traced"
    assert root.attributes["tm.run_id"] == run.run_id
    assert root.attributes["tm.trigger"] == "manual"
    assert root.attributes["tm.state"] == "failed"
    assert root.status.status_code is StatusCode.ERROR

    tasks = [s for s in spans if s.name.startswith("tm.task ")]
    for s in tasks:
        assert s.parent is not None and s.parent.span_id == root.context.span_id
        assert s.context.trace_id == root.context.trace_id
        assert s.attributes["tm.run_id"] == run.run_id
    by = {(s.attributes["tm.task"], s.attributes["tm.attempt"]): s for s in tasks}
    assert sorted(by) == [
        ("after", 1),
        ("broken", 1),
        ("extract", 1),
        ("flaky", 1),
        ("flaky", 2),
    ]
    assert by[("extract", 1)].attributes["tm.state"] == "completed"
    assert by[("flaky", 1)].attributes["tm.state"] == "retrying"
    assert by[("flaky", 1)].attributes["tm.error"] == "ConnectionError: first call fails"
    assert by[("flaky", 2)].attributes["tm.state"] == "completed"
    broken = by[("broken", 1)]
    assert broken.attributes["tm.state"] == "failed"
    assert broken.status.status_code is StatusCode.ERROR
    assert [e.name for e in broken.events] == ["exception"]
    assert broken.events[0].attributes["exception.type"] == "ValueError"
    assert by[("after", 1)].attributes["tm.state"] == "skipped"
    assert by[("after", 1)].attributes["tm.skipped_because"] == "broken"
    # Attempt spans nest in time inside the run's.
    assert all(root.start_time <= s.start_time <= s.end_time <= root.end_time for s in tasks)

    points = metric_points(reader)
    attempts = {
        (p.attributes["tm.task"], p.attributes["tm.outcome"]): p.value
        for p in points["tm.task.attempts"]
    }
    assert attempts == {
        ("extract", "completed"): 1,
        ("flaky", "retrying"): 1,
        ("flaky", "completed"): 1,
        ("broken", "failed"): 1,
        ("after", "skipped"): 1,
    }
    durations = {
        (p.attributes["tm.task"], p.attributes["tm.outcome"]): p.count
        for p in points["tm.task.duration"]
    }
    assert durations[("flaky", "retrying")] == 1 and durations[("flaky", "completed")] == 1
    assert ("after", "skipped") not in durations  # never ran
    assert [(p.attributes["tm.state"], p.value) for p in points["tm.runs"]] == [("failed", 1)]
    assert [p.value for p in points["tm.tasks.running"]] == [0]


def test_tasks_see_the_trace_context_and_runs_started_inside_a_task_join_it(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracing
    seen: list[str] = []
    ex = tm.Executor(tracer_provider=provider)
    inner = tm.Graph("inner")
    inner.add(tm.task(lambda: 1, name="leaf"))
    outer = tm.Graph("outer")

    @tm.task
    def spawn(context: Any) -> str:
        seen.append(context.meta["traceparent"])
        ex.run(inner, meta={"traceparent": context.meta["traceparent"]})
        return "ok"

    outer.add(spawn)
    with ex:
        assert ex.run(outer).state == "completed"
    spans = {s.name: s for s in exporter.get_finished_spans()}
    outer_span = spans["tm.run outer"]
    (tp,) = seen
    assert tp.startswith(
        f"00-{outer_span.context.trace_id:032x}-{outer_span.context.span_id:016x}-"
    )
    assert spans["tm.run inner"].context.trace_id == outer_span.context.trace_id
    assert spans["tm.run inner"].parent.span_id == outer_span.context.span_id


def test_instrument_none_traces_every_executor_until_uninstrumented(
    tracing: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = tracing
    g = tm.Graph("everywhere")
    g.add(tm.task(lambda: 1, name="one"))
    obs = tm.otel.instrument(None, tracer_provider=provider)
    try:
        with tm.Executor() as ex:
            ex.run(g)
    finally:
        tm.otel.uninstrument(obs)
    with tm.Executor() as ex:
        ex.run(g)
    assert sorted(s.name for s in exporter.get_finished_spans()) == [
        "tm.run everywhere",
        "tm.task one",
    ]


def test_schedule_lateness_is_measured_per_fire() -> None:
    reader = InMemoryMetricReader()
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = tm.VirtualClock(start)
    g = tm.Graph("hourly", schedule="0 * * * *")
    g.add(tm.task(lambda: 1, name="tick"))
    ex = tm.Executor(clock=clock, meter_provider=MeterProvider(metric_readers=[reader]))
    ex.add(g)
    import threading

    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    try:
        assert ex.settle(WAIT)
        # Handled 90 s after it was due (the clock jumped past it, within the grace? no: the
        # default grace is 1 s, so it is a catch-up of the latest fire).
        clock.set(start + timedelta(hours=1, seconds=90))
        assert ex.settle(WAIT)
    finally:
        ex.stop()
        t.join(WAIT)
        ex.shutdown()
    points = metric_points(reader)["tm.schedule.lateness"]
    assert [(p.attributes["tm.graph"], p.attributes["tm.fire_kind"]) for p in points] == [
        ("hourly", "catchup")
    ]
    assert points[0].count == 1
    assert points[0].sum == pytest.approx(90.0)


def test_import_tm_does_not_import_opentelemetry() -> None:
    code = "import sys, tm; tm.Executor(); print(any(m.startswith('opentelemetry') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


WORKER = """
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import tm
import _fleet_graph

url, run_id, out = sys.argv[1:4]
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
g = _fleet_graph.build(3, 2)
with tm.Executor(store=url, workers=2, tracer_provider=provider) as ex:
    ex.work([g], run_id=run_id)
with open(out, "w") as f:
    for s in exporter.get_finished_spans():
        f.write(json.dumps({
            "name": s.name,
            "trace": f"{s.context.trace_id:032x}",
            "parent": None if s.parent is None else f"{s.parent.span_id:016x}",
            "pid_task": s.attributes.get("tm.task"),
            "state": s.attributes.get("tm.state"),
            "run_id": s.attributes.get("tm.run_id"),
        }) + "\\n")
"""


def test_a_distributed_runs_attempts_in_another_process_join_its_trace(
    tracing: tuple[TracerProvider, InMemorySpanExporter], pg_url: str, tmp_path: Path
) -> None:
    sys.path.insert(0, TESTS)
    try:
        import _fleet_graph
    finally:
        sys.path.remove(TESTS)
    provider, exporter = tracing
    script = tmp_path / "otel_worker.py"
    script.write_text(textwrap.dedent(WORKER))
    out = tmp_path / "spans.jsonl"
    g = _fleet_graph.build(3, 2)
    with tm.Executor(store=pg_url, tracer_provider=provider) as ex:
        drun = ex.submit(g, distributed=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]),
        }
        proc = subprocess.run(
            [sys.executable, str(script), pg_url, drun.run_id, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert proc.returncode == 0, proc.stderr
        assert drun.wait(WAIT)
        assert drun.state == "completed"
    (root,) = [s for s in exporter.get_finished_spans() if s.name == f"tm.run {g.name}"]
    assert root.attributes["tm.distributed"] is True
    assert root.attributes["tm.state"] == "completed"
    remote = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(s["pid_task"] for s in remote) == sorted(g.tasks)
    for s in remote:
        assert s["trace"] == f"{root.context.trace_id:032x}"
        assert s["parent"] == f"{root.context.span_id:016x}"
        assert s["state"] == "completed"
        assert s["run_id"] == drun.run_id
