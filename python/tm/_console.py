"""What the CLI commands print on stderr without any logging configuration: a failed task or
run, a retry and a missed fire are one line each (their tracebacks are in the store: ``tm show
RUN``). Library users are not affected: only the commands call :func:`setup`."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OneLine(logging.Formatter):
    """Formats the engine's records (logger ``tm``) on one line: the exception's type and
    message are already in them, the traceback is left out. Other loggers (tasks' own) keep
    their tracebacks."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info and record.name == "tm":
            saved = record.exc_info, record.exc_text
            record.exc_info, record.exc_text = None, None
            try:
                return super().format(record)
            finally:
                record.exc_info, record.exc_text = saved
        return super().format(record)


def setup(level: int, stream: TextIO | None = None) -> None:
    """Sends log records of ``level`` and above to stderr, one line each for tm's own, unless the
    process has configured logging already (as ``logging.basicConfig`` would)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(OneLine(FORMAT))
    root.addHandler(handler)
    root.setLevel(level)
