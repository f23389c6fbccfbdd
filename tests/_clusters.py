"""Helpers for the Dask and Ray pool tests: coordination with cluster workers through files."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIMIT = 20.0  # how long a "hanging" task hangs at most when nothing stops it
WAIT = 60.0  # how long a test waits for a condition before it fails


def poll(cond: Callable[[], Any], what: str, limit: float = WAIT) -> Any:
    """Returns ``cond()`` once it is truthy; fails the test past ``limit`` seconds."""
    end = time.monotonic() + limit
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def publish(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, so a reader polling for it never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(text)
    os.replace(tmp, path)


def read_pid(path: Path) -> int:
    return int(poll(lambda: path.exists() and path.read_text(), f"{path.name} to be written"))


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def spin_until(stop_file: str) -> int:
    """Burns CPU in pure Python until ``stop_file`` appears (at most LIMIT seconds)."""
    end = time.monotonic() + LIMIT
    n = 0
    while time.monotonic() < end:
        n += 1
        if n % 10_000 == 0 and os.path.exists(stop_file):
            break
    return os.getpid()


def hang_first_time(marker: str, pid_file: str, stop_file: str) -> int:
    """The first time (no ``marker`` yet): publishes its pid and spins until ``stop_file``
    appears, waiting to be killed. Afterwards: returns its pid at once."""
    if os.path.exists(marker):
        return os.getpid()
    publish(marker, "1")
    publish(pid_file, str(os.getpid()))
    return spin_until(stop_file)
