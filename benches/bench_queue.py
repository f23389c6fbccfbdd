"""Benchmark the agent queue (``tm.queue.TaskManager``) against its peers, in one run.

Usage:
    python benches/bench_queue.py            # full run, about eight minutes
    python benches/bench_queue.py --quick    # tiny stores and runs: a smoke test only

Workload: a store already holding N pending tasks (1,000 and 20,000); 1, 2 or 8 worker processes
each loop "claim the next task, complete it" until the store is drained or the run's time is up.
The figure is tasks claimed and completed per second, all processes together (each task is one
claim and one completion). Every contender runs in the same persistent worker processes, which open
their store before a common start signal, so process start-up and imports are not timed.

Contenders:
- tm sqlite: ``TaskManager("q.db")``, the SQLite backend (WAL, synchronous=NORMAL);
- tm json: ``TaskManager("q.json")``, the seed's state file, Rust core (lock file, fsync + rename);
- seed json: the seed's design in pure Python, written here: ``fcntl.flock`` on a lock file, then
  ``json.load`` the whole file, change one task, ``json.dump(indent=2)`` to a temporary file and
  rename, on every operation (the seed does not fsync; this does not either);
- huey: ``huey.storage.SqliteStorage`` (huey's SQLite backend, its defaults): claim is
  ``dequeue()``, completion is ``put_data(key, result)`` (huey's result store);
- sqlite3: Python's ``sqlite3``, a WAL table (synchronous=NORMAL, like tm), claim with one
  ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``, completion with one ``UPDATE``;
- tm sqlite batch, tm json batch: tm's batch calls, ``get_next_tasks(agent, max_tasks=16)`` then
  ``complete_tasks(tasks, agent)``: one transaction (or one rewrite of the JSON file) per 16 claims
  and one per 16 completions. Not the seed's API, so not part of the one-at-a-time comparison: it
  shows what an agent that takes work in batches gets.

Durability differs: huey's default is synchronous=FULL (an fsync per commit); tm sqlite and sqlite3
use synchronous=NORMAL (safe against crashes and kills, not against power loss); tm json fsyncs
every write; seed json never does.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib.metadata import version
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import _results

# ---------------------------------------------------------------------------------------------
# The seed's design in pure Python (what seed 001's task manager does on every operation).


class SeedTaskManager:
    """A seed-style JSON state file: flock, read everything, change, write everything, rename."""

    def __init__(self, state_file: Path, lock_timeout: float = 5, task_timeout_hours: float = 24):
        self.state_file = Path(state_file)
        self.lock_file = self.state_file.with_suffix(".lock")
        self.lock_timeout = lock_timeout
        self.task_timeout = timedelta(hours=task_timeout_hours)
        if not self.state_file.exists():
            now = datetime.now().isoformat()
            with self._lock():
                self._write(
                    {"workflow_type": "generic", "metadata": {"initialized_at": now}, "tasks": {}}
                )

    def _lock(self) -> Any:
        manager = self

        class _Lock:
            def __enter__(self) -> None:
                self.f = open(manager.lock_file, "w")
                fcntl.flock(self.f, fcntl.LOCK_EX)

            def __exit__(self, *exc: object) -> None:
                fcntl.flock(self.f, fcntl.LOCK_UN)
                self.f.close()

        return _Lock()

    def _read(self) -> dict[str, Any]:
        with open(self.state_file) as f:
            return json.load(f)

    def _write(self, state: dict[str, Any]) -> None:
        state["metadata"]["last_updated"] = datetime.now().isoformat()
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2)
        tmp.replace(self.state_file)

    def get_next_task(self, agent_id: str, task_types: list[str] | None = None) -> Any:
        with self._lock():
            state = self._read()
            now = datetime.now()
            for task in state["tasks"].values():
                if (
                    task["status"] == "in_progress"
                    and task["locked_at"]
                    and now - datetime.fromisoformat(task["locked_at"]) > self.task_timeout
                ):
                    task.update(status="pending", locked_by=None, locked_at=None)
            for task_id, task in state["tasks"].items():
                if task["status"] != "pending":
                    continue
                if task_types and task["type"] not in task_types:
                    continue
                task.update(status="in_progress", locked_by=agent_id, locked_at=now.isoformat())
                self._write(state)
                return {"id": task_id, **task}
            return None

    def complete_task(self, task_id: str, agent_id: str, result_data: Any = None) -> bool:
        with self._lock():
            state = self._read()
            task = state["tasks"].get(task_id)
            if not task or task["locked_by"] != agent_id:
                return False
            task["status"] = "completed"
            task["completed_at"] = datetime.now().isoformat()
            if result_data:
                task["data"]["result"] = result_data
            self._write(state)
            return True


def seed_state(n: int) -> dict[str, Any]:
    now = datetime.now().isoformat()
    tasks = {}
    for i in range(n):
        tasks[f"job_{uuid.uuid4().hex[:8]}"] = {
            "type": "job",
            "status": "pending",
            "parent_id": None,
            "locked_by": None,
            "locked_at": None,
            "created_at": now,
            "completed_at": None,
            "data": {"n": i},
        }
    return {"workflow_type": "generic", "metadata": {"initialized_at": now}, "tasks": tasks}


# ---------------------------------------------------------------------------------------------
# Contenders: setup (in the parent), open (in a worker), then claim/complete pairs.


class Contender:
    name = ""
    suffix = ""

    def setup(self, path: Path, n: int) -> None:
        raise NotImplementedError

    def open(self, path: Path) -> Callable[[str], int]:
        """Returns ``step(agent)``: claims and completes tasks; how many (0 when none is left)."""
        raise NotImplementedError


class TmSqlite(Contender):
    name = "tm sqlite"
    suffix = ".db"

    def setup(self, path: Path, n: int) -> None:
        from tm.queue import TaskManager

        TaskManager(path).create_tasks([("job", {"n": i}) for i in range(n)])

    def open(self, path: Path) -> Callable[[str], int]:
        from tm.queue import TaskManager

        tm = TaskManager(path, lock_timeout=60)

        def step(agent: str) -> int:
            t = tm.get_next_task(agent)
            if t is None:
                return 0
            if not tm.complete_task(t["id"], agent):
                raise RuntimeError(f"lost {t['id']}")
            return 1

        return step


class TmJson(TmSqlite):
    name = "tm json"
    suffix = ".json"


BATCH = 16


class TmSqliteBatch(TmSqlite):
    name = "tm sqlite batch"

    def open(self, path: Path) -> Callable[[str], int]:
        from tm.queue import TaskManager

        tm = TaskManager(path, lock_timeout=60)

        def step(agent: str) -> int:
            tasks = tm.get_next_tasks(agent, max_tasks=BATCH)
            if not all(tm.complete_tasks(tasks, agent)):
                raise RuntimeError(f"lost one of {[t['id'] for t in tasks]}")
            return len(tasks)

        return step


class TmJsonBatch(TmSqliteBatch):
    name = "tm json batch"
    suffix = ".json"


class SeedJson(Contender):
    name = "seed json"
    suffix = ".json"

    def setup(self, path: Path, n: int) -> None:
        path.write_text(json.dumps(seed_state(n), indent=2))

    def open(self, path: Path) -> Callable[[str], int]:
        tm = SeedTaskManager(path)

        def step(agent: str) -> int:
            t = tm.get_next_task(agent)
            if t is None:
                return 0
            if not tm.complete_task(t["id"], agent):
                raise RuntimeError(f"lost {t['id']}")
            return 1

        return step


class Huey(Contender):
    name = "huey"
    suffix = ".db"

    def setup(self, path: Path, n: int) -> None:
        from huey.storage import SqliteStorage

        SqliteStorage(name="bench", filename=str(path))  # creates the tables
        conn = sqlite3.connect(path)
        with conn:
            conn.executemany(
                "INSERT INTO task (queue, data, priority) VALUES ('bench', ?, 0)",
                ((json.dumps({"n": i}).encode(),) for i in range(n)),
            )
        conn.close()

    def open(self, path: Path) -> Callable[[str], int]:
        from huey.storage import SqliteStorage

        storage = SqliteStorage(name="bench", filename=str(path), timeout=60)

        def step(agent: str) -> int:
            data = storage.dequeue()
            if data is None:
                return 0
            storage.put_data(f"result-{json.loads(bytes(data))['n']}", b"done")
            return 1

        return step


class PlainSqlite(Contender):
    name = "sqlite3"
    suffix = ".db"

    def setup(self, path: Path, n: int) -> None:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(
            "CREATE TABLE tasks (id INTEGER PRIMARY KEY, status TEXT NOT NULL, worker TEXT, "
            "data TEXT NOT NULL, result TEXT);"
            "CREATE INDEX tasks_status ON tasks (status, id);"
        )
        with conn:
            conn.executemany(
                "INSERT INTO tasks (status, data) VALUES ('pending', ?)",
                ((json.dumps({"n": i}),) for i in range(n)),
            )
        conn.close()

    def open(self, path: Path) -> Callable[[str], int]:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        claim = (
            "UPDATE tasks SET status = 'in_progress', worker = ? WHERE id = "
            "(SELECT id FROM tasks WHERE status = 'pending' ORDER BY id LIMIT 1) "
            "RETURNING id, data"
        )
        done = "UPDATE tasks SET status = 'completed', result = ? WHERE id = ? AND worker = ?"

        def step(agent: str) -> int:
            row = conn.execute(claim, (agent,)).fetchone()
            if row is None:
                return 0
            if conn.execute(done, ("done", row[0], agent)).rowcount != 1:
                raise RuntimeError(f"lost {row[0]}")
            return 1

        return step


CONTENDERS: list[Contender] = [
    TmSqlite(),
    TmJson(),
    SeedJson(),
    Huey(),
    PlainSqlite(),
    TmSqliteBatch(),
    TmJsonBatch(),
]
BY_NAME = {c.name: c for c in CONTENDERS}

# ---------------------------------------------------------------------------------------------
# Worker processes: open a store, wait for "go", run until drained or the stop time.


def worker(conn: Connection, index: int) -> None:
    agent = f"worker-{index}"
    while True:
        msg = conn.recv()
        if msg[0] == "exit":
            return
        _, name, path = msg
        try:
            step = BY_NAME[name].open(Path(path))
        except Exception as e:
            conn.send(("error", repr(e)))
            continue
        conn.send(("ready",))
        _, stop_at = conn.recv()
        count = 0
        start = time.monotonic()
        try:
            while n := step(agent):
                count += n
                if time.monotonic() >= stop_at:
                    break
        except Exception as e:
            conn.send(("error", repr(e)))
            continue
        conn.send(("done", count, start, time.monotonic()))


class Pool:
    def __init__(self, size: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns = []
        self.procs = []
        for i in range(size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker, args=(child, i), daemon=True)
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def run(self, name: str, path: Path, k: int, seconds: float) -> float:
        conns = self.conns[:k]
        for c in conns:
            c.send(("open", name, str(path)))
        for c in conns:
            reply = c.recv()
            if reply[0] != "ready":
                raise RuntimeError(f"{name}: {reply[1]}")
        stop_at = time.monotonic() + seconds
        for c in conns:
            c.send(("go", stop_at))
        replies = [c.recv() for c in conns]
        for r in replies:
            if r[0] != "done":
                raise RuntimeError(f"{name}: {r[1]}")
        total = sum(r[1] for r in replies)
        span = max(r[3] for r in replies) - min(r[2] for r in replies)
        return total / span if span > 0 else float("nan")

    def close(self) -> None:
        for c in self.conns:
            c.send(("exit",))
        for p in self.procs:
            p.join(timeout=10)


def fmt(rate: float) -> str:
    if rate != rate:
        return "-"
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny stores and runs (smoke test)")
    ap.add_argument("--only", help="comma-separated contender names")
    ap.add_argument("--sizes", help="comma-separated store sizes (default 1000,20000)")
    ap.add_argument("--procs", help="comma-separated process counts (default 1,2,8)")
    ap.add_argument("--rounds", type=int, help="runs per cell, median kept (default 3)")
    args = ap.parse_args(argv)

    sizes = [100, 400] if args.quick else [1_000, 20_000]
    procs = [1, 2, 8]
    seconds = 0.15 if args.quick else 3.0
    repeats = 1 if args.quick else 3
    if args.sizes:
        sizes = [int(x) for x in args.sizes.split(",")]
    if args.procs:
        procs = [int(x) for x in args.procs.split(",")]
    if args.rounds:
        repeats = args.rounds
    contenders = CONTENDERS
    if args.only:
        wanted = {s.strip() for s in args.only.split(",")}
        contenders = [c for c in CONTENDERS if c.name in wanted]

    results: dict[tuple[str, int, int], float] = {}
    pool = Pool(max(procs))
    try:
        with tempfile.TemporaryDirectory(prefix="tm-bench-queue-") as tmp:
            for n in sizes:
                for k in procs:
                    # Every contender runs once per round, so a burst of load on a shared machine
                    # lands on all of them rather than on one; each keeps the median of its rounds.
                    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
                    for r in range(repeats):
                        for c in contenders:
                            path = Path(tmp) / f"{c.name.replace(' ', '_')}-{n}-{k}-{r}{c.suffix}"
                            c.setup(path, n)
                            rates[c.name].append(pool.run(c.name, path, k, seconds))
                    for c in contenders:
                        results[(c.name, n, k)] = statistics.median(rates[c.name])
                        print(
                            f"  {c.name:10} n={n:>6} procs={k}: {fmt(results[(c.name, n, k)])}/s",
                            file=sys.stderr,
                            flush=True,
                        )
    finally:
        pool.close()

    with _results.recorded("queue", "Agent queue: claims + completions per second", args.quick):
        names = [c.name for c in contenders]
        print(
            f"\nAgent queue: tasks claimed + completed per second "
            f"({'QUICK, not a measurement' if args.quick else f'{seconds:.0f} s runs'}; "
            f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"huey {version('huey')}, SQLite {sqlite3.sqlite_version})\n"
        )
        print("| tasks in store | processes | " + " | ".join(names) + " |")
        print("|---:|---:|" + "---:|" * len(names))
        for n in sizes:
            for k in procs:
                cells = [fmt(results[(name, n, k)]) for name in names]
                print(f"| {n:,} | {k} | " + " | ".join(cells) + " |")

        ratios = [
            ("tm sqlite / huey", "tm sqlite", "huey"),
            ("tm sqlite / sqlite3", "tm sqlite", "sqlite3"),
            ("tm json / seed json", "tm json", "seed json"),
            ("tm sqlite batch / sqlite3", "tm sqlite batch", "sqlite3"),
            ("tm json batch / seed json", "tm json batch", "seed json"),
        ]
        ratios = [r for r in ratios if r[1] in names and r[2] in names]
        if ratios:
            print(
                "\n| ratio | "
                + " | ".join(f"{n:,} tasks, {k} procs" for n in sizes for k in procs)
                + " |"
            )
            print("|---|" + "---:|" * (len(sizes) * len(procs)))
            for label, a, b in ratios:
                cells = []
                for n in sizes:
                    for k in procs:
                        x, y = results[(a, n, k)], results[(b, n, k)]
                        cells.append(f"{x / y:.1f}x" if y and y == y and x == x else "-")
                print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
