"""``Executor.add/start/stop``: graphs fired on their cron schedules (seed 004's usage)."""

from __future__ import annotations

import itertools
import logging
import threading
from datetime import timedelta

import pytest

import tm
from tm import Executor, Graph, task


def seed_graph(schedule: str, seen: list) -> Graph:
    graph = Graph(name="test workflow", schedule=schedule)

    @task()
    def pass_2():
        return {"value": 2}

    @task()
    def add_3(pass_2):
        return {"key": pass_2["value"] + 3}

    @task()
    def print_return_none(pass_2, add_3, context):
        seen.append((pass_2["value"] + add_3["key"], context.scheduled_at, context.meta["trigger"]))

    graph.add_edges([pass_2], [add_3, print_return_none])
    graph.add_edges([add_3], [print_return_none])
    return graph


def test_start_fires_the_seed_graph_on_schedule_until_stopped() -> None:
    seen: list = []
    ex = Executor(on_run_end=lambda run: ex.stop() if len(seen) >= 3 else None)
    ex.add(seed_graph("* * * * * *", seen))
    ex.start()
    ex.shutdown()
    assert [s[0] for s in seen] == [7, 7, 7]
    assert all(s[2] == "schedule" for s in seen)
    times = [s[1] for s in seen]
    assert all(t.microsecond == 0 and t.tzinfo is not None for t in times)
    assert [b - a for a, b in itertools.pairwise(times)] == [timedelta(seconds=1)] * 2


def test_manual_graphs_cannot_be_scheduled() -> None:
    with pytest.raises(TypeError, match="no schedule"):
        Executor().add(Graph("manual-one"))
    with pytest.raises(TypeError):
        Executor().add(object())  # type: ignore[arg-type]


def test_remove_and_stop_from_another_thread() -> None:
    seen: list = []
    ex = Executor()
    g = seed_graph("* * * * * *", seen)
    ex.add(g)
    ex.remove(g.name)
    with pytest.raises(KeyError):
        ex.remove(g.name)
    stopper = threading.Timer(0.3, ex.stop)
    stopper.start()
    ex.start()  # nothing scheduled: returns once stop() is called
    stopper.join()
    ex.shutdown()
    assert seen == []


def test_a_fire_during_a_running_run_is_skipped_and_logged(caplog) -> None:
    release = threading.Event()
    fired: list = []
    g = Graph("slow", schedule="* * * * * *")

    @task
    def slow(context):
        fired.append(context.scheduled_at)
        release.wait(10)

    g.add(slow)
    ex = Executor()

    def on_skip(record: logging.LogRecord) -> bool:
        if "skipped the fire" in record.getMessage():
            release.set()
            ex.stop()
        return True

    logger = logging.getLogger("tm")
    logger.addFilter(on_skip)
    try:
        with caplog.at_level(logging.WARNING, logger="tm"):
            ex.add(g)
            ex.start()
    finally:
        logger.removeFilter(on_skip)
        release.set()
        ex.shutdown()
    assert len(fired) == 1
    assert any("skipped the fire" in r.getMessage() for r in caplog.records)


def test_schedule_accepts_an_expression_and_a_zone() -> None:
    g = Graph("tz", schedule=tm.cron.Expression("0 9 * * mon-fri"), tz="Europe/London")
    assert str(g.schedule) == "0 9 * * 1-5"
    assert g.tz == "Europe/London"
