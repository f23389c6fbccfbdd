"""The agent queue of seed 001: many processes claim, complete and release typed tasks.

``TaskManager`` keeps the seed's API, arguments, defaults and return shapes::

    from pathlib import Path
    from tm.queue import TaskManager, TaskStatus

    tm = TaskManager(Path("states/my_workflow.json"), lock_timeout=5, task_timeout_hours=24)
    task_id = tm.create_task("analyze", {"file": "data.csv"})
    task = tm.get_next_task("worker-001", ["analyze"])
    if task:
        tm.complete_task(task["id"], "worker-001", result_data={"output": "results.json"})

Storage, chosen by ``state_file``:

- a path ending in ``.json`` is the seed's state file, in the seed's format (existing files and the
  tools that read them keep working). Writers hold an exclusive lock on ``<state_file>.lock`` (for
  ``states/wf.json`` that is ``states/wf.json.lock``), waiting at most ``lock_timeout`` seconds, and
  replace the file atomically (``<state_file>.tmp``, fsync, rename). Reads take no lock.
- any other path, or ``sqlite:///relative.db`` / ``sqlite:////absolute.db``, is an SQLite database
  (WAL): a claim is one indexed statement, nothing rewrites the whole store, and millions of tasks
  are fine. ``tm queue migrate a.json b.db`` converts (either direction).

Processes on one machine share a store; threads may share one ``TaskManager``. Do not open an
SQLite queue with Python's ``sqlite3`` module *in a process that also uses it through tm*: the two
SQLite libraries do not see each other's locks within one process (other processes are fine).
A database tm creates uses 512-byte pages, which makes each commit write less (an earlier
tm's databases keep their 1 KiB pages).

Decisions where the seed is silent:

- ``result_data`` is stored as ``data["result"]`` (the task's own data keys are kept).
- A finished task keeps ``locked_by``/``locked_at`` of the agent that finished it; a released or
  recovered task has both cleared.
- A lease starts at the claim (``locked_at``); an in-progress task whose lease is at least
  ``task_timeout_hours`` old returns to pending when any agent next claims.
- Task dicts carry the seed's keys plus ``priority``, ``attempt`` (claims so far: the fencing token
  of the current lease), ``max_attempts`` and ``wait_for_parent``. In a JSON state file these keys
  are written only when they differ from their defaults.
- ``get_status_summary()`` counts only statuses and types that occur (statuses in the order
  pending, in_progress, completed, failed, cancelled; types in order of first creation).
- New task data, results and metadata must be JSON: NaN and Infinity are refused with a
  ``ValueError`` on every backend (a state file already holding them is still read as written).
  A task type or agent id with a lone surrogate is a ``ValueError`` too.

Beyond the seed, all optional: ``priority`` (higher first, then oldest), ``wait_for_parent`` (not
claimable before the parent completes; cancelled if the parent fails or is cancelled),
``max_attempts`` (a task claimed that many times that is then released or abandoned becomes
``failed``), ``attempt=`` fencing on ``complete_task``/``release_task``/``extend_lease``,
``cancel_task`` for pending tasks, ``get_next_task(..., wait=seconds)`` which blocks (without
holding the GIL; Ctrl-C interrupts it) until a task is available, and batches:
``get_next_tasks(agent_id, max_tasks=16)`` and ``complete_tasks(tasks, agent_id)`` claim or finish
several tasks under one lock (one SQLite transaction, one rewrite of a JSON state file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from . import _tm
from .exceptions import TmError

__all__ = [
    "CorruptStateError",
    "QueueLockTimeout",
    "TaskManager",
    "TaskStatus",
    "migrate",
]


class TaskStatus(str, Enum):
    """A task's status. Members are strings, so ``task["status"] == TaskStatus.PENDING`` holds."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


class QueueLockTimeout(TmError, TimeoutError):
    """The state's lock could not be taken within ``lock_timeout`` seconds."""


class CorruptStateError(TmError, ValueError):
    """The JSON state file is not valid (the message says where). The file is left untouched."""


# NaN and Infinity are refused: they are not JSON (RFC 8259), so a state file holding them is
# unreadable to strict parsers, and PostgreSQL's jsonb cannot hold them at all.
_encode_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

