"""tm: task orchestration with a Rust core.

Importing tm starts nothing: no thread, no runtime, no file.
"""

from __future__ import annotations

from . import cron as cron
from .exceptions import (
    CronError as CronError,
)
from .exceptions import (
    CycleError as CycleError,
)
from .exceptions import (
    ExecutorError as ExecutorError,
)
from .exceptions import (
    GraphError as GraphError,
)
from .exceptions import (
    RetriesExhausted as RetriesExhausted,
)
from .exceptions import (
    StoreError as StoreError,
)
from .exceptions import (
    TaskCancelled as TaskCancelled,
)
from .exceptions import (
    TaskFailed as TaskFailed,
)
from .exceptions import (
    TaskTimeout as TaskTimeout,
)
from .exceptions import (
    TmError as TmError,
)

__all__ = [
    "CronError",
    "CycleError",
    "ExecutorError",
    "GraphError",
    "RetriesExhausted",
    "StoreError",
    "TaskCancelled",
    "TaskFailed",
    "TaskTimeout",
    "TmError",
    "cron",
]
