"""``tm.Store``: the embedded state database (SQLite) where runs and task transitions are recorded.

The database is ``db_url``, else ``$TM_DB_URL``, else ``sqlite:///.tm/tm.db`` (relative to the working
directory). Nothing is opened or created until first use.
"""

from __future__ import annotations

import os
import pickle
import threading
from typing import Any

from ._tm import StoreCore
from .exceptions import StoreError

__all__ = ["Store", "default_url"]


def default_url() -> str:
    """The database URL used when none is given: ``$TM_DB_URL`` or ``sqlite:///.tm/tm.db``."""
    return os.environ.get("TM_DB_URL") or "sqlite:///.tm/tm.db"


class Store:
    """Run history in SQLite: ``Executor(store=Store())`` records every run and task transition.

    Writes are queued and committed in batches by one writer thread (group commit); reads use their
    own connections and never block it, so the CLI can read while an executor writes.

    Results that tasks persist (``@task(persist=True)``) are also kept in memory, up to
    ``cache_bytes`` (least recently used dropped first), so reading one back costs no disk access
    and a long-running process stays bounded.

    Args:
        db_url: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a file path, or
            ``sqlite://:memory:``.
        cache_bytes: the in-memory result cache's budget (default 64 MiB; 0 disables it).
    """

    def __init__(self, db_url: str | None = None, *, cache_bytes: int | None = None) -> None:
        self.url = db_url or default_url()
        if cache_bytes is not None and cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        self.cache_bytes = cache_bytes
        self._core: StoreCore | None = None
        self._lock = threading.Lock()

    @property
    def core(self) -> StoreCore:
        """The open database (opened, created and migrated on first use; raises ``tm.StoreError``)."""
        with self._lock:
            if self._core is None:
                core = StoreCore(self.url)
                if self.cache_bytes is not None:
                    core.set_cache_capacity(self.cache_bytes)
                self._core = core
            return self._core

    @property
    def location(self) -> str:
        return self.core.location

    def flush(self) -> None:
        """Waits until every recorded transition is committed (raises ``tm.StoreError`` on failure)."""
        self.core.flush()

    def runs(
        self, graph: str | None = None, state: str | None = None, limit: int | None = 20
    ) -> list[dict[str, Any]]:
        """Recent runs, newest first."""
        return self.core.list_runs(graph=graph, state=state, limit=limit)

    def run(self, run_id: str) -> dict[str, Any] | None:
        """One run with its tasks (facts and state), or None."""
        return self.core.get_run(run_id)

    def attempts(self, run_id: str, task: int | str) -> list[dict[str, Any]]:
        """Every attempt of one task of a run."""
        return self.core.attempts(run_id, task)

    def result(self, run_id: str, task: int | str) -> Any:
        """The persisted result of one task of a run (by node index or name).

        Raises:
            KeyError: no such run or task, or the task has no persisted result.
        """
        node = task
        if isinstance(task, str):
            detail = self.core.get_run(run_id)
            if detail is None:
                raise KeyError(f"no run {run_id!r} in {self.location}")
            nodes = [t["node"] for t in detail["tasks"] if t["name"] == task]
            if not nodes:
                raise KeyError(f"run {run_id!r} has no task {task!r}")
            node = nodes[0]
        row = self.core.result(run_id, int(node))
        if row is None:
            raise KeyError(f"task {task!r} of run {run_id!r} has no persisted result")
        fmt, data = row
        if fmt != "pickle":
            raise StoreError(f"task {task!r} of run {run_id!r}: unknown result format {fmt!r}")
        # Written by tm itself, for this run, into its own database.
        return pickle.loads(data)

    def cache_info(self) -> dict[str, int]:
        """The in-memory result cache: entries, bytes, capacity, hits, misses, evictions."""
        return self.core.cache_info()

    def close(self) -> None:
        """Flushes and closes the database. Idempotent."""
        with self._lock:
            core, self._core = self._core, None
        if core is not None:
            core.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"tm.Store({self.url!r})"
