"""``tm.Store``: the embedded state database (SQLite) where runs and task transitions are recorded.

The database is ``db_url``, else ``$TM_DB_URL``, else ``sqlite:///.tm/tm.db`` (relative to the working
directory). Nothing is opened or created until first use.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ._tm import StoreCore

__all__ = ["Store", "default_url"]


def default_url() -> str:
    """The database URL used when none is given: ``$TM_DB_URL`` or ``sqlite:///.tm/tm.db``."""
    return os.environ.get("TM_DB_URL") or "sqlite:///.tm/tm.db"


class Store:
    """Run history in SQLite: ``Executor(store=Store())`` records every run and task transition.

    Writes are queued and committed in batches by one writer thread (group commit); reads use their
    own connections and never block it, so the CLI can read while an executor writes.

    Args:
        db_url: ``sqlite:///relative.db``, ``sqlite:////absolute.db``, a file path, or
            ``sqlite://:memory:``.
    """

    def __init__(self, db_url: str | None = None) -> None:
        self.url = db_url or default_url()
        self._core: StoreCore | None = None
        self._lock = threading.Lock()

    @property
    def core(self) -> StoreCore:
        """The open database (opened, created and migrated on first use; raises ``tm.StoreError``)."""
        with self._lock:
            if self._core is None:
                self._core = StoreCore(self.url)
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
