"""The exceptions tm raises. Each has a fitting builtin base so existing ``except`` clauses work."""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CacheKeyError",
    "CronError",
    "CycleError",
    "ExecutorError",
    "GraphError",
    "RetriesExhausted",
    "SignatureError",
    "StoreError",
    "TaskCancelled",
    "TaskFailed",
    "TaskInProgress",
    "TaskTimeout",
    "TmError",
]


class TmError(Exception):
    """Root of every tm exception."""


class CronError(TmError, ValueError):
    """An invalid or never-firing cron expression. The message names the field and the text."""


class GraphError(TmError, ValueError):
    """An invalid graph: duplicate task names, unknown parameters, non-callables."""


class CycleError(GraphError):
    """A dependency cycle. ``path`` lists the task names around the cycle, first repeated last."""

    def __init__(self, message: str, path: list[str] | None = None) -> None:
        super().__init__(message)
        self.path: list[str] = list(path or [])


class StoreError(TmError, OSError):
    """The state database cannot be opened, read or written."""


class ExecutorError(TmError, RuntimeError):
    """The executor cannot do what was asked (stopped, forked, misused)."""


class TaskFailed(TmError):
    """A task failed. ``__cause__`` is the task's own exception."""

    def __init__(self, message: str, task: str | None = None, attempt: int | None = None) -> None:
        super().__init__(message)
        self.task = task
        self.attempt = attempt


class RetriesExhausted(TaskFailed):
    """A task failed on every allowed attempt."""


class TaskTimeout(TmError, TimeoutError):
    """A task ran longer than its timeout."""


class TaskCancelled(TmError):
    """A task was cancelled before it could finish."""


class CacheKeyError(TmError, TypeError):
    """An argument of a cached call has no canonical form; the message names the argument."""


class CacheError(StoreError):
    """A result cannot be stored, or a stored one cannot be used (its file is not what tm wrote, or
    lies outside the result directory)."""


class SignatureError(CacheError):
    """A stored pickle or result file does not carry a valid signature (HMAC) under this
    process's key: written with another key, or by someone who does not hold it. Nothing of it
    was unpickled."""


class TaskInProgress(TmError, RuntimeError):
    """An identical cached call is running elsewhere and ``skip_if_in_progress`` was set.

    ``key`` is the call key; ``owner`` describes the process running it (``pid@host``).
    """

    def __init__(self, message: str, key: str | None = None, owner: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.owner = owner
