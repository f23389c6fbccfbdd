"""Prometheus metrics: ``tm.metrics.Metrics`` counting a real executor, scraped over real HTTP
on loopback, and ``tm start --metrics-port`` serving them from a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import tm
import tm.metrics

WAIT = 60  # seconds: a bound for a hung test, never a synchronisation


def scrape(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=WAIT) as resp:
        return resp.headers["Content-Type"], resp.read().decode()


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, for every sample line."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def graph() -> tm.Graph:
    state = {"n": 0}
    g = tm.Graph("etl")

    @tm.task(retries=1, retry_delay=0)
    def pull() -> int:
        state["n"] += 1
        if state["n"] == 1:
            raise ConnectionError("flaky")
        return 1

    @tm.task
    def push(pull: int) -> int:
        raise ValueError('quote " and \\ backslash')

    g.add(pull)
    g.add(push, depends_on=[pull])
    return g


def test_metrics_count_runs_attempts_and_durations_and_serve_them_over_http(
    tmp_path: Path,
) -> None:
    m = tm.metrics.Metrics()
    with tm.Executor(store=f"sqlite:///{tmp_path}/tm.db", observers=[m]) as ex:
        assert ex.run(graph()).state == "failed"
        ok = tm.Graph("etl")
        ok.add(tm.task(lambda: 1, name="pull"))
        assert ex.run(ok).state == "completed"
        server = tm.metrics.serve(0, metrics=m, store=ex.store)
        try:
            ctype, text = scrape(f"http://127.0.0.1:{server.port}/metrics")
            with pytest.raises(urllib.error.HTTPError) as err:
                scrape(f"http://127.0.0.1:{server.port}/other")
            assert err.value.code == 404
            err.value.close()
        finally:
            server.close()
    assert ctype == tm.metrics.CONTENT_TYPE
    s = samples(text)
    assert s['tm_runs_total{graph="etl",state="failed"}'] == 1
    assert s['tm_runs_total{graph="etl",state="completed"}'] == 1
    assert s['tm_task_attempts_total{graph="etl",task="pull",outcome="retrying"}'] == 1
    assert s['tm_task_attempts_total{graph="etl",task="pull",outcome="completed"}'] == 2
    assert s['tm_task_attempts_total{graph="etl",task="push",outcome="failed"}'] == 1
    assert s['tm_task_duration_seconds_count{graph="etl",task="pull"}'] == 3
    assert s['tm_task_duration_seconds_bucket{graph="etl",task="pull",le="+Inf"}'] == 3
    assert s['tm_task_duration_seconds_sum{graph="etl",task="pull"}'] >= 0
    assert s['tm_tasks_running{graph="etl"}'] == 0
    # Every line is a comment or a sample in the text format, and histograms are cumulative.
    for line in text.splitlines():
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{.*\})? [-+0-9.eInf]+", line)
    buckets = [
        v
        for k, v in s.items()
        if k.startswith('tm_task_duration_seconds_bucket{graph="etl",task="pull"')
    ]
    assert buckets == sorted(buckets)


def test_label_values_are_escaped() -> None:
    m = tm.metrics.Metrics()
    g = tm.Graph('we"ird\\name\nx')
    g.add(tm.task(lambda: 1, name="t"))
    with tm.Executor(observers=[m]) as ex:
        ex.run(g)
    assert 'tm_runs_total{graph="we\\"ird\\\\name\\nx",state="completed"} 1' in m.render()


def test_fires_lateness_and_last_fire_per_graph(tmp_path: Path) -> None:
    m = tm.metrics.Metrics()
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = tm.VirtualClock(start)
    g = tm.Graph("hourly", schedule="0 * * * *")
    g.add(tm.task(lambda: 1, name="tick"))
    ex = tm.Executor(clock=clock, observers=[m], store=f"sqlite:///{tmp_path}/tm.db")
    ex.add(g, catchup="none")
    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    try:
        assert ex.settle(WAIT)
        clock.set(start + timedelta(hours=1))  # on time
        assert ex.settle(WAIT)
        clock.set(start + timedelta(hours=4, seconds=30))  # three missed
        assert ex.settle(WAIT)
        text = tm.metrics.render(m, ex.store)
    finally:
        ex.stop()
        t.join(WAIT)
        ex.shutdown()
    s = samples(text)
    assert s['tm_schedule_fires_total{graph="hourly",kind="schedule"}'] == 1
    assert s['tm_schedule_fires_total{graph="hourly",kind="missed"}'] == 3
    assert s['tm_schedule_lateness_seconds_count{graph="hourly"}'] == 1
    assert s['tm_schedule_lateness_seconds_sum{graph="hourly"}'] == 0
    last = (start + timedelta(hours=4)).timestamp()
    assert s['tm_schedule_last_fire_timestamp_seconds{graph="hourly"}'] == last
    assert s['tm_store_last_fire_timestamp_seconds{graph="hourly"}'] == last


SERVICE = """
import tm

hourly = tm.Graph("svc", schedule="0 0 1 1 *")

@tm.task
def tick():
    return 1

hourly.add(tick)
"""


def test_tm_start_serves_metrics_on_the_port_it_is_given(tmp_path: Path) -> None:
    (tmp_path / "svc.py").write_text(textwrap.dedent(SERVICE))
    db = f"sqlite:///{tmp_path}/tm.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tm", "start", "svc.py", "--db", db, "--metrics-port", "0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stderr is not None
        port = None
        for line in proc.stderr:
            found = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None, "tm start never said where its metrics are"
        # The store's view is there once the scheduler has registered the graph.
        for line in proc.stderr:
            if "scheduler started" in line:
                break
        ctype, text = scrape(f"http://127.0.0.1:{port}/metrics")
        assert ctype == tm.metrics.CONTENT_TYPE
        assert "# TYPE tm_runs_total counter" in text
        assert "# TYPE tm_schedule_lateness_seconds histogram" in text
    finally:
        proc.terminate()
        proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
