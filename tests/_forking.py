"""A forked child that works in steps, the parent acting in between (no sleeps: pipes)."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Callable

import pytest


class SteppedChild:
    """Forks a child that runs ``steps`` in order: the first at once, each next one when the
    parent calls :meth:`next`. A step returns one line of text, which the parent gets back: the
    first step's as :attr:`first` (the constructor waits for it), the others from :meth:`next`,
    which after the last step also waits for the child to exit."""

    def __init__(self, *steps: Callable[[], str]) -> None:
        go_r, self._go = os.pipe()
        said_r, said_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                for i, step in enumerate(steps):
                    if i:
                        os.read(go_r, 1)
                    os.write(said_w, step().encode() + b"\n")
                code = 0
            finally:
                os._exit(code)
        os.close(go_r)
        os.close(said_w)
        self._said = os.fdopen(said_r)
        self._left = len(steps) - 1
        self.first = self._line()

    def _line(self) -> str:
        line = self._said.readline()
        if not line.endswith("\n"):
            _, status = os.waitpid(self.pid, 0)
            raise AssertionError(f"the child failed (exit {os.waitstatus_to_exitcode(status)})")
        return line[:-1]

    def next(self) -> str:
        """Lets the child take its next step; returns the step's text."""
        os.write(self._go, b"x")
        self._left -= 1
        text = self._line()
        if self._left == 0:
            os.close(self._go)
            self._said.close()
            _, status = os.waitpid(self.pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
        return text


def in_forked_child(work: Callable[[], str]) -> str:
    """Runs ``work`` in a forked child; returns the text it returned. Fails if the child does not
    answer within 20 s (it hangs; well before the suite's per-test timeout, so the hung child is
    killed) or fails."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(w, work().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 20)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        pytest.fail("a forked child hung")
    with os.fdopen(r) as f:
        said = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child failed"
    return said
