"""Backfills (``tm backfill``, ``Executor.backfill``): one run per fire time of a past range, each
logical time exactly once across a SIGKILL and a rerun, ``--reprocess failed`` re-running exactly
the failed times, ``--dry-run``, and the fire claims shared with schedulers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

import tm
from tm import Executor, Graph, task

UTC = timezone.utc
WAIT = 120  # seconds: a bound for a hung test, never a synchronisation

FLOW = """
import json
import os
import time
import tm

here = os.path.dirname(os.path.abspath(__file__))
hourly = tm.Graph("hourly", schedule="0 * * * *")

@tm.task
def work(context):
    hour = context.scheduled_at.strftime("%d %H")
    block = os.path.join(here, "block")
    if hour == "01 10" and os.path.exists(block):
        while os.path.exists(block):  # held here until the test kills the process
            time.sleep(0.01)
    with open(os.path.join(here, "log"), "a") as f:
        f.write(hour + "\\n")
    fail = os.path.join(here, "fail.json")
    if os.path.exists(fail) and hour in json.load(open(fail)):
        raise RuntimeError("failed at " + hour)

hourly.add(work)
"""


def backfill(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "tm", "backfill", "flow.py",
            "--from", "2026-01-01T00:00", "--to", "2026-01-02T23:00",
            "--db", f"sqlite:///{tmp_path}/tm.db", *args,
        ],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(p: subprocess.Popen[str]) -> tuple[int, str]:
    out, err = p.communicate(timeout=WAIT)
    assert "Traceback" not in err, err
    return p.returncode, out


def test_48_hourly_times_once_each_across_a_kill_and_a_reprocess(tmp_path: Path) -> None:
    (tmp_path / "flow.py").write_text(textwrap.dedent(FLOW))
    (tmp_path / "fail.json").write_text(json.dumps(["01 05", "01 07"]))
    (tmp_path / "block").write_text("")
    p = backfill(tmp_path)
    assert p.stdout is not None
    for line in p.stdout:  # runs go one at a time: hour 10 is held while 0-9 are done
        if line.startswith("2026-01-01T10:00:00+00:00 run: started"):
            break
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=WAIT)
    (tmp_path / "block").unlink()
    log = (tmp_path / "log").read_text().split()
    assert len(log) == 20 and log[-1] == "09"  # ("01", "HH") pairs for hours 0-9

    # Run again: hour 10 (left running by the dead process) is resumed, 11 onwards run, and the
    # two failed hours stay failed.
    code, out = finish(backfill(tmp_path))
    assert code == 1
    assert "2026-01-01T10:00:00+00:00 resume: completed" in out
    assert "2026-01-01T05:00:00+00:00 keep: failed" in out
    assert out.splitlines()[-1] == "backfill of hourly: 48 time(s): 46 completed, 2 failed"

    (tmp_path / "fail.json").unlink()
    code, out = finish(backfill(tmp_path, "--reprocess", "failed", "--dry-run"))
    assert code == 0
    assert [line.split()[1] for line in out.splitlines()].count("resume") == 2
    code, out = finish(backfill(tmp_path, "--reprocess", "failed", "--max-active", "4"))
    assert code == 0, out
    assert out.splitlines()[-1] == "backfill of hourly: 48 time(s): 48 completed"

    hours = Counter(
        " ".join(pair)
        for pair in zip(*[iter((tmp_path / "log").read_text().split())] * 2, strict=True)
    )
    assert len(hours) == 48
    assert {h for h, n in hours.items() if n != 1} == {"01 05", "01 07"}
    assert hours["01 05"] == hours["01 07"] == 2

    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    runs = store.runs(graph="hourly", limit=100)
    assert len(runs) == 48  # resumed runs keep their ids: one run per logical time
    assert len({r["scheduled_us"] for r in runs}) == 48
    assert all(r["state"] == "completed" and r["trigger"] == "backfill" for r in runs)
    store.close()


def test_a_backfill_shares_fire_claims_with_schedulers(tmp_path: Path) -> None:
    seen: list[datetime] = []
    release = threading.Event()
    g = Graph("daily", schedule="0 6 * * *", tz="Europe/London")

    @task
    def work(context):
        if context.scheduled_at.day == 30:
            assert release.wait(WAIT)
        seen.append(context.scheduled_at)

    g.add(work)
    store = tm.Store(f"sqlite:///{tmp_path}/tm.db")
    with Executor(store=store, workers=4) as ex:
        # A scheduler fired one of the days already, and is running another right now.
        fired, running = (
            {"scheduled_at": datetime(2026, 3, day, 5, tzinfo=UTC), "trigger": "schedule"}
            for day in (29, 30)
        )
        done_record, live_record = ex._begin_records([(g, fired), (g, running)], fires=True)
        ex.submit(g, meta=fired, _record=done_record).wait()
        live = ex.submit(g, meta=running, _record=live_record)
        items = ex.backfill(g, datetime(2026, 3, 28), datetime(2026, 3, 31, 6))
        release.set()
        live.wait()
    assert [(i.scheduled_at.isoformat(), i.action, i.state) for i in items] == [
        ("2026-03-28T06:00:00+00:00", "run", "completed"),
        ("2026-03-29T06:00:00+01:00", "keep", "completed"),
        ("2026-03-30T06:00:00+01:00", "busy", "running"),
        ("2026-03-31T06:00:00+01:00", "run", "completed"),
    ]
    assert [t.astimezone(UTC).isoformat() for t in seen] == [
        "2026-03-29T05:00:00+00:00",
        "2026-03-28T06:00:00+00:00",
        "2026-03-31T05:00:00+00:00",
        "2026-03-30T05:00:00+00:00",
    ]
    store.close()


def test_bad_backfills_are_clear_errors(tmp_path: Path) -> None:
    g = Graph("g", schedule="* * * * *")
    manual = Graph("m")
    with Executor(store=tm.Store(f"sqlite:///{tmp_path}/tm.db")) as ex:
        for kwargs, error, match in [
            ({"reprocess": "some"}, ValueError, "reprocess must be one of"),
            ({"max_active": 0}, ValueError, "max_active"),
        ]:
            with pytest.raises(error, match=match):
                ex.backfill(g, datetime(2026, 1, 1), datetime(2026, 1, 2), **kwargs)
        with pytest.raises(ValueError, match=r"ends .* before it starts"):
            ex.backfill(g, datetime(2026, 1, 2), datetime(2026, 1, 1))
        with pytest.raises(ValueError, match="more than 100000 fire times"):
            ex.backfill(g, datetime(2026, 1, 1), datetime(2026, 12, 1), dry_run=True)
        with pytest.raises(tm.ExecutorError, match="no schedule"):
            ex.backfill(manual, datetime(2026, 1, 1), datetime(2026, 1, 2))
    with Executor() as ex, pytest.raises(tm.ExecutorError, match="needs an executor with a store"):
        ex.backfill(g, datetime(2026, 1, 1), datetime(2026, 1, 2))
    assert not os.path.exists(tmp_path / "tm.db")  # refused before anything was recorded
