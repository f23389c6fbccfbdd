"""The scheduler under a virtual clock: days of schedules in milliseconds, no real waiting.

Synchronisation is by events only: ``executor.settle()`` returns once the fires due at the clock's
time are handled, and tasks report through queues and events.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import tm
from tm import Executor, Graph, VirtualClock, task

UTC = timezone.utc
WAIT = 10  # seconds: a bound for a hung test, never a synchronisation


def reporting_graph(name: str, schedule: str, out: queue.Queue, tz: str | None = None) -> Graph:
    g = Graph(name, schedule=schedule, tz=tz)

    @task(name=f"{name}_work")
    def work(context):
        out.put((name, context.scheduled_at, context.meta["trigger"]))

    g.add(work)
    return g


@contextmanager
def running(ex: Executor) -> Iterator[Executor]:
    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    try:
        assert ex.settle(WAIT)  # up, graphs registered
        yield ex
    finally:
        ex.stop()
        t.join(WAIT)
        ex.shutdown()
        assert not t.is_alive()


def step(ex: Executor, clock: VirtualClock, name: str) -> datetime:
    """Moves the clock to ``name``'s next due time (the fire plus its jitter) and waits until
    it is handled; returns the logical fire time."""
    at = ex.next_fire(name)
    nxt = ex._scheduler.tt.next_fire(name)
    assert at is not None and nxt is not None
    assert int(at.timestamp() * 1e6) == nxt[0]
    clock.set(nxt[1] / 1e6)
    assert ex.settle(WAIT)
    return at


def take(out: queue.Queue, n: int) -> list[Any]:
    return [out.get(timeout=WAIT) for _ in range(n)]


def store_events(store: tm.Store, kind: str) -> list[dict[str, Any]]:
    store.flush()
    rows = [e for e in store.core.events(10_000) if e["kind"] == kind]
    return sorted((json.loads(e["detail_json"]) for e in rows), key=lambda d: d["scheduled_us"])


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def sequence(schedule: str, tz: str, start: datetime, n: int) -> list[tuple[str, str]]:
    clock = VirtualClock(start)
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock)
    ex.add(reporting_graph("g", schedule, out, tz))
    got = []
    with running(ex):
        for _ in range(n):
            due = step(ex, clock, "g")
            name, at, trigger = out.get(timeout=WAIT)
            assert (name, trigger) == ("g", "schedule")
            assert at == due
            got.append((iso(at), at.isoformat()))
    return got


def test_london_fall_back_day_fires_once_at_0130() -> None:
    got = sequence("30 1 * * *", "Europe/London", datetime(2026, 10, 23, 12, tzinfo=UTC), 3)
    assert got == [
        ("2026-10-24T00:30", "2026-10-24T01:30:00+01:00"),
        ("2026-10-25T00:30", "2026-10-25T01:30:00+01:00"),  # first pass of the fold only
        ("2026-10-26T01:30", "2026-10-26T01:30:00+00:00"),
    ]


def test_london_spring_forward_day_fires_after_the_gap() -> None:
    got = sequence("30 1 * * *", "Europe/London", datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert got == [
        ("2026-03-28T01:30", "2026-03-28T01:30:00+00:00"),
        ("2026-03-29T01:00", "2026-03-29T02:00:00+01:00"),  # 01:30 does not exist
        ("2026-03-30T00:30", "2026-03-30T01:30:00+01:00"),
    ]


def test_month_ends_over_a_year_in_new_york() -> None:
    got = sequence("0 23 31 * *", "America/New_York", datetime(2026, 12, 31, 12, tzinfo=UTC), 8)
    assert [wall[:10] for _, wall in got] == [
        "2026-12-31",
        "2027-01-31",
        "2027-03-31",
        "2027-05-31",
        "2027-07-31",
        "2027-08-31",
        "2027-10-31",
        "2027-12-31",
    ]
    # 23:00 EST is 04:00 UTC the next day; 23:00 EDT is 03:00 UTC.
    assert got[1][0] == "2027-02-01T04:00" and got[2][0] == "2027-04-01T03:00"


def test_a_week_of_minutes_runs_in_milliseconds_per_fire() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    ends: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, on_run_end=lambda run: ends.put(run.state))
    g = Graph("minutely", schedule="*/10 * * * *")
    g.add(task(lambda: None, name="noop"))
    ex.add(g)
    with running(ex):
        for _ in range(7 * 24 * 6):
            step(ex, clock, "minutely")
            assert ends.get(timeout=WAIT) == "completed"
    assert clock.now() == datetime(2026, 1, 8, tzinfo=UTC)


def outage(tmp_path: Path, catchup: str, **options: Any) -> tuple[list[tuple[str, str]], tm.Store]:
    """Runs an hourly graph once, stops, and restarts 10.5 hours later with the same store."""
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    clock = VirtualClock(datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, store=store)
    ex.add(reporting_graph("hourly", "0 * * * *", out), catchup=catchup, **options)
    with running(ex):
        step(ex, clock, "hourly")
        take(out, 1)
    # The process is down from 01:00 to 11:30.
    clock.set(datetime(2026, 1, 1, 11, 30, tzinfo=UTC))
    ex2 = Executor(clock=clock, store=store)
    ex2.add(reporting_graph("hourly", "0 * * * *", out), catchup=catchup, **options)
    got: list[tuple[str, str]] = []
    with running(ex2):
        assert ex2.settle(WAIT)
        # Catch-up runs were started by now; take what they report.
        n = {"none": 0, "latest": 1}.get(catchup, options.get("max_catchup", 10))
        got = [(iso(at), trig) for _, at, trig in take(out, n)]
        assert ex2.next_fire("hourly") == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert out.empty()
    return got, store


def test_catchup_none_runs_nothing_and_records_every_missed_fire(tmp_path: Path) -> None:
    got, store = outage(tmp_path, "none")
    assert got == []
    missed = store_events(store, "missed")
    assert [d["graph"] for d in missed] == ["hourly"] * 10
    hours = [datetime.fromtimestamp(d["scheduled_us"] / 1e6, UTC).hour for d in missed]
    assert hours == list(range(2, 12))
    assert store.core.graph("hourly")["last_fire_us"] == missed[-1]["scheduled_us"]


def test_catchup_latest_runs_the_newest_missed_fire_once(tmp_path: Path) -> None:
    got, store = outage(tmp_path, "latest")
    assert got == [("2026-01-01T11:00", "catchup")]
    assert len(store_events(store, "missed")) == 9
    triggers = sorted(r["trigger"] for r in store.runs("hourly"))
    assert triggers == ["catchup", "schedule"]


def test_catchup_all_runs_at_most_max_catchup_in_order(tmp_path: Path) -> None:
    got, store = outage(tmp_path, "all", max_catchup=4, overlap="queue")
    assert got == [(f"2026-01-01T{h:02d}:00", "catchup") for h in (8, 9, 10, 11)]
    missed = store_events(store, "missed")
    assert [datetime.fromtimestamp(d["scheduled_us"] / 1e6, UTC).hour for d in missed] == [
        2,
        3,
        4,
        5,
        6,
        7,
    ]


def test_a_fire_within_grace_is_on_time_after_a_restart(tmp_path: Path) -> None:
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    clock = VirtualClock(datetime(2026, 1, 1, 0, 30, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, store=store)
    ex.add(reporting_graph("g", "0 * * * *", out), grace=120)
    with running(ex):
        step(ex, clock, "g")
        take(out, 1)
    clock.set(datetime(2026, 1, 1, 2, 1, tzinfo=UTC))  # the 02:00 fire is a minute late
    ex2 = Executor(clock=clock, store=store)
    ex2.add(reporting_graph("g", "0 * * * *", out), grace=120, catchup="none")
    with running(ex2):
        assert ex2.settle(WAIT)
        ((_, at, trigger),) = take(out, 1)
    assert (iso(at), trigger) == ("2026-01-01T02:00", "schedule")
    assert len(store_events(store, "missed")) == 0


class Slow:
    """A graph whose runs block until released, reporting when they start."""

    def __init__(self) -> None:
        self.started: queue.Queue = queue.Queue()
        self.release = threading.Event()
        self.graph = Graph("slow", schedule="0 * * * *")

        @task
        def block(context):
            self.started.put(context.scheduled_at)
            assert self.release.wait(WAIT)

        self.graph.add(block)


@pytest.mark.parametrize("overlap", ["skip", "queue", "allow"])
def test_overlap_policies_with_a_slow_run(tmp_path: Path, overlap: str) -> None:
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    ends: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, store=store, on_run_end=lambda run: ends.put(run.state))
    slow = Slow()
    ex.add(slow.graph, overlap=overlap)
    with running(ex):
        first = step(ex, clock, "slow")
        assert slow.started.get(timeout=WAIT) == first
        second = step(ex, clock, "slow")  # the first run is still blocked
        if overlap == "allow":
            # Both runs are going at once: the second started while the first is blocked.
            assert slow.started.get(timeout=WAIT) == second
            slow.release.set()
            assert take(ends, 2) == ["completed", "completed"]
        elif overlap == "queue":
            # Queued fires start only when a run ends; nothing has ended yet.
            assert slow.started.empty()
            slow.release.set()
            assert slow.started.get(timeout=WAIT) == second
            assert take(ends, 2) == ["completed", "completed"]
        else:
            slow.release.set()
            assert take(ends, 1) == ["completed"]
            skipped = store_events(store, "skipped")
            assert [(d["graph"], d["reason"]) for d in skipped] == [("slow", "overlap")]
            assert skipped[0]["scheduled_us"] == int(second.timestamp() * 1e6)
        assert ex.settle(WAIT)
    runs = store.runs("slow")
    expected = 1 if overlap == "skip" else 2
    assert len(runs) == expected
    assert all(r["state"] == "completed" for r in runs)


def test_queued_fires_are_recorded_as_skipped_at_stop(tmp_path: Path) -> None:
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    slow = Slow()
    ex = Executor(clock=clock, store=store)
    ex.add(slow.graph, overlap="queue")
    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    assert ex.settle(WAIT)
    step(ex, clock, "slow")
    slow.started.get(timeout=WAIT)
    queued = step(ex, clock, "slow")
    ex.stop()
    slow.release.set()
    t.join(WAIT)
    assert not t.is_alive()
    ex.shutdown()
    assert slow.started.empty()  # the queued fire never ran
    skipped = store_events(store, "skipped")
    assert [(d["reason"], d["scheduled_us"]) for d in skipped] == [
        ("stopping", int(queued.timestamp() * 1e6))
    ]
    assert len(store.runs("slow")) == 1


def test_max_active_runs_two_with_skip(tmp_path: Path) -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    slow = Slow()
    ex = Executor(clock=clock)
    ex.add(slow.graph, max_active_runs=2)
    with running(ex):
        a = step(ex, clock, "slow")
        b = step(ex, clock, "slow")
        step(ex, clock, "slow")  # third: two are going, skipped
        assert sorted([slow.started.get(timeout=WAIT), slow.started.get(timeout=WAIT)]) == [a, b]
        assert slow.started.empty()
        slow.release.set()


def test_adding_and_removing_graphs_while_running() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock)
    ex.add(reporting_graph("a", "*/2 * * * *", out))
    with running(ex):
        step(ex, clock, "a")  # 00:02
        assert take(out, 1)[0][0] == "a"
        ex.add(reporting_graph("b", "*/3 * * * *", out))
        assert ex.next_fire("b") == datetime(2026, 1, 1, 0, 3, tzinfo=UTC)
        clock.set(datetime(2026, 1, 1, 0, 6, tzinfo=UTC))
        # 00:04 and 00:06 of a; 00:03 and 00:06 of b. Within grace? No: 00:03 and 00:04 are
        # minutes late, so under catchup="latest" only the newest of each runs.
        assert ex.settle(WAIT)
        got = sorted((n, iso(at), trig) for n, at, trig in take(out, 2))
        assert got == [
            ("a", "2026-01-01T00:06", "schedule"),
            ("b", "2026-01-01T00:06", "schedule"),
        ]
        ex.remove("a")
        with pytest.raises(KeyError):
            ex.remove("a")
        with pytest.raises(KeyError):
            ex.next_fire("a")
        step(ex, clock, "b")  # 00:09; a would have fired at 00:08
        assert [(n, iso(at)) for n, at, _ in take(out, 1)] == [("b", "2026-01-01T00:09")]
    assert out.empty()


def test_jitter_delays_the_fire_but_not_the_logical_time() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock)
    ex.add(reporting_graph("spread", "0 * * * *", out), jitter=600)
    with running(ex):
        assert ex.next_fire("spread") == datetime(2026, 1, 1, 1, tzinfo=UTC)
        due_us = ex._scheduler.tt.next_fire("spread")[1]
        offset = due_us / 1e6 - datetime(2026, 1, 1, 1, tzinfo=UTC).timestamp()
        assert 0 < offset < 600
        clock.set(datetime(2026, 1, 1, 1, tzinfo=UTC))
        assert ex.settle(WAIT)
        assert out.empty()  # not due before the offset
        clock.advance(offset)
        assert ex.settle(WAIT)
        ((_, at, _),) = take(out, 1)
        assert at == datetime(2026, 1, 1, 1, tzinfo=UTC)
    # Same name, same offset, in any executor.
    ex2 = Executor(clock=VirtualClock(datetime(2026, 1, 1, tzinfo=UTC)))
    ex2.add(reporting_graph("spread", "0 * * * *", out), jitter=600)
    with running(ex2):
        assert ex2.settle(WAIT)
        assert ex2._scheduler.tt.next_fire("spread")[1] == due_us


def test_graph_rows_record_schedule_and_last_fire_for_status(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tm.db"
    store = tm.Store(url)
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    out: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, store=store)
    ex.add(reporting_graph("nightly", "30 1 * * *", out, tz="Europe/London"), jitter=5)
    with running(ex):
        fired = step(ex, clock, "nightly")
        take(out, 1)
    row = store.core.graph("nightly")
    assert row["schedule"] == "30 1 * * *" and row["tz"] == "Europe/London"
    assert row["last_fire_us"] == int(fired.timestamp() * 1e6)
    assert json.loads(row["meta_json"])["jitter"] == 5
    store.close()

    import contextlib
    import io

    from tm.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", "--db", url, "--json"]) == 0
    (status,) = json.loads(buf.getvalue())
    assert status["graph"] == "nightly"
    assert status["last_run_state"] == "completed"
    assert status["last_run_trigger"] == "schedule"
    nxt = datetime.fromisoformat(status["next_fire"])
    assert nxt > fired
    # The next fire shown is when it will come: its cron time plus the graph's fixed jitter delay.
    from tm._tm import jitter_offset

    delay_us = jitter_offset("nightly", 5_000_000)
    assert 0 < delay_us < 5_000_000
    local = nxt.astimezone(ZoneInfo("Europe/London"))
    assert (local.hour, local.minute) == (1, 30)
    assert local.second * 1_000_000 + local.microsecond == delay_us
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["status", "--db", url]) == 0
    assert "nightly" in buf.getvalue() and "completed (schedule)" in buf.getvalue()


def test_options_are_validated() -> None:
    g = Graph("g", schedule="* * * * *")
    ex = Executor()
    for bad in (
        {"overlap": "merge"},
        {"catchup": "some"},
        {"max_active_runs": 0},
        {"grace": -1},
        {"max_catchup": -1},
        {"jitter": "x"},
    ):
        with pytest.raises(ValueError):
            ex.add(g, **bad)
    ex.add(g, grace=timedelta(minutes=1), jitter=timedelta(seconds=3))
    assert ex._scheduler.slots["g"].options.grace == 60.0


def test_stop_timeout_cancels_running_runs() -> None:
    clock = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    slow = Slow()
    ends: queue.Queue = queue.Queue()
    ex = Executor(clock=clock, on_run_end=lambda run: ends.put(run.state))
    ex.add(slow.graph)
    t = threading.Thread(target=ex.start, daemon=True)
    t.start()
    assert ex.settle(WAIT)
    step(ex, clock, "slow")
    slow.started.get(timeout=WAIT)
    ex.stop(timeout=0)
    t.join(WAIT)
    assert not t.is_alive()
    assert ends.get(timeout=WAIT) == "cancelled"
    assert ex._scheduler.forced
    slow.release.set()
    ex.shutdown()


def test_virtual_clock_api() -> None:
    c = VirtualClock(datetime(2026, 1, 1, tzinfo=UTC))
    assert c.advance(timedelta(hours=1)) == datetime(2026, 1, 1, 1, tzinfo=UTC)
    assert c.advance(1.5) == datetime(2026, 1, 1, 1, 0, 1, 500000, tzinfo=UTC)
    c.set(0)
    assert c.now() == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="aware"):
        c.set(datetime(2026, 1, 1))
    assert "VirtualClock" in repr(c)


def test_start_resumes_a_run_left_running_by_a_dead_process(tmp_path: Path) -> None:
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    out: queue.Queue = queue.Queue()
    g = reporting_graph("nightly", "0 3 * * *", out)
    # What a killed process leaves: a run recorded as running, its task never finished.
    scheduled = datetime(2026, 1, 1, 3, tzinfo=UTC)
    store.core.begin_run(
        "dead-run",
        "nightly",
        "running",
        "schedule",
        1,
        [(0, "nightly_work", None, None, None, None)],
        scheduled_us=int(scheduled.timestamp() * 1e6),
    )
    store.core.upsert_graph("nightly", 1, 1, schedule="0 3 * * *", last_fire_us=None)
    store.flush()
    clock = VirtualClock(datetime(2026, 1, 1, 3, 0, 0, 500000, tzinfo=UTC))
    ex = Executor(clock=clock, store=store, graphs=[g])
    with running(ex):
        ((name, at, trigger),) = take(out, 1)
        assert (name, at, trigger) == ("nightly", scheduled, "resume")
        # The interrupted run's fire counts as handled: the next one is tomorrow's.
        assert ex.next_fire("nightly") == datetime(2026, 1, 2, 3, tzinfo=UTC)
    store.flush()
    run = store.run("dead-run")
    assert run is not None and run["state"] == "completed"
    assert [r["run_id"] for r in store.runs("nightly")] == ["dead-run"]
