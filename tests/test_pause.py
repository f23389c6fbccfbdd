"""Pausing a schedule: persisted in the store, obeyed by every scheduler sharing it, shown by
``tm status``; fires while paused are recorded as skipped, and unpausing does not catch them up.
On SQLite and PostgreSQL, with ``tm pause``/``tm unpause`` run as real subprocesses."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from test_scheduler import WAIT, reporting_graph, running, step

import tm
from tm import Executor, VirtualClock

UTC = timezone.utc


def tm_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args], capture_output=True, text=True, timeout=WAIT
    )


def skipped(store: tm.Store) -> list[dict]:
    store.flush()
    rows = [json.loads(e["detail_json"]) for e in store.core.events(1000) if e["kind"] == "skipped"]
    return sorted(rows, key=lambda d: d["scheduled_us"])


def test_a_paused_graph_skips_its_fires_until_unpaused(db_url: str) -> None:
    store = tm.Store(db_url)
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, store=store)
    ex.add(reporting_graph("hourly", "0 * * * *", out))
    with running(ex):
        first = step(ex, clock, "hourly")
        assert out.get(timeout=WAIT)[1] == first
        # Another process pauses it.
        p = tm_cli("pause", "hourly", "--db", db_url)
        assert p.returncode == 0 and "hourly: paused" in p.stdout, p.stderr
        assert tm_cli("pause", "hourly", "--db", db_url).stdout.strip() == "hourly: already paused"
        assert set(ex.paused()) == {"hourly"}
        status = json.loads(tm_cli("status", "--db", db_url, "--json").stdout)
        assert status[0]["paused_us"] is not None
        assert "paused" in tm_cli("status", "--db", db_url).stdout.splitlines()[1]
        second = step(ex, clock, "hourly")
        third = step(ex, clock, "hourly")
        assert out.empty()
        assert [(d["scheduled_us"], d["reason"]) for d in skipped(store)] == [
            (int(second.timestamp() * 1e6), "paused"),
            (int(third.timestamp() * 1e6), "paused"),
        ]
        p = tm_cli("unpause", "hourly", "--db", db_url)
        assert p.returncode == 0 and "hourly: unpaused" in p.stdout, p.stderr
        assert ex.paused() == {}
        # The fires skipped while paused are not caught up: the next one runs, alone.
        fourth = step(ex, clock, "hourly")
        assert out.get(timeout=WAIT)[1] == fourth
        assert out.empty()
    runs = store.runs(graph="hourly")
    assert sorted(r["scheduled_us"] for r in runs) == [
        int(first.timestamp() * 1e6),
        int(fourth.timestamp() * 1e6),
    ]
    assert tm_cli("unpause", "hourly", "--db", db_url).stdout.strip() == "hourly: already unpaused"
    store.close()


def test_a_pause_is_seen_by_every_scheduler_sharing_the_store(db_url: str) -> None:
    out: queue.Queue = queue.Queue()
    executors = []
    clocks = []
    for _ in range(2):
        clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
        ex = Executor(clock=clock, store=tm.Store(db_url))
        ex.add(reporting_graph("nightly", "0 2 * * *", out))
        executors.append(ex)
        clocks.append(clock)
    assert executors[0].pause("nightly") is True
    assert executors[1].pause("nightly") is False  # one pause for the whole store
    with running(executors[0]), running(executors[1]):
        for ex, clock in zip(executors, clocks, strict=True):
            step(ex, clock, "nightly")
        assert out.empty()
    assert executors[1].unpause("nightly") is True
    assert executors[0].paused() == {}


def test_without_a_store_a_pause_belongs_to_the_executor() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock)
    ex.add(reporting_graph("g", "*/5 * * * *", out))
    assert ex.pause("g") and not ex.pause("g")
    with running(ex):
        step(ex, clock, "g")
        assert out.empty()
        assert ex.unpause("g") and not ex.unpause("g")
        at = step(ex, clock, "g")
        assert out.get(timeout=WAIT)[1] == at


@pytest.mark.parametrize("command", ["pause", "unpause"])
def test_pause_commands_need_an_existing_store(tmp_path, command: str) -> None:
    p = tm_cli(command, "g", "--db", f"sqlite:///{tmp_path}/missing/tm.db")
    assert p.returncode != 0 and "Traceback" not in p.stderr
