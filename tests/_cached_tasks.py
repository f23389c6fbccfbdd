"""Cached functions shared by the test process and the worker processes it starts.

Run as a script, this module is a worker: ``python _cached_tasks.py DB RESULT_DIR GATE X [skip]``
calls :func:`gated` (through a store on DB and RESULT_DIR) and prints the result as JSON, or
``in-progress`` when ``skip`` is given and the call is running elsewhere.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import tm


def gated(x: int, gate: str) -> dict[str, Any]:
    """Records that it runs (one line per run in GATE/runs), then waits for GATE/release."""
    g = Path(gate)
    with open(g / "runs", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    (g / f"started-{os.getpid()}").touch()
    # Synchronised by a file the test creates; the poll only bounds how soon this sees it.
    while not (g / "release").exists():
        time.sleep(0.002)
    return {"x": x, "pid": os.getpid()}


def main(argv: list[str]) -> int:
    db, result_dir, gate, x = argv[:4]
    skip = len(argv) > 4 and argv[4] == "skip"
    store = tm.Store(db, result_dir=result_dir)
    fn = store.task(gated, skip_if_in_progress=skip)
    (Path(gate) / f"calling-{os.getpid()}").touch()
    try:
        out = fn(int(x), gate)
    except tm.TaskInProgress:
        print("in-progress", flush=True)
        return 0
    print(json.dumps(out), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    # Import the function under its module name so the key matches the test process's calls.
    import _cached_tasks

    sys.exit(_cached_tasks.main(sys.argv[1:]))
