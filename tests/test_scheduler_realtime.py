"""The scheduler in real time, as a service: ``tm start`` in a subprocess with a ``* * * * * *``
schedule, stopped with real signals and killed with SIGKILL. Every fire time from the first to the
last is accounted for exactly once in the store (a run, or a recorded skip/miss), and the run a
SIGKILL interrupted is resumed by the next start.

Synchronisation is on the service's own output (a line per task run), never on sleeps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import IO

import pytest

import tm

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

SERVICE = textwrap.dedent(
    """
    import os
    import time

    import tm

    tick = tm.Graph("tick", schedule="* * * * * *")


    @tm.task
    def work(context):
        trigger = context.meta["trigger"]
        print("RUN", trigger, context.scheduled_at.isoformat(), flush=True)
        if os.environ.get("BLOCK") and trigger != "resume":
            print("BLOCKING", flush=True)
            while True:  # interruptible: a cancel lands between two sleeps
                time.sleep(0.05)


    tick.add(work)
    executor = tm.Executor(store=os.environ["DB"])
    executor.add(tick, catchup="all", max_catchup=1000)
    """
)


def start(tmp_path: Path, block: bool = False) -> subprocess.Popen[str]:
    script = tmp_path / "service.py"
    script.write_text(SERVICE)
    env = dict(os.environ, DB=f"sqlite:///{tmp_path}/tm.db", PYTHONUNBUFFERED="1")
    env.pop("BLOCK", None)
    if block:
        env["BLOCK"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "tm", "start", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def read_until(out: IO[str], predicate, limit: int = 200) -> list[str]:
    lines = []
    for _ in range(limit):
        line = out.readline()
        assert line, f"the service exited early; got {lines}"
        lines.append(line.strip())
        if predicate(lines):
            return lines
    raise AssertionError(f"not seen in {limit} lines: {lines}")


def fire_times(store: tm.Store) -> tuple[list[int], list[int]]:
    """(scheduled times of runs, scheduled times of recorded skips and misses), in microseconds."""
    runs = [r["scheduled_us"] for r in store.core.list_runs(graph="tick", limit=None)]
    recorded: list[int] = []
    for e in store.core.events(100_000):
        if e["kind"] not in ("skipped", "missed"):
            continue
        d = json.loads(e["detail_json"])
        first, count = d["scheduled_us"], d.get("count", 1)
        recorded.extend(first + i * 1_000_000 for i in range(count))
    return runs, recorded


def test_a_seconds_schedule_survives_sigterm_and_sigkill_without_losing_or_repeating_fires(
    tmp_path: Path,
) -> None:
    # 1. Fires happen; one SIGTERM stops gracefully with status 0.
    p = start(tmp_path)
    assert p.stdout is not None
    read_until(p.stdout, lambda ls: sum(x.startswith("RUN schedule") for x in ls) >= 3)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "fired the run scheduled at" in err

    # 2. A run is in progress when the process is killed hard.
    p = start(tmp_path, block=True)
    assert p.stdout is not None
    read_until(p.stdout, lambda ls: ls[-1] == "BLOCKING")
    p.kill()
    p.communicate(timeout=20)
    assert p.returncode == -signal.SIGKILL

    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    interrupted = store.core.list_runs(graph="tick", state="running", limit=None)
    assert len(interrupted) == 1
    run_id = interrupted[0]["run_id"]
    store.close()

    # 3. The next start resumes it (same run, same logical time) and keeps firing.
    p = start(tmp_path)
    assert p.stdout is not None
    lines = read_until(
        p.stdout,
        lambda ls: (
            any(x.startswith("RUN resume") for x in ls)
            and sum(x.startswith("RUN schedule") for x in ls) >= 2
        ),
    )
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert f"resuming interrupted run {run_id}" in err
    (resumed,) = [x for x in lines if x.startswith("RUN resume")]

    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    try:
        run = store.run(run_id)
        assert run is not None and run["state"] == "completed"
        assert resumed.split()[2].startswith(
            tm.executor._dt(run["scheduled_us"]).isoformat()  # type: ignore[arg-type]
        )
        assert store.core.list_runs(graph="tick", state="running", limit=None) == []
        runs, recorded = fire_times(store)
        assert len(set(runs)) == len(runs), "a fire ran twice"
        every = runs + recorded
        assert len(set(every)) == len(every), "a fire was both run and recorded as not run"
        first, last = min(every), max(every)
        assert sorted(every) == list(range(first, last + 1, 1_000_000)), "a fire was lost"
        assert len(runs) >= 6
        assert {r["trigger"] for r in store.runs("tick", limit=None)} >= {"schedule"}
    finally:
        store.close()


def test_a_second_signal_cancels_running_runs_and_exits_promptly(tmp_path: Path) -> None:
    p = start(tmp_path, block=True)
    assert p.stdout is not None and p.stderr is not None
    read_until(p.stdout, lambda ls: ls[-1] == "BLOCKING")
    p.send_signal(signal.SIGINT)
    # The first signal only stops firing: the service says it waits for the blocked run.
    read_until(p.stderr, lambda ls: "waiting for 1 running run(s)" in ls[-1])
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    assert "cancelling 1 running run(s)" in err
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    try:
        states = {r["state"] for r in store.runs("tick", limit=None)}
        assert states == {"cancelled"}
    finally:
        store.close()


def test_tm_start_finds_scheduled_graphs_in_a_file_and_logs_each_fire(tmp_path: Path) -> None:
    script = tmp_path / "graphs_only.py"
    script.write_text(
        textwrap.dedent(
            """
            import tm

            every_second = tm.Graph("every_second", schedule="* * * * * *")
            manual = tm.Graph("manual_one")


            @tm.task
            def hello(context):
                print("RUN", context.meta["trigger"], flush=True)


            every_second.add(hello)

            if __name__ == "__main__":
                raise SystemExit("tm start must not run the __main__ block")
            """
        )
    )
    p = subprocess.Popen(
        [sys.executable, "-m", "tm", "start", str(script), "--db", f"sqlite:///{tmp_path}/t.db"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.stdout is not None
    read_until(p.stdout, lambda ls: ls[-1] == "RUN schedule")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "every_second: fired the run scheduled at" in err
    assert "manual_one" not in err


def test_tm_start_and_status_report_bad_targets(tmp_path: Path) -> None:
    empty = tmp_path / "nothing.py"
    empty.write_text("x = 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "tm", "start", str(empty)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "no tm.Executor and no scheduled tm.Graph" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "tm", "start", "json:dumps"], capture_output=True, text=True
    )
    assert r.returncode == 2 and "not a tm.Executor" in r.stderr
    status = [sys.executable, "-m", "tm", "status", "--db", f"sqlite:///{tmp_path}/s.db"]
    r = subprocess.run(status, capture_output=True, text=True)
    assert r.returncode == 1 and "no tm database" in r.stderr  # nothing is created to say so
    assert not (tmp_path / "s.db").exists()
    with tm.Store(f"sqlite:///{tmp_path}/s.db") as made:
        made.flush()  # an empty store
    r = subprocess.run(status, capture_output=True, text=True)
    assert r.returncode == 0 and "no scheduled graphs" in r.stdout
