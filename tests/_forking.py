"""A forked child that works in two steps, the parent acting in between (no sleeps: pipes)."""

from __future__ import annotations

import os
from collections.abc import Callable


class TwoStepChild:
    """Forks a child that runs ``first()``, waits for :meth:`go`, then runs ``then()`` and sends
    back the text it returns. The constructor returns once ``first()`` is done."""

    def __init__(self, first: Callable[[], None], then: Callable[[], str]) -> None:
        ready_r, ready_w = os.pipe()
        go_r, self._go_w = os.pipe()
        self._done_r, done_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            code = 1
            try:
                first()
                os.write(ready_w, b"x")
                os.read(go_r, 1)
                os.write(done_w, then().encode())
                code = 0
            finally:
                os._exit(code)
        for fd in (ready_w, go_r, done_w):
            os.close(fd)
        with os.fdopen(ready_r, "rb") as ready:
            assert ready.read(1) == b"x", "the child failed in its first step"

    def go(self) -> str:
        """Lets the child take its second step; returns what it sent once it has exited."""
        os.write(self._go_w, b"x")
        os.close(self._go_w)
        with os.fdopen(self._done_r) as done:
            text = done.read()
        _, status = os.waitpid(self.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
        return text
