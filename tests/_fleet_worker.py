"""An executor process serving the distributed-run tests' graph until a run ends.

Usage: _fleet_worker.py URL RUN_ID WORKERS LEASE WIDTH LAYERS
"""

from __future__ import annotations

import logging
import sys

import _fleet_graph

import tm

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    url, run_id, workers, lease, width, layers = sys.argv[1:7]
    g = _fleet_graph.build(int(width), int(layers))
    with tm.Executor(store=url, workers=int(workers), lease=float(lease)) as ex:
        ran = ex.work([g], run_id=run_id)
    print(f"ran {ran}")
