"""tm: task orchestration with a Rust core.

Importing tm starts nothing: no thread, no runtime, no file.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from . import config as config
from . import cron as cron
from ._cached import CachedFunction as CachedFunction
from ._cached import cached as cached
from ._cluster import DaskPool as DaskPool
from ._cluster import RayPool as RayPool
from ._decorators import TaskFunction as TaskFunction
from ._decorators import task as task
from ._runners import ProcessPool as ProcessPool
from ._runners import WorkerCrashed as WorkerCrashed
from ._scheduler import VirtualClock as VirtualClock
from .exceptions import CacheError as CacheError
from .exceptions import CacheKeyError as CacheKeyError
from .exceptions import CronError as CronError
from .exceptions import CycleError as CycleError
from .exceptions import ExecutorError as ExecutorError
from .exceptions import GraphError as GraphError
from .exceptions import RetriesExhausted as RetriesExhausted
from .exceptions import SignatureError as SignatureError
from .exceptions import StoreError as StoreError
from .exceptions import TaskCancelled as TaskCancelled
from .exceptions import TaskFailed as TaskFailed
from .exceptions import TaskInProgress as TaskInProgress
from .exceptions import TaskTimeout as TaskTimeout
from .exceptions import TmError as TmError
from .executor import Attempt as Attempt
from .executor import Event as Event
from .executor import Executor as Executor
from .executor import Run as Run
from .executor import StoredRun as StoredRun
from .executor import TaskRun as TaskRun
from .graph import Graph as Graph
from .schedules import Interval as Interval
from .schedules import every as every
from .store import Store as Store
from .taskflow import Task as Task
from .taskflow import TaskStatus as TaskStatus

try:
    __version__ = _version("tm-orchestrate")
except _PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Attempt",
    "CacheError",
    "CacheKeyError",
    "CachedFunction",
    "CronError",
    "CycleError",
    "DaskPool",
    "Event",
    "Executor",
    "ExecutorError",
    "Graph",
    "GraphError",
    "Interval",
    "ProcessPool",
    "RayPool",
    "RetriesExhausted",
    "Run",
    "SignatureError",
    "Store",
    "StoreError",
    "StoredRun",
    "Task",
    "TaskCancelled",
    "TaskFailed",
    "TaskFunction",
    "TaskInProgress",
    "TaskRun",
    "TaskStatus",
    "TaskTimeout",
    "TmError",
    "VirtualClock",
    "WorkerCrashed",
    "cached",
    "config",
    "cron",
    "every",
    "task",
]
