"""What the dashboard shows, read through tm's own store API: plain dicts, shared by the JSON API
and the HTML pages."""

from __future__ import annotations

import json
import time
from typing import Any

from ..store import Store

#: The states a run can be in, and a task (for the filters and the legend).
RUN_STATES = ("running", "completed", "failed", "cancelled")
TASK_STATES = ("pending", "running", "retrying", "completed", "failed", "skipped", "cancelled")
TRIGGERS = ("schedule", "manual", "backfill", "catchup")


def now_us() -> int:
    return int(time.time() * 1e6)


def encode_cursor(run: dict[str, Any]) -> str:
    return f"{run['created_us']}.{run['run_id']}"


def decode_cursor(text: str) -> tuple[int, str]:
    """``created_us.run_id`` (the last run of the previous page); ValueError when malformed."""
    us, sep, rid = text.partition(".")
    if not sep or not rid:
        raise ValueError(f"not a page cursor: {text!r}")
    return int(us), rid


def runs_page(
    store: Store,
    *,
    graph: str | None = None,
    state: str | None = None,
    trigger: str | None = None,
    limit: int = 50,
    before: str | None = None,
) -> dict[str, Any]:
    """One page of runs, newest first, and the cursor of the next (older) page or None. A page
    is one index range scan (keyset pagination), so its cost does not grow with its depth."""
    kw: dict[str, Any] = {}
    if before:
        kw["before_us"], kw["before_id"] = decode_cursor(before)
    rows = store.core.list_runs(
        graph=graph or None, state=state or None, trigger=trigger or None, limit=limit + 1, **kw
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return {"runs": rows, "next": encode_cursor(rows[-1]) if more and rows else None}


def _meta(run: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(run.get("meta_json") or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def run_detail(store: Store, run_id: str) -> dict[str, Any] | None:
    """A run with its tasks (every task of its graph, those not yet run included) and the
    graph's edges as ``[parent_node, child_node]`` pairs (empty when the run did not record them)."""
    run = store.core.get_run(run_id)
    if run is None:
        return None
    meta = _meta(run)
    edges = meta.get("edges") or []
    run["edges"] = [[int(a), int(b)] for a, b in edges if isinstance(a, int) and isinstance(b, int)]
    run["source"] = meta.get("source")
    try:
        run["config"] = json.loads(run["config_json"]) if run.get("config_json") else None
    except ValueError:
        run["config"] = run.get("config_json")
    run["params"] = meta.get("params")
    return run


def run_states(store: Store, run_id: str) -> dict[str, Any] | None:
    """What the live view needs: the run's state and each task's status, attempt and times."""
    run = store.core.get_run(run_id)
    if run is None:
        return None
    return {
        "state": run["state"],
        "ended_us": run["ended_us"],
        "tasks": {
            str(t["node"]): [t["status"], t["attempt"], t["started_us"], t["ended_us"]]
            for t in run["tasks"]
        },
    }


def task_detail(store: Store, run_id: str, task: str) -> dict[str, Any] | None:
    """One task of a run (by node index or name): its row, every attempt and its log lines."""
    run = store.core.get_run(run_id)
    if run is None:
        return None
    key: int | str = int(task) if task.isdigit() else task
    rows = [t for t in run["tasks"] if t["node"] == key or t["name"] == key]
    if not rows:
        return None
    row = dict(rows[0])
    row["attempts"] = store.core.attempts(run_id, row["node"])
    row["logs"] = store.core.logs(run_id, row["node"])
    row["run_id"] = run_id
    row["graph"] = run["graph"]
    return row


def graphs(store: Store, recent: int = 10) -> list[dict[str, Any]]:
    """Every graph the store knows, with its schedule, next fire (when scheduled), pause and its
    most recent runs."""
    from .._service_cli import _status_rows

    scheduled = {r["graph"]: r for r in _status_rows(store)}
    paused = {g: (us, owner) for g, us, owner in store.core.pauses()}
    out = []
    for g in store.core.graphs():
        name = g["name"]
        status = scheduled.get(name, {})
        out.append(
            {
                "name": name,
                "schedule": g["schedule"],
                "tz": g["tz"],
                "next_fire": status.get("next_fire"),
                "last_fire_us": g["last_fire_us"],
                "paused_us": paused[name][0] if name in paused else None,
                "paused_by": paused[name][1] if name in paused else None,
                "options": status.get("options", {}),
                "recent_runs": [
                    {k: r[k] for k in ("run_id", "state", "trigger", "created_us", "ended_us")}
                    for r in store.core.list_runs(graph=name, limit=recent)
                ],
            }
        )
    return out


def cache(store: Store, func: str | None = None, limit: int = 200) -> dict[str, Any]:
    """Cached calls: the stored entries (newest first) and the state of every call key."""
    return {
        "entries": store.cache_index.entries(func=func or None, limit=limit),
        "states": store.cache_index.states(func=func or None),
    }


def events(store: Store, limit: int = 100) -> list[dict[str, Any]]:
    return store.core.events(limit)