#: The largest ``max_attempts`` the stores hold.
MAX_ATTEMPTS_LIMIT = 2**32 - 1


def _encode(value: Any, what: str = "result_data") -> str:
    try:
        return _encode_json(value)
    except ValueError as e:
        if "Out of range float" in str(e):
            raise ValueError(
                f"{what} holds NaN or Infinity, which JSON cannot represent: store them as "
                "strings or null"
            ) from None
        raise


def _check_max_attempts(n: Any) -> Any:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"max_attempts must be an int or None, got {n!r}")
    if not 1 <= n <= MAX_ATTEMPTS_LIMIT:
        raise ValueError(f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {n}")
    return n


def _check_text(value: Any, what: str) -> None:
    """Raises ValueError if ``value`` is a str that is not valid Unicode (a lone surrogate)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{what} {value!r} is not valid Unicode text (a lone surrogate at position "
                f"{e.start})"
            ) from None


def _bad_text(error: UnicodeEncodeError, named: Iterable[tuple[str, Any]]) -> Exception:
    """The queue's error for a string argument a store cannot hold, naming the argument (only
    looked for once the store refused it: the common path pays nothing)."""
    for what, value in named:
        try:
            _check_text(value, what)
        except ValueError as e:
            return e
    return error


_FINAL = frozenset({"completed", "failed", "cancelled"})
# A final status (a TaskStatus member or its string) -> its plain string; one lookup per call.
_FINAL_TEXT = {s: s for s in _FINAL}


def _final(status: TaskStatus | str) -> str:
    s = _FINAL_TEXT.get(status)
    if s is not None:
        return s
    s = TaskStatus(status).value
    if s not in _FINAL:
        raise ValueError(f"status must be completed, failed or cancelled, got {s!r}")
    return s


def _data_text(data: Mapping[str, Any] | None, what: str) -> str:
    if data is None:
        return "{}"
    if not isinstance(data, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(data).__name__}")
    return _encode(data if isinstance(data, dict) else dict(data), what)


def _types(task_types: Iterable[str] | str | None) -> list[str] | None:
    if task_types is None:
        return None
    if isinstance(task_types, str):
        return [task_types]
    return list(task_types)


def _named_types(types: list[str] | None) -> list[tuple[str, Any]]:
    return [("task type", t) for t in types or ()]


def _target(state_file: str | os.PathLike[str]) -> str:
    return os.fspath(state_file)


class TaskManager:
    """Tasks shared by many agents (threads or processes) through one state file or database.

    Args:
        state_file: ``*.json`` for the seed's state file; any other path or ``sqlite:///...`` for
            SQLite; ``postgresql://user:password@host:port/database`` for a PostgreSQL server
            that agents on many hosts share (claims use ``FOR UPDATE SKIP LOCKED``). Files are
            created (with their directory) if missing.
        lock_timeout: Seconds to wait for the exclusive lock before raising
            :class:`QueueLockTimeout` (a ``TimeoutError``).
        task_timeout_hours: Lease length: an in-progress task older than this returns to pending.
        max_attempts: Default ``max_attempts`` of the tasks this manager creates (None: unlimited).

    Raises:
        CorruptStateError: The JSON state file is not valid JSON in the seed's structure.
        tm.exceptions.StoreError: The file or database cannot be read or written.
    """

    def __init__(
        self,
        state_file: str | os.PathLike[str],
        lock_timeout: float = 5,
        task_timeout_hours: float = 24,
        *,
        max_attempts: int | None = None,
    ) -> None:
        target = _target(state_file)
        url = target.startswith(("sqlite:", "postgres"))
        self.state_file = state_file if url else Path(target)
        self.lock_timeout = lock_timeout
        self.task_timeout_hours = task_timeout_hours
        self.max_attempts = _check_max_attempts(max_attempts)
        self._core = _tm.QueueCore(target, float(lock_timeout), float(task_timeout_hours) * 3600.0)

    @property
    def backend(self) -> str:
        """``"json"``, ``"sqlite"`` or ``"postgresql"``."""
        return self._core.kind

    def __repr__(self) -> str:
        return f"TaskManager({str(self.state_file)!r}, backend={self.backend!r})"

    # -- the seed's API ------------------------------------------------------------------------

    def create_task(
        self,
        task_type: str,
        data: Mapping[str, Any] | None,
        parent_id: str | None = None,
        *,
        priority: int = 0,
        wait_for_parent: bool = False,
        max_attempts: int | None = None,
    ) -> str:
        """Creates a pending task and returns its id, ``<task_type>_<8 hex digits>``.

        Args:
            task_type: The type agents filter on.
            data: A JSON-serialisable dict.
            parent_id: The parent task's id.
            priority: Higher is claimed first (default 0); equal priorities go oldest first.
            wait_for_parent: Not claimable until the parent completes (needs ``parent_id``).
            max_attempts: Claims allowed before an abandoned or released task becomes failed.
        """
        return self.create_tasks(
            [
                {
                    "task_type": task_type,
                    "data": data,
                    "parent_id": parent_id,
                    "priority": priority,
                    "wait_for_parent": wait_for_parent,
                    "max_attempts": max_attempts,
                }
            ]
        )[0]

    def create_tasks(
        self, tasks: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]]
    ) -> list[str]:
        """Creates many tasks in one step (all or none) and returns their ids.

        Each item is ``(task_type, data)`` or a dict of :meth:`create_task`'s arguments.
        """
        rows = []
        for t in tasks:
            if isinstance(t, tuple):
                t = {"task_type": t[0], "data": t[1]}
            max_attempts = t.get("max_attempts")
            if max_attempts is None:
                max_attempts = self.max_attempts
            else:
                _check_max_attempts(max_attempts)
            rows.append(
                (
                    str(t["task_type"]),
                    _data_text(t.get("data"), "data"),
                    t.get("parent_id"),
                    int(t.get("priority", 0)),
                    max_attempts,
                    bool(t.get("wait_for_parent", False)),
                )
            )
        try:
            return self._core.create(rows)
        except UnicodeEncodeError as e:
            named = [("task_type", r[0]) for r in rows] + [("parent_id", r[2]) for r in rows]
            raise _bad_text(e, named) from None

    def get_next_task(
        self,
        agent_id: str,
        task_types: Iterable[str] | None = None,
        *,
        wait: float | None = None,
    ) -> dict[str, Any] | None:
        """Claims the oldest pending task (highest priority first) of ``task_types``.

        Expired leases are recovered first. Returns the task's dict (with ``attempt``, this
        lease's fencing token), or None when nothing is available.

        Args:
            agent_id: Who claims.
            task_types: Types to consider; None or empty means any.
            wait: Seconds to wait for a task to become available (default: do not wait).
        """
        types = None if task_types is None else _types(task_types)
        try:
            return self._core.claim(agent_id, types, wait)
        except UnicodeEncodeError as e:
            raise _bad_text(e, [("agent_id", agent_id), *_named_types(types)]) from None

    def get_next_tasks(
        self, agent_id: str, task_types: Iterable[str] | None = None, max_tasks: int = 10
    ) -> list[dict[str, Any]]:
        """Claims up to ``max_tasks`` tasks in one step, in the order :meth:`get_next_task` would.

        One lock (one transaction, or one rewrite of a JSON state file) for the whole batch, so
        an agent that works through several tasks pays for one claim. Each task gets its own
        lease (starting now) and ``attempt``. Never waits; returns an empty list when nothing is
        available.

        Args:
            agent_id: Who claims.
            task_types: Types to consider; None or empty means any.
            max_tasks: The most tasks to claim (at least 1).
        """
        if isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1:
            raise ValueError(f"max_tasks must be a positive int, got {max_tasks!r}")
        types = None if task_types is None else _types(task_types)
        try:
            return self._core.claim_many(agent_id, max_tasks, types)
        except UnicodeEncodeError as e:
            raise _bad_text(e, [("agent_id", agent_id), *_named_types(types)]) from None

    def complete_task(
        self,
        task_id: str,
        agent_id: str,
        status: TaskStatus | str = TaskStatus.COMPLETED,
        result_data: Any = None,
        *,
        attempt: int | None = None,
    ) -> bool:
        """Finishes a task the agent holds. Returns False if it does not hold it (any more).

        Args:
            task_id: The task.
            agent_id: The agent that claimed it.
            status: ``COMPLETED``, ``FAILED`` or ``CANCELLED``.
            result_data: Stored as ``data["result"]`` (JSON-serialisable).
            attempt: The ``attempt`` of the claim; a completion from an older lease is refused.
        """
        s = _final(status)
        result = None if result_data is None else _encode(result_data)
        return self._core.complete(task_id, agent_id, s, result, attempt)

    def complete_tasks(
        self,
        tasks: Iterable[str | Mapping[str, Any] | tuple[str | Mapping[str, Any], Any]],
        agent_id: str,
        status: TaskStatus | str = TaskStatus.COMPLETED,
    ) -> list[bool]:
        """Finishes several tasks the agent holds in one step; one flag per task, in order.

        Each item is a task id, a task dict as claimed (its ``attempt`` fences the completion:
        a task reclaimed since is not completed), or ``(task, result_data)``. A flag is False
        where the agent does not hold that task (any more); the others are still finished.

        Args:
            tasks: The tasks, as above.
            agent_id: The agent that claimed them.
            status: ``COMPLETED``, ``FAILED`` or ``CANCELLED``, for every task.

        Raises:
            ValueError: A bad status, or a ``result_data`` that cannot be stored (then no task
                is finished).
        """
        s = _final(status)
        items = []
        for item in tasks:
            result = None
            if isinstance(item, tuple):
                item, result_data = item
                result = None if result_data is None else _encode(result_data)
            if isinstance(item, str):
                items.append((item, None, s, result))
            elif isinstance(item, Mapping):
                items.append((str(item["id"]), item.get("attempt"), s, result))
            else:
                raise TypeError(f"a task must be an id or a task dict, got {type(item).__name__}")
        return self._core.complete_many(agent_id, items)

    def release_task(self, task_id: str, agent_id: str, *, attempt: int | None = None) -> bool:
        """Returns a task the agent holds to pending (failed if its attempts are used up)."""
        return self._core.release(task_id, agent_id, attempt)

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The task's dict, or None."""
        return self._core.get(task_id)

    def get_task_children(self, parent_id: str) -> list[dict[str, Any]]:
        """The tasks whose ``parent_id`` is ``parent_id``, oldest first."""
        return self._core.children(parent_id)

    def get_status_summary(self) -> dict[str, Any]:
        """``total_tasks``, ``status_counts``, ``type_counts`` and the workflow ``metadata``."""
        return self._core.summary()

    def update_workflow_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Merges ``metadata`` into the workflow metadata (``last_updated`` is tm's)."""
        self._core.update_metadata(_data_text(metadata, "metadata"))

    # -- beyond the seed -----------------------------------------------------------------------

    def extend_lease(self, task_id: str, agent_id: str, *, attempt: int | None = None) -> bool:
        """Restarts the lease of a task the agent holds (a heartbeat). False if not held."""
        return self._core.extend_lease(task_id, agent_id, attempt)

    def cancel_task(self, task_id: str) -> bool:
        """Cancels a pending task (and tasks waiting for it). False if it is not pending."""
        return self._core.cancel(task_id)

    def force_release(self, task_id: str) -> bool:
        """Returns an in-progress task to pending whoever holds it (an operator's tool)."""
        return self._core.release(task_id, None, None)

    def list_tasks(
        self,
        status: TaskStatus | str | None = None,
        task_type: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Tasks, oldest first, optionally of one status and/or type, at most ``limit``."""
        s = None if status is None else str(TaskStatus(status).value)
        try:
            return self._core.list_tasks(s, task_type, limit)
        except UnicodeEncodeError as e:
            raise _bad_text(e, [("task type", task_type)]) from None

    def export(self, path: str | os.PathLike[str] | None = None) -> str | None:
        """The whole queue in the seed's state-file format: written to ``path``, or returned."""
        return self._core.export(None if path is None else os.fspath(path))


def migrate(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], *, lock_timeout: float = 5
) -> int:
    """Copies every task and the metadata of ``src`` into ``dst`` (a new or empty store).

    Either side may be a JSON state file, an SQLite database or a PostgreSQL URL. Returns the
    number of tasks.
    """
    return _tm.queue_migrate(_target(src), _target(dst), float(lock_timeout))
