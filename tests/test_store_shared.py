"""Two executor processes record runs into ONE database file while the CLI reads it.

No "database is locked" may reach anyone: the writers' batches wait for each other inside SQLite's
busy timeout (and retry beyond it), and readers read WAL snapshots without blocking the writers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tm

WRITER = """
import sys
import tm

url, tag, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
g = tm.Graph(f"g-{tag}")
prev = None
for i in range(20):
    t = tm.task(lambda **_: 1, name=f"t{i}")
    g.add(t, depends_on=[prev] if prev is not None and i % 2 else [])
    prev = t
store = tm.Store(url)
with tm.Executor(workers=4, store=store) as ex:
    for _ in range(runs):
        assert ex.run(g).state == "completed"
store.close()
print("done")
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tm", *args], capture_output=True, text=True, timeout=60
    )


def test_two_executor_processes_write_one_file_while_the_cli_reads(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/shared.db"
    runs_each = 25
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, tag, str(runs_each)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    reads = 0
    while any(p.poll() is None for p in writers) or reads < 2:
        listed = cli("runs", "--db", url, "--json", "-n", "5")
        assert listed.returncode == 0, listed.stderr
        assert "locked" not in listed.stderr
        for run in json.loads(listed.stdout):
            shown = cli("show", run["run_id"], "--db", url, "--json")
            assert shown.returncode == 0, shown.stderr
            assert "locked" not in shown.stderr
            assert json.loads(shown.stdout)["run_id"] == run["run_id"]
        reads += 1
    for p in writers:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert out.strip() == "done"
        assert "locked" not in err
    store = tm.Store(url)
    runs = store.runs(limit=None)
    assert len(runs) == 2 * runs_each
    assert {r["state"] for r in runs} == {"completed"}
    for r in runs[:5]:
        detail = store.run(r["run_id"])
        assert detail is not None
        assert [t["status"] for t in detail["tasks"]] == ["completed"] * 20
    store.close()
