"""A forked child that works in steps, the parent acting in between (no sleeps: pipes)."""

from __future__ import annotations

import os
from collections.abc import Callable


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
