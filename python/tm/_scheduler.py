"""The scheduler behind ``Executor.add/start/stop``, and ``tm.VirtualClock`` for tests.

Time lives in the Rust core (``tm._tm.Timetable``): it sleeps until the next due time, a wake-up
or a move of the virtual clock, and classifies each fire (on time, catch-up, missed). This module
decides what a fire does: start a run, skip or queue it behind a running one (overlap policy),
record it in the store, and log it.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
import zoneinfo
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from ._observe import call as call_observers
from ._observe import observers_of
from ._tm import ManualClock, Timetable
from .exceptions import ExecutorError
from .schedules import Interval

if TYPE_CHECKING:
    from .executor import Executor, Run
    from .graph import Graph

__all__ = ["ScheduleOptions", "VirtualClock"]

_log = logging.getLogger("tm")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: How long one detached wait lasts before Python looks at signals and stop requests again.
_SLICE = 0.5
#: How many of the newest store events a start looks through for its graphs' last fires.
_RECENT_EVENTS = 1000


# A fire that another scheduler sharing the store claimed first (`Executor._begin_records`).
_TAKEN = None


def _owner_of(detail: dict[str, Any] | None) -> str | None:
    """The ``host:pid`` that recorded a run, if it says."""
    try:
        owner = json.loads((detail or {}).get("meta_json") or "{}").get("owner")
    except (ValueError, AttributeError):
        return None
    return owner if isinstance(owner, str) else None


def _owner_dead(owner: str) -> bool:
    """Whether a run's owner is known to be gone: a process of this host that no longer exists,
    or this process itself (its live runs are skipped before this is asked). Another host's
    process cannot be checked from here: its runs are left alone."""
    from ._cached import _pid_alive

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) == os.getpid() or not _pid_alive(int(pid))


def _to_us(t: datetime | float) -> int:
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError(f"a virtual clock needs an aware datetime, got naive {t!r}")
        return (t - _EPOCH) // timedelta(microseconds=1)
    return round(float(t) * 1e6)


def _from_us(us: int, tz: Any = timezone.utc) -> datetime:
    return (_EPOCH + timedelta(microseconds=us)).astimezone(tz)


def _zone(name: str | None) -> Any:
    return timezone.utc if name is None else zoneinfo.ZoneInfo(name)


class VirtualClock:
    """A clock that moves only when told, for running days of schedules in milliseconds.

    ``Executor(clock=VirtualClock(start))`` fires its graphs by this clock: moving it past a due
    time wakes the scheduler at once. ``executor.settle()`` waits until the fires due at the new
    time have been handled (runs started, skips and misses recorded).

    Args:
        start: an aware datetime, or seconds since the epoch (default: now).
    """

    def __init__(self, start: datetime | float | None = None) -> None:
        self.core = ManualClock(_to_us(time.time() if start is None else start))

    def now(self) -> datetime:
        """The clock's time (aware, UTC)."""
        return _from_us(self.core.now_us())

    def set(self, t: datetime | float) -> None:
        """Moves the clock to ``t`` (an aware datetime or epoch seconds)."""
        self.core.set_us(_to_us(t))

    def advance(self, delta: float | timedelta) -> datetime:
        """Moves the clock forward by ``delta`` (seconds or a timedelta); returns the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        self.core.set_us(self.core.now_us() + step // timedelta(microseconds=1))
        return self.now()

    def __repr__(self) -> str:
        return f"tm.VirtualClock({self.now().isoformat()})"


_OVERLAPS = ("skip", "queue", "allow")
_CATCHUPS = ("none", "latest", "all")


@dataclass(frozen=True)
class ScheduleOptions:
    """How :meth:`Executor.add` schedules a graph (see its docstring)."""

    max_active_runs: int = 1
    overlap: str = "skip"
    catchup: str = "latest"
    grace: float = 1.0
    max_catchup: int = 100
    jitter: float = 0.0

    def __post_init__(self) -> None:
        n = self.max_active_runs
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"max_active_runs must be a positive int, got {n!r}")
        if self.overlap not in _OVERLAPS:
            raise ValueError(f"overlap must be one of {_OVERLAPS}, got {self.overlap!r}")
        if self.catchup not in _CATCHUPS:
            raise ValueError(f"catchup must be one of {_CATCHUPS}, got {self.catchup!r}")
        m = self.max_catchup
        if isinstance(m, bool) or not isinstance(m, int) or m < 0:
            raise ValueError(f"max_catchup must be a non-negative int, got {m!r}")
        for what in ("grace", "jitter"):
            v = getattr(self, what)
            if isinstance(v, timedelta):
                object.__setattr__(self, what, v.total_seconds())
            elif isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"{what} must be seconds >= 0 or a timedelta, got {v!r}")

    def to_json(self) -> str:
        """The options as recorded in the store's ``graphs.meta_json`` (read by ``tm status``)."""
        return json.dumps(dataclasses.asdict(self))


