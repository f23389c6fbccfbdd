"""Many real processes share one queue: every task is claimed once and completed once, none lost;
workers killed with SIGKILL mid-task lose nothing (their tasks come back when the lease expires).

Each worker appends to its own log file ("claim ID ATTEMPT", "done ID ATTEMPT OK"), flushed line
by line, so the logs of a killed worker are complete up to its death. Synchronisation is by
events only (a worker prints a line, the test reads it); nothing sleeps.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tm.queue import TaskManager

WORKER = r"""
import sys
from tm.queue import TaskManager

path, agent, log_path, lease_hours, mode, hang_after = sys.argv[1:7]
hang_after = int(hang_after)
tm = TaskManager(path, lock_timeout=60, task_timeout_hours=float(lease_hours))
total = None
done = 0
with open(log_path, "a", buffering=1) as log:
    while True:
        if mode == "drain":
            task = tm.get_next_task(agent)
            if task is None:
                break
        else:  # "until-all-done": wait for work until every task is completed
            task = tm.get_next_task(agent, wait=0.2)
            if task is None:
                s = tm.get_status_summary()
                if s["status_counts"].get("completed", 0) == s["total_tasks"]:
                    break
                continue
        log.write(f"claim {task['id']} {task['attempt']}\n")
        if done == hang_after:
            # Mid-task: tell the test, then wait to be killed.
            print(f"HANG {task['id']}", flush=True)
            sys.stdin.readline()
            raise SystemExit("not killed")
        ok = tm.complete_task(task["id"], agent, result_data={"by": agent}, attempt=task["attempt"])
        log.write(f"done {task['id']} {task['attempt']} {ok}\n")
        done += ok
print("EXIT", flush=True)
"""


def start(
    script: Path,
    path: Path | str,
    agent: str,
    logs: Path,
    lease_hours: float,
    mode: str,
    hang_after: int = -1,
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(script),
            str(path),
            agent,
            str(logs / f"{agent}.log"),
            repr(lease_hours),
            mode,
            str(hang_after),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def read_logs(logs: Path) -> tuple[collections.Counter[str], collections.Counter[str], dict]:
    claims: collections.Counter[str] = collections.Counter()
    completions: collections.Counter[str] = collections.Counter()
    refused: dict[str, int] = collections.Counter()
    for f in logs.glob("*.log"):
        for line in f.read_text().splitlines():
            parts = line.split()
            if parts[0] == "claim":
                claims[parts[1]] += 1
            elif parts[3] == "True":
                completions[parts[1]] += 1
            else:
                refused[parts[1]] += 1
    return claims, completions, refused


def setup(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, n: int
) -> tuple[Path, Path, Path | str, set[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    logs = tmp_path / "logs"
    logs.mkdir()
    # "postgresql": a fresh database on the session's real server (tests/pg.py).
    path: Path | str = (
        request.getfixturevalue("pg_server").create_db()
        if name == "postgresql"
        else tmp_path / name
    )
    ids = set(TaskManager(path).create_tasks([("job", {"n": i}) for i in range(n)]))
    assert len(ids) == n
    return script, logs, path, ids


def wait_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
        assert "EXIT" in out


@pytest.mark.parametrize(("name", "n"), [("q.db", 10_000), ("q.json", 300), ("postgresql", 3_000)])
def test_eight_processes_claim_and_complete_every_task_once(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, n: int
) -> None:
    script, logs, path, ids = setup(request, tmp_path, name, n)
    procs = [start(script, path, f"w{i}", logs, 24, "drain") for i in range(8)]
    wait_all(procs)
    claims, completions, refused = read_logs(logs)
    assert set(claims) == ids and set(claims.values()) == {1}, "each task claimed exactly once"
    assert set(completions) == ids and set(completions.values()) == {1}, "completed once"
    assert not refused
    tm = TaskManager(path)
    assert tm.get_status_summary()["status_counts"] == {"completed": n}
    for t in tm.list_tasks(limit=50):
        assert t["attempt"] == 1 and t["data"]["result"]["by"] == t["locked_by"]


@pytest.mark.parametrize(("name", "n"), [("q.db", 400), ("q.json", 100), ("postgresql", 400)])
def test_sigkilled_workers_lose_no_task(
    request: pytest.FixtureRequest, tmp_path: Path, name: str, n: int
) -> None:
    lease_hours = 0.5 / 3600  # half a second
    script, logs, path, ids = setup(request, tmp_path, name, n)
    # Four workers each complete a few tasks, claim one more and stop mid-task; once all four
    # are stuck, four healthy workers start, and the stuck ones are killed while those work.
    victims = [
        start(script, path, f"victim{i}", logs, lease_hours, "until-all-done", hang_after=3 * i)
        for i in range(4)
    ]
    hung: list[str] = []
    for v in victims:
        assert v.stdout is not None
        line = v.stdout.readline().split()
        assert line[0] == "HANG", line
        hung.append(line[1])
    workers = [start(script, path, f"w{i}", logs, lease_hours, "until-all-done") for i in range(4)]
    for v in victims:
        os.kill(v.pid, signal.SIGKILL)
        v.communicate(timeout=30)
        assert v.returncode == -signal.SIGKILL
    wait_all(workers)

    claims, completions, _refused = read_logs(logs)
    assert set(completions) == ids, "no task lost"
    assert set(completions.values()) == {1}, "each task completed exactly once"
    tm = TaskManager(path)
    assert tm.get_status_summary()["status_counts"] == {"completed": n}
    for task_id in hung:
        t = tm.get_task(task_id)
        assert t["status"] == "completed"
        assert t["attempt"] >= 2, "came back after the lease expired"
        assert not t["locked_by"].startswith("victim"), "finished by a live worker"
        assert claims[task_id] >= 2
