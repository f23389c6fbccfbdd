"""Task functions for process-pool tests.

They must be importable module-level functions: a ``tm.ProcessPool`` worker receives them by
pickle, i.e. by module and name. Coordination with the test process goes through files, never
through shared memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

LIMIT = 20.0  # how long a "hanging" task hangs at most when nothing stops it


def _publish(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, so a reader polling for it never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def whoami(x: Any = None) -> tuple[int, Any]:
    return os.getpid(), x


def double_items(items: list[int]) -> tuple[int, list[int]]:
    """Mutates its argument (a pickled copy in the worker) and returns it."""
    for i in range(len(items)):
        items[i] *= 2
    return os.getpid(), items


def count_primes(n: int) -> int:
    """A little CPU-bound Python."""
    return sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k**0.5) + 1)))


def raise_value_error(msg: str) -> None:
    raise ValueError(msg)


def exit_first_time(marker: str) -> int:
    """Kills its own worker process (``os._exit(3)``) unless ``marker`` exists; creates it first."""
    if not os.path.exists(marker):
        _publish(marker, str(os.getpid()))
        os._exit(3)
    return os.getpid()


def hang_first_time(marker: str, pid_file: str, stop_file: str) -> int:
    """The first time (no ``marker`` yet): publishes its pid and hangs until ``stop_file`` appears,
    waiting to be killed. Afterwards: returns its pid at once."""
    if os.path.exists(marker):
        return os.getpid()
    _publish(marker, "1")
    _publish(pid_file, str(os.getpid()))
    return spin_until(stop_file)


def spin(pid_file: str, stop_file: str) -> int:
    """Publishes its pid, then burns CPU in pure Python until ``stop_file`` appears."""
    _publish(pid_file, str(os.getpid()))
    return spin_until(stop_file)


def spin_until(stop_file: str) -> int:
    end = time.monotonic() + LIMIT
    n = 0
    while time.monotonic() < end:
        n += 1
        if n % 10_000 == 0 and os.path.exists(stop_file):
            break
    return os.getpid()


def unpicklable_result() -> Any:
    return lambda: None


def takes_anything(x: Any) -> str:
    return type(x).__name__
