"""What a task prints, kept as its log: ``sys.stdout`` is wrapped (once, when the first recorded
run starts) by a stand-in that passes everything through and copies each line printed on a
task's own thread to that task's log in the store, at INFO.

The engine keeps, per worker thread, which task call of a recorded run is running there
(``tm._tm.print_target``), so a task that prints nothing costs nothing; the fleet's worker
threads say it through :meth:`PrintCapture.enter`. Only the task's thread is seen: what an
``async`` task prints (on the event loop's thread) and what a ``ProcessPool`` task prints (in its
worker process) is not copied.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any

from ._tm import print_target

_local = threading.local()
_install = threading.Lock()


class _Tee:
    """Stands in for ``sys.stdout``: writes go through to the real stream, and a copy of what a
    task prints on its own thread goes to its log."""

    def __init__(self, stream: Any) -> None:
        self._tm_stream = stream

    def write(self, text: str) -> int:
        n = self._tm_stream.write(text)
        if isinstance(text, str) and not getattr(_local, "quiet", False):
            target = print_target() or getattr(_local, "target", None)
            if target is not None:
                target[0].take(target[1], text)
        return n  # type: ignore[no-any-return]

    def writelines(self, texts: Any) -> None:
        for t in texts:
            self.write(t)

    def flush(self) -> None:
        self._tm_stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tm_stream, name)


def install() -> None:
    """Puts the stand-in in place (again, if something replaced ``sys.stdout`` since)."""
    if sys.stdout.__class__ is _Tee or sys.stdout is None:
        return
    with _install:
        if sys.stdout.__class__ is not _Tee and sys.stdout is not None:
            sys.stdout = _Tee(sys.stdout)


@contextlib.contextmanager
def quiet() -> Any:
    """Copies nothing to the task's log meanwhile (a log record that a handler writes to stdout
    is kept by the task's logger already)."""
    before = getattr(_local, "quiet", False)
    _local.quiet = True
    try:
        yield
    finally:
        _local.quiet = before


class PrintCapture:
    """The print capture of one recorded run: keeps each whole line a task call prints as its
    log; a last line without a newline is kept when the call ends (:meth:`done`)."""

    __slots__ = ("core", "partial", "run_id")

    def __init__(self, core: Any, run_id: str) -> None:
        self.core = core
        self.run_id = run_id
        # (thread, node) -> the unfinished line of that call.
        self.partial: dict[tuple[int, int], str] = {}

    def take(self, node: int, text: str) -> None:
        key = (threading.get_ident(), node)
        *lines, rest = (self.partial.pop(key, "") + text).split("\n")
        if rest:
            self.partial[key] = rest
        for line in lines:
            self._keep(node, line)

    def done(self, node: int) -> None:
        """The call of ``node`` on this thread ended."""
        rest = self.partial.pop((threading.get_ident(), node), None)
        if rest:
            self._keep(node, rest)

    def _keep(self, node: int, line: str) -> None:
        line = line.rstrip("\r")
        if not line.strip():
            return
        with contextlib.suppress(Exception):  # a closed store must not break the task
            self.core.append_log(self.run_id, node, int(time.time() * 1e6), "INFO", line)

    # For task calls the engine does not run (the fleet's worker threads).

    def enter(self, node: int) -> Any:
        install()
        outer = getattr(_local, "target", None)
        _local.target = (self, node)
        return outer

    def exit(self, outer: Any) -> None:
        current = getattr(_local, "target", None)
        _local.target = outer
        if current is not None:
            self.done(current[1])
