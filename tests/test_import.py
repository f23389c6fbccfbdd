"""``import tm`` starts nothing: no thread, no runtime, no file."""

from __future__ import annotations

import subprocess
import sys


def test_import_starts_no_thread_and_creates_no_file(tmp_path) -> None:
    script = (
        "import os, threading\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "import tm, tm.cron, tm.taskflow\n"
        "g = tm.Graph('x')\n"
        "ex = tm.Executor(workers=4)\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert len(os.listdir('/proc/self/task')) == before\n"
        "assert os.listdir('.') == []\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_import_and_cluster_pools_do_not_import_dask_or_ray() -> None:
    script = (
        "import sys\n"
        "import tm\n"
        "ex = tm.Executor(pools={'d': tm.DaskPool(), 'r': tm.RayPool()})\n"
        "g = tm.Graph('x')\n"
        "g.add(tm.task(lambda: 1, tag='d'))\n"
        "ex.shutdown()\n"
        "heavy = [m for m in ('dask', 'distributed', 'ray', 'cloudpickle') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
