"""Graphs for the poison-input tests: importable by every process, while the submitter's own
``__main__`` defines a class no other process has.

Usage: _fleet_poison.py URL WHAT -- submits a distributed run (``WHAT`` is ``args``: a root
argument of a ``__main__`` class; ``result``: a plain run whose root, run here, returns one) and
prints the run id.
"""

from __future__ import annotations

import sys
from typing import Any

import tm


@tm.task(retries=1)
def root(p: Any) -> Any:
    return p


@tm.task
def child(root: Any) -> str:
    return f"got {root!r}"


def build() -> tm.Graph:
    g = tm.Graph("poison")
    g.add_edges([root], [child])
    return g


class Point:
    """Pickled as ``__main__.Point`` when this file runs as a script."""

    def __init__(self, x: int) -> None:
        self.x = x


if __name__ == "__main__":
    url, what = sys.argv[1:3]
    g = build()
    with tm.Executor(store=url, workers=1) as ex:
        if what == "args":
            run = ex.submit(g, kwargs={"p": Point(1)}, distributed=True)
        else:
            run = ex.submit(g, kwargs={"p": Point(2)}, distributed=True)
            # The root runs here, where __main__.Point exists; its result reaches the child's
            # executor as a pickle naming __main__.Point.
            assert ex.work([g], max_tasks=1) == 1
    print(run.run_id, flush=True)