@dataclass
class _Slot:
    graph: Graph
    options: ScheduleOptions
    active: list[Run] = field(default_factory=list)
    queued: deque[tuple[int, str]] = field(default_factory=deque)


class Scheduler:
    """The firing loop of one executor. Its timetable outlives :meth:`start`, so stopping and
    starting again in one process neither repeats nor loses a fire."""

    def __init__(self, ex: Executor, clock: VirtualClock | None) -> None:
        self.ex = ex
        self.clock = clock
        self.tt = Timetable(None if clock is None else clock.core)
        self.slots: dict[str, _Slot] = {}
        self.lock = threading.Lock()
        # Pauses and trigger requests of an executor without a store.
        self.local_pauses: dict[str, int] = {}
        self.local_triggers: list[tuple[str, dict[str, Any]]] = []
        self.running = False
        self.stopping = False
        self.cancel = False
        self.forced = False
        self.stop_deadline: float | None = None
        self.signals = 0
        #: Set while start() runs, once its graphs are registered and interrupted runs resumed.
        self.ready = threading.Event()

    # -- graphs -----------------------------------------------------------------------------------

    def add(self, graph: Graph, options: ScheduleOptions) -> None:
        with self.lock:
            old = self.slots.get(graph.name)
            slot = _Slot(graph, options)
            if old is not None:
                slot.active, slot.queued = old.active, old.queued
            self.slots[graph.name] = slot
            running = self.running
        if running:
            self._register(slot)

    def remove(self, name: str) -> None:
        with self.lock:
            slot = self.slots.pop(name, None)
            if slot is None:
                raise KeyError(f"no scheduled graph named {name!r}")
        self.tt.remove(name)
        self._drop_queued(name, slot, "removed")

    def _drop_queued(self, name: str, slot: _Slot, reason: str) -> None:
        """Logs and records the queued fires of ``slot`` as skipped."""
        while slot.queued:
            scheduled_us, kind = slot.queued.popleft()
            _log.warning(
                "%s: dropped the queued fire at %s: %s", name, _from_us(scheduled_us), reason
            )
            if self.ex.store is not None:
                detail = {
                    "graph": name,
                    "scheduled_us": scheduled_us,
                    "trigger": kind,
                    "reason": reason,
                }
                self.ex.store.core.record_event(
                    self.tt.now_us(), "skipped", detail_json=json.dumps(detail)
                )

    def next_fire(self, name: str) -> datetime | None:
        slot = self.slots.get(name)
        if slot is None:
            raise KeyError(f"no scheduled graph named {name!r}")
        nxt = self.tt.next_fire(name)
        if nxt is None:
            if slot.graph.schedule is None:
                return None
            # Not started yet: the first fire after now.
            return slot.graph.schedule.next(_from_us(self.tt.now_us(), _zone(slot.graph.tz)))
        return _from_us(nxt[0], _zone(slot.graph.tz))

    def _last_fire(self, name: str) -> int | None:
        """The last fire handled for ``name`` by any process using the store."""
        core = self.ex.store.core  # type: ignore[union-attr]
        row = core.graph(name)
        last = row["last_fire_us"] if row else None
        # A run is committed before the graph's last fire: after a kill between the two, the
        # newest run still says which fire was handled.
        seen = [run.get("scheduled_us") for run in core.list_runs(graph=name, limit=1)]
        # Likewise for skips and misses recorded just before a kill (events and the graph row are
        # separate writes, which the writer may commit apart).
        for e in core.events(_RECENT_EVENTS):
            if e["kind"] in ("skipped", "missed") and e["detail_json"]:
                d = json.loads(e["detail_json"])
                if d.get("graph") == name:
                    seen.append(d.get("through_us", d.get("scheduled_us")))
        for s in seen:
            if s is not None and (last is None or s > last):
                last = s
        return last

    def _register(self, slot: _Slot) -> None:
        g, o = slot.graph, slot.options
        assert g.schedule is not None
        last = None
        if self.ex.store is not None:
            last = self._last_fire(g.name)
            now = int(time.time() * 1e6)
            self.ex.store.core.upsert_graph(
                g.name, now, now, schedule=str(g.schedule), tz=g.tz, meta_json=o.to_json()
            )
        interval = g.schedule if isinstance(g.schedule, Interval) else None
        self.tt.add(
            g.name,
            None if interval is not None else g.schedule,
            g.tz,
            round(o.jitter * 1e6),
            round(o.grace * 1e6),
            o.catchup,
            o.max_catchup,
            last,
            None if interval is None else (interval.period_us, interval.anchor_us),
        )

    # -- the loop ---------------------------------------------------------------------------------

    def start(self) -> None:
        with self.lock:
            if self.running:
                raise ExecutorError("the executor is already started")
            self.running = True
            self.stopping = self.cancel = self.forced = False
            self.stop_deadline = None
            self.signals = 0
            slots = list(self.slots.values())
        restore = self._install_signal_handlers()
        frozen = False
        try:
            for slot in slots:
                self._register(slot)
            self._resume_interrupted()
            if gc.isenabled() and gc.get_freeze_count() == 0:
                # Everything alive now (modules, graphs, compiled programs) lives as long as the
                # service: moved out of the collector's sight, a full collection no longer rescans
                # it, which took the 5-7 ms pauses out of fire lateness. Undone at the end, and
                # left alone if someone else froze objects.
                gc.collect()
                gc.freeze()
                frozen = True
            _log.info("scheduler started with %d graph(s)", len(slots))
            self.ready.set()
            while not self.stopping:
                fires, now = self.tt.wait(_SLICE)
                self._handle(fires, now)
                self.tt.handled(now)
                self._run_triggers()
            self._drain()
        finally:
            self.ready.clear()
            if frozen:
                gc.unfreeze()
            restore()
            with self.lock:
                self.running = False
            if self.ex.store is not None:
                self.ex.store.core.flush()

    def stop(self, timeout: float | None = None) -> None:
        self.stop_deadline = None if timeout is None else time.monotonic() + timeout
        self.stopping = True
        self.tt.wake()

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum: int, frame: Any) -> None:
            # Only flags: the loop acts on them after the wake-up.
            self.signals += 1
            if self.signals == 1:
                self.stopping = True
            else:
                self.cancel = True
            self.tt.wake()

        for s in previous:
            signal.signal(s, on_signal)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore

    def _resume_interrupted(self) -> None:
        """Resumes runs of the scheduled graphs left running by a process that died."""
        if self.ex.store is None:
            return
        from .executor import _recorded

        core = self.ex.store.core
        for row in core.unfinished_runs():
            slot = self.slots.get(row["graph"])
            if slot is None or row["run_id"] in _recorded:
                continue
            owner = _owner_of(core.get_run(row["run_id"]))
            if owner is not None and not _owner_dead(owner):
                _log.info(
                    "%s: run %s is owned by %s, which is alive or on another host: not resuming",
                    slot.graph.name,
                    row["run_id"],
                    owner,
                )
                continue
            _log.warning("%s: resuming interrupted run %s", slot.graph.name, row["run_id"])
            try:
                run = self.ex._resume_submit(row["run_id"], slot.graph, on_end=self.tt.wake)
            except Exception as e:
                _log.error("%s: cannot resume run %s: %r", slot.graph.name, row["run_id"], e)
                continue
            slot.active.append(run)

    # -- pauses ----------------------------------------------------------------------------------

    def pause(self, name: str) -> bool:
        if self.ex.store is not None:
            from .executor import process_owner

            return self.ex.store.core.pause(name, int(time.time() * 1e6), process_owner())
        with self.lock:
            if name in self.local_pauses:
                return False
            self.local_pauses[name] = int(time.time() * 1e6)
            return True

    def unpause(self, name: str) -> bool:
        if self.ex.store is not None:
            return self.ex.store.core.unpause(name) is not None
        with self.lock:
            return self.local_pauses.pop(name, None) is not None

    def paused(self) -> dict[str, datetime]:
        if self.ex.store is not None:
            rows = [(g, us) for g, us, _ in self.ex.store.core.pauses()]
        else:
            with self.lock:
                rows = list(self.local_pauses.items())
        return {g: _from_us(us) for g, us in rows}

    # -- manual triggers ---------------------------------------------------------------------------

    def trigger(self, name: str, params: dict[str, Any]) -> int | None:
        params_json = json.dumps(params)  # checked here, not in the scheduler that runs it
        if self.ex.store is not None:
            from .executor import process_owner

            return self.ex.store.core.request_trigger(
                name, params_json, int(time.time() * 1e6), process_owner()
            )
        with self.lock:
            if name not in self.slots:
                raise KeyError(f"no scheduled graph named {name!r}")
            self.local_triggers.append((name, params))
        self.tt.wake()
        return None

    def _run_triggers(self) -> None:
        """Starts a run for each trigger request of this scheduler's graphs. With a store, one
        indexed read per wake-up finds requests; claiming them hands each to exactly one of the
        schedulers sharing the store."""
        requests: list[tuple[_Slot, dict[str, Any], int | None]] = []
        if self.ex.store is None:
            with self.lock:
                local, self.local_triggers = self.local_triggers, []
            requests = [(self.slots[g], p, None) for g, p in local if g in self.slots]
        else:
            from .executor import process_owner

            core, owner = self.ex.store.core, process_owner()
            try:
                for g in core.triggered_graphs():
                    slot = self.slots.get(g)
                    if slot is None:
                        continue
                    for tid, params_json in core.claim_triggers(g, int(time.time() * 1e6), owner):
                        requests.append((slot, json.loads(params_json), tid))
            except Exception as e:
                _log.error("cannot read trigger requests from the store: %r", e)
                return
        for slot, params, tid in requests:
            meta = {"trigger": "manual", "trigger_id": tid}
            try:
                run = self.ex.submit(slot.graph, kwargs=params, meta=meta, _on_end=self.tt.wake)
            except Exception as e:
                _log.error("%s: the triggered run could not start: %r", slot.graph.name, e)
                continue
            _log.info("%s: started the triggered run %s", slot.graph.name, run.id)
            slot.active.append(run)

    def _paused_names(self) -> set[str]:
        """The graphs paused now; the store is asked once per wake-up that has fires."""
        if self.ex.store is None:
            with self.lock:
                return set(self.local_pauses)
        try:
            return {g for g, _, _ in self.ex.store.core.pauses()}
        except Exception as e:
            # Firing must go on without the store; a pause it cannot read is not obeyed.
            _log.error("cannot read paused graphs from the store: %r", e)
            return set()

    def _handle(self, fires: list[tuple[str, int, int, str, int, int]], now: int) -> None:
        store = self.ex.store.core if self.ex.store is not None else None
        last: dict[str, int] = {}
        events: list[tuple[str, int, str, dict[str, Any]]] = []
        launches: list[tuple[_Slot, int, str]] = []
        paused = self._paused_names() if fires else set()
        observers = observers_of(self.ex) if fires else ()
        missed: dict[str, tuple[int, int, int]] = {}
        for name, scheduled_us, due_us, kind, count, through_us in fires:
            slot = self.slots.get(name)
            if slot is None:
                continue
            last[name] = through_us
            if observers:
                call_observers(observers, "fire", name, scheduled_us, due_us, now, kind, count)
            if kind == "missed":
                # One log line (and alert) per graph and wake-up, however many fires it missed.
                first, n, through = missed.get(name, (scheduled_us, 0, through_us))
                missed[name] = (min(first, scheduled_us), n + count, max(through, through_us))
                events.append(
                    (name, scheduled_us, "missed", {"count": count, "through_us": through_us})
                )
                continue
            if name in paused:
                at = _from_us(scheduled_us, _zone(slot.graph.tz))
                _log.info("%s: skipped the fire at %s: the graph is paused", name, at)
                events.append(
                    (name, scheduled_us, "skipped", {"trigger": kind, "reason": "paused"})
                )
                continue
            o = slot.options
            if o.overlap != "allow" and self._busy(slot, launches):
                at = _from_us(scheduled_us, _zone(slot.graph.tz))
                if o.overlap == "queue":
                    slot.queued.append((scheduled_us, kind))
                    _log.info("%s: queued the fire at %s behind the running run", name, at)
                    continue
                _log.warning(
                    "%s: skipped the fire at %s: the previous run is still going", name, at
                )
                events.append(
                    (name, scheduled_us, "skipped", {"trigger": kind, "reason": "overlap"})
                )
                continue
            launches.append((slot, scheduled_us, kind))
        for name, (first, n, through) in missed.items():
            zone = _zone(self.slots[name].graph.tz)
            more = f" and {n - 1} later fire(s) through {_from_us(through, zone)}"
            _log.warning(
                "%s: missed the fire at %s%s (catchup=%s)",
                name,
                _from_us(first, zone),
                more if n > 1 else "",
                self.slots[name].options.catchup,
            )
            if observers:
                call_observers(observers, "missed", name, first, n, through)
        if not self.stopping:
            for slot in list(self.slots.values()):
                while slot.queued and not self._busy(slot, launches):
                    scheduled_us, kind = slot.queued.popleft()
                    launches.append((slot, scheduled_us, kind))
        self._launch(launches)
        if store is not None and (last or events):
            for name, s_us, kind, detail in events:
                detail = {"graph": name, "scheduled_us": s_us, **detail}
                store.record_event(now, kind, detail_json=json.dumps(detail))
            for name, through in last.items():
                slot = self.slots.get(name)
                if slot is not None and slot.graph.schedule is not None:
                    store.upsert_graph(
                        name,
                        now,
                        now,
                        schedule=str(slot.graph.schedule),
                        tz=slot.graph.tz,
                        last_fire_us=through,
                        meta_json=slot.options.to_json(),
                    )
            try:
                store.flush()
            except Exception as e:
                # The store reports its own failures; firing must go on without it.
                _log.error("the store could not record the scheduler's state: %r", e)

    @staticmethod
    def _busy(slot: _Slot, launches: list[tuple[_Slot, int, str]]) -> bool:
        """Whether ``slot`` has ``max_active_runs`` runs going, counting those about to start."""
        slot.active = [r for r in slot.active if not r.done()]
        starting = sum(1 for s, _, _ in launches if s is slot)
        return len(slot.active) + starting >= slot.options.max_active_runs

    def _launch(self, launches: list[tuple[_Slot, int, str]]) -> None:
        """Starts the runs of one wake-up. With a store, their run rows are committed together
        (one commit rather than one per run) before any of them starts."""
        if not launches:
            return
        metas = [
            (slot.graph, {"scheduled_at": _from_us(s_us, _zone(slot.graph.tz)), "trigger": kind})
            for slot, s_us, kind in launches
        ]
        records: list[Any] = [False] * len(launches)
        # Loaded once here, recorded with the run and handed to it (None when it cannot load:
        # the run's start then reports that, below).
        configs: list[Any] = []
        for g, _ in metas:
            try:
                configs.append(g.load_config())
            except Exception:
                configs.append(None)
        if self.ex.store is not None:
            try:
                records = list(self.ex._begin_records(metas, fires=True, configs=configs))
            except Exception as e:
                _log.error("the store could not record %d run(s): %r", len(launches), e)
                return
        for (slot, _, trigger), (g, meta), record, cfg in zip(
            launches, metas, records, configs, strict=True
        ):
            if record is _TAKEN:
                _log.info(
                    "%s: the fire at %s was taken by another process sharing the store",
                    g.name,
                    meta["scheduled_at"],
                )
                continue
            try:
                run = self.ex.submit(
                    g, cfg, meta=meta, _on_end=self.tt.wake, _record=record or None
                )
            except Exception as e:
                # A graph that cannot start (a bad config file, ...) must not stop the others.
                _log.error(
                    "%s: the run scheduled at %s could not start: %r",
                    g.name,
                    meta["scheduled_at"],
                    e,
                )
                if record is not None:
                    self.ex.store.core.finish_run(record[1], "failed", self.tt.now_us())  # type: ignore[union-attr]
                continue
            _log.info(
                "%s: fired the run scheduled at %s (trigger %s)",
                g.name,
                meta["scheduled_at"],
                trigger,
            )
            slot.active.append(run)

    def _drain(self) -> None:
        """After a stop: records queued fires as skipped, then waits for running runs (cancelling
        them on a second signal or past the stop timeout)."""
        for name, slot in list(self.slots.items()):
            self._drop_queued(name, slot, "stopping")
        told = False
        while True:
            active = [r for s in list(self.slots.values()) for r in s.active if not r.done()]
            if not active:
                break
            late = self.stop_deadline is not None and time.monotonic() >= self.stop_deadline
            if (self.cancel or late) and not self.forced:
                _log.warning("cancelling %d running run(s)", len(active))
                self.forced = True
                for r in active:
                    r.cancel()
            elif not told:
                told = True
                _log.info("stopping: waiting for %d running run(s)", len(active))
            # Short waits, so a second signal is acted on promptly.
            active[0].wait(0.2)
        _log.info("scheduler stopped")

    def settle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self.ready.wait(timeout):
            return False
        return self.tt.settle(max(0.0, deadline - time.monotonic()))
