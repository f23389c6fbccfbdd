"""Several scheduler processes sharing one store fire each tick once: a fire is claimed by a
unique (graph, scheduled time) row committed with its run, so the losers skip it.

Real processes (``tm start``) on a ``* * * * * *`` schedule; the test waits on the store's state,
never for a fixed time.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tm

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SERVICE = textwrap.dedent(
    """
    import os

    import tm

    tick = tm.Graph("tick", schedule="* * * * * *")


    @tm.task
    def work(context):
        print("RUN", context.scheduled_at.isoformat(), os.getpid(), flush=True)


    tick.add(work)
    executor = tm.Executor(store=os.environ["DB"])
    executor.add(tick)
    """
)


def start(script: Path, db: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tm", "start", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, DB=db, PYTHONUNBUFFERED="1"),
    )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seconds", [60])
def test_three_schedulers_fire_each_tick_once(db_url: str, tmp_path: Path, seconds: int) -> None:
    if db_url.startswith("sqlite"):
        seconds = 10  # the same claim on SQLite; the full minute runs on PostgreSQL
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    procs = [start(script, db_url) for _ in range(3)]
    store = tm.Store(db_url)
    try:

        def ticks() -> list[int]:
            return [r["scheduled_us"] for r in store.core.list_runs(graph="tick", limit=None)]

        # Wait (on the store) until the schedule has run for the whole span.
        while True:
            for p in procs:
                assert p.poll() is None, p.communicate()[1]
            got = ticks()
            if got and max(got) - min(got) >= seconds * 1_000_000:
                break
            time.sleep(0.05)
    finally:
        outs = []
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            out, err = p.communicate(timeout=60)
            outs.append((p.returncode, out, err))
    for code, _out, err in outs:
        assert code == 0, err
    runs = ticks()
    assert len(runs) == len(set(runs)), "a tick was fired twice"
    # Every run ran once, in one process, and every second from the first fire to the last is
    # a run or a fire every process recorded as missed (a machine too loaded to fire in time).
    printed: collections.Counter[str] = collections.Counter()
    pids = set()
    for _code, out, _err in outs:
        for line in out.splitlines():
            if line.startswith("RUN "):
                _, at, pid = line.split()
                printed[at] += 1
                pids.add(pid)
    assert printed and max(printed.values()) == 1, printed.most_common(3)
    assert len(printed) == len(runs)
    missed: set[int] = set()
    for e in store.core.events(100_000):
        if e["kind"] == "missed":
            d = json.loads(e["detail_json"])
            missed.update(d["scheduled_us"] + i * 1_000_000 for i in range(d.get("count", 1)))
    first, last = min(runs), max(runs)
    for t in range(first, last + 1, 1_000_000):
        assert t in set(runs) or t in missed, f"the tick at {t} was neither fired nor recorded"
    assert last - first >= seconds * 1_000_000
    # Each loser logged that it stood down.
    assert sum(err.count("taken by another process") for _c, _o, err in outs) > 0
    store.close()
