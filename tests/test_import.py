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
