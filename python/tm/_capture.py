"""What a task prints, kept as its log: ``sys.stdout`` is wrapped (once, when a recorded run's
task first runs) by a stand-in that passes everything through and copies each line printed on a
task's own thread to that task's log in the store, at INFO.

Only the task's thread is seen: what an ``async`` task prints (on the event loop's thread) and
what a ``ProcessPool`` task prints (in its worker process) is not copied.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

_local = threading.local()
_install = threading.Lock()


class _Lines:
    """The log of one task call: collects what it prints and keeps each whole line."""

    __slots__ = ("core", "node", "partial", "run_id")

    def __init__(self, core: Any, run_id: str, node: int) -> None:
        self.core = core
        self.run_id = run_id
        self.node = node
        self.partial = ""

    def take(self, text: str) -> None:
        text = self.partial + text
        *lines, self.partial = text.split("\n")
        for line in lines:
            self.keep(line)

    def keep(self, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        with contextlib.suppress(Exception):  # a closed store must not break the task
            self.core.append_log(self.run_id, self.node, int(time.time() * 1e6), "INFO", line)

    def close(self) -> None:
        if self.partial:
            self.keep(self.partial)
            self.partial = ""


class _Tee:
    """Stands in for ``sys.stdout``: writes go through to the real stream, and a copy of what a
    task prints on its own thread goes to its log."""

    def __init__(self, stream: Any) -> None:
        self._tm_stream = stream

    def write(self, text: str) -> int:
        n = self._tm_stream.write(text)
        lines = getattr(_local, "lines", None)
        if lines is not None and isinstance(text, str):
            lines.take(text)
        return n  # type: ignore[no-any-return]

    def writelines(self, texts: Any) -> None:
        for t in texts:
            self.write(t)

    def flush(self) -> None:
        self._tm_stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tm_stream, name)


def _installed() -> None:
    if isinstance(sys.stdout, _Tee) or sys.stdout is None:
        return
    with _install:
        if not isinstance(sys.stdout, _Tee) and sys.stdout is not None:
            sys.stdout = _Tee(sys.stdout)


@contextlib.contextmanager
def quiet() -> Any:
    """Copies nothing to the task's log meanwhile (a log record that a handler writes to stdout
    is kept by the task's logger already)."""
    lines = getattr(_local, "lines", None)
    _local.lines = None
    try:
        yield
    finally:
        _local.lines = lines


class PrintCapture:
    """Handed to the engine for one recorded run: entered and left around each task call on the
    task's thread."""

    __slots__ = ("core", "run_id")

    def __init__(self, core: Any, run_id: str) -> None:
        self.core = core
        self.run_id = run_id

    def enter(self, node: int) -> Any:
        _installed()
        outer = getattr(_local, "lines", None)
        _local.lines = _Lines(self.core, self.run_id, node)
        return outer

    def exit(self, outer: Any) -> None:
        lines = getattr(_local, "lines", None)
        _local.lines = outer
        if lines is not None:
            lines.close()
