"""Backfills: one run of a scheduled graph per fire time in a past range (``Executor.backfill``,
``tm backfill``).

Each logical time runs at most once across every process sharing the store: a new time is
claimed through the same fire rows the schedulers use, so a backfill and a scheduler (or two
backfills) never both run it. A time that already has a run keeps it, unless ``reprocess`` says
otherwise: ``"failed"`` resumes the failed (or cancelled) runs, so only their failed tasks and
what they skipped run again; ``"all"`` also starts a new run for each completed time. A backfill
that was interrupted (Ctrl-C, kill -9) is continued by running it again: runs its dead process
left ``running`` are resumed, the times it never reached are started.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .exceptions import ExecutorError

if TYPE_CHECKING:
    from .executor import Executor
    from .graph import Graph

__all__ = ["REPROCESS", "BackfillItem", "backfill"]

#: What ``reprocess`` may be.
REPROCESS = ("none", "failed", "all")
#: More fire times than this in one backfill is refused (a range typed wrong, most likely).
MAX_TIMES = 100_000


@dataclass
class BackfillItem:
    """One logical time of a backfill: what was (or, in a dry run, would be) done about it."""

    scheduled_at: datetime
    #: ``run`` (a new time), ``resume`` (a run left running by a dead process, or a failed run
    #: reprocessed), ``rerun`` (a completed time run again), ``keep`` (its run stays as it is),
    #: ``taken`` (another process claimed it first) or ``busy`` (a live process is running it).
    action: str
    run_id: str | None = None
    #: The run's state at the end (or now, for ``keep``, ``taken`` and ``busy``).
    state: str | None = None


def fire_times(graph: Graph, start: datetime, end: datetime) -> list[datetime]:
    """The graph's fire times from ``start`` to ``end``, both included, in its zone (naive
    bounds are read in that zone)."""
    from ._scheduler import _zone

    if graph.schedule is None:
        raise ExecutorError(f"graph {graph.name!r} has no schedule to backfill")
    zone = _zone(graph.tz)
    start, end = (t if t.tzinfo else t.replace(tzinfo=zone) for t in (start, end))
    if end < start:
        raise ValueError(
            f"the range ends ({end.isoformat()}) before it starts ({start.isoformat()})"
        )
    times: list[datetime] = []
    t = graph.schedule.next(start.astimezone(zone) - _TICK)
    while t <= end:
        times.append(t)
        if len(times) > MAX_TIMES:
            raise ValueError(f"more than {MAX_TIMES} fire times from {start} to {end}")
        t = graph.schedule.next(t)
    return times


_TICK = datetime.resolution


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1e6)


def plan(ex: Executor, graph: Graph, times: list[datetime], reprocess: str) -> list[BackfillItem]:
    """What a backfill does about each time, from the runs the store has (newest per time)."""
    from ._scheduler import _owner_dead, _owner_of
    from .executor import _recorded

    assert ex.store is not None
    core = ex.store.core
    core.flush()  # this process's own writes (a run that just ended) first
    wanted = {_us(t) for t in times}
    newest: dict[int, dict[str, Any]] = {}
    for r in core.list_runs(graph=graph.name, limit=None):
        us = r.get("scheduled_us")
        if us in wanted and (us not in newest or r["created_us"] > newest[us]["created_us"]):
            newest[us] = r
    items = []
    for t in times:
        r = newest.get(_us(t))
        if r is None:
            items.append(BackfillItem(t, "run"))
            continue
        state, run_id = r["state"], r["run_id"]
        if state == "running":
            owner = _owner_of(core.get_run(run_id))
            dead = run_id not in _recorded and owner is not None and _owner_dead(owner)
            items.append(BackfillItem(t, "resume" if dead else "busy", run_id, state))
        elif state == "completed":
            items.append(BackfillItem(t, "rerun" if reprocess == "all" else "keep", run_id, state))
        else:  # failed or cancelled
            action = "resume" if reprocess in ("failed", "all") else "keep"
            items.append(BackfillItem(t, action, run_id, state))
    return items


def backfill(
    ex: Executor,
    graph: Graph,
    start: datetime,
    end: datetime,
    *,
    reprocess: str = "none",
    max_active: int = 1,
    dry_run: bool = False,
    on_item: Callable[[BackfillItem, str], Any] | None = None,
) -> list[BackfillItem]:
    """See :meth:`tm.Executor.backfill`."""
    if reprocess not in REPROCESS:
        raise ValueError(f"reprocess must be one of {', '.join(REPROCESS)}, got {reprocess!r}")
    if isinstance(max_active, bool) or not isinstance(max_active, int) or max_active < 1:
        raise ValueError(f"max_active must be a positive int, got {max_active!r}")
    if ex.store is None:
        raise ExecutorError("a backfill needs an executor with a store: Executor(store=...)")
    items = plan(ex, graph, fire_times(graph, start, end), reprocess)
    if dry_run:
        return items
    slots = threading.Semaphore(max_active)
    pending: list[tuple[BackfillItem, Any]] = []

    def finished(item: BackfillItem, run: Any) -> None:
        item.state = run.state
        if on_item is not None:
            on_item(item, "ended")

    try:
        for item in items:
            if item.action in ("keep", "busy"):
                if on_item is not None:
                    on_item(item, "ended")
                continue
            slots.acquire()
            try:
                run = _start(ex, graph, item, slots.release)
            except BaseException:
                slots.release()
                raise
            if run is None:
                slots.release()
                if on_item is not None:
                    on_item(item, "ended")
                continue
            if on_item is not None:
                on_item(item, "started")
            pending.append((item, run))
            while pending and pending[0][1].done():
                finished(*pending.pop(0))
        for item, run in pending:
            run.wait()
            finished(item, run)
    finally:
        # Ctrl-C (KeyboardInterrupt) or an error: runs already started are let finish, so a
        # rerun of the same backfill finds them ended rather than left running.
        for _, run in pending:
            if not run.done():
                run.wait()
    return items


def _start(ex: Executor, graph: Graph, item: BackfillItem, on_end: Callable[[], Any]) -> Any:
    """Starts ``item``'s run and returns it, or None when another process claimed the time."""
    info = {"scheduled_at": item.scheduled_at, "trigger": "backfill"}
    if item.action == "resume":
        assert item.run_id is not None
        return ex._resume_submit(item.run_id, graph, on_end=on_end)
    if item.action == "rerun":
        run = ex.submit(graph, meta=info, _on_end=on_end)
    else:
        (record,) = ex._begin_records([(graph, info)], fires=True)
        if record is None:
            item.action = "taken"
            return None
        run = ex.submit(graph, meta=info, _on_end=on_end, _record=record)
    item.run_id = run.run_id
    return run
